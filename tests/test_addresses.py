"""GET /nodes/{ident}/addresses on the test driver: the answer's shape, the sources asked, the
refusals, and wait= counted among the watchers. dom0's neighbour table is the kernel's own, in a
private network namespace; xenstore is proven on the Xen tier (tests/xen)."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Client
from xend_rest.api.app import make_app
from xend_rest.hypervisor.addresses.lookup import Place

ROOT = Path(__file__).resolve().parent.parent
ADDRESSES = '/libvirt/xen/nodes/%s/addresses'
# What the test driver's libvirt sources say of every interface (its fixed answer).
TEST_DRIVER_ADDRESS = {'Address': '192.168.0.1', 'Prefix': 24, 'Family': 'ipv4'}
BARE = """<domain type='xen'><name>bare</name><memory>65536</memory>
  <os><type>xen</type></os>%s</domain>"""
AGENT = """<devices><interface type='bridge'><mac address='52:54:00:aa:bb:cc'/>
  <source bridge='br0'/></interface>
  <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
</devices>"""


def test_each_interface_with_the_addresses_its_sources_saw(api):
    response = api.get(ADDRESSES % 'web')
    assert response.status == 200
    assert response.json == [{
        'Name': 'testnet0', 'Mac': '00:16:3e:00:00:01', 'Network': None, 'Bridge': 'xenbr0',
        # one entry naming both sources; no agent channel: the agent is not asked
        'Addresses': [dict(TEST_DRIVER_ADDRESS, Sources=['lease', 'arp'])]}]


@pytest.mark.parametrize('query, sources', [
    ('source=lease', ['lease']),
    ('source=arp', ['arp']),
    ('source=arp,lease', ['lease', 'arp']),
    ('source=arp&source=lease', ['lease', 'arp']),
    ('source=lease,,', ['lease']),
    ('source=neighbour,xenstore', None),  # no test-driver guest is in the host's table
    ('source=agent', None),  # the domain has no agent channel
])
def test_source_chooses_the_sources(api, query, sources):
    response = api.get(ADDRESSES % 'web', query)
    assert response.status == 200
    addresses = response.json[0]['Addresses']
    assert addresses == ([dict(TEST_DRIVER_ADDRESS, Sources=sources)] if sources else [])


@pytest.mark.parametrize('query', ['source=dhcp', 'source=lease,Lease', 'source=', 'source=,',
                                   'source=lease&source=', 'wait=-1', 'wait=x',
                                   'wait=100000', 'wait=1&wait=2'])
def test_a_bad_parameter_is_400(api, query):
    response = api.get(ADDRESSES % 'web', query)
    assert response.status == 400
    assert response.json['code'] == 'bad_parameter'


def test_a_shut_off_domain_is_409_a_paused_one_answers(api):
    assert api.get(ADDRESSES % 'idle').status == 409
    assert api.get(ADDRESSES % 'idle').json['code'] == 'invalid_state'
    assert api.get(ADDRESSES % 'frozen').status == 200
    assert api.get(ADDRESSES % 'nothere').status == 404
    assert api.get(ADDRESSES % '00000000-0000-0000-0000-000000000000').status == 403


def test_a_domain_without_interfaces_has_none(api):
    api.conn.createXML(BARE % '', 0)
    response = api.get(ADDRESSES % 'bare')
    assert (response.status, response.json) == (200, [])


def test_the_agent_is_asked_through_a_guest_agent_channel(api):
    """(QEMU says whether the channel is connected, and a disconnected one is not asked: the test
    driver keeps no state there.)"""
    api.conn.createXML(BARE % AGENT, 0)
    [interface] = api.get(ADDRESSES % 'bare').json
    assert (interface['Bridge'], interface['Mac']) == ('br0', '52:54:00:aa:bb:cc')
    assert interface['Addresses'] == [dict(TEST_DRIVER_ADDRESS, Sources=['lease', 'agent', 'arp'])]


def test_a_source_that_fails_is_left_out_and_the_answer_stands(api, caplog):
    """The test driver's lookups for an interface on a network that is not there fail (as
    libvirt 9.0's arp does on newer kernels, tests/realhv): each failure is logged and left out;
    the interface is still answered, with what the other sources know (nothing here)."""
    api.conn.createXML(BARE % """<devices><interface type='network'>
      <mac address='52:54:00:aa:bb:cd'/><source network='gone'/></interface></devices>""", 0)
    response = api.get(ADDRESSES % 'bare')
    assert response.status == 200, response.json
    assert [(item['Mac'], item['Network'], item['Addresses']) for item in response.json] == [
        ('52:54:00:aa:bb:cd', 'gone', [])]
    assert 'the lease source failed' in caplog.text and 'the arp source failed' in caplog.text


def test_a_wait_logs_a_failing_source_once(api, caplog):
    """A wait looks every second: a source that fails each time is one warning per request."""
    api.conn.createXML(BARE % """<devices><interface type='network'>
      <mac address='52:54:00:aa:bb:cd'/><source network='gone'/></interface></devices>""", 0)
    assert api.get(ADDRESSES % 'bare', 'wait=2.5').status == 408
    messages = [record.getMessage() for record in caplog.records]
    assert [message.startswith('the lease source failed') for message in messages].count(True) == 1
    assert [message.startswith('the arp source failed') for message in messages].count(True) == 1
    assert api.get(ADDRESSES % 'bare', 'wait=0').status == 408  # the next request warns anew
    assert sum(record.getMessage().startswith('the lease source failed')
               for record in caplog.records) == 2


def test_wait_answers_at_once_when_an_address_is_known(api):
    started = time.monotonic()
    response = api.get(ADDRESSES % 'web', 'wait=30')
    assert response.status == 200 and response.json[0]['Addresses']
    assert time.monotonic() - started < 10
    assert len(api.app.hypervisor.events.watchers) == 0


def test_wait_is_408_when_no_address_comes(api):
    api.conn.createXML(BARE % '', 0)
    assert api.get(ADDRESSES % 'bare', 'wait=0').status == 408
    response = api.get(ADDRESSES % 'bare', 'wait=1.5')
    assert (response.status, response.json['code']) == (408, 'wait_timeout')
    assert len(api.app.hypervisor.events.watchers) == 0


def test_a_wait_takes_a_watcher_place_and_gives_it_back(node_uri):
    """One caller's share is one wait: a second one is 429 while the first waits; an answer
    without wait= takes no place."""
    app = make_app(uri=node_uri, watchers_per_caller=1)
    api = Client(app)
    try:
        api.conn.createXML(BARE % '', 0)
        answers = []
        waiting = threading.Thread(target=lambda: answers.append(
            api.get(ADDRESSES % 'bare', 'source=lease&wait=3')))
        waiting.start()
        deadline = time.monotonic() + 5
        while len(app.hypervisor.events.watchers) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = api.get(ADDRESSES % 'web', 'wait=3')
        assert (second.status, second.json['code']) == (429, 'too_many_watchers_for_caller')
        assert api.get(ADDRESSES % 'web').status == 200
        waiting.join()
        assert answers[0].status == 408
        assert len(app.hypervisor.events.watchers) == 0
        assert api.get(ADDRESSES % 'web', 'wait=3').status == 200
    finally:
        app.close()


@pytest.mark.parametrize('transient', [False, True])
def test_a_domain_that_stops_during_a_wait_is_409(api, transient):
    """A transient domain is gone once it stops: still 409 (it was there and running when the
    wait began), not 404."""
    dom = api.conn.createXML(BARE % '', 0) if transient else api.conn.defineXML(BARE % '')
    if not transient:
        dom.create()
    threading.Timer(0.5, dom.destroy).start()
    response = api.get(ADDRESSES % 'bare', 'wait=20')
    assert (response.status, response.json['code']) == (409, 'invalid_state')
    assert ('gone' in response.json['message']) == transient


@pytest.mark.parametrize('uri, driver, xenstore, neighbour', [
    ('xen:///system', 'Xen', None, True),  # xenstore: if this host has xenstored's socket
    ('qemu:///system', 'QEMU', False, True),
    ('xen+ssh://dom0.example/system', 'Xen', False, False),  # another host's tables
    ('qemu+tcp://10.0.0.2/system', 'QEMU', False, False),
])
def test_the_hosts_own_sources_apply_to_a_local_connection_only(uri, driver, xenstore, neighbour):
    place = Place(uri, driver)
    assert place.applies('neighbour') is neighbour
    if xenstore is None:
        assert place.applies('xenstore') is os.path.exists('/run/xenstored/socket')
    else:
        assert place.applies('xenstore') is False
    assert place.applies('lease') and place.applies('arp') and place.applies('agent')


# Run in a network namespace of its own: a bridge named as the test node's interfaces say,
# neighbour entries in every state, then the route (and a wait that an entry ends).
NETNS_PROBE = r'''
import json, subprocess, sys, threading
from conftest import Client
from xend_rest.api.app import make_app
from xend_rest.hypervisor.addresses.neighbours import neighbours

def ip(*args):
    subprocess.run(['ip', *args], check=True)

ip('link', 'set', 'lo', 'up')
for link in ('xenbr0', 'other0'):
    ip('link', 'add', link, 'type', 'bridge')
    ip('link', 'set', link, 'up')
web, db = '00:16:3e:00:00:01', '00:16:3e:00:00:02'
for address, mac, state, link in [
        ('10.9.8.7', web, 'permanent', 'xenbr0'), ('fd00::7', web, 'stale', 'xenbr0'),
        ('10.9.8.6', web, 'reachable', 'xenbr0'), ('10.9.8.5', web, 'delay', 'xenbr0'),
        ('10.9.8.4', web, 'probe', 'xenbr0'),
        ('10.9.8.9', web, 'failed', 'xenbr0'), ('fe80::216:3eff:fe00:1', web, 'stale', 'xenbr0'),
        ('10.9.9.9', web, 'permanent', 'other0')]:  # the same MAC on a link the guest is not on
    ip('neigh', 'add', address, 'lladdr', mac, 'dev', link, 'nud', state)
ip('neigh', 'add', '10.9.8.8', 'dev', 'xenbr0', 'nud', 'incomplete')

result = {'table': sorted(f'{entry.address} {entry.mac} {entry.family}' for entry in neighbours())}
api = Client(make_app(uri=sys.argv[1]))
result['web'] = api.get('/libvirt/xen/nodes/web/addresses', 'source=neighbour').json
result['default'] = api.get('/libvirt/xen/nodes/web/addresses').json
threading.Timer(1.0, ip, ('neigh', 'add', '10.9.8.20', 'lladdr', db, 'dev', 'xenbr0',
                          'nud', 'stale')).start()
before = api.get('/libvirt/xen/nodes/db/addresses', 'source=neighbour').json
waited = api.get('/libvirt/xen/nodes/db/addresses', 'source=neighbour&wait=20')
result['db'] = [before, waited.status, waited.json]
print(json.dumps(result))
api.app.close()
'''


@pytest.fixture
def in_own_netns():
    """Runs code in a network namespace of its own (the machine's network is never touched)."""
    if os.geteuid() != 0 and not os.environ.get('CI'):
        pytest.skip('a network namespace of our own needs root')

    def run(code, *args):
        result = subprocess.run(['unshare', '--net', sys.executable, '-c', code, *args],
                                cwd=ROOT / 'tests', capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, PYTHONPATH=f'{ROOT}:{ROOT / "tests"}'))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)
    return run


