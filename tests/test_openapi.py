"""/openapi.json: a valid OpenAPI 3 document that covers every route and tells the truth."""
import json

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from xend_rest.api.openapi import Doc
from xend_rest.api.routes import ROUTES, Route, unfinished

from conftest import WEB_UUID

METHODS = {'get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'}


@pytest.fixture
def spec(api):
    response = api.get('/openapi.json')
    assert response.status == 200
    return response.json


def test_the_document_validates_as_openapi_3(spec):
    validate_openapi(spec)  # against the OpenAPI 3.0 schema: raises at the first violation
    broken = json.loads(json.dumps(spec))
    del broken['info']
    with pytest.raises(OpenAPIValidationError):
        validate_openapi(broken)


def test_the_document_has_the_structure_of_openapi_3(spec):
    assert spec['openapi'].startswith('3.')
    assert spec['info']['title'] and spec['info']['version']
    for path, operations in spec['paths'].items():
        assert path.startswith('/')
        for method, operation in operations.items():
            assert method in METHODS
            assert operation['responses'], (method, path)
            for status, response in operation['responses'].items():
                assert status.isdigit() and response['description']
                for media in response.get('content', {}).values():
                    _check_refs(media['schema'], spec)
            for parameter in operation['parameters']:
                assert parameter['in'] in ('path', 'query', 'header')
                assert parameter['in'] != 'path' or parameter['required'] is True
            names = [part[1:-1] for part in path.split('/') if part.startswith('{')]
            assert names == [p['name'] for p in operation['parameters'] if p['in'] == 'path']


def _check_refs(schema, spec):
    """Every $ref points at a schema in components."""
    if isinstance(schema, dict):
        if '$ref' in schema:
            name = schema['$ref'].rsplit('/', 1)[1]
            assert name in spec['components']['schemas']
        for value in schema.values():
            _check_refs(value, spec)


def test_every_route_is_documented_and_states_its_role(spec):
    routes = {(route.method, route.path) for route in ROUTES}
    routes |= {('HEAD', path) for method, path in routes if method == 'GET'}  # HEAD is GET's
    documented = {(method.upper(), path) for path, operations in spec['paths'].items()
                  for method in operations}
    assert documented == routes
    assert unfinished(ROUTES) == []


def test_a_new_route_without_a_description_or_a_role_is_caught():
    def handler(request):
        return 200, {}
    extra = [Route('GET', '/libvirt/{connection}/images/{name}/json', handler, role='read'),
             Route('GET', '/libvirt/{connection}/secrets', handler, doc=Doc('Secrets', {}))]
    assert unfinished(ROUTES + extra) == extra


# (method, path, query, status): calls whose answers must match their documented schema
SAMPLES = [
    ('GET', '/libvirt/xen/nodes/json', '', 200),
    ('GET', '/libvirt/xen/nodes/json', 'all=maybe', 400),
    ('GET', '/libvirt/xen/nodes/web/json', '', 200),
    ('GET', '/libvirt/xen/nodes/nosuch/json', '', 404),
    ('POST', '/libvirt/xen/nodes/web/suspend', '', 204),
    ('POST', '/libvirt/xen/nodes/idle/stop', '', 304),
    ('POST', '/libvirt/xen/nodes/web/wait', 'condition=running', 200),
    ('POST', '/libvirt/xen/nodes/idle/wait', 'condition=running&timeout=0', 408),
    ('GET', '/libvirt/xen/nodes/web/stats', '', 200),
    ('GET', '/libvirt/xen/nodes/stats', 'all=1', 200),
    ('GET', '/version', '', 200),
    ('GET', '/info', '', 200),
    ('GET', '/_ping', '', 200),
    ('GET', '/libvirt/xen/events', 'since=0&limit=1&timeout=10', 200),
]


@pytest.mark.parametrize('method, path, query, status', SAMPLES)
def test_answers_match_their_documented_schema(api, spec, method, path, query, status):
    api.post('/libvirt/xen/nodes/db/suspend')  # so that the event stream has a record
    response = api.request(method, path, query=query)
    assert response.status == status
    operation = spec['paths'][_template(spec, path)][method.lower()]
    documented = operation['responses'][str(status)]
    if 'content' not in documented:
        assert response.body == b''
        return
    media = response.headers['Content-Type'].split(';')[0]
    content = documented['content'][media]
    if media == 'application/json':
        validate(response.json, content['schema'], spec)
    elif media == 'application/x-ndjson':
        lines = [json.loads(line) for line in response.body.split(b'\n') if line]
        assert lines
        for line in lines:
            validate(line, content['schema'], spec)


def _template(spec, path):
    parts = path.split('/')
    for template in spec['paths']:
        pattern = template.split('/')
        if len(pattern) == len(parts) and all(
                a == b or a.startswith('{') for a, b in zip(pattern, parts)):
            return template
    raise AssertionError('no documented path for %s' % path)


def validate(value, schema, spec, where='body'):
    """JSON Schema 2020-12, as OpenAPI 3.1 uses it; $refs resolve into the document."""
    checker = jsonschema.Draft202012Validator({**schema, 'components': spec['components']})
    errors = sorted(checker.iter_errors(value), key=str)
    assert not errors, '%s: %s' % (where, errors[0].message)


def test_the_checker_catches_a_wrong_answer(spec):
    with pytest.raises(AssertionError):
        validate({'Uuid': WEB_UUID}, {'$ref': '#/components/schemas/Created'}, spec)
    with pytest.raises(AssertionError):
        validate({'message': 'x', 'code': 3}, {'$ref': '#/components/schemas/Error'}, spec)
