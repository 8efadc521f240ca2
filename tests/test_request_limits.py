"""Request bodies: lengths, sizes and JSON that json.loads would take but we refuse; nothing changes."""
import json

import pytest

from conftest import Client
from test_create import TEST0
from xend_rest.api.app import make_app

NODES = '/libvirt/xen/nodes'


def defined_names(api):
    return sorted(dom.name() for dom in api.conn.listAllDomains())


def create(api, body, headers=None):
    return api.request('POST', NODES + '/create', body, headers=headers)


def test_a_body_without_a_length_is_411(api):
    response = create(api, TEST0, headers={'CONTENT_LENGTH': ''})
    assert response.status == 411
    assert response.json['code'] == 'length_required'
    assert 'test0' not in defined_names(api)


def test_a_negative_length_is_400(api):
    unchecked = Client(api.app)
    # wsgiref's validator refuses such an environ before the app could see it
    def unchecked_app(environ, start_response):
        yield from api.app(environ, start_response)
    unchecked.checked = unchecked_app
    response = create(unchecked, TEST0, headers={'CONTENT_LENGTH': '-1'})
    assert response.status == 400
    assert response.json == {'code': 'bad_parameter', 'message': 'Content-Length is negative'}
    assert 'test0' not in defined_names(api)


def test_the_body_size_cap_is_configurable(node_uri):
    app = make_app(uri=node_uri, max_body=200)
    client = Client(app)
    try:
        response = create(client, TEST0)
        assert response.status == 413
        assert response.json == {'code': 'too_large',
                                 'message': 'the body is larger than 200 bytes'}
        assert 'test0' not in defined_names(client)
    finally:
        app.close()


def test_the_default_cap_is_one_mebibyte(api):
    doc = json.loads(json.dumps(TEST0))
    doc['domain']['description'] = 'x' * (1 << 20)
    assert create(api, doc).status == 413


def nested(depth):
    doc = 'x'
    for _ in range(depth - 2):
        doc = {'a': doc}
    return {'domain': {'name': 'deep', 'metadata': doc}}


def raw(text):
    return text.encode()


BAD_JSON = {
    'NaN': raw('{"domain": {"name": "n", "memory": NaN}}'),
    'Infinity': raw('{"domain": {"name": "n", "memory": Infinity}}'),
    '-Infinity': raw('{"domain": {"name": "n", "memory": -Infinity}}'),
    'overflowing float': raw('{"domain": {"name": "n", "memory": 1e999}}'),
    'duplicate key': raw('{"domain": {"name": "a", "name": "b"}}'),
    'duplicate root': raw('{"domain": {"name": "a"}, "domain": {"name": "b"}}'),
    '65 levels': json.dumps(nested(65)).encode(),
    '100000 levels': b'[' * 100000 + b']' * 100000,
    '2**63 + 1': raw('{"domain": {"name": "n", "memory": %d}}' % (2 ** 63 + 1)),
    '-(2**63) - 1': raw('{"domain": {"name": "n", "memory": %d}}' % (-2 ** 63 - 1)),
    '21 digits': raw('{"domain": {"name": "n", "memory": 100000000000000000000}}'),
    '5000 digits': raw('{"domain": {"name": "n", "memory": %s}}' % ('9' * 5000)),
    'not UTF-8': b'{"domain": {"name": "\xff"}}',
    'trailing data': raw('{"domain": {"name": "n"}} {}'),
}


@pytest.mark.parametrize('body', BAD_JSON.values(), ids=list(BAD_JSON))
def test_json_we_refuse_is_400_and_nothing_happens(api, body):
    before = defined_names(api)
    response = create(api, body)
    assert response.status == 400
    assert response.json['code'] == 'bad_parameter'
    assert defined_names(api) == before


def test_64_levels_and_big_numbers_within_bounds_are_fine(api):
    doc = nested(64)
    doc['domain'].update(TEST0['domain'], name='deep', uuid=None)
    del doc['domain']['uuid']
    doc['domain']['memory'] = {'#text': 2 ** 63, '@unit': 'KiB'}
    response = create(api, doc)
    # The nesting and the number pass our checks; the test driver then refuses the memory size.
    assert response.json['code'] != 'bad_parameter'
    doc['domain']['memory'] = {'#text': 1048576, '@unit': 'KiB'}
    assert create(api, doc).status == 201
    assert 'deep' in defined_names(api)
