"""Every VM endpoint through HTTP against a real libvirtd + QEMU guest, checked by the guest's own
evidence (its console markers) and by libvirt's state afterwards.

The app runs in-process (the `Client` of tests/conftest.py); the waits that hold a worker for
seconds (stop?wait, restart?wait) go through the real threaded server over TCP.
"""

import http.client
import json
import subprocess

import libvirt
import pytest

from conftest import Client
from xend_rest.api.app import make_app
from xend_rest.hypervisor import convert
from xend_rest.server.serving import Server

from . import guest
from .conftest import SESSION_PREFIX, _remove_domain
from .guest import BOOT_MARKER, POWEROFF_MARKER, READY_MARKER, UEVENT_MARKER, wait_until

NODES = '/libvirt/qemu/nodes'
LIVE = 1
CONFIG = 2
INACTIVE_XML = libvirt.VIR_DOMAIN_XML_INACTIVE


@pytest.fixture(scope='module')
def api(libvirtd):
    app = make_app(connections={'qemu': libvirtd.uri})
    yield Client(app)
    app.close()


@pytest.fixture(scope='module')
def server(api):
    """The real threaded server in front of the same app, on a free TCP port."""
    running = Server(api.app, ['127.0.0.1:0'], workers=4, on_shutdown=api.app.end_streams)
    running.start()
    yield running
    running.shutdown(grace=2)


def over_tcp(server, method, path, query=''):
    """(status, JSON body or None) of one request through the server's socket."""
    host, port = server.addresses[0][:2]
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request(method, path + ('?' + query if query else ''), body=b'',
                     headers={'Content-Length': '0'})
        response = conn.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else None
    finally:
        conn.close()


def state(conn, name):
    return conn.lookupByName(name).state()[0]


def wait_state(conn, name, wanted, console, timeout=30):
    wait_until(lambda: state(conn, name) == wanted, timeout, '%s in state %d' % (name, wanted),
               console.diagnostics)


def create(api, guest_xml, name, **options):
    """Define the guest through POST /nodes/create, from the JSON of its domain XML."""
    response = api.post(NODES + '/create', convert.xml_to_dict(guest_xml(name, **options)))
    assert response.status == 201, response.json
    assert response.json['Warnings'] == []
    return response.json['Uuid']


def booted(api, console, name):
    """POST start; the guest's init reports it is up."""
    boots = console.boots()
    assert api.post(f'{NODES}/{name}/start').status == 204
    console.wait_for(BOOT_MARKER, count=boots + 1)
    console.wait_for(READY_MARKER, count=boots + 1)


def test_create_from_json_and_the_inspect_round_trip(api, libvirt_conn, guest_name, guest_xml):
    name = guest_name('create')
    uuid = create(api, guest_xml, name, vcpus=2, current_vcpus=1)
    defined = libvirt_conn.lookupByUUIDString(uuid).XMLDesc(INACTIVE_XML)
    assert libvirt_conn.lookupByName(name).UUIDString() == uuid
    inspected = api.get(f'{NODES}/{uuid}/json', query='flag=2')
    assert inspected.status == 200
    assert inspected.json['domain']['name'] == name
    again = api.post(NODES + '/create', inspected.json)
    assert again.status == 201
    assert again.json == {'Uuid': uuid, 'Warnings': []}
    assert libvirt_conn.lookupByUUIDString(uuid).XMLDesc(INACTIVE_XML) == defined


def test_start_stop_gracefully_and_the_events_seen(api, server, libvirt_conn, guest_name,
                                                   guest_xml, guest_console):
    name = guest_name('power')
    create(api, guest_xml, name)
    console = guest_console(name)
    booted(api, console, name)
    assert api.post(f'{NODES}/{name}/start').status == 304
    # stop: an ACPI power button press; the guest's init powers itself off
    assert api.post(f'{NODES}/{name}/stop').status == 204
    wait_state(libvirt_conn, name, libvirt.VIR_DOMAIN_SHUTOFF, console)
    assert console.count(POWEROFF_MARKER) == 1
    assert api.post(f'{NODES}/{name}/stop').status == 304
    booted(api, console, name)
    # stop?wait=S answers only once the domain is shut off
    assert over_tcp(server, 'POST', f'{NODES}/{name}/stop', 'wait=30') == (204, None)
    assert state(libvirt_conn, name) == libvirt.VIR_DOMAIN_SHUTOFF
    assert console.count(POWEROFF_MARKER) == 2
    events = api.get('/libvirt/qemu/events',
                     query=f'domain={name}&event=started,stopped&since=0&limit=4')
    assert events.status == 200
    records = [json.loads(line) for line in events.body.splitlines() if line.strip()]
    seen = [(r['Event'], r['Detail']) for r in records if 'Event' in r]
    assert seen == [('started', 'booted'), ('stopped', 'shutdown')] * 2


