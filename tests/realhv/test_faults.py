"""The daemon survives libvirtd faults: killed (SIGKILL) or frozen (SIGSTOP) under load.

These tests kill and stop libvirtd, so they run a PRIVATE one (`libvirtd.PrivateLibvirtd`: its
own socket, and its QEMU driver's state on tmpfs in a mount namespace of its own); the system
libvirtd that other sessions share is never touched.
"""

import collections
import gc
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import libvirt
import pytest

from conftest import Client
from xend_rest.app import make_app
from xend_rest.connection import SharedConnection
from xend_rest.server import Server

from . import guest
from .conftest import SESSION_PREFIX
from .guest import READY_MARKER, wait_until
from .libvirtd import PrivateLibvirtd, tail

NODES = '/libvirt/qemu/nodes'
# A frozen libvirtd is noticed after about 1 s x (2 + 1) of silence, an opening one after 3 s.
FAST_POOL = {'keepalive_interval': 1, 'keepalive_count': 2, 'open_timeout': 3}


@pytest.fixture(scope='module')
def private_libvirtd(libvirtd, tmp_path_factory):
    """Needs what `libvirtd` needs (packages, root), plus mount namespaces."""
    if os.geteuid() != 0:
        pytest.skip('only root can run a private libvirtd')
    daemon = PrivateLibvirtd(tmp_path_factory.mktemp('private-libvirtd'))
    daemon.start()
    yield daemon
    daemon.close()


@pytest.fixture
def app(private_libvirtd):
    if private_libvirtd.process.poll() is not None:
        private_libvirtd.start()  # a failed test left it dead
    private_libvirtd.signal(signal.SIGCONT)
    app = make_app(connections={'qemu': SharedConnection(private_libvirtd.uri, **FAST_POOL)})
    yield app
    app.close()


@pytest.fixture
def guest_on_private(private_libvirtd, guest_files, console_dir):
    """`make(stem) -> (name, console)`: a guest defined on the private libvirtd (not started)."""
    conn = libvirt.open(private_libvirtd.uri)
    names = []

    def make(stem):
        name = f'{SESSION_PREFIX}fault-{stem}-{len(names) + 1}'
        console = guest.Console(console_dir / f'{name}.log')
        conn.defineXML(guest.domain_xml(name, guest_files, console.path))
        names.append(name)
        return name, console

    yield make
    conn.close()
    private_libvirtd.remove_domains(names)


def request(server, method, path, timeout=60):
    """(status, headers, JSON body) through the server's TCP socket, within `timeout` s."""
    host, port = server.addresses[0][:2]
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=b'', headers={'Content-Length': '0'})
        response = conn.getresponse()
        body = response.read()
        return response.status, dict(response.getheaders()), json.loads(body) if body else None
    finally:
        conn.close()


