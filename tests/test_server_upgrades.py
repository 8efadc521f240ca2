"""Every 101 ends in a running session or a released one (issue 19, section 3).

What the server cannot hand over (HTTP/1.0, `Connection: close` beside the upgrade, a daemon
that is stopping) is refused before the app takes a console; and whatever still goes wrong after
the app took one (the client gone before the 101, an answer other than 101, the daemon stopping
meanwhile, no thread to run the session on) gives the console back at once. The console's guest
side is the fake stream of consoles_support, driven from libvirt's real event loop; the screen
is the test driver's, on the fake RFB server of test_vnc."""
import os
import re
import socket
import struct
import threading

import pytest

from conftest import DOMAINS, node_xml, serving, until
from consoles_support import Daemon, FakeConnection, FixedConnection
from test_server import echo_app, read_until_closed
from test_vnc import FakeRFBServer, domain
from xend_rest import bridge, sessions
from xend_rest.app import make_app
from xend_rest.bridges import Bridges
from xend_rest.connection import start_event_loop
from xend_rest.errors import HTTPError
from xend_rest.server import Server

NODES = '/libvirt/xen/nodes'
KEY = b'dGhlIHNhbXBsZSBub25jZQ=='  # RFC 6455's example key


def websocket_request(path, version=b'HTTP/1.1', connection=b'Upgrade'):
    return (b'GET %s %s\r\nHost: localhost\r\nConnection: %s\r\nUpgrade: websocket\r\n'
            b'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n'
            % (path.encode(), version, connection, KEY))


def attach_request(path, version=b'HTTP/1.1', connection=b'Upgrade'):
    return (b'POST %s %s\r\nHost: localhost\r\nConnection: %s\r\nUpgrade: tcp\r\n'
            b'Content-Length: 0\r\n\r\n' % (path.encode(), version, connection))


# What the server cannot hand over: (route, how the request is made, the connection header).
CANNOT_UPGRADE = {
    'console, Connection: Upgrade, close': ('console', websocket_request, b'HTTP/1.1', b'Upgrade, close'),
    'console, HTTP/1.0': ('console', websocket_request, b'HTTP/1.0', b'Upgrade'),
    'console, HTTP/1.0 keep-alive': ('console', websocket_request, b'HTTP/1.0', b'Upgrade, keep-alive'),
    'attach, Connection: close, Upgrade': ('attach', attach_request, b'HTTP/1.1', b'close, Upgrade'),
    'attach, HTTP/1.0': ('attach', attach_request, b'HTTP/1.0', b'Upgrade'),
    'screen, Connection: Upgrade, close': ('vnc', websocket_request, b'HTTP/1.1', b'Upgrade, close'),
}


def open_fds():
    return len(os.listdir('/proc/self/fd'))


def exchange(port, data):
    """Send data on a new connection: the first answer, whole (a 101 has no end: its head)."""
    with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
        sock.sendall(data)
        answer = b''
        while b'\r\n\r\n' not in answer:
            answer += sock.recv(65536)
        length = re.search(rb'\r\nContent-Length: (\d+)\r\n', answer)
        while length and len(answer.partition(b'\r\n\r\n')[2]) < int(length.group(1)):
            answer += sock.recv(65536)
        return answer