def test_restart_suspend_resume_then_delete_a_running_domain(api, server, libvirt_conn,
                                                             guest_name, guest_xml, guest_console):
    name = guest_name('restart')
    create(api, guest_xml, name)
    console = guest_console(name)
    booted(api, console, name)
    assert api.post(f'{NODES}/{name}/restart').status == 204
    console.wait_for(READY_MARKER, count=2)
    assert console.boots() == 2
    # restart?wait=S answers once libvirt reported the reboot (QEMU's reset, after the power-off)
    assert over_tcp(server, 'POST', f'{NODES}/{name}/restart', 'wait=60') == (204, None)
    console.wait_for(BOOT_MARKER, count=3)
    console.wait_for(READY_MARKER, count=3)
    assert state(libvirt_conn, name) == libvirt.VIR_DOMAIN_RUNNING
    events = api.get('/libvirt/qemu/events', query=f'domain={name}&event=reboot&since=0&limit=2')
    assert [json.loads(line)['Event'] for line in events.body.splitlines() if line.strip()] \
        == ['reboot', 'reboot']

    assert api.post(f'{NODES}/{name}/suspend').status == 204
    assert state(libvirt_conn, name) == libvirt.VIR_DOMAIN_PAUSED
    assert api.post(f'{NODES}/{name}/suspend').status == 304
    assert api.post(f'{NODES}/{name}/resume').status == 204
    assert state(libvirt_conn, name) == libvirt.VIR_DOMAIN_RUNNING
    assert api.post(f'{NODES}/{name}/resume').status == 304

    # deleting a running domain leaves it running, transient; destroying it then ends it
    assert api.post(f'{NODES}/{name}/delete').status == 204
    domain = libvirt_conn.lookupByName(name)
    assert (domain.isPersistent(), domain.state()[0]) == (0, libvirt.VIR_DOMAIN_RUNNING)
    assert api.post(f'{NODES}/{name}/delete').json['code'] == 'invalid_state'
    assert api.post(f'{NODES}/{name}/destroy', query='flag=1').status == 204  # GRACEFUL: SIGTERM
    assert api.get(f'{NODES}/{name}/json').status == 404
    assert api.post(f'{NODES}/{name}/destroy').status == 404


@pytest.fixture(scope='module')
def running(api, libvirt_conn, guest_files, console_dir):
    """One booted guest (2 vCPUs max, 1 online; 256 MiB) shared by the device and resize tests."""
    name = f'{SESSION_PREFIX}shared-1'
    console = guest.Console(console_dir / f'{name}.log')
    xml = guest.domain_xml(name, guest_files, console.path, vcpus=2, current_vcpus=1)
    assert api.post(NODES + '/create', convert.xml_to_dict(xml)).status == 201
    booted(api, console, name)
    yield name, console
    _remove_domain(libvirt_conn, name)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / 'extra.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(path), '16M'], check=True)
    return path


def disk_json(image, dev='vdb'):
    return {'disk': {'@type': 'file', '@device': 'disk',
                     'driver': {'@name': 'qemu', '@type': 'qcow2'},
                     'source': {'@file': str(image)}, 'target': {'@dev': dev, '@bus': 'virtio'}}}


def live_devices(libvirt_conn, name, kind, flags=0):
    devices = convert.xml_to_dict(libvirt_conn.lookupByName(name).XMLDesc(flags))['domain']['devices']
    found = devices.get(kind) or []
    return found if isinstance(found, list) else [found]


def test_disk_hot_plug_and_detach_pending_then_done(api, running, libvirt_conn, image):
    name, console = running
    attached = api.post(f'{NODES}/{name}/devices/attach', disk_json(image), query='flag=1')
    assert attached.status == 201, attached.json
    disk = attached.json['disk']
    # the device as the domain reports it, with what libvirt assigned
    assert disk['source']['@file'] == str(image)
    assert disk['alias']['@name']
    assert disk['address']['@type'] == 'pci'
    console.wait_for(f'{UEVENT_MARKER} add block vd')
    # the counters of the new disk: the guest's kernel read its partition table
    stats = api.get(NODES + '/stats').json
    mine = next(d for d in stats if d['Name'] == name)
    vdb = next(b for b in mine['Block'] if b['Device'] == 'vdb')
    assert vdb['ReadRequests'] > 0 and vdb['ReadBytes'] > 0

    # a paused guest cannot release the disk: libvirt gives up waiting, the API says 202
    assert api.post(f'{NODES}/{name}/suspend').status == 204
    pending = api.post(f'{NODES}/{name}/devices/detach', disk_json(image), query='flag=1')
    assert pending.status == 202, pending.json
    assert any(d['target']['@dev'] == 'vdb' for d in live_devices(libvirt_conn, name, 'disk'))
    assert api.post(f'{NODES}/{name}/resume').status == 204
    console.wait_for(f'{UEVENT_MARKER} remove block vd')
    wait_until(lambda: not any(d['target']['@dev'] == 'vdb'
                               for d in live_devices(libvirt_conn, name, 'disk')),
               20, 'vdb gone from the live XML', console.diagnostics)

    # a running guest releases it at once: 204, and it is gone
    assert api.post(f'{NODES}/{name}/devices/attach', disk_json(image, 'vdc'),
                    query='flag=1').status == 201
    console.wait_for(f'{UEVENT_MARKER} add block vd', count=2)
    done = api.post(f'{NODES}/{name}/devices/detach', disk_json(image, 'vdc'), query='flag=1')
    assert done.status == 204
    assert not any(d['target']['@dev'] == 'vdc' for d in live_devices(libvirt_conn, name, 'disk'))
    console.wait_for(f'{UEVENT_MARKER} remove block vd', count=2)