def in_libvirt(thread):
    """Whether `thread` is inside a libvirt-python call now (waiting on libvirtd's answer)."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if os.path.basename(frame.f_code.co_filename) == 'libvirt.py':
            return True
        frame = frame.f_back
    return False


class Load:
    """Client threads sending GETs through the server in a loop, recording every answer."""

    def __init__(self, server, paths, clients=4):
        self.server, self.paths = server, paths
        self.answers = [[] for _ in range(clients)]  # per client: (status, headers, body)
        self.failures = []  # exceptions: a hang (socket timeout) or a dropped connection
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self, index):
        while not self.stop.is_set():
            try:
                for path in self.paths:
                    self.answers[index].append(request(self.server, 'GET', path))
            except Exception as err:  # recorded, asserted on by the test
                self.failures.append(err)
                return

    def each_saw(self, count, since, statuses):
        """Whether every client got `count` answers in `statuses` after its answer number since[i]."""
        return all(sum(a[0] in statuses for a in answers[start:]) >= count
                   for answers, start in zip(self.answers, since))

    def marks(self):
        return [len(answers) for answers in self.answers]

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        return [answer for answers in self.answers for answer in answers]


@pytest.fixture
def server(app):
    running = Server(app, ['127.0.0.1:0'], workers=4, on_shutdown=app.end_streams)
    running.start()
    yield running
    running.shutdown(grace=2)


def _open_sockets():
    """How many sockets this process holds: each open remote libvirt connection holds one."""
    fds = '/proc/self/fd'
    return sum(1 for fd in os.listdir(fds) if _link(os.path.join(fds, fd)).startswith('socket:'))


def _link(path):
    try:
        return os.readlink(path)
    except OSError:  # the fd listing itself, closed meanwhile
        return ''


def test_reconnects_and_close_leave_no_libvirt_connection_open(app):
    client = Client(app)
    gc.collect()  # sockets earlier tests left for the collector must not count, nor close mid-way
    before = _open_sockets()
    for _ in range(3):
        assert client.get(NODES + '/json').status == 200
        app.hypervisor.connection.discard(app.hypervisor.connection.get())  # as after a broken call: the next request reconnects
    assert client.get(NODES + '/json').status == 200
    assert app.hypervisor.connection.connects == 4
    app.close()
    # A discarded connection is closed by libvirt-python once nothing refers to it (its callback
    # bookkeeping makes reference cycles: the cyclic collector finds them), and libvirt frees the
    # socket from its event loop: wait for both, bounded.
    wait_until(lambda: gc.collect() >= 0 and _open_sockets() <= before, 10,
               'the sockets of closed connections closed')


def test_libvirtd_killed_under_load_is_503_then_recovers_without_a_restart(
        private_libvirtd, app, server, guest_on_private, capfd):
    name, _console = guest_on_private('kill')
    load = Load(server, [f'{NODES}/json?all=1', f'{NODES}/{name}/json'])
    wait_until(lambda: load.each_saw(3, [0] * 4, {200}), 30, 'answers before the kill')
    threads_before = threading.active_count()

    private_libvirtd.kill()
    killed = load.marks()
    wait_until(lambda: load.each_saw(3, killed, {503}), 30, '503s while libvirtd is dead')
    private_libvirtd.start()
    back = load.marks()
    wait_until(lambda: load.each_saw(3, back, {200}), 30, 'answers after libvirtd is back')
    answers = load.finish()

    assert load.failures == []
    # 504: the restarted libvirtd accepts connections before its drivers are up, and this
    # pool gives an opening connection 3 s
    assert {status for status, _headers, _body in answers} <= {200, 503, 504}
    for status, headers, body in answers:
        if status != 200:
            assert headers['Retry-After'].isdigit()
            assert (status, body['code']) in (
                (503, 'hypervisor_unavailable'), (504, 'hypervisor_timeout')), body
    assert app.hypervisor.connection.connects == 2  # one reconnect, the same daemon
    assert threading.active_count() <= threads_before
    assert not [t for t in threading.enumerate() if t.name == 'libvirt-open']
    assert capfd.readouterr().err == ''


def test_a_start_cut_mid_call_is_outcome_unknown_and_never_applied_twice(
        private_libvirtd, app, guest_on_private, capfd):
    name, console = guest_on_private('cut')
    api = Client(app)
    assert api.get(f'{NODES}/{name}/json').status == 200  # connected
    # Frozen, libvirtd takes the start request off its socket only after SIGCONT, if ever:
    # the daemon cannot know, and must say so.
    private_libvirtd.signal(signal.SIGSTOP)
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(r=api.post(f'{NODES}/{name}/start')))
    thread.start()
    thread.join(30)
    cut = answer['r']
    assert cut.status == 504, cut.json
    assert cut.json['code'] == 'outcome_unknown'
    assert 'unknown' in cut.json['message'] and 'Inspect' in cut.json['message']

    private_libvirtd.resume()
    # what a client does next: read the domain again, and start it only if it is not running
    inspected = api.get(f'{NODES}/{name}/json')
    assert inspected.status == 200
    retried = api.post(f'{NODES}/{name}/start')
    assert retried.status in (204, 304)
    console.wait_for(READY_MARKER)
    assert libvirt.open(private_libvirtd.uri).lookupByName(name).isActive()
    assert console.boots() == 1  # the start ran once, whichever of the two it was

    # killed while a start waits in its socket: 503, again with the outcome unknown
    assert api.post(f'{NODES}/{name}/destroy').status == 204
    private_libvirtd.signal(signal.SIGSTOP)
    thread = threading.Thread(target=lambda: answer.update(r=api.post(f'{NODES}/{name}/start')))
    thread.start()
    wait_until(lambda: in_libvirt(thread), 10, 'the start request inside a libvirt call')
    private_libvirtd.kill()
    thread.join(30)
    assert (answer['r'].status, answer['r'].json['code']) == (503, 'outcome_unknown')
    assert answer['r'].headers['Retry-After'].isdigit()
    private_libvirtd.start()
    assert api.get(f'{NODES}/{name}/json').status == 200
    assert console.boots() == 1
    assert capfd.readouterr().err == ''


def test_a_frozen_libvirtd_is_504_in_bounded_time_then_recovers(private_libvirtd, app, capfd):
    api = Client(app)
    assert api.get(f'{NODES}/json').status == 200
    private_libvirtd.signal(signal.SIGSTOP)
    try:
        # an open connection: libvirt's keepalive gives up on it
        frozen = api.get(f'{NODES}/json')
        assert (frozen.status, frozen.json['code']) == (504, 'hypervisor_timeout'), frozen.json
        assert 'keepalive' in frozen.json['message']
        # no connection left: opening one hangs in libvirt.open(), bounded by open_timeout;
        # however many requests wait, one thread opens
        answers = []
        clients = [threading.Thread(target=lambda: answers.append(api.get(f'{NODES}/json')))
                   for _ in range(3)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(30)
        assert [(a.status, a.json['code']) for a in answers] == [(504, 'hypervisor_timeout')] * 3
        assert 'connecting' in answers[0].json['message']
        assert len([t for t in threading.enumerate() if t.name == 'libvirt-open']) == 1
    finally:
        private_libvirtd.resume()
    wait_until(lambda: api.get(f'{NODES}/json').status == 200, 30, 'an answer after SIGCONT')
    assert not [t for t in threading.enumerate() if t.name == 'libvirt-open']
    assert capfd.readouterr().err == ''


def _qemu_of(name):
    """The pid of the QEMU process running domain `name`."""
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                if f'guest={name},'.encode() in f.read():
                    return int(pid)
        except OSError:
            pass  # gone meanwhile
    raise AssertionError(f'no QEMU process runs {name}')


def _inside(function):
    """Whether some thread is inside libvirt-python's `function` now."""
    for frame in sys._current_frames().values():
        while frame is not None:
            if (frame.f_code.co_name == function
                    and os.path.basename(frame.f_code.co_filename) == 'libvirt.py'):
                return True
            frame = frame.f_back
    return False


