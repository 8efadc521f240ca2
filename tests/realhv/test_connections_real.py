"""One daemon, several real connections: a libvirtd's QEMU driver through its unix socket
(/libvirt/qemu/), the same libvirtd through libvirt's remote protocol over TCP
(/libvirt/remote/, qemu+tcp://) and over TLS with certificates made at test time (/libvirt/tls/,
qemu+tls://, as a management host reaches a dom0), and a test-driver node beside them
(/libvirt/test/). The real connections see the same guest; killing libvirtd costs each of them
a 503 until it is back, and the test node never notices.

libvirtd is killed here, so it is a PRIVATE one (`libvirtd.PrivateLibvirtd`), listening on
127.0.0.1 (TCP without authentication: for this test only).
"""

import http.client
import json
import os
import socket
import threading
import time

import libvirt
import pytest

from conftest import Client, node_xml
from xend_rest.api.app import make_app
from xend_rest.hypervisor.libvirt_connection import SharedConnection
from xend_rest.server.serving import Server

from . import guest
from .conftest import SESSION_PREFIX
from .guest import wait_until
from .libvirtd import PrivateLibvirtd

FAST_POOL = {'keepalive_interval': 1, 'keepalive_count': 2, 'open_timeout': 3}
REAL = ('qemu', 'remote', 'tls')


@pytest.fixture(scope='module')
def listening_libvirtd(libvirtd, tmp_path_factory):
    """A private libvirtd that also listens on TCP (needs what `libvirtd` needs, and root)."""
    if os.geteuid() != 0:
        pytest.skip('only root can run a private libvirtd')
    daemon = PrivateLibvirtd(tmp_path_factory.mktemp('listening-libvirtd'),
                             tcp_port=free_port(), tls_port=free_port())
    daemon.start()
    yield daemon
    daemon.close()


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@pytest.fixture
def app(listening_libvirtd, tmp_path):
    if listening_libvirtd.process.poll() is not None:
        listening_libvirtd.start()  # a failed test left it dead
    node = tmp_path / 'node.xml'
    node.write_text(node_xml())
    app = make_app(connections={
        'qemu': SharedConnection(listening_libvirtd.uri, **FAST_POOL),
        'remote': SharedConnection(listening_libvirtd.tcp_uri, **FAST_POOL),
        'tls': SharedConnection(listening_libvirtd.tls_uri, **FAST_POOL),
        'test': 'test://%s' % node})
    yield app
    app.close()


@pytest.fixture
def defined_guest(listening_libvirtd, guest_files, console_dir):
    """`make(stem) -> name`: a guest defined on the private libvirtd (not started), removed after."""
    names = []

    def make(stem):
        name = f'{SESSION_PREFIX}conn-{stem}-{len(names) + 1}'
        conn = libvirt.open(listening_libvirtd.uri)
        conn.defineXML(guest.domain_xml(name, guest_files, console_dir / f'{name}.log'))
        conn.close()
        names.append(name)
        return name

    yield make
    listening_libvirtd.remove_domains(names)


def listed(api, connection):
    response = api.get(f'/libvirt/{connection}/nodes/json', query='all=1')
    assert response.status == 200, response.json
    return {domain['domain']['name'] for domain in response.json}


def events(api, connection, name):
    response = api.get(f'/libvirt/{connection}/events', query=f'since=0&domain={name}&timeout=0.5')
    assert response.status == 200
    return [json.loads(line)['Event'] for line in response.body.splitlines() if line.strip()]