def test_the_neighbour_table_is_read_from_the_kernel_matched_by_mac_and_bridge(in_own_netns,
                                                                                node_uri):
    result = in_own_netns(NETNS_PROBE, node_uri)
    web = '00:16:3e:00:00:01'
    # usable states only (not failed, not incomplete), both families, every link
    assert result['table'] == sorted([
        f'10.9.8.7 {web} ipv4', f'fd00::7 {web} ipv6', f'10.9.8.6 {web} ipv4',
        f'10.9.8.5 {web} ipv4', f'10.9.8.4 {web} ipv4', f'fe80::216:3eff:fe00:1 {web} ipv6',
        f'10.9.9.9 {web} ipv4'])
    # on the guest's bridge only; link-local left out; no prefix known
    [interface] = result['web']
    assert interface['Addresses'] == [
        {'Address': address, 'Prefix': None, 'Family': family, 'Sources': ['neighbour']}
        for address, family in [('10.9.8.4', 'ipv4'), ('10.9.8.5', 'ipv4'), ('10.9.8.6', 'ipv4'),
                                ('10.9.8.7', 'ipv4'), ('fd00::7', 'ipv6')]]
    # by default, beside libvirt's own sources
    assert [(item['Address'], item['Sources']) for item in result['default'][0]['Addresses']] \
        == [('10.9.8.4', ['neighbour']), ('10.9.8.5', ['neighbour']),
            ('10.9.8.6', ['neighbour']), ('10.9.8.7', ['neighbour']),
            ('192.168.0.1', ['lease', 'arp']), ('fd00::7', ['neighbour'])]
    # a wait answers once the entry appears
    before, status, after = result['db']
    assert before[0]['Addresses'] == [] and status == 200
    assert after[0]['Addresses'] == [{'Address': '10.9.8.20', 'Prefix': None, 'Family': 'ipv4',
                                      'Sources': ['neighbour']}]