def test_a_call_hung_on_one_guest_holds_up_no_other_request(
        private_libvirtd, app, server, guest_on_private):
    """Calls on one libvirt connection are made one at a time (connection.Gated): one that libvirt
    cannot answer (statistics of a guest whose QEMU is stopped, as a hung device model or libxl
    call would be) holds its connection, and the other requests get another one."""
    hung, _console = guest_on_private('hung')
    other, _console = guest_on_private('other')
    assert request(server, 'POST', f'{NODES}/{hung}/start')[0] == 204
    # the other connections to libvirtd, opened one after another once the first is
    pool = app.hypervisor.connection
    wait_until(lambda: len(pool._more) == pool.lanes - 1, 10, 'every lane open')
    qemu = _qemu_of(hung)
    os.kill(qemu, signal.SIGSTOP)
    stats = []
    stuck = threading.Thread(
        target=lambda: stats.append(request(server, 'GET', f'{NODES}/{hung}/stats')))
    try:
        stuck.start()
        wait_until(lambda: _inside('domainListGetStats'), 10, 'statistics waiting on QEMU')
        status, _headers, body = request(server, 'GET', f'{NODES}/{other}/json', timeout=10)
        assert status == 200, body
        assert stuck.is_alive()  # still waiting on QEMU: the answer did not wait for it
    finally:
        os.kill(qemu, signal.SIGCONT)
        stuck.join(60)
    assert stats[0][0] == 200  # and the hung one is answered once QEMU runs again


