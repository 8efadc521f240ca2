"""Networks: List, Inspect, Create, start, stop, delete, autostart and leases of libvirt's virtual
networks, dom0's bridges, and the state libvirt keeps afterwards."""
import libvirt
import pytest

from conftest import Client
from test_events import Stream
from xend_rest.api.app import make_app
from xend_rest.api.host_paths import host_access, sent_xml
from xend_rest.api.handlers.networks import STATE_KEYS, UNKNOWN_DEFINITION
from xend_rest.api.openapi import NETWORK_STATE
from xend_rest.api.security import Guard
from xend_rest.hypervisor import convert

HV = '/libvirt/xen'
NETWORKS = HV + '/networks'

# A Xen host with a NAT network that one running guest uses (another, shut off, names it too),
# a guest on a plain bridge, and dom0's bridges as libvirt's interface driver sees them.
NODE = """<node>
  <cpu><mhz>2400</mhz><model>x86_64</model><nodes>1</nodes><sockets>1</sockets>
       <cores>4</cores><threads>2</threads></cpu>
  <memory>16777216</memory>
  %(domains)s
  <network>
    <name>default</name>
    <uuid>5d5c6b88-2f3c-4d36-9d3b-3f3c1c0a7e01</uuid>
    <forward mode='nat'/>
    <bridge name='virbr0'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
    </ip>
  </network>
  <interface type='bridge' name='xenbr0'>
    <start mode='onboot'/>
    <bridge stp='off'>
      <interface type='ethernet' name='eth0'><mac address='aa:bb:cc:dd:ee:01'/></interface>
    </bridge>
  </interface>
  <interface type='bridge' name='virbr0'><start mode='onboot'/><bridge stp='on'/></interface>
  <interface type='ethernet' name='eth1'><mac address='aa:bb:cc:dd:ee:02'/></interface>
</node>"""
DOMAIN = """<domain type='xen'>
  <name>%(name)s</name>
  <memory unit='KiB'>1048576</memory>
  <os><type arch='x86_64'>xen</type></os>
  <devices>
    <interface type='%(type)s'><mac address='00:16:3e:00:01:%(mac)s'/>%(source)s</interface>
  </devices>
  %(extra)s
</domain>"""
DOMAINS = [
    ('web', 'network', "<source network='default'/>", ''),
    ('idle', 'network', "<source network='default'/>",
     "<test:runstate xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>5</test:runstate>"),
    ('db', 'bridge', "<source bridge='xenbr0'/>", ''),
]
ISOLATED = {'network': {'name': 'isolated', 'bridge': {'@name': 'virbr9'},
                        'ip': {'@address': '10.9.0.1', '@netmask': '255.255.255.0'}}}


@pytest.fixture
def api(tmp_path):
    path = tmp_path / 'node.xml'
    path.write_text(NODE % {'domains': '\n'.join(
        DOMAIN % {'name': name, 'type': kind, 'source': source, 'extra': extra,
                  'mac': '%02x' % index}
        for index, (name, kind, source, extra) in enumerate(DOMAINS))})
    app = make_app(uri=f'test://{path}')
    yield Client(app)
    app.close()


def networks(api):
    """libvirt's own view: {name: (active, persistent, autostart)}."""
    return {net.name(): (net.isActive(), net.isPersistent(), net.autostart())
            for net in api.conn.listAllNetworks(0)}


def definitions(api):
    """Everything libvirt holds about networks, to show a refusal changed nothing."""
    return sorted((net.name(), net.isActive(), net.isPersistent(), net.autostart(),
                   net.XMLDesc(0)) for net in api.conn.listAllNetworks(0))


def define(api, doc=ISOLATED):
    response = api.post(NETWORKS + '/create', doc)
    assert response.status == 201, response.json
    return response.json


def transient(api, name='temporary'):
    return api.conn.networkCreateXML(f"<network><name>{name}</name>"
                                     "<bridge name='virbr7'/></network>")


# -- List and Inspect -------------------------------------------------------------------------