def test_a_live_disk_attach_on_a_taken_target_is_409(api, running, libvirt_conn, image):
    # QEMU refuses it as VIR_ERR_OPERATION_FAILED, which would be a 500: the daemon checks first.
    name, console = running
    assert api.post(f'{NODES}/{name}/devices/attach', disk_json(image, 'vdd'),
                    query='flag=1').status == 201
    try:
        again = api.post(f'{NODES}/{name}/devices/attach', disk_json(image, 'vdd'), query='flag=1')
        assert (again.status, again.json['code']) == (409, 'already_exists'), again.json
        assert [d['target']['@dev'] for d in live_devices(libvirt_conn, name, 'disk')
                ].count('vdd') == 1
    finally:
        assert api.post(f'{NODES}/{name}/devices/detach', disk_json(image, 'vdd'),
                        query='flag=1').status in (202, 204)
        wait_until(lambda: not any(d['target']['@dev'] == 'vdd'
                                   for d in live_devices(libvirt_conn, name, 'disk')),
                   20, 'vdd gone from the live XML', console.diagnostics)


def test_disk_and_nic_in_the_config_only(api, running, libvirt_conn, image):
    name, console = running
    nic = {'interface': {'@type': 'user', 'mac': {'@address': '52:54:00:0e:4d:02'},
                         'model': {'@type': 'virtio'}}}
    hot_plugs = console.count(UEVENT_MARKER)
    for device, kind in ((disk_json(image, 'vdd'), 'disk'), (nic, 'interface')):
        attached = api.post(f'{NODES}/{name}/devices/attach', device, query='flag=2')
        assert attached.status == 201, attached.json
        assert attached.json[kind]['address']['@type'] == 'pci'  # a slot reserved in the config
        assert len(live_devices(libvirt_conn, name, kind, INACTIVE_XML)) == 1
        assert live_devices(libvirt_conn, name, kind) == []  # the running guest did not get it
        assert api.post(f'{NODES}/{name}/devices/detach', device, query='flag=2').status == 204
        assert live_devices(libvirt_conn, name, kind, INACTIVE_XML) == []
    assert console.count(UEVENT_MARKER) == hot_plugs


def test_nic_hot_plug_update_link_and_detach(api, running, libvirt_conn):
    name, console = running
    # no MAC posted: libvirt assigns one, and the answer says which. An 'ethernet' NIC (a tap
    # device libvirt creates, attached to nothing) rather than 'user': only a tap has counters.
    nic = {'interface': {'@type': 'ethernet', 'model': {'@type': 'virtio'}}}
    attached = api.post(f'{NODES}/{name}/devices/attach', nic, query='flag=1')
    assert attached.status == 201, attached.json
    reported = attached.json['interface']
    mac = reported['mac']['@address']
    assert mac.startswith('52:54:00:')
    assert reported['alias']['@name'] and reported['address']['@type'] == 'pci'
    console.wait_for(f'{UEVENT_MARKER} add net eth')
    mine = next(d for d in api.get(NODES + '/stats').json if d['Name'] == name)
    assert [n['Device'] for n in mine['Network']] == [reported['target']['@dev']]
    assert all(isinstance(n[counter], int) for n in mine['Network']
               for counter in ('RxBytes', 'RxPackets', 'TxBytes', 'TxPackets')), mine['Network']

    down = {'interface': {'@type': 'ethernet', 'mac': {'@address': mac}, 'model': {'@type': 'virtio'},
                          'link': {'@state': 'down'}}}
    updated = api.post(f'{NODES}/{name}/devices/update', down, query='flag=1')
    assert updated.status == 200, updated.json
    assert updated.json['interface']['link']['@state'] == 'down'
    live = [d for d in live_devices(libvirt_conn, name, 'interface') if d['mac']['@address'] == mac]
    assert live[0]['link']['@state'] == 'down'

    detached = api.post(f'{NODES}/{name}/devices/detach',
                        {'interface': {'@type': 'ethernet', 'mac': {'@address': mac}}},
                        query='flag=1')
    assert detached.status == 204, detached.json
    assert live_devices(libvirt_conn, name, 'interface') == []
    console.wait_for(f'{UEVENT_MARKER} remove net eth')


