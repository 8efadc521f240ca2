"""Networks on a real libvirtd: QEMU's network driver makes the bridge and runs dnsmasq, a guest on
the network takes a lease, and libvirt's network ports say who uses the network. The kernel's
view (`ip link` in the namespace) and the guest's own (`ip addr` on its console) stand beside
the API's answers.

libvirtd here is the private one in a network namespace of its own (`network_libvirtd`, see
test_addresses_real.py): the bridges, dnsmasq and NAT rules never touch the machine's network.
"""
import ipaddress

import libvirt
import pytest

import test_events
from conftest import Client
from test_events import Stream
from xend_rest.api.app import make_app
from xend_rest.hypervisor.libvirt_connection import SharedConnection

from . import guest
from .conftest import SESSION_PREFIX
from .guest import ADDRESS_MARKER, wait_until

NETWORKS = '/libvirt/qemu/networks'
NAME, BRIDGE, MAC = 'xrt-api', 'xrtbr1', '52:54:00:0e:22:11'
LAB = {'network': {'name': NAME, 'forward': {'@mode': 'nat'},
                   'bridge': {'@name': BRIDGE, '@stp': 'off', '@delay': '0'},
                   'ip': {'@address': '10.77.0.1', '@prefix': '24',
                          'dhcp': {'range': {'@start': '10.77.0.10', '@end': '10.77.0.20'}}}}}
DNSMASQ = 'http://libvirt.org/schemas/network/dnsmasq/1.0'


@pytest.fixture
def api(network_libvirtd):
    app = make_app(connections={'qemu': SharedConnection(network_libvirtd.uri)})
    client = Client(app)
    yield client
    for net in client.conn.listAllNetworks(0):
        if net.name().startswith(NAME):
            if net.isActive():
                net.destroy()
            if net.isPersistent():
                net.undefine()
    app.close()


@pytest.fixture
def guest_on_lab(network_libvirtd, guest_files, console_dir):
    """`make() -> (domain, console)`: a guest with a NIC on the network NAME, asking for a lease
    at boot; defined, not started."""
    conn = libvirt.open(network_libvirtd.uri)
    names = []

    def make():
        name = f'{SESSION_PREFIX}net-{len(names) + 1}'
        console = guest.Console(console_dir / f'{name}.log')
        nic = (f"\n    <interface type='network'><mac address='{MAC}'/>"
               f"<source network='{NAME}'/><model type='virtio'/></interface>")
        domain = conn.defineXML(guest.domain_xml(name, guest_files, console.path,
                                                 cmdline='xend.dhcp', devices=nic))
        names.append(name)
        return domain, console

    yield make
    conn.close()
    network_libvirtd.remove_domains(names)


def has_link(daemon, name):
    """Whether the kernel has this interface, in the private libvirtd's namespace."""
    return daemon.run_in_network('ip', 'link', 'show', name, capture_output=True).returncode == 0


def guest_address(console):
    """The address the guest's own `ip addr` showed on its console (ip_interface)."""
    console.wait_for(ADDRESS_MARKER, timeout=60)
    line = [line for line in console.text().splitlines() if line.startswith(ADDRESS_MARKER)][-1]
    return ipaddress.ip_interface(line.split()[2])