def test_list_gives_each_networks_state(api):
    define(api)
    response = api.get(NETWORKS + '/json')
    assert response.status == 200
    default, isolated = response.json
    assert default == {'Name': 'default', 'Uuid': '5d5c6b88-2f3c-4d36-9d3b-3f3c1c0a7e01',
                       'Forward': 'nat', 'State': 'active', 'Autostart': False,
                       'Persistent': True, 'Bridge': 'virbr0', 'UsedBy': ['web']}
    assert isolated['Name'] == 'isolated' and isolated['Forward'] is None  # no <forward>: isolated
    assert (isolated['State'], isolated['Persistent'], isolated['UsedBy']) == ('inactive', True, [])
    assert isolated['Uuid'] == api.conn.networkLookupByName('isolated').UUIDString()


def test_a_network_only_a_shut_off_guest_names_is_used_by_nobody(api):
    api.conn.lookupByName('web').destroy()
    (default,) = api.get(NETWORKS + '/json').json
    assert default['UsedBy'] == []


def test_a_transient_network_is_listed_as_such(api):
    transient(api)
    summary = {net['Name']: net for net in api.get(NETWORKS + '/json').json}['temporary']
    assert (summary['State'], summary['Persistent'], summary['Bridge']) == (
        'active', False, 'virbr7')


def test_inspect_gives_the_definition_and_the_state(api):
    response = api.get(NETWORKS + '/default/json')
    assert response.status == 200
    body = response.json
    live = api.conn.networkLookupByName('default').XMLDesc(0)
    assert body['network'] == convert.xml_to_dict(live)['network']
    assert body['network']['name'] == 'default'
    assert body['network']['forward'] == {'@mode': 'nat'}
    assert body['network']['ip']['dhcp']['range'] == {'@start': '192.168.122.2',
                                                      '@end': '192.168.122.254'}
    assert {key: body[key] for key in STATE_KEYS} == {
        'State': 'active', 'Autostart': False, 'Persistent': True, 'Bridge': 'virbr0',
        'UsedBy': ['web']}
    assert set(body) == {'network', *STATE_KEYS} and set(STATE_KEYS) == set(NETWORK_STATE)


def test_the_persistent_definition_is_a_flag_the_test_driver_lacks(api):
    """flag=1 (VIR_NETWORK_XML_INACTIVE) is the network drivers'; the test driver's is 501, as
    any documented flag a driver does not implement."""
    response = api.get(NETWORKS + '/default/json', 'flag=1')
    assert response.status == 501 and response.json['code'] == 'not_supported'


@pytest.mark.parametrize('query', ['flag=2', 'flag=x', 'flag=-1'])
def test_inspect_refuses_a_flag_outside_its_table(api, query):
    response = api.get(NETWORKS + '/default/json', query)
    assert response.status == 400 and response.json['code'] == 'bad_parameter'


@pytest.mark.parametrize('method, action', [
    ('GET', 'json'), ('POST', 'start'), ('POST', 'stop'), ('POST', 'delete'),
    ('POST', 'autostart?enable=1'), ('GET', 'leases')])
def test_a_network_that_does_not_exist_is_404(api, method, action):
    before = definitions(api)
    action, _, query = action.partition('?')
    response = api.request(method, f'{NETWORKS}/nowhere/{action}', query=query)
    assert response.status == 404 and response.json['code'] == 'no_such_network'
    assert definitions(api) == before


# -- Create -----------------------------------------------------------------------------------

def test_create_defines_a_network_without_starting_it(api):
    created = define(api)
    assert created['Warnings'] == []
    net = api.conn.networkLookupByName('isolated')
    assert created['Uuid'] == net.UUIDString()
    assert networks(api)['isolated'] == (0, 1, 0)


def test_what_inspect_answers_creates_the_same_network_again(api):
    define(api)
    answer = api.get(NETWORKS + '/isolated/json').json
    assert api.post(NETWORKS + '/isolated/delete').status == 204
    assert 'isolated' not in networks(api)
    again = api.post(NETWORKS + '/create', answer)  # unchanged: its state keys are ignored
    assert again.status == 201 and again.json == {'Uuid': answer['network']['uuid'],
                                                  'Warnings': []}
    assert api.get(NETWORKS + '/isolated/json').json == answer