def test_the_unix_and_the_remote_connections_see_the_same_guest(app, defined_guest):
    api = Client(app)
    name = defined_guest('same')
    for connection in REAL:
        assert name in listed(api, connection)
    assert name not in listed(api, 'test')
    uuids = {api.get(f'/libvirt/{c}/nodes/{name}/json').json['domain']['uuid'] for c in REAL}
    assert len(uuids) == 1

    # What one connection does, the other sees: state, and the event.
    assert api.post(f'/libvirt/remote/nodes/{name}/start').status == 204
    assert api.get(f'/libvirt/qemu/nodes/{name}/stats').json['State'] == 'running'
    assert api.get(f'/libvirt/tls/nodes/{name}/stats').json['State'] == 'running'
    assert api.post(f'/libvirt/tls/nodes/{name}/destroy').status == 204
    assert api.get(f'/libvirt/remote/nodes/{name}/stats').json['State'] == 'shutoff'
    # Each connection gets libvirtd's events itself (QEMU's: resumed and started, then
    # shutdown and stopped), both the same ones.
    wait_until(lambda: all(events(api, c, name)[-1:] == ['stopped'] for c in REAL), 10,
               'the stopped event on both connections')
    seen = [events(api, connection, name) for connection in REAL]
    assert seen[0] == seen[1] == seen[2] and 'started' in seen[0], seen

    connections = {item['Name']: item for item in api.get('/libvirt/json').json}
    assert connections['remote']['Uri'].startswith('qemu+tcp://127.0.0.1:')
    assert connections['tls']['Uri'].startswith('qemu+tls://127.0.0.1:')
    for connection in REAL:
        assert connections[connection]['Connected'] and connections[connection]['Driver'] == 'QEMU'
    assert connections['qemu']['Hostname'] == connections['remote']['Hostname'] == \
        connections['tls']['Hostname']
    assert connections['test']['Driver'] == 'TEST'


class Watcher:
    """One client thread per connection, each GETting its domain list in a loop through the
    server: (time, status) of every answer."""

    def __init__(self, server, connections):
        self.address = server.addresses[0][:2]
        self.answers = {connection: [] for connection in connections}
        self.failures = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,)) for c in connections]
        for thread in self.threads:
            thread.start()

    def _run(self, connection):
        while not self.stop.is_set():
            try:
                conn = http.client.HTTPConnection(*self.address, timeout=60)
                conn.request('GET', f'/libvirt/{connection}/nodes/json')
                response = conn.getresponse()
                response.read()
                conn.close()
            except Exception as err:  # a hang or a dropped connection: asserted on
                self.failures.append((connection, err))
                return
            self.answers[connection].append((time.monotonic(), response.status))
            time.sleep(0.05)

    def saw(self, connection, statuses, since, count=3):
        return sum(status in statuses for at, status in self.answers[connection]
                   if at >= since) >= count

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def test_killing_libvirtd_costs_each_real_connection_a_503_and_the_test_node_nothing(
        app, listening_libvirtd, defined_guest, capfd):
    name = defined_guest('kill')
    server = Server(app, ['127.0.0.1:0'], workers=6, on_shutdown=app.end_streams)
    server.start()
    watcher = Watcher(server, REAL + ('test',))
    try:
        start = time.monotonic()
        wait_until(lambda: all(watcher.saw(c, {200}, start) for c in watcher.answers), 30,
                   'answers before the kill')
        api = Client(app)
        before = {item['Name']: item for item in api.get('/libvirt/json').json}

        listening_libvirtd.kill()
        killed = time.monotonic()
        wait_until(lambda: all(watcher.saw(c, {503, 504}, killed) for c in REAL), 30,
                   '503s from every real connection while libvirtd is dead')
        began = time.monotonic()
        during = {item['Name']: item for item in api.get('/libvirt/json').json}
        assert time.monotonic() - began < 3  # one second per dead connection at most, in parallel
        assert {c: during[c]['Connected'] for c in during} == {
            'qemu': False, 'remote': False, 'tls': False, 'test': True}
        assert 'Connection refused' in during['remote']['Error']
        assert during['remote']['Hostname'] == before['remote']['Hostname']  # the last known
        metrics = api.get('/metrics').body.decode()
        assert 'xend_libvirt_up{connection="test"} 1' in metrics
        assert 'xend_libvirt_up{connection="remote"} 0' in metrics

        listening_libvirtd.start()
        back = time.monotonic()
        wait_until(lambda: all(watcher.saw(c, {200}, back) for c in REAL), 30,
                   'answers from every real connection after libvirtd is back')
    finally:
        watcher.finish()
        server.shutdown(grace=2)

    assert watcher.failures == []
    test_statuses = [status for _at, status in watcher.answers['test']]
    assert set(test_statuses) == {200}
    # The test node kept answering throughout the outage, not only before and after it.
    assert sum(killed <= at <= back for at, _status in watcher.answers['test']) >= 3
    for connection in REAL:
        statuses = {status for _at, status in watcher.answers[connection]}
        # 504: the restarted libvirtd accepts connections before its drivers are up
        assert statuses <= {200, 503, 504}
        assert app.hypervisors[connection].connection.connects == 2  # one reconnect each
        assert name in listed(Client(app), connection)
    assert app.hypervisors['test'].connection.connects == 1
    assert capfd.readouterr().err == ''