# A storm: libvirtd killed and restarted, then frozen past the keepalive, round after round,
# under clients listing and inspecting. libvirt 9.0's client crashed the daemon (SIGSEGV) when
# the keepalive closed a connection that several requests were waiting on (connection.Gated).
STORM_ROUNDS = 20
STORM_FREEZE = 4  # seconds stopped: past the keepalive's 1 s x (2 + 1)
STORM_CLIENTS = 8
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _get(port, path):
    """The status of a GET to the daemon on `port` (no keep-alive); never waits over 60 s."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    try:
        conn.request('GET', path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.fixture
def daemon_process(private_libvirtd, tmp_path):
    """`start() -> port`: the daemon as a process of its own (a crash must not take pytest with
    it), on the private libvirtd, keepalive 1 s x 2; faulthandler's stacks in `.output()`."""
    started = []

    def start():
        port = _free_port()
        log = open(tmp_path / 'daemon.log', 'wb')
        process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, 'xend_rest.py'), '--connect',
             f'qemu={private_libvirtd.uri}', '--listen', f'127.0.0.1:{port}',
             '--keepalive-interval', '1', '--keepalive-count', '2', '--open-timeout', '3',
             '--log-level', 'WARNING'],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env={**os.environ, 'PYTHONFAULTHANDLER': '1'},
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
        process.output = lambda: tail(tmp_path / 'daemon.log', 60)
        started.append(process)
        wait_until(lambda: process.poll() is not None or _answers(port, '/_ping') == 200, 30,
                   'the daemon answering', process.output)
        assert process.poll() is None, process.output()
        return process, port

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            process.wait(15)


def _answers(port, path):
    try:
        return _get(port, path)
    except OSError:
        return None


def test_the_daemon_outlives_libvirtd_killed_and_frozen_under_load(
        private_libvirtd, guest_on_private, daemon_process):
    names = [guest_on_private(f'storm{i}')[0] for i in range(3)]  # defined, not running
    process, port = daemon_process()
    paths = [f'{NODES}/json?all=1', *(f'{NODES}/{name}/json' for name in names), '/_ping']
    seen, failures = [], []  # answers' statuses; what went wrong instead
    stop = threading.Event()

    def client(index):
        turn = index
        while not stop.is_set():
            path = paths[turn % len(paths)]
            turn += 1
            try:
                seen.append(_get(port, path))
            except OSError as err:  # refused, reset: the daemon died or dropped a request
                failures.append(f'{path}: {err!r}')
                return

    clients = [threading.Thread(target=client, args=(i,)) for i in range(STORM_CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        for round_number in range(STORM_ROUNDS):
            wait_until(lambda: _answers(port, paths[0]) == 200, 30,
                       f'a 200 before round {round_number}', process.output)
            private_libvirtd.kill()
            private_libvirtd.start()
            private_libvirtd.signal(signal.SIGSTOP)
            time.sleep(STORM_FREEZE)
            private_libvirtd.resume()
            assert process.poll() is None, f'died in round {round_number}:\n{process.output()}'
        wait_until(lambda: _answers(port, paths[0]) == 200, 30, 'a 200 after the last round',
                   process.output)
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    statuses = collections.Counter(seen)
    assert process.poll() is None, process.output()
    assert failures == [], process.output()
    assert all(status < 400 or status in (503, 504) for status in statuses), statuses
    assert statuses[503] and statuses[504], statuses  # the kills and the freezes were noticed