def test_an_active_networks_answer_creates_it_again_too(api):
    answer = api.get(NETWORKS + '/default/json').json
    assert api.post(NETWORKS + '/default/delete', query='force=1').status == 204
    again = api.post(NETWORKS + '/create', answer)
    assert again.status == 201 and again.json['Warnings'] == []
    assert again.json['Uuid'] == answer['network']['uuid']
    assert networks(api)['default'] == (0, 1, 0)  # Create defines; start starts
    assert api.get(NETWORKS + '/default/json').json['network'] == answer['network']


def test_create_warns_of_what_libvirt_dropped(api):
    doc = {'network': {**ISOLATED['network'], 'sparkle': {'@level': '11'}}}
    assert define(api, doc)['Warnings'] == ['network.sparkle was dropped by libvirt']


def test_a_definition_without_uuid_replaces_the_network_of_its_name(api):
    uuid = define(api)['Uuid']
    doc = {'network': {**ISOLATED['network'], 'ip': {'@address': '10.9.9.1',
                                                     '@netmask': '255.255.255.0'}}}
    assert define(api, doc)['Uuid'] == uuid
    answer = api.get(NETWORKS + '/isolated/json').json['network']
    assert answer['ip']['@address'] == '10.9.9.1'


def test_a_running_network_is_redefined_and_keeps_running(api):
    """The test driver cannot show the definition a running network starts with next (no
    VIR_NETWORK_XML_INACTIVE; it keeps none: the running one comes back after a restart, as
    docs/drivers.md says), so Warnings claim nothing was dropped, and say why they cannot.
    tests/realhv/test_networks_real.py sees the network driver keep the new one."""
    answer = api.get(NETWORKS + '/default/json').json
    answer['network']['ip']['dhcp']['range']['@end'] = '192.168.122.99'
    answer['network']['domain'] = {'@name': 'lab.example'}  # the running one has none
    response = api.post(NETWORKS + '/create', answer)
    assert response.status == 201 and response.json['Uuid'] == answer['network']['uuid']
    assert response.json['Warnings'] == [UNKNOWN_DEFINITION]
    assert networks(api)['default'] == (1, 1, 0)


def test_a_stopped_networks_redefinition_is_what_it_starts_with(api):
    """An inactive network's only definition is the stored one: Warnings are computed against it
    (none here), and a start runs it."""
    assert api.post(NETWORKS + '/default/stop', query='force=1').status == 204
    answer = api.get(NETWORKS + '/default/json').json
    answer['network']['ip']['dhcp']['range']['@end'] = '192.168.122.99'
    answer['network']['domain'] = {'@name': 'lab.example'}
    assert api.post(NETWORKS + '/create', answer).json['Warnings'] == []
    assert api.post(NETWORKS + '/default/start').status == 204
    live = api.get(NETWORKS + '/default/json').json['network']
    assert live['ip']['dhcp']['range']['@end'] == '192.168.122.99'
    assert live['domain'] == {'@name': 'lab.example'}


@pytest.mark.parametrize('doc, code', [
    # the name of a network, with another UUID; the UUID of a network, with another name
    ({'network': {'name': 'default', 'uuid': '5d5c6b88-2f3c-4d36-9d3b-3f3c1c0a7e02'}},
     'already_exists'),
    ({'network': {'name': 'other', 'uuid': '5D5C6B88-2F3C-4D36-9D3B-3F3C1C0A7E01'}},
     'already_exists'),
])
def test_create_does_not_take_another_networks_name_or_uuid(api, doc, code):
    before = definitions(api)
    response = api.post(NETWORKS + '/create', doc)
    assert response.status == 409 and response.json['code'] == code
    assert 'default' in response.json['message']
    assert definitions(api) == before


@pytest.mark.parametrize('doc', [
    [], b'"network"', {}, {'domain': ISOLATED['network']}, {**ISOLATED, 'Extra': 1},
    {**ISOLATED, 'network2': {}}, {'network': [ISOLATED['network']]},
    {**ISOLATED, 'State': 'running'}, {**ISOLATED, 'Autostart': 1}, {**ISOLATED, 'UsedBy': 'web'},
    {**ISOLATED, 'Bridge': ['virbr0']},
    {'network': {'name': 'x', '@p:file': '/etc', '@xmlns:p': 'urn:p'}},
])
def test_a_body_create_cannot_read_is_400_and_defines_nothing(api, doc):
    before = definitions(api)
    response = api.post(NETWORKS + '/create', doc)
    assert response.status == 400 and response.json['code'] == 'bad_parameter'
    assert definitions(api) == before


