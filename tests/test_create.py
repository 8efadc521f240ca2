"""Create: define from the JSON that Inspect gives, warnings for what libvirt dropped, 406 on
refusal; a redefinition by name keeps the UUID, another domain's name or UUID is 409, dom0's 403."""
import copy

import libvirt
import pytest

from conftest import DOM0_UUID, DOMAINS, WEB_UUID, Client, node_xml
from xend_rest.app import make_app
from xend_rest.handlers import domains
from xend_rest.handlers.domains import parse_uuid

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


# -- dom0: no definition may name it or become it --------------------------------------------

DOM0_SPELLINGS = [DOM0_UUID, DOM0_UUID.replace('-', ''), ' %s\n' % DOM0_UUID,
                  '\t' + '00 ' * 16, '-' + '0' * 32, '0000-0000' * 4, '00-' * 15 + '00 ']


def ghost(name='ghost', **fields):
    body = copy.deepcopy(TEST0)
    del body['domain']['uuid']
    body['domain']['name'] = name
    body['domain'].update(fields)
    return body


def host_state(conn):
    """Every domain with its persistent definition: what a refused Create must leave as it was."""
    return sorted((dom.name(), dom.UUIDString(), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                  for dom in conn.listAllDomains(0))


SYSINFO_DOM0 = {'@type': 'smbios', 'system': {'entry': {'@name': 'uuid', '#text': DOM0_UUID}}}


@pytest.mark.parametrize('body', [
    ghost('Domain-0', uuid=DOM0_UUID),  # dom0's own definition, replaced
    ghost('Domain-0'),
    ghost('Domain-0', uuid='9c575c05-0be9-4672-aed0-b6aee0093cc3'),
    ghost({'#text': 'Domain-0'}),
    ghost(['Domain-0', 'ghost']),  # libvirt reads the first <name>
    *[ghost(uuid=spelling) for spelling in DOM0_SPELLINGS],
    ghost(uuid={'#text': DOM0_UUID}),
    ghost(sysinfo=SYSINFO_DOM0),  # without <uuid>, libvirt takes the system's
    ghost(sysinfo=[{'@type': 'fwcfg'}, SYSINFO_DOM0]),
], ids=lambda body: repr(body['domain']['name']) + repr(body['domain'].get('uuid', ''))
    + ('+sysinfo' if 'sysinfo' in body['domain'] else ''))
def test_create_that_names_or_becomes_dom0_is_403_and_changes_nothing(api, body):
    before = host_state(api.conn)
    response = api.post(NODES + '/create', body)
    assert (response.status, response.json['code']) == (403, 'dom0_refused')
    assert host_state(api.conn) == before


@pytest.mark.parametrize('spelling', DOM0_SPELLINGS + [
    ' 0' + '0' * 31, '0' * 31, '0' * 33, '0-' * 32, '00--' * 16 + '-', '\xa0' + '0' * 32,
    '0x' + '0' * 30, DOM0_UUID.replace('-', '_'), '{%s}' % DOM0_UUID])
def test_uuids_are_read_as_libvirt_reads_them(api, spelling):
    """parse_uuid against libvirt's own parser (lookupByUUIDString runs virUUIDParse)."""
    try:
        by_libvirt = api.conn.lookupByUUIDString(spelling).UUIDString()
    except libvirt.libvirtError as err:
        assert err.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
        by_libvirt = None
    assert parse_uuid(spelling) == by_libvirt
    expected = (403, 'dom0_refused') if by_libvirt else (406, 'definition_rejected')
    response = api.post(NODES + '/create', ghost(uuid=spelling))
    assert (response.status, response.json['code']) == expected


def test_uuids_in_capitals_are_the_same_uuid(api):
    assert parse_uuid(WEB_UUID.upper().replace('-', '')) == WEB_UUID
    response = api.post(NODES + '/create', ghost('web', uuid=WEB_UUID.upper()))
    assert response.json == {'Uuid': WEB_UUID, 'Warnings': []}


@pytest.mark.parametrize('name', ['domain-0', 'DOMAIN-0', ' Domain-0', 'Domain-00'])
def test_names_like_dom0s_are_other_domains(api, name):
    """libvirt and Xen compare names exactly: these are guests like any other."""
    response = api.post(NODES + '/create', ghost(name))
    assert response.status == 201
    assert api.get(NODES + '/%s/json' % response.json['Uuid']).status == 200


def test_an_id_of_0_in_a_definition_is_ignored(api):
    response = api.post(NODES + '/create', ghost(**{'@id': '0'}))
    assert response.status == 201
    assert api.conn.lookupByName('ghost').ID() == -1
    assert api.post(NODES + '/ghost/start').status == 204
    assert api.conn.lookupByName('ghost').ID() > 0


@pytest.fixture
def no_dom0(tmp_path):
    """A host without dom0 (as a QEMU one): nothing stops libvirt from taking its UUID."""
    path = tmp_path / 'node.xml'
    path.write_text(node_xml([domain for domain in DOMAINS if domain[1] != DOM0_UUID]))
    app = make_app(uri='test://%s' % path)
    yield Client(app)
    app.close()


@pytest.mark.parametrize('body', [ghost(uuid=DOM0_UUID), ghost(sysinfo=SYSINFO_DOM0),
                                  ghost('Domain-0')])
def test_no_domain_becomes_dom0_where_there_is_none(no_dom0, body):
    before = host_state(no_dom0.conn)
    response = no_dom0.post(NODES + '/create', body)
    assert (response.status, response.json['code']) == (403, 'dom0_refused')
    assert host_state(no_dom0.conn) == before


def test_a_domain_libvirt_made_dom0_after_all_is_undone(no_dom0, monkeypatch):
    """Should libvirt find a UUID where the check does not look, the define is undone."""
    monkeypatch.setattr(domains, 'parse_uuid', lambda text: None)
    before = host_state(no_dom0.conn)
    response = no_dom0.post(NODES + '/create', ghost(sysinfo=SYSINFO_DOM0))
    assert (response.status, response.json['code']) == (403, 'dom0_refused')
    assert host_state(no_dom0.conn) == before


# -- redefinition: by name, the UUID kept -----------------------------------------------------

@pytest.mark.parametrize('no_uuid', [{}, {'uuid': None}, {'uuid': ''}],
                         ids=['absent', 'null', 'empty'])
def test_redefinition_by_name_alone_keeps_the_uuid(api, no_uuid):
    """The contract: a previous definition is overridden. libvirt alone would refuse (it makes
    a new UUID, and the name is taken): the domain's own UUID is given to it."""
    api.post(NODES + '/create', TEST0)
    body = copy.deepcopy(TEST0)
    del body['domain']['uuid']
    body['domain'].update(no_uuid)
    body['domain']['vcpu']['#text'] = '3'
    response = api.post(NODES + '/create', body)
    assert response.status == 201, response.json
    assert response.json == {'Uuid': TEST0['domain']['uuid'], 'Warnings': []}
    dom = api.conn.lookupByName('test0')
    assert dom.UUIDString() == TEST0['domain']['uuid']
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 3
    assert api.conn.listDefinedDomains().count('test0') == 1


def test_redefining_a_running_domain_changes_its_next_boot(api):
    """libvirt keeps the running definition and makes the posted one the next boot's."""
    domain = api.get(NODES + '/web/json', 'flag=2').json['domain']
    del domain['uuid']
    domain['description'] = 'next boot'
    response = api.post(NODES + '/create', {'domain': domain})
    assert response.status == 201 and response.json['Uuid'] == WEB_UUID
    dom = api.conn.lookupByName('web')
    assert dom.isActive()
    assert 'next boot' in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert 'next boot' not in dom.XMLDesc(0)


@pytest.mark.parametrize('name, uuid, needle', [
    ('web', '9c575c05-0be9-4672-aed0-b6aee0093cc3',
     "a domain named 'web' exists with UUID %s: give that UUID (or none)" % WEB_UUID),
    ('web2', WEB_UUID, "UUID %s is the domain 'web': Create does not rename" % WEB_UUID),
    ('web2', WEB_UUID.replace('-', '').upper(), "is the domain 'web'"),
])
def test_a_name_or_uuid_another_domain_has_is_409(api, name, uuid, needle):
    before = host_state(api.conn)
    response = api.post(NODES + '/create', ghost(name, uuid=uuid))
    assert (response.status, response.json['code']) == (409, 'already_exists')
    assert needle in response.json['message']
    assert host_state(api.conn) == before