def test_memory_target_live_and_config_and_max_in_config(api, running, libvirt_conn):
    name, console = running
    domain = libvirt_conn.lookupByName(name)
    assert domain.memoryStats()['actual'] == 256 * 1024
    for target in (128 * 1024, 192 * 1024):
        assert api.post(f'{NODES}/{name}/memory/resize', query=f'size={target}&flag=1').status == 204
        wait_until(lambda: domain.memoryStats()['actual'] == target, 20,
                   f'balloon at {target} KiB', console.diagnostics)
    assert api.post(f'{NODES}/{name}/memory/resize', query='size=200000&flag=2').status == 204
    assert api.post(f'{NODES}/{name}/memory/resize',
                    query='size=320000&type=max&flag=2').status == 204
    inactive = convert.xml_to_dict(domain.XMLDesc(INACTIVE_XML))['domain']
    assert inactive['currentMemory']['#text'] == '200000'
    assert inactive['memory']['#text'] == '320000'
    assert domain.maxMemory() == 256 * 1024  # the live maximum did not move
    # the QEMU driver cannot change the maximum of a running domain: 409 with its message
    refused = api.post(f'{NODES}/{name}/memory/resize', query='size=300000&type=max&flag=1')
    assert (refused.status, refused.json['code']) == (409, 'invalid_state')
    assert 'active domain' in refused.json['message']


def test_vcpus_live_up_to_max_config_and_max(api, running, libvirt_conn):
    name, console = running
    domain = libvirt_conn.lookupByName(name)
    assert api.post(f'{NODES}/{name}/vcpu/resize', query='size=2&flag=1').status == 204
    assert domain.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2
    console.wait_for(f'{UEVENT_MARKER} add cpu cpu1 online=1')
    over = api.post(f'{NODES}/{name}/vcpu/resize', query='size=3&flag=1')
    assert over.status == 400 and 'vcpus' in over.json['message']
    assert api.post(f'{NODES}/{name}/vcpu/resize', query='size=3&type=max&flag=2').status == 204
    assert api.post(f'{NODES}/{name}/vcpu/resize', query='size=3&flag=2').status == 204
    assert domain.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM) == 3
    assert domain.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 3
    assert domain.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2


@pytest.mark.parametrize('path, query, status', [
    ('stop', 'flag=16', 501),      # SHUTDOWN_PARAVIRT: a Xen method QEMU lacks
    ('restart', 'flag=8', 501),    # REBOOT_SIGNAL: the QEMU driver has no such reboot
    ('stop', 'flag=2', 501),       # GUEST_AGENT: "argument unsupported": no agent channel
])
def test_what_the_qemu_driver_refuses_is_a_4xx_or_501_with_its_message(
        api, running, libvirt_conn, path, query, status):
    name, console = running
    boots = console.boots()
    refused = api.post(f'{NODES}/{name}/{path}', query=query)
    assert refused.status == status, refused.json
    assert refused.json['message']
    assert state(libvirt_conn, name) == libvirt.VIR_DOMAIN_RUNNING
    assert console.boots() == boots and POWEROFF_MARKER not in console.text()


def test_a_start_flag_the_qemu_driver_lacks_is_501(api, libvirt_conn, guest_name, guest_xml):
    name = guest_name('startflag')
    create(api, guest_xml, name)
    refused = api.post(f'{NODES}/{name}/start', query='flag=16')  # START_VALIDATE
    assert (refused.status, refused.json['code']) == (501, 'not_supported'), refused.json
    assert 'flags' in refused.json['message']
    assert state(libvirt_conn, name) == libvirt.VIR_DOMAIN_SHUTOFF


def test_vcpu_hot_unplug_that_times_out_is_a_truthful_error(api, running, libvirt_conn):
    """Last: the timed-out unplug leaves the shared guest's vCPUs as libvirt last saw them."""
    name, console = running
    domain = libvirt_conn.lookupByName(name)
    assert domain.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2
    refused = api.post(f'{NODES}/{name}/vcpu/resize', query='size=1&flag=1')
    assert (refused.status, refused.json['code']) == (504, 'hypervisor_timeout'), refused.json
    assert 'timed out' in refused.json['message']
    assert domain.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2  # libvirt's view did not move