@pytest.mark.parametrize('name', ['lab\rnet', 'lab\nnet', 'lab\tnet', 'lab\x7f'])
def test_a_name_with_a_control_character_is_400(api, name):
    """libvirt's network driver refuses a newline; a carriage return would reach it as one."""
    before = definitions(api)
    response = api.post(NETWORKS + '/create', {'network': {'name': name}})
    assert response.status == 400 and response.json['code'] == 'bad_parameter'
    assert 'control characters' in response.json['message']
    assert definitions(api) == before


def test_a_definition_libvirt_refuses_is_406(api):
    before = definitions(api)
    response = api.post(NETWORKS + '/create', {'network': {'bridge': {'@name': 'virbr5'}}})
    assert response.status == 406 and response.json['code'] == 'definition_rejected'
    assert definitions(api) == before


# -- start, stop, delete ------------------------------------------------------------------------

def test_start_starts_a_defined_network_and_a_repeat_is_304(api):
    define(api)
    assert api.post(NETWORKS + '/isolated/start').status == 204
    assert networks(api)['isolated'] == (1, 1, 0)
    assert api.post(NETWORKS + '/isolated/start').status == 304
    assert networks(api)['isolated'] == (1, 1, 0)


def test_stop_stops_an_unused_network_and_a_repeat_is_304(api):
    define(api)
    api.post(NETWORKS + '/isolated/start')
    assert api.post(NETWORKS + '/isolated/stop').status == 204
    assert networks(api)['isolated'] == (0, 1, 0)
    assert api.post(NETWORKS + '/isolated/stop').status == 304


def test_a_network_a_running_guest_uses_is_not_stopped(api):
    before = definitions(api)
    response = api.post(NETWORKS + '/default/stop')
    assert response.status == 409 and response.json['code'] == 'network_in_use'
    assert 'web' in response.json['message'] and 'idle' not in response.json['message']
    assert definitions(api) == before


def test_force_stops_a_network_in_use(api):
    assert api.post(NETWORKS + '/default/stop', query='force=1').status == 204
    assert networks(api)['default'] == (0, 1, 0)


def test_a_network_whose_guest_stopped_is_no_longer_in_use(api):
    api.post(HV + '/nodes/web/destroy')
    assert api.post(NETWORKS + '/default/stop').status == 204


def test_stopping_a_transient_network_removes_it(api):
    transient(api)
    assert api.post(NETWORKS + '/temporary/stop').status == 204
    assert 'temporary' not in networks(api)


def test_delete_removes_a_defined_network(api):
    define(api)
    assert api.post(NETWORKS + '/isolated/delete').status == 204
    assert 'isolated' not in networks(api)


def test_delete_stops_a_running_network_first(api):
    define(api)
    api.post(NETWORKS + '/isolated/start')
    assert api.post(NETWORKS + '/isolated/delete').status == 204
    assert 'isolated' not in networks(api)


def test_delete_removes_a_transient_network(api):
    transient(api)
    assert api.post(NETWORKS + '/temporary/delete').status == 204
    assert 'temporary' not in networks(api)


def test_a_network_in_use_is_not_deleted(api):
    before = definitions(api)
    response = api.post(NETWORKS + '/default/delete')
    assert response.status == 409 and response.json['code'] == 'network_in_use'
    assert definitions(api) == before
    assert api.post(NETWORKS + '/default/delete', query='force=1').status == 204
    assert 'default' not in networks(api)


@pytest.mark.parametrize('action', ['stop', 'delete'])
def test_a_guest_on_the_networks_bridge_uses_it(api, action):
    """A guest plugged into the network's bridge directly (<interface type='bridge'>) is cut off
    by a stop as much as one on the network: it is a user, found from its live definition."""
    api.conn.lookupByName('web').destroy()
    api.conn.createXML(DOMAIN % {'name': 'plain', 'type': 'bridge', 'mac': '10', 'extra': '',
                                 'source': "<source bridge='virbr0'/>"}, 0)
    assert api.get(NETWORKS + '/default/json').json['UsedBy'] == ['plain']
    before = definitions(api)
    response = api.post(f'{NETWORKS}/default/{action}')
    assert response.status == 409 and response.json['code'] == 'network_in_use'
    assert 'plain' in response.json['message']
    assert definitions(api) == before