def test_a_network_through_its_life_with_a_guest_on_it(api, network_libvirtd, guest_on_lab,
                                                       monkeypatch):
    monkeypatch.setattr(test_events, 'EVENTS', '/libvirt/qemu/events')  # this app's connection
    events = Stream(api, 'type=network&limit=4')
    assert events.status == 200
    created = api.post(NETWORKS + '/create', LAB)
    assert created.status == 201 and created.json['Warnings'] == []
    assert not has_link(network_libvirtd, BRIDGE)  # defined, not started
    assert api.post(f'{NETWORKS}/{NAME}/start').status == 204
    assert has_link(network_libvirtd, BRIDGE)
    assert api.post(f'{NETWORKS}/{NAME}/start').status == 304
    state = api.get(f'{NETWORKS}/{NAME}/json').json
    assert (state['State'], state['Bridge'], state['UsedBy']) == ('active', BRIDGE, [])

    domain, console = guest_on_lab()
    domain.create()
    seen = guest_address(console)
    assert seen.ip in ipaddress.ip_network('10.77.0.0/24')
    # Its user, from the network's port (the network driver keeps one per attached NIC).
    assert [port.XMLDesc(0) for port in api.conn.networkLookupByName(NAME).listAllPorts(0)]
    assert api.get(f'{NETWORKS}/{NAME}/json').json['UsedBy'] == [domain.name()]
    for action in ('stop', 'delete'):
        refused = api.post(f'{NETWORKS}/{NAME}/{action}')
        assert refused.status == 409 and refused.json['code'] == 'network_in_use'
        assert domain.name() in refused.json['message']
    assert has_link(network_libvirtd, BRIDGE)

    # The lease dnsmasq gave, as the guest itself shows its address.
    wait_until(lambda: api.get(f'{NETWORKS}/{NAME}/leases').json, 30, 'a lease')
    leases = api.get(f'{NETWORKS}/{NAME}/leases').json
    print(f'guest: {seen} on eth0; API: {leases}')
    assert [(lease['Mac'], lease['Address'], lease['Prefix'], lease['Family'])
            for lease in leases] == [(MAC, str(seen.ip), 24, 'ipv4')]
    assert leases[0]['Interface'] == BRIDGE and leases[0]['Expires'].endswith('Z')
    assert api.get(f'{NETWORKS}/{NAME}/leases', 'mac=' + MAC.upper()).json == leases
    assert api.get(f'{NETWORKS}/{NAME}/leases', 'mac=52:54:00:00:00:01').json == []

    domain.destroy()
    assert api.get(f'{NETWORKS}/{NAME}/json').json['UsedBy'] == []
    assert api.post(f'{NETWORKS}/{NAME}/stop').status == 204
    assert not has_link(network_libvirtd, BRIDGE)
    assert api.post(f'{NETWORKS}/{NAME}/delete').status == 204
    assert NAME not in [net.name() for net in api.conn.listAllNetworks(0)]
    assert [record['Event'] for record in events.records()] == [
        'defined', 'started', 'stopped', 'undefined']


def test_the_persistent_definition_creates_the_network_again(api):
    assert api.post(NETWORKS + '/create', LAB).status == 201
    assert api.post(f'{NETWORKS}/{NAME}/start').status == 204
    answer = api.get(f'{NETWORKS}/{NAME}/json', 'flag=1').json  # the network driver has it
    assert answer['State'] == 'active'
    assert api.post(f'{NETWORKS}/{NAME}/delete').status == 204
    again = api.post(NETWORKS + '/create', answer)
    assert again.status == 201 and again.json == {'Uuid': answer['network']['uuid'],
                                                  'Warnings': []}
    assert api.get(f'{NETWORKS}/{NAME}/json', 'flag=1').json == {**answer, 'State': 'inactive'}


def test_a_running_networks_redefinition_is_kept_for_its_next_start(api):
    """The network driver stores a running network's new definition beside the live one:
    Warnings are computed against it, and a restart runs it (the test driver keeps none)."""
    assert api.post(NETWORKS + '/create', LAB).status == 201
    assert api.post(f'{NETWORKS}/{NAME}/start').status == 204
    answer = api.get(f'{NETWORKS}/{NAME}/json').json
    answer['network']['ip']['dhcp']['range']['@end'] = '10.77.0.15'
    answer['network']['domain'] = {'@name': 'lab.example'}  # the running one has none
    response = api.post(NETWORKS + '/create', answer)
    assert response.status == 201 and response.json['Warnings'] == []
    assert 'domain' not in api.get(f'{NETWORKS}/{NAME}/json').json['network']  # still the old
    assert api.get(f'{NETWORKS}/{NAME}/json', 'flag=1').json['network']['domain'] == {
        '@name': 'lab.example'}
    assert api.post(f'{NETWORKS}/{NAME}/stop').status == 204
    assert api.post(f'{NETWORKS}/{NAME}/start').status == 204
    live = api.get(f'{NETWORKS}/{NAME}/json').json
    assert live['State'] == 'active' and live['network']['domain'] == {'@name': 'lab.example'}
    assert live['network']['ip']['dhcp']['range']['@end'] == '10.77.0.15'


def test_the_network_driver_keeps_dnsmasq_options(api):
    """What allowed-paths refuses reaches dnsmasq on a real host: the driver keeps it."""
    doc = {'network': {**LAB['network'], 'name': NAME + '-opts', '@xmlns:dnsmasq': DNSMASQ,
                       'dnsmasq:options': {'dnsmasq:option': {'@value': 'log-queries'}}}}
    response = api.post(NETWORKS + '/create', doc)
    assert response.status == 201 and response.json['Warnings'] == []
    stored = api.get(f'{NETWORKS}/{NAME}-opts/json').json['network']
    assert stored['dnsmasq:options'] == {'dnsmasq:option': {'@value': 'log-queries'}}
