"""Live migration between two hosts on this machine, through the daemon holding both connections.

Two PRIVATE libvirtds (`libvirtd.PrivateLibvirtd`), each in a mount and a network namespace of
its own with a host UUID of its own, joined by a veth pair (10.77.0.1 and 10.77.0.2): two hosts
as libvirt sees them. The daemon reaches each through its unix socket; the source's libvirtd
reaches the destination's over TCP in the namespaces (migration-uri, peer to peer), and QEMU
sends the guest's memory to the destination's address (migration-address).

The guest's own evidence: a counter it prints on its serial console (a file both QEMUs append
to) keeps counting across the move, and it never boots again.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import Client
from consoles_support import Daemon
from xend_rest.api.app import make_app
from xend_rest.hypervisor.libvirt_connection import SharedConnection

from . import guest
from .guest import READY_MARKER, wait_until
from .libvirtd import PrivateLibvirtd, join

PORT = 16509
ROOT = Path(__file__).resolve().parents[2]
COUNT = 'XEND-COUNT'
# Typed on the guest's console: a counter printed five times a second, in the background.
COUNTER = (f'i=0; while true; do i=$((i+1)); echo "{COUNT} $i" > /dev/console; sleep 0.2; '
           'done &\n')


@pytest.fixture(scope='module')
def hosts(libvirtd, tmp_path_factory):
    """(source, destination): two private libvirtds on two linked network namespaces."""
    if os.geteuid() != 0:
        pytest.skip('only root can run private libvirtds in namespaces of their own')
    daemons = [PrivateLibvirtd(tmp_path_factory.mktemp(f'host-{n}'), tcp_port=PORT, network=True,
                               address=f'10.77.0.{n}', host_uuid=str(uuid.uuid4()))
               for n in (1, 2)]
    try:
        for daemon in daemons:
            daemon.start_namespaces()
        join(*daemons)
        for daemon in daemons:
            daemon.start()
        yield daemons
    finally:
        for daemon in daemons:
            daemon.close()


@pytest.fixture
def api(hosts):
    source, destination = hosts
    app = make_app(connections={
        'src': SharedConnection(source.uri),
        'dst': SharedConnection(destination.uri, migration_uri=destination.tcp_uri,
                                migration_address=f'tcp://{destination.address}')})
    yield Client(app)
    app.close()


def boot_counting(hosts, guest_files, directory, stem='migrate'):
    """A guest booted on the source, counting on its console: (name, console)."""
    source, destination = hosts
    name = f'xrt-{stem}-{uuid.uuid4().hex[:6]}'
    console_path = directory / f'{name}.log'
    conn = libvirt.open(source.uri)
    try:
        dom = conn.defineXML(guest.domain_xml(name, guest_files, console_path, memory_mib=192))
    except libvirt.libvirtError:
        conn.close()
        raise
    try:
        dom.create()
        console = guest.Console(console_path, lambda: guest_log(source, destination))
        console.wait_for(READY_MARKER, timeout=120)
        wait_until(lambda: guest.PROMPT in console.text(), 30, 'the shell prompt')
        stream = conn.newStream(0)
        dom.openConsole(None, stream, 0)
        stream.send(COUNTER.encode())
        wait_until(lambda: counts(console) and counts(console)[-1] >= 3, 30, 'the counter',
                   console.text)
        stream.abort()
    except BaseException:
        remove(hosts, name)  # no test will: it never got the guest
        raise
    finally:
        conn.close()
    return name, console


def remove(hosts, name):
    for daemon in hosts:
        try:
            daemon.remove_domains([name])
        except libvirt.libvirtError:
            pass  # not on that host


@pytest.fixture
def running_guest(hosts, guest_files, tmp_path):
    """A guest running on the source, counting on its console: (name, console)."""
    name, console = boot_counting(hosts, guest_files, tmp_path)
    yield name, console
    remove(hosts, name)


def guest_log(*daemons):
    return '\n'.join(f'--- {daemon.log} ---\n{daemon.log.read_text()[-3000:]}'
                     for daemon in daemons if daemon.log.exists())


def counts(console):
    return [int(number) for number in re.findall(rf'^{COUNT} (\d+)', console.text(), re.M)]


def where(hosts, name):
    """{'src': state, 'dst': state} of the domain, as each libvirtd reports it (None: absent)."""
    found = {}
    for label, daemon in zip(('src', 'dst'), hosts):
        conn = libvirt.open(daemon.uri)
        try:
            found[label] = conn.lookupByName(name).state()[0]
        except libvirt.libvirtError:
            found[label] = None
        conn.close()
    return found


def test_a_running_guest_migrates_live_and_keeps_counting(api, hosts, running_guest):
    """...and a console open on it through the daemon ends saying why."""
    name, console = running_guest
    assert api.app.hypervisors['src'].connection.get().getHostname()  # both open
    server = Daemon(api.app)
    with connect(server.url(f'/libvirt/src/nodes/{name}/console')) as session:
        before = counts(console)[-1]
        started = time.monotonic()
        response = api.post(f'/libvirt/src/nodes/{name}/migrate', query='to=dst&downtime=300')
        accepted = time.monotonic() - started  # a fresh libvirtd first probes QEMU: seconds
        assert response.status == 202, response.body
        location = response.headers['Location']
        assert response.json['Kind'] == 'migrate' and response.json['State'] == 'running'
        timeline = []  # (seconds since the request, state, data processed), every half second
        while True:
            operation = api.get(location, query='wait=0.5').json
            progress = operation['Progress'] or {}
            timeline.append((round(time.monotonic() - started, 1), operation['State'],
                             progress.get('DataProcessed')))
            if operation['State'] != 'running' or time.monotonic() - started > 120:
                break
        took = time.monotonic() - started
        assert operation['State'] == 'succeeded', operation
        assert where(hosts, name) == {'src': libvirt.VIR_DOMAIN_SHUTOFF,  # its definition stays
                                      'dst': libvirt.VIR_DOMAIN_RUNNING}
        wait_until(lambda: counts(console)[-1] >= before + 10, 30, 'the counter counting on')
        numbers = counts(console)
        assert numbers == sorted(set(numbers))  # each once, in order: never started over
        assert console.boots() == 1  # no reboot
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                session.recv(timeout=30)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            1000, 'the domain migrated to another host')
    server.close()
    print(f'202 after {accepted:.1f} s, migrated in {took:.1f} s; counter {before} before, '
          f'{numbers[-1]} after; timeline {timeline}')


def test_a_bandwidth_limited_migration_shows_progress_and_is_cancelled(api, hosts, running_guest):
    name, console = running_guest
    response = api.post(f'/libvirt/src/nodes/{name}/migrate', query='to=dst&bandwidth=1')
    assert response.status == 202, response.body
    location = response.headers['Location']
    samples = []

    def progressing():
        operation = api.get(location).json
        assert operation['State'] == 'running', operation
        progress = operation['Progress']
        if progress and progress['DataProcessed']:
            samples.append(progress)
        return len(samples) >= 2 and samples[-1]['DataProcessed'] > samples[0]['DataProcessed']
    wait_until(progressing, 60, 'progress reported twice, and growing')
    assert samples[-1]['DataTotal'] > 0 and samples[-1]['DataRemaining'] > 0
    # meanwhile the domain is the operation's: another change waits for it
    refused = api.post(f'/libvirt/src/nodes/{name}/suspend')
    assert refused.status == 409 and refused.json['code'] == 'operation_in_progress'
    cancelled = api.post(location.replace('/json', '/cancel'))
    assert cancelled.status == 202, cancelled.body
    operation = api.get(location, query='wait=60').json
    assert operation['State'] == 'cancelled', operation
    assert operation['Error']['code']
    assert where(hosts, name) == {'src': libvirt.VIR_DOMAIN_RUNNING, 'dst': None}
    before = counts(console)[-1]
    wait_until(lambda: counts(console)[-1] >= before + 5, 30, 'the counter counting on')
    assert console.boots() == 1
    print(f'progress samples: {samples}')


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def call(port, method, path):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    conn.request(method, path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    is_json = response.getheader('Content-Type', '').startswith('application/json')
    return response.status, json.loads(body) if is_json else body


def test_a_migration_outlives_the_daemon_that_asked_for_it(hosts, running_guest, tmp_path):
    """Peer to peer, the source's libvirtd drives the migration: SIGKILL the daemon (a process
    of its own, configured as in production) in the middle, and the guest still arrives; the
    operation is gone with the daemon (a new one answers 404 for its id)."""
    name, console = running_guest
    source, destination = hosts
    port = free_port()
    config = tmp_path / 'xend-rest.conf'
    config.write_text(f'[xend-rest]\nlisten = 127.0.0.1:{port}\nstate-dir = {tmp_path}\n'
                      f'[connection src]\nuri = {source.uri}\n'
                      f'[connection dst]\nuri = {destination.uri}\n'
                      f'migration-uri = {destination.tcp_uri}\n'
                      f'migration-address = tcp://{destination.address}\n')

    started = []

    def daemon():
        process = subprocess.Popen([sys.executable, str(ROOT / 'xend_rest.py'), '--config',
                                    str(config), '--log-level', 'WARNING'], cwd=ROOT,
                                   stderr=subprocess.DEVNULL,
                                   env={k: v for k, v in os.environ.items()
                                        if k != 'XEND_REST_URI'})
        started.append(process)
        wait_until(lambda: _listening(port), 30, 'the daemon listening')
        return process

    try:
        _outlived(hosts, name, console, port, daemon)
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def _outlived(hosts, name, console, port, daemon):
    first = daemon()
    before = counts(console)[-1]
    # bounded, so that it is still under way when the daemon dies
    status, operation = call(port, 'POST', f'/libvirt/src/nodes/{name}/migrate?to=dst&'
                                           'bandwidth=20')
    assert status == 202, operation
    location = f"/libvirt/src/operations/{operation['Id']}/json"
    wait_until(lambda: (call(port, 'GET', location)[1]['Progress'] or {}).get('DataProcessed'),
               60, 'the migration under way')
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = where(hosts, name)
    assert killed['dst'] != libvirt.VIR_DOMAIN_RUNNING  # still migrating
    wait_until(lambda: where(hosts, name)['dst'] == libvirt.VIR_DOMAIN_RUNNING, 120,
               'the guest running on the destination')
    assert where(hosts, name)['src'] == libvirt.VIR_DOMAIN_SHUTOFF
    wait_until(lambda: counts(console)[-1] >= before + 10, 30, 'the counter counting on')
    assert console.boots() == 1
    daemon()
    status, answer = call(port, 'GET', location)
    assert status == 404 and answer['code'] == 'no_such_operation'
    status, inspected = call(port, 'GET', f'/libvirt/dst/nodes/{name}/json')
    assert status == 200 and inspected['domain']['name'] == name


def _listening(port):
    try:
        return call(port, 'GET', '/_ping')[0] == 200
    except OSError:
        return False


def test_an_evacuation_moves_every_running_guest(api, hosts, guest_files, tmp_path):
    """Two guests on the source; one evacuation; both arrive, counting on, moved for good
    (defined there, undefined here: a reboot of the source starts no second copy; the autostart
    mark goes with them); the source stays in maintenance until it is lifted."""
    names = []
    try:
        for stem in ('evacuee-a', 'evacuee-b'):
            names.append(boot_counting(hosts, guest_files, tmp_path, stem))
        assert api.post(f'/libvirt/src/nodes/{names[0][0]}/autostart',
                        query='enable=1').status == 204
        before = {name: counts(console)[-1] for name, console in names}
        started = time.monotonic()
        response = api.post('/libvirt/src/evacuate', query='to=dst')
        assert response.status == 202, response.body
        done = api.get(response.headers['Location'], query='wait=300').json
        took = time.monotonic() - started
        assert done['State'] == 'succeeded', done
        assert sorted((g['Name'], g['To'], g['State']) for g in done['Guests']) == sorted(
            (name, 'dst', 'succeeded') for name, _console in names)
        conn = libvirt.open(hosts[1].uri)
        try:
            for (name, console), autostart in zip(names, (1, 0)):
                assert where(hosts, name) == {'src': None, 'dst': libvirt.VIR_DOMAIN_RUNNING}
                arrived = conn.lookupByName(name)
                assert (arrived.isPersistent(), arrived.autostart()) == (1, autostart), name
                wait_until(lambda: counts(console)[-1] >= before[name] + 10, 30, 'counting on')
                numbers = counts(console)
                assert numbers == sorted(set(numbers)) and console.boots() == 1
        finally:
            conn.close()
        assert api.get('/libvirt/src/maintenance/json').json['Maintenance'] is True
        assert api.post('/libvirt/src/maintenance/lift').status == 204
        print(f'evacuated {len(names)} guests in {took:.1f} s: {done["Guests"]}')
    finally:
        for name, _console in names:
            remove(hosts, name)


def test_a_shut_off_domain_migrates_offline_its_definition_moving(api, hosts, guest_files,
                                                                   tmp_path):
    """Offline: defined on the destination, undefined on the source (never on both)."""
    source, _destination = hosts
    name = f'xrt-offline-{uuid.uuid4().hex[:6]}'
    conn = libvirt.open(source.uri)
    try:
        conn.defineXML(guest.domain_xml(name, guest_files, tmp_path / f'{name}.log',
                                        memory_mib=192))
    finally:
        conn.close()
    try:
        response = api.post(f'/libvirt/src/nodes/{name}/migrate', query='to=dst')
        assert response.status == 202, response.body
        done = api.get(response.headers['Location'], query='wait=120').json
        assert done['State'] == 'succeeded', done
        assert where(hosts, name) == {'src': None, 'dst': libvirt.VIR_DOMAIN_SHUTOFF}
    finally:
        remove(hosts, name)