@pytest.mark.parametrize('action', ['stop', 'delete'])
def test_a_bad_force_is_400(api, action):
    before = definitions(api)
    response = api.post(f'{NETWORKS}/default/{action}', query='force=yes')
    assert response.status == 400 and definitions(api) == before


# -- autostart --------------------------------------------------------------------------------

def test_autostart_is_set_and_cleared_and_a_repeat_is_304(api):
    assert api.post(NETWORKS + '/default/autostart', query='enable=1').status == 204
    assert networks(api)['default'] == (1, 1, 1)
    assert api.get(NETWORKS + '/default/json').json['Autostart'] is True
    assert api.post(NETWORKS + '/default/autostart', query='enable=true').status == 304
    assert api.post(NETWORKS + '/default/autostart', query='enable=0').status == 204
    assert networks(api)['default'] == (1, 1, 0)
    assert api.post(NETWORKS + '/default/autostart', query='enable=False').status == 304


@pytest.mark.parametrize('query', ['', 'enable=', 'enable=yes', 'enable=1&enable=0'])
def test_autostart_needs_enable(api, query):
    response = api.post(NETWORKS + '/default/autostart', query=query)
    assert response.status == 400 and networks(api)['default'] == (1, 1, 0)


def test_a_transient_network_has_no_autostart(api):
    transient(api)
    response = api.post(NETWORKS + '/temporary/autostart', query='enable=1')
    assert response.status == 409 and response.json['code'] == 'invalid_state'
    assert networks(api)['temporary'] == (1, 0, 0)


# -- leases and bridges -----------------------------------------------------------------------

def test_leases_of_an_inactive_network_are_409(api):
    define(api)
    response = api.get(NETWORKS + '/isolated/leases')
    assert response.status == 409 and response.json['code'] == 'invalid_state'


def test_the_test_driver_keeps_no_leases_501(api):
    """libvirt's test driver has no virNetworkGetDHCPLeases (the QEMU tier reads real ones)."""
    response = api.get(NETWORKS + '/default/leases')
    assert response.status == 501 and response.json['code'] == 'not_supported'


@pytest.mark.parametrize('mac', ['x', '00:16:3e:00:01', '00:16:3e:00:01:00:00',
                                 '00-16-3e-00-01-00'])
def test_a_bad_mac_is_400(api, mac):
    response = api.get(NETWORKS + '/default/leases', 'mac=' + mac)
    assert response.status == 400 and response.json['code'] == 'bad_parameter'


def test_bridges_are_dom0s_as_libvirt_reports_them(api):
    response = api.get(HV + '/bridges/json')
    assert response.status == 200
    assert response.json == [
        {'Name': 'virbr0', 'Active': True, 'Mac': None, 'Interfaces': [], 'Network': 'default'},
        {'Name': 'xenbr0', 'Active': True, 'Mac': None, 'Interfaces': ['eth0'], 'Network': None},
    ]


def test_bridges_leave_out_what_vanished_after_the_listing(api, monkeypatch):
    """A network and an interface removed between libvirt's listing and their reading (as by
    another client at that moment) are left out, not a 404 for the whole answer."""
    conn = api.conn._target  # libvirt's own connection, under the app's gate (held in calls)
    transient(api)
    listed_networks, listed_interfaces = conn.listAllNetworks, conn.listAllInterfaces

    def networks_then_one_goes(flags):
        listed = listed_networks(flags)
        conn.networkLookupByName('temporary').destroy()
        return listed

    def interfaces_then_one_goes(flags):
        listed = listed_interfaces(flags)
        eth1 = conn.interfaceLookupByName('eth1')
        eth1.destroy()
        eth1.undefine()
        return listed

    monkeypatch.setattr(conn, 'listAllNetworks', networks_then_one_goes)
    monkeypatch.setattr(conn, 'listAllInterfaces', interfaces_then_one_goes)
    response = api.get(HV + '/bridges/json')
    monkeypatch.undo()
    assert response.status == 200, response.json
    assert [bridge['Name'] for bridge in response.json] == ['virbr0', 'xenbr0']
    assert 'temporary' not in networks(api)
    assert 'eth1' not in api.conn.listInterfaces() + api.conn.listDefinedInterfaces()


