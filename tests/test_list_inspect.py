"""List and Inspect: the xmltodict shape of libvirt's XML, dom0 hidden, flags validated."""
import libvirt
import pytest
import xmltodict

from conftest import DOM0_UUID, WEB_UUID

NODES = '/libvirt/xen/nodes'


def names(response):
    return sorted(item['domain']['name'] for item in response.json)


def test_list_shows_running_domains_without_dom0(api):
    response = api.get(NODES + '/json')
    assert response.status == 200
    assert response.headers['Content-Type'] == 'application/json'
    assert names(response) == ['db', 'frozen', 'scratch', 'web']


@pytest.mark.parametrize('value', ['1', 'True', 'true'])
def test_list_all_adds_defined_domains(api, value):
    assert names(api.get(NODES + '/json', 'all=' + value)) == [
        'db', 'frozen', 'idle', 'scratch', 'web']


@pytest.mark.parametrize('value', ['0', 'False', 'false'])
def test_list_all_false_is_the_default(api, value):
    assert names(api.get(NODES + '/json', 'all=' + value)) == names(api.get(NODES + '/json'))


@pytest.mark.parametrize('query', ['all=yes', 'all=2', 'all=', 'flag=3x', 'flag=16', 'flag=-1',
                                   'flag=1&flag=2', 'all=1&all=0'])
def test_list_rejects_bad_parameters(api, query):
    response = api.get(NODES + '/json', query)
    assert response.status == 400
    assert response.json['code'] == 'bad_parameter'
    assert response.json['message']


def test_list_items_match_libvirt_xml(api):
    for item in api.get(NODES + '/json').json:
        dom = api.conn.lookupByName(item['domain']['name'])
        assert item == xmltodict.parse(dom.XMLDesc(0))


def test_list_inactive_flag_gives_the_persistent_definition(api):
    api.conn.lookupByName('web').setMemoryFlags(524288, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    live = {i['domain']['name']: i for i in api.get(NODES + '/json').json}
    config = {i['domain']['name']: i for i in api.get(NODES + '/json', 'flag=2').json}
    assert live['web']['domain']['currentMemory']['#text'] == '524288'
    assert config['web']['domain']['currentMemory']['#text'] == '1048576'


@pytest.mark.parametrize('ident', ['web', WEB_UUID, WEB_UUID.replace('-', ''), 'ID'])
def test_inspect_by_name_uuid_or_id(api, ident):
    if ident == 'ID':
        ident = str(api.conn.lookupByName('web').ID())
    response = api.get(NODES + '/%s/json' % ident)
    assert response.status == 200
    assert response.json['domain']['name'] == 'web'
    assert response.json['domain']['uuid'] == WEB_UUID


def test_inspect_shape_follows_the_contract(api):
    domain = api.get(NODES + '/web/json').json['domain']
    assert domain['@type'] == 'xen'
    assert domain['memory'] == {'#text': '2097152', '@unit': 'KiB'}
    assert domain['vcpu'] == {'#text': '4', '@current': '1', '@placement': 'static'}
    assert domain['devices']['disk']['source'] == {'@file': '/var/lib/xen/images/web.raw'}


def test_inspect_keys_are_sorted(api):
    body = api.get(NODES + '/web/json').body.decode()
    assert body.index('"clock"') < body.index('"currentMemory"') < body.index('"devices"')


def test_repeated_elements_become_lists_and_empty_ones_null(api):
    dom = api.conn.lookupByName('web')
    xml = dom.XMLDesc(0).replace('</devices>', """
      <disk type='file' device='cdrom'><source file='/iso/a.iso'/><target dev='hdc' bus='ide'/>
      <readonly/></disk></devices>""")
    api.conn.defineXML(xml)
    domain = api.get(NODES + '/web/json', 'flag=2').json['domain']
    assert [d['@device'] for d in domain['devices']['disk']] == ['disk', 'cdrom']
    assert domain['devices']['disk'][1]['readonly'] is None


# the second: a path a WSGI server decoded already, which PEP 3333's latin-1 cannot hold
@pytest.mark.parametrize('name', ['nosuch', 'caf\u00e9\u20ac'])
def test_inspect_unknown_domain_is_404(api, name):
    response = api.get(NODES + '/%s/json' % name)
    assert response.status == 404
    assert response.json['code'] == 'no_such_domain'
    assert name in response.json['message']


def test_inspect_of_a_defined_domain(api):
    assert api.get(NODES + '/idle/json').json['domain']['name'] == 'idle'


@pytest.mark.parametrize('ident', ['Domain-0', DOM0_UUID])
def test_dom0_is_refused(api, ident):
    response = api.get(NODES + '/%s/json' % ident)
    assert response.status == 403
    assert response.json['code'] == 'dom0_refused'


def test_huge_id_is_just_not_found(api):
    assert api.get(NODES + '/99999999999999999999999/json').status == 404


def test_head_answers_like_get_without_a_body(api):
    get = api.get(NODES + '/web/json')
    head = api.request('HEAD', NODES + '/web/json')
    assert head.status == 200 and head.body == b''
    assert head.headers['Content-Length'] == get.headers['Content-Length']


def test_utf8_names_are_found(api):
    xml = api.conn.lookupByName('idle').XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    xml = xml.replace('<name>idle</name>', '<name>café</name>')
    xml = xml.replace(xml[xml.index('<uuid>'):xml.index('</uuid>') + 7], '')
    api.conn.defineXML(xml)
    # PEP 3333: the server hands PATH_INFO over as latin-1 decoded bytes
    path = (NODES + '/café/json').encode('utf-8').decode('latin-1')
    assert api.get(path).json['domain']['name'] == 'café'



def test_a_domain_name_that_is_not_utf8_is_400(api):
    response = api.get('/libvirt/xen/nodes/\xff/json')  # PATH_INFO is latin-1 (PEP 3333)
    assert response.status == 400
    assert response.json == {'code': 'bad_parameter', 'message': 'the path is not valid UTF-8'}
