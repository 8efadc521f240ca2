"""Create: define from the JSON that Inspect gives, warnings for what libvirt dropped, 406 on refusal."""
import copy

import libvirt
import pytest

NODES = '/libvirt/xen/nodes'

# The contract's example, trimmed to what the test driver keeps.
TEST0 = {
    'domain': {
        '@type': 'xen',
        'name': 'test0',
        'uuid': '5faa0019-4e84-4d57-8c9a-2c43d96819f3',
        'memory': {'#text': '1048576', '@unit': 'KiB'},
        'currentMemory': {'#text': '1048576', '@unit': 'KiB'},
        'vcpu': {'#text': '2', '@placement': 'static'},
        'os': {'type': {'#text': 'hvm', '@arch': 'x86_64'},
               'boot': [{'@dev': 'hd'}, {'@dev': 'cdrom'}]},
        'features': {'acpi': None, 'apic': None, 'pae': None},
        'clock': {'@offset': 'utc'},
        'on_poweroff': 'destroy', 'on_reboot': 'restart', 'on_crash': 'restart',
        'devices': {
            'disk': [
                {'@device': 'disk', '@type': 'file', 'source': {'@file': '/img/test0.raw'},
                 'target': {'@bus': 'xen', '@dev': 'xvda'}},
                {'@device': 'cdrom', '@type': 'file', 'readonly': None,
                 'source': {'@file': '/iso/CentOS-6.7-x86_64-minimal.iso'},
                 'target': {'@bus': 'ide', '@dev': 'hdc'}},
            ],
            'interface': {'@type': 'bridge', 'mac': {'@address': '00:16:3e:4d:87:7d'},
                          'source': {'@bridge': 'ovs0'}},
        },
    }
}


def test_create_defines_without_starting(api):
    response = api.post(NODES + '/create', TEST0)
    assert response.status == 201
    assert response.json == {'Uuid': TEST0['domain']['uuid'], 'Warnings': []}
    dom = api.conn.lookupByName('test0')
    assert dom.isPersistent() and not dom.isActive()
    assert dom.UUIDString() == TEST0['domain']['uuid']


def test_created_domain_reads_back_as_posted(api):
    api.post(NODES + '/create', TEST0)
    domain = api.get(NODES + '/test0/json').json['domain']
    assert domain['devices']['disk'][1]['readonly'] is None
    assert domain['os']['boot'] == [{'@dev': 'hd'}, {'@dev': 'cdrom'}]
    assert domain['devices']['interface']['source'] == {'@bridge': 'ovs0'}


def test_inspect_output_round_trips_through_create(api):
    inspected = api.get(NODES + '/web/json', 'flag=2').json
    api.conn.lookupByName('web').undefine()  # now transient; redefining brings it back
    response = api.post(NODES + '/create', inspected)
    assert response.status == 201
    assert response.json['Warnings'] == []
    assert api.get(NODES + '/web/json', 'flag=2').json == inspected


def test_every_inspected_domain_round_trips(api):
    for item in api.get(NODES + '/json', 'all=1&flag=2').json:
        response = api.post(NODES + '/create', item)
        assert response.status == 201, response.json
        name = item['domain']['name']
        assert api.get(NODES + '/%s/json' % name, 'flag=2').json == item


def test_create_without_uuid_gets_one(api):
    body = copy.deepcopy(TEST0)
    del body['domain']['uuid']
    response = api.post(NODES + '/create', body)
    assert response.status == 201
    assert response.json['Uuid'] == api.conn.lookupByName('test0').UUIDString()


def test_redefinition_replaces_the_old_definition(api):
    api.post(NODES + '/create', TEST0)
    body = copy.deepcopy(TEST0)
    body['domain']['vcpu']['#text'] = '3'
    assert api.post(NODES + '/create', body).status == 201
    assert api.conn.lookupByName('test0').vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 3


def test_rejected_redefinition_leaves_the_old_one_untouched(api):
    api.post(NODES + '/create', TEST0)
    before = api.conn.lookupByName('test0').XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    body = copy.deepcopy(TEST0)
    body['domain']['memory']['#text'] = 'lots'
    response = api.post(NODES + '/create', body)
    assert response.status == 406
    assert response.json['code'] == 'definition_rejected'
    assert 'memory' in response.json['message']
    assert api.conn.lookupByName('test0').XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before


def test_warnings_name_what_libvirt_dropped(api):
    body = copy.deepcopy(TEST0)
    body['domain']['sparkle'] = {'@level': '11'}
    body['domain']['devices']['disk'][0]['@glitter'] = 'yes'
    response = api.post(NODES + '/create', body)
    assert response.status == 201
    assert response.json['Warnings'] == [
        'domain.devices.disk[0].@glitter was dropped by libvirt',
        'domain.sparkle was dropped by libvirt',
    ]


@pytest.mark.parametrize('body, needle', [
    ({'domain': {'name': 'x', 'memory': '1024'}}, 'type'),
    ({'domain': {'name': 'x'}}, ''),
    ({'domain': {'memory': '1024', 'vcpu': '1', 'os': {'type': 'hvm'}}}, 'name'),
])
def test_definitions_libvirt_refuses_are_406_with_its_message(api, body, needle):
    names = api.conn.listDefinedDomains()
    response = api.post(NODES + '/create', body)
    assert response.status == 406
    assert response.json['message'] and needle in response.json['message']
    assert api.conn.listDefinedDomains() == names


@pytest.mark.parametrize('body', [
    b'', b'{', b'[]', b'"domain"', b'{"domain": {}, "extra": 1}', b'{"dom": {}}',
    b'{"domain": {"name": ["a", ["b"]]}}', b'{"domain": {"bad name": "x"}}',
    b'{"domain": {"@bad name": "x"}}', b'{"domain": {"name": true}}',
    b'{"domain": {"name": "a\\u0000b"}}', b'{"domain": {"<x>": 1}}', b'\xff\xfe',
])
def test_malformed_bodies_are_400_and_define_nothing(api, body):
    names = sorted(api.conn.listDefinedDomains())
    response = api.post(NODES + '/create', body)
    assert response.status == 400
    assert response.json['code'] == 'bad_parameter'
    assert sorted(api.conn.listDefinedDomains()) == names


def test_values_are_escaped_not_interpreted(api):
    body = copy.deepcopy(TEST0)
    body['domain']['description'] = '</description><on_crash>preserve</on_crash> & "quotes"'
    assert api.post(NODES + '/create', body).status == 201
    domain = api.get(NODES + '/test0/json').json['domain']
    assert domain['description'] == body['domain']['description']
    assert domain['on_crash'] == 'restart'


def test_oversized_body_is_413(api):
    response = api.post(NODES + '/create', b'{"domain": "' + b'x' * (2 << 20) + b'"}')
    assert response.status == 413
    assert response.json['code'] == 'too_large'


def test_create_is_post_only(api):
    response = api.get(NODES + '/create')
    assert response.status == 405
    assert response.headers['Allow'] == 'POST'