# -- host paths and namespaces (allowed-paths) ------------------------------------------------

DNSMASQ = 'http://libvirt.org/schemas/network/dnsmasq/1.0'


@pytest.fixture
def tftp(tmp_path):
    path = tmp_path / 'tftp'
    path.mkdir()
    (path / 'link-out').symlink_to('/etc')
    return path


@pytest.fixture
def confined(api, tftp):
    """The same node, served by an app whose allowed-paths is the tftp directory."""
    app = make_app(uri=api.app.hypervisor.connection.uri,
                   guard=Guard(allowed_paths=[str(tftp)]))
    yield Client(app)
    app.close()


def pxe(root, boot='pxelinux.0'):
    """A network that serves `root` over TFTP and tells DHCP clients to boot `boot`."""
    return {'network': {'name': 'pxe', 'bridge': {'@name': 'virbr8'}, 'ip': {
        '@address': '10.8.0.1', '@netmask': '255.255.255.0', 'tftp': {'@root': str(root)},
        'dhcp': {'range': {'@start': '10.8.0.2', '@end': '10.8.0.9'},
                 'bootp': {'@file': str(boot)}}}}}


def with_options(default_namespace=False):
    """A network whose <dnsmasq:options> give dnsmasq a dhcp-script (prefixed, or in a default
    namespace)."""
    option = {'@value': 'dhcp-script=/var/tmp/x.sh'}
    if default_namespace:
        return {'network': {'name': 'opts', 'options': {'@xmlns': DNSMASQ, 'option': option}}}
    return {'network': {'@xmlns:dnsmasq': DNSMASQ, 'name': 'opts',
                        'dnsmasq:options': {'dnsmasq:option': option}}}


@pytest.mark.parametrize('default_namespace', [False, True], ids=['prefixed', 'default xmlns'])
def test_dnsmasq_options_are_refused_while_allowed_paths_is_set(confined, default_namespace):
    """A dhcp-script in <dnsmasq:options> runs as root: no path check can see into it."""
    before = definitions(confined)
    response = confined.post(NETWORKS + '/create', with_options(default_namespace))
    assert response.status == 403 and response.json['code'] == 'path_not_allowed'
    assert 'dnsmasq' in response.json['message']
    assert definitions(confined) == before


def test_dnsmasq_options_reach_libvirt_without_allowed_paths(api):
    """An admin without allowed-paths is root on dom0 anyway; the test driver drops them."""
    response = api.post(NETWORKS + '/create', with_options())
    assert response.status == 201
    assert 'network.dnsmasq:options was dropped by libvirt' in response.json['Warnings']


def test_a_tftp_root_and_boot_file_inside_are_accepted(confined, tftp):
    response = confined.post(NETWORKS + '/create', pxe(tftp, tftp / 'pxelinux.0'))
    assert response.status == 201 and response.json['Warnings'] == []
    assert 'pxe' in networks(confined)


@pytest.mark.parametrize('where, root, boot', [
    ('network.ip.tftp.@root', '/', 'pxelinux.0'),
    ('network.ip.tftp.@root', '{tftp}/link-out', '{tftp}/pxelinux.0'),
    ('network.ip.tftp.@root', '{tftp}/../', '{tftp}/pxelinux.0'),
    ('network.ip.tftp.@root', 'tftp', '{tftp}/pxelinux.0'),  # relative: dnsmasq's own directory
    ('network.ip.dhcp.bootp.@file', '{tftp}', '/etc/shadow'),
    ('network.ip.dhcp.bootp.@file', '{tftp}', '{tftp}/link-out/shadow'),
    ('network.ip.dhcp.bootp.@file', '{tftp}', 'pxelinux.0'),  # relative: no place to judge
])
def test_a_tftp_root_or_boot_file_outside_is_refused(confined, tftp, where, root, boot):
    before = definitions(confined)
    doc = pxe(root.format(tftp=tftp), boot.format(tftp=tftp))
    response = confined.post(NETWORKS + '/create', doc)
    assert response.status == 403 and response.json['code'] == 'path_not_allowed'
    assert response.json['message'].startswith(where + ':')
    assert definitions(confined) == before