def console_sessions_metric(port):
    answer = exchange(port, b'GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
    assert answer.startswith(b'HTTP/1.1 200 ')
    return int(re.search(rb'\nxend_console_sessions (\d+)', answer).group(1))


@pytest.fixture
def consoles(tmp_path):
    """Daemons whose domain `web` has a console (a fake stream) and whose `desktop` has a screen
    (the test driver's, on a fake RFB server), sharing at most two sessions."""
    start_event_loop()
    conn, rfb, registry = FakeConnection(), FakeRFBServer(), Bridges(max_sessions=2)
    (tmp_path / 'node.xml').write_text(node_xml(DOMAINS + [domain(
        'desktop', "<graphics type='vnc' port='%d' listen='127.0.0.1'/>" % rfb.port)]))
    screen_app = make_app(uri='test://%s' % (tmp_path / 'node.xml'), consoles=registry)
    console = Daemon(make_app(connection=FixedConnection(conn), consoles=registry))
    screen = Daemon(screen_app)
    try:
        yield {'console': console, 'attach': console, 'vnc': screen}, registry, conn
    finally:
        registry.close_all(timeout=10)
        console.close()
        screen.close()
        screen_app.close()
        rfb.close()
    until(lambda: all(stream.state != 'open' for stream in conn.streams))  # never leaked


def route_path(route):
    return '%s/%s/%s' % (NODES, 'desktop' if route == 'vnc' else 'web', route)


def a_session_opens(daemons, route):
    """A well-formed upgrade of the route is answered 101 (neither 409 nor 429); the session
    it starts is closed again."""
    make = attach_request if route == 'attach' else websocket_request
    with socket.create_connection(('127.0.0.1', daemons[route].port), timeout=10) as sock:
        sock.sendall(make(route_path(route)))
        head = b''
        while b'\r\n\r\n' not in head:
            head += sock.recv(1)
        return head.split(b'\r\n')[0]


@pytest.mark.parametrize('case', CANNOT_UPGRADE)
def test_an_upgrade_the_server_cannot_hand_over_is_refused_before_the_101(consoles, case):
    """Refused with 400 before any console is taken; more such requests than the session limit
    leave no session, no descriptor and no held console behind, and a proper upgrade still opens."""
    daemons, registry, conn = consoles
    route, make, version, connection = CANNOT_UPGRADE[case]
    port = daemons[route].port
    assert a_session_opens(daemons, route) == b'HTTP/1.1 101 Switching Protocols'  # warm up
    until(lambda: len(registry) == 0)
    before = open_fds()
    for _ in range(registry.max_sessions + 1):
        answer = exchange(port, make(route_path(route), version, connection))
        assert answer.startswith(b'HTTP/1.1 400 '), answer[:200]
        assert b'"code": "bad_request"' in answer
        assert b'upgrade' in answer.lower()
    assert len(registry) == 0
    assert console_sessions_metric(port) == 0
    until(lambda: open_fds() == before)
    assert a_session_opens(daemons, route) == b'HTTP/1.1 101 Switching Protocols'
    until(lambda: len(registry) == 0)
    assert not [stream for stream in conn.streams if stream.state == 'open']


def test_a_client_gone_right_after_its_upgrade_request_frees_the_console(consoles):
    daemons, registry, conn = consoles
    for count in range(1, registry.max_sessions + 2):
        with socket.create_connection(('127.0.0.1', daemons['console'].port)) as sock:
            sock.sendall(websocket_request(route_path('console')))
        until(lambda: len(conn.streams) == count)  # the console was taken
        until(lambda: len(registry) == 0)
    assert all(stream.state == 'aborted' for stream in conn.streams)
    assert a_session_opens(daemons, 'console') == b'HTTP/1.1 101 Switching Protocols'


def test_bytes_pipelined_behind_an_upgrade_are_the_sessions_and_end_it_cleanly(consoles):
    """An HTTP request sent right behind a WebSocket upgrade is not HTTP any more: the session
    reads it as frames, closes with 1002, and gives its console back."""
    daemons, registry, conn = consoles
    with socket.create_connection(('127.0.0.1', daemons['console'].port), timeout=10) as sock:
        sock.sendall(websocket_request(route_path('console')) +
                     b'GET /_ping HTTP/1.1\r\nHost: localhost\r\n\r\n')
        answer = read_until_closed(sock)
    head, _, frames = answer.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 101 ')
    assert frames[0] == 0x88 and struct.unpack('!H', frames[2:4])[0] == 1002  # a close frame
    until(lambda: len(registry) == 0)
    assert conn.streams[0].state == 'aborted'


def test_a_console_whose_session_cannot_be_made_is_given_back(consoles, monkeypatch):
    """The console is taken, then the session object cannot be made (no descriptor left for its
    wake-up pair): 500, and the console and its place are free again."""
    daemons, registry, conn = consoles

    class NoDescriptors(bridge.Bridge):
        def __init__(self, *args, **kwargs):
            raise OSError(24, 'Too many open files')
    monkeypatch.setattr(bridge, 'Bridge', NoDescriptors)
    answer = exchange(daemons['console'].port, websocket_request(route_path('console')))
    assert answer.startswith(b'HTTP/1.1 500 ')
    assert len(registry) == 0
    assert conn.streams[0].state == 'aborted'
    monkeypatch.undo()
    assert a_session_opens(daemons, 'console') == b'HTTP/1.1 101 Switching Protocols'


# -- the server's side, with a toy app: the session is run, or released, exactly once --------

class Recorder:
    """A session that notes how it was called: with a socket (run) or None (released)."""

    def __init__(self):
        self.calls = []
        self.called = threading.Event()

    def __call__(self, sock, buffered):
        self.calls.append('released' if sock is None else 'ran')
        self.called.set()


def upgrading(session, answer='101', entered=None, gate=None):
    """An app that takes an upgrade for `session`, then answers `answer` ('101', '403' or
    'raise'); with `gate`, it says it `entered` and waits for the gate first."""
    def app(environ, start_response):
        environ['xend_rest.upgrade'](session)
        if gate is not None:
            entered.set()
            gate.wait(10)
        if answer == 'raise':
            raise RuntimeError('the app failed after taking the upgrade')
        if answer == '101':
            start_response('101 Switching Protocols', [('Connection', 'Upgrade'), ('Upgrade', 'x')])
            return []
        return echo_app(environ, lambda status, headers: start_response('403 Forbidden', headers))
    return app


UPGRADE = b'GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n'


@pytest.mark.parametrize('answer, status', [('403', b'403'), ('raise', b'500')])
def test_a_session_taken_for_an_answer_other_than_101_is_released(answer, status):
    session = Recorder()
    with serving(upgrading(session, answer)) as server, \
            socket.create_connection(server.addresses[0], timeout=10) as sock:
        sock.sendall(UPGRADE)
        assert sock.recv(65536).split(b' ')[1] == status
        assert session.called.wait(10)
    assert session.calls == ['released']


def test_a_client_gone_before_its_101_is_sent_has_its_session_released():
    session, entered, gate = Recorder(), threading.Event(), threading.Event()
    with serving(upgrading(session, '101', entered, gate)) as server:
        sock = socket.create_connection(server.addresses[0], timeout=10)
        sock.sendall(UPGRADE)
        assert entered.wait(10)  # the app has the request
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        sock.close()  # a reset: the 101 cannot be sent
        gate.set()
        assert session.called.wait(10)
    assert session.calls == ['released']
    assert server.open_sessions == 0


def accepts(server):
    try:
        socket.create_connection(server.addresses[0], timeout=1).close()
    except ConnectionRefusedError:
        return False
    return True


def test_an_upgrade_that_waited_for_a_worker_while_the_daemon_stops_is_503():
    """Its bytes came before the shutdown, so it is answered within the grace period: with a
    refusal, before any session is taken, not with a 101 nobody will serve."""
    entered, release = threading.Event(), threading.Event()
    session = Recorder()

    def app(environ, start_response):
        if environ['PATH_INFO'] == '/slow':
            entered.set()
            release.wait(10)
            return echo_app(environ, start_response)
        try:
            environ['xend_rest.upgrade'](session)
        except HTTPError as err:
            start_response('%d Refused' % err.status, list(err.headers))
            return [err.code.encode()]
        start_response('101 Switching Protocols', [('Connection', 'Upgrade'), ('Upgrade', 'x')])
        return []

    server = Server(app, ['127.0.0.1:0'], workers=1)
    server.start()
    slow = socket.create_connection(server.addresses[0], timeout=10)
    slow.sendall(b'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n')
    assert entered.wait(10)  # the only worker is busy
    with slow, socket.create_connection(server.addresses[0], timeout=10) as sock:
        sock.sendall(UPGRADE)
        stopping = threading.Thread(target=server.shutdown, kwargs={'grace': 5})
        stopping.start()
        until(lambda: not accepts(server))  # the shutdown has begun
        release.set()
        answer = read_until_closed(sock)
        stopping.join()
    assert answer.startswith(b'HTTP/1.1 503 ')
    assert b'Retry-After: 5' in answer and answer.endswith(b'shutting_down')
    assert session.calls == []


def test_a_session_handed_over_while_the_daemon_stops_is_released():
    registry, session = sessions.Sessions(), Recorder()
    upgrade = sessions.Upgrade()
    upgrade(session)
    registry.end()
    ours, theirs = socket.socketpair()
    with ours:
        registry.start(theirs, b'', upgrade, 'client')
        assert session.calls == ['released']
        assert ours.recv(1) == b''  # and the connection closed
    assert len(registry) == 0


def test_a_session_without_a_thread_to_run_on_is_released(monkeypatch):
    class NoThreads(threading.Thread):
        def start(self):
            raise RuntimeError("can't start new thread")
    monkeypatch.setattr(sessions.threading, 'Thread', NoThreads)
    registry, session = sessions.Sessions(), Recorder()
    upgrade = sessions.Upgrade()
    upgrade(session)
    ours, theirs = socket.socketpair()
    with ours:
        registry.start(theirs, b'', upgrade, 'client')
        assert session.calls == ['released']
        assert ours.recv(1) == b''
    assert len(registry) == 0