PCI = {'@type': 'pci', '@domain': '0x0000', '@bus': '0x03', '@slot': '0x00', '@function': '0x1'}
HOSTDEV_FORWARDS = {
    'hostdev mode, PCI address': {'@mode': 'hostdev', '@managed': 'yes', 'address': PCI},
    'hostdev mode, SR-IOV pf': {'@mode': 'hostdev', '@managed': 'yes', 'pf': {'@dev': 'eth1'}},
    'hostdev mode, interface': {'@mode': 'hostdev', 'interface': {'@dev': 'eth1'}},
    'PCI address, no mode': {'address': PCI},
}


@pytest.mark.parametrize('forward', HOSTDEV_FORWARDS.values(), ids=list(HOSTDEV_FORWARDS))
def test_a_network_that_hands_guests_host_devices_is_refused(confined, forward):
    """Its guests would get host PCI devices, as with <interface type='hostdev'>."""
    before = definitions(confined)
    response = confined.post(NETWORKS + '/create', {'network': {'name': 'vfs', 'forward': forward}})
    assert response.status == 403 and response.json['code'] == 'host_device_not_allowed'
    assert response.json['message'].startswith('network.forward')
    assert definitions(confined) == before


def test_allow_host_devices_lets_a_hostdev_network_through(api, tftp):
    app = make_app(uri=api.app.hypervisor.connection.uri,
                   guard=Guard(allowed_paths=[str(tftp)], allow_host_devices=True))
    try:
        client = Client(app)
        doc = {'network': {'name': 'vfs', 'forward': HOSTDEV_FORWARDS['hostdev mode, PCI address']}}
        assert client.post(NETWORKS + '/create', doc).status == 201
        assert 'vfs' in networks(client)
    finally:
        app.close()


def test_a_macvtap_network_is_networking_not_a_host_device(confined):
    """As <interface type='direct'> for a domain: the guest gets a macvtap on eth1, not eth1."""
    doc = {'network': {'name': 'direct', 'forward': {'@mode': 'bridge',
                                                      'interface': {'@dev': 'eth1'}}}}
    assert confined.post(NETWORKS + '/create', doc).status == 201
    assert 'direct' in networks(confined)


def test_the_walk_finds_a_networks_host_paths(tftp):
    found = host_access(sent_xml(pxe(tftp, '/srv/boot.0')))
    assert found == [('network.ip.tftp.@root', 'path', str(tftp)),
                     ('network.ip.dhcp.bootp.@file', 'path', '/srv/boot.0')]


# -- events -------------------------------------------------------------------------------------

def test_network_events_come_to_streams_that_ask_for_them(api):
    stream = Stream(api, 'type=network&limit=4')
    domains_only = Stream(api, 'timeout=0.5')
    uuid = define(api)['Uuid']
    for action in ('start', 'stop', 'delete'):
        assert api.post(f'{NETWORKS}/isolated/{action}').status == 204
    records = stream.records()
    assert [(record['Type'], record['Event'], record['Detail']) for record in records] == [
        ('network', 'defined', None), ('network', 'started', None),
        ('network', 'stopped', None), ('network', 'undefined', None)]
    assert all(record['Network'] == {'Name': 'isolated', 'Uuid': uuid} for record in records)
    assert all('Domain' not in record for record in records)
    assert domains_only.records() == []  # the default stream is as it was: domains only


def test_a_stream_filters_network_events_by_name_of_event(api):
    stream = Stream(api, 'type=network&event=stopped&limit=1', {'HTTP_ACCEPT': 'text/event-stream'})
    api.post(NETWORKS + '/default/stop', query='force=1')
    lines = [block for block in stream.finish().decode().split('\n\n') if block.strip(':\n')]
    assert lines[0].split('\n')[1] == 'event: network.stopped'
