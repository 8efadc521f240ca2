"""Console sessions: a client's socket bridged to a console stream, with every way one ends.

The stream is a fake driven from libvirt's real event loop (the test driver has no consoles);
tests/realhv/test_consoles_real.py runs the same against QEMU guests. Every test checks that
each stream it opened was finished or aborted."""
import base64
import contextlib
import os
import socket
import ssl
import threading
import time

import libvirt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import Client, until
from consoles_support import FakeConnection, FixedConnection, FrameClient, Daemon
from test_server_security import pki  # noqa: F401 (a fixture)
from xend_rest.api import security
from xend_rest.api.app import make_app
from xend_rest.consoles import websocket
from xend_rest.consoles.bridge import Bridge
from xend_rest.consoles.console_stream import ConsoleStream, open_console
from xend_rest.consoles.framing import WebSocketFraming
from xend_rest.consoles.registry import Bridges
from xend_rest.consoles.websocket import BINARY, CLOSE, PING, PONG, TEXT
from xend_rest.hypervisor.libvirt_connection import start_event_loop
from xend_rest.server.upgrades import Upgrade

CONSOLE = '/libvirt/xen/nodes/web/console'
ATTACH = '/libvirt/xen/nodes/web/attach'


@pytest.fixture
def conn():
    start_event_loop()
    fake = FakeConnection()
    yield fake
    until(lambda: all(stream.state != 'open' for stream in fake.streams), 10)  # never leaked


@pytest.fixture
def consoles():
    registry = Bridges(max_sessions=3)
    yield registry
    assert registry.close_all(timeout=10)


@pytest.fixture
def server(conn, consoles):
    running = Daemon(make_app(connection=FixedConnection(conn), consoles=consoles))
    yield running
    consoles.close_all(timeout=10)
    running.close()


def bridged(conn, consoles, framing=None, buffered=b'', dev=None):
    """(client socket, session, its thread): a session run on one end of a socket pair."""
    session = open_console(consoles, conn, conn.dom, dev, 0, framing or WebSocketFraming())
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=session, args=(theirs, buffered), daemon=True)
    thread.start()
    return ours, session, thread


@pytest.fixture
def client(conn, consoles):
    sock, session, thread = bridged(conn, consoles)
    yield FrameClient(sock), session
    sock.close()
    thread.join(10)
    assert not thread.is_alive()


# -- through a third-party client library (interoperability) ------------------------------------

def test_a_command_typed_through_a_websocket_library_prints_its_output(server):
    with connect(server.url(CONSOLE)) as ws:
        marker = os.urandom(6).hex()
        ws.send(('echo %s\n' % marker).encode())
        seen = b''
        while marker.encode() + b'\r\n' not in seen:
            seen += ws.recv(timeout=10)
        ws.send('echo text-frames-too\n')  # a text frame: UTF-8 input
        while b'text-frames-too\r\n' not in seen:
            seen += ws.recv(timeout=10)


def test_the_library_sees_a_clean_close_when_the_domain_stops(server, conn):
    with connect(server.url(CONSOLE)) as ws:
        ws.send(b'echo before\n')
        until(lambda: conn.streams and b'' == bytes(conn.streams[0].guest_input))
        conn.streams[0].emit(b'reboot: Power down\r\n')
        conn.dom.active = False
        conn.streams[0].eof = True
        seen = b''
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                seen += ws.recv(timeout=10)
    assert b'Power down' in seen  # the last words come before the close
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, 'the domain stopped')
    assert conn.streams[0].state == 'finished'


def test_the_library_pings_and_closes_cleanly(server, conn, consoles):
    with connect(server.url(CONSOLE)) as ws:
        ws.ping(b'are you there').wait(10)
    until(lambda: len(consoles) == 0)
    assert conn.streams[0].state == 'aborted'


def test_binary_subprotocol_is_agreed_for_vnc_clients(server):
    with connect(server.url(CONSOLE), subprotocols=['binary']) as ws:
        assert ws.subprotocol == 'binary'


def test_past_the_session_limit_is_429_with_a_code(server, consoles):
    with contextlib.ExitStack() as opened:
        for i in range(3):
            opened.enter_context(connect(server.url(CONSOLE) + '?dev=serial%d' % i))
        with pytest.raises(InvalidStatus) as refused:
            connect(server.url(CONSOLE) + '?dev=serial3')
    response = refused.value.response
    assert response.status_code == 429
    assert b'"too_many_sessions"' in response.body
    assert response.headers['Retry-After'] == '5'
    until(lambda: len(consoles) == 0)
    with connect(server.url(CONSOLE) + '?dev=serial3'):
        pass  # places are given back


def test_force_takes_the_console_over_and_the_other_session_is_told(server, conn):
    with connect(server.url(CONSOLE)) as first:
        with pytest.raises(InvalidStatus) as refused:
            connect(server.url(CONSOLE))
        assert refused.value.response.status_code == 409
        assert b'"console_busy"' in refused.value.response.body
        with connect(server.url(CONSOLE) + '?force=1') as second:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    first.recv(timeout=10)
            assert closed.value.rcvd.code == 4409
            assert 'took the console over' in closed.value.rcvd.reason
            second.send(b'echo mine\n')
            seen = b''
            while b'mine\r\n' not in seen:
                seen += second.recv(timeout=10)


@pytest.mark.parametrize('query, status, code', [
    ('dev=parallel0', 404, 'no_such_device'),
    ('force=maybe', 400, 'bad_parameter'),
])
def test_refusals_before_the_upgrade(server, query, status, code):
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url(CONSOLE) + '?' + query)
    assert refused.value.response.status_code == status
    assert ('"%s"' % code).encode() in refused.value.response.body


def test_a_domain_that_is_not_running_is_409(server, conn):
    conn.dom.active = False
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url(CONSOLE))
    assert refused.value.response.status_code == 409
    assert conn.streams == []


# -- the raw attach (Upgrade: tcp) ---------------------------------------------------------------

def raw_attach(server, query='', extra=b''):
    sock = socket.create_connection(('127.0.0.1', server.port), timeout=10)
    sock.sendall(b'POST %s%s HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n'
                 b'Upgrade: tcp\r\nContent-Length: 0\r\n\r\n' % (ATTACH.encode(), query.encode())
                 + extra)
    head = b''
    while b'\r\n\r\n' not in head:
        head += sock.recv(1)
    return sock, head.decode('latin-1')


def test_attach_answers_101_then_raw_bytes_both_ways(server, conn, consoles):
    sock, head = raw_attach(server, extra=b'echo early\n')  # bytes sent with the head count too
    with sock:
        assert head.startswith('HTTP/1.1 101 ')
        assert 'Upgrade: tcp\r\n' in head
        seen = b''
        while b'early\r\n' not in seen:
            seen += sock.recv(4096)
        marker = os.urandom(6).hex().encode()
        sock.sendall(b'echo ' + marker + b'\n')
        while marker + b'\r\n' not in seen:
            seen += sock.recv(4096)
        assert b'\x82' not in seen  # no framing
    until(lambda: len(consoles) == 0)  # the client's EOF ends the session
    assert conn.streams[0].state == 'aborted'


def test_attach_without_the_upgrade_is_426_naming_tcp(server):
    sock = socket.create_connection(('127.0.0.1', server.port), timeout=10)
    with sock:
        sock.sendall(b'POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n'
                     % ATTACH.encode())
        answer = sock.recv(65536).decode()
    assert answer.startswith('HTTP/1.1 426 ')
    assert 'Upgrade: tcp\r\n' in answer


# -- the framing, with a client of our own -------------------------------------------------------

def test_typed_input_reaches_the_guest_and_output_comes_back_in_binary_frames(client):
    ws, session = client
    ws.send(BINARY, b'echo one\n')
    assert b'one\r\n' in ws.output_until(b'one\r\n')
    ws.send(TEXT, 'echo zwei €\n'.encode())
    ws.output_until('zwei €\r\n'.encode())
    assert session.bytes_in == len(b'echo one\n') + len('echo zwei €\n'.encode())


def test_a_ping_gets_a_pong_with_its_payload(client):
    ws, _ = client
    ws.send(PING, b'hello')
    assert ws.frame() == (PONG, b'hello')


def test_a_client_that_pings_without_reading_is_owed_one_pong_at_most(conn):
    registry = Bridges()
    session = open_console(registry, conn, conn.dom, None, 0, WebSocketFraming())
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    thread = threading.Thread(target=session, args=(theirs, b''), daemon=True)
    thread.start()
    with ours:
        pings = websocket.encode(PING, b'p' * 125, mask=b'abcd') * 200
        for _ in range(50):  # 10,000 pings of 125 bytes, none of the pongs read
            ours.sendall(pings)
        until(lambda: not session._input and len(session._wire) + len(session._pong) < 1000)
        ws = FrameClient(ours)
        ws.send(BINARY, b'echo still answering\n')
        seen, pongs = b'', 0
        while b'still answering\r\n' not in seen:
            opcode, payload = ws.frame()
            if opcode == PONG:
                pongs += 1
            else:
                seen += payload
        assert pongs < 1000  # of 10,000 pings: the rest were answered by a later pong
    thread.join(10)
    assert registry.close_all(timeout=10)


def test_a_client_close_is_answered_with_its_code_and_the_stream_aborted(client, conn, consoles):
    ws, session = client
    ws.send(CLOSE, b'\x03\xe8bye')
    assert ws.frame() == (CLOSE, b'\x03\xe8')
    until(lambda: len(consoles) == 0)
    assert session.ending[0] == 'client_closed'
    assert conn.streams[0].state == 'aborted'


@pytest.mark.parametrize('frame, code', [
    (websocket.encode(BINARY, b'x'), 1002),  # unmasked
    (websocket.encode(TEXT, b'\xff\xfe', mask=b'abcd'), 1007),
    (websocket.encode(BINARY, b'x' * 70000, mask=b'abcd'), 1009),
])
def test_protocol_violations_close_with_their_code(conn, frame, code):
    registry = Bridges(max_message=65536)
    sock, session, thread = bridged(conn, registry, WebSocketFraming(65536))
    with sock:
        ws = FrameClient(sock)
        ws.send_raw(frame)
        assert ws.close_frame()[0] == code
        thread.join(10)
    assert session.ending[0] == 'protocol_error'
    assert conn.streams[0].state == 'aborted'


def test_a_client_that_vanishes_ends_the_session_and_aborts_the_stream(conn, consoles):
    sock, session, thread = bridged(conn, consoles)
    sock.close()
    thread.join(10)
    assert session.ending[0] == 'client_gone'
    assert len(consoles) == 0
    assert conn.streams[0].state == 'aborted'


def test_the_guest_stopping_closes_with_1000_and_finishes_the_stream(client, conn):
    ws, session = client
    conn.streams[0].emit(b'last words\r\n')
    conn.dom.active = False
    conn.streams[0].eof = True
    ws.output_until(b'last words')
    assert ws.close_frame() == (1000, 'the domain stopped')
    ws.send(CLOSE, b'\x03\xe8')
    until(lambda: conn.streams[0].state == 'finished')


@pytest.mark.parametrize('reported', [
    [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED],
    [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION],  # before libvirt marks it
])
def test_a_guest_that_migrated_away_closes_with_1000_saying_so(client, conn, reported):
    """libvirt says why the domain stopped here (VIR_DOMAIN_SHUTOFF_MIGRATED), or that it was
    paused for its migration's switch-over when its console ended."""
    ws, session = client
    conn.dom.reported = reported
    conn.streams[0].eof = True
    assert ws.close_frame() == (1000, 'the domain migrated to another host')


def test_a_console_closed_while_the_domain_runs_says_so(client, conn):
    ws, session = client
    conn.streams[0].eof = True
    assert ws.close_frame() == (1000, 'the console was closed')


def test_libvirt_going_away_closes_with_1014(client, conn, consoles):
    ws, session = client
    conn.alive = False  # no stream event at all: the session's own check notices
    assert ws.close_frame()[0] == 1014
    ws.send(CLOSE, b'\x03\xe8')
    until(lambda: len(consoles) == 0)
    assert conn.streams[0].state == 'aborted'


def test_a_stream_error_with_libvirt_gone_closes_with_1014(client, conn):
    ws, _ = client
    conn.alive = False
    conn.streams[0].error = 'End of file while reading data: Input/output error'
    assert ws.close_frame()[0] == 1014


def test_daemon_shutdown_closes_every_session_with_1001(conn, consoles):
    clients = []
    for dev in ('serial0', 'serial1'):
        session = open_console(consoles, conn, conn.dom, dev, 0, WebSocketFraming())
        ours, theirs = socket.socketpair()
        threading.Thread(target=session, args=(theirs, b''), daemon=True).start()
        clients.append(FrameClient(ours))
    answered = []

    def answer(ws):
        answered.append(ws.close_frame())
        ws.send(CLOSE, b'\x03\xe9')
    threads = [threading.Thread(target=answer, args=(ws,)) for ws in clients]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    assert consoles.close_all(timeout=10)
    for thread in threads:
        thread.join(10)
    assert answered == [(1001, 'the daemon is shutting down')] * 2
    assert {stream.state for stream in conn.streams} == {'aborted'}


def test_an_idle_session_is_closed(conn):
    registry = Bridges(idle_timeout=0.3)
    sock, session, thread = bridged(conn, registry)
    with sock:
        ws = FrameClient(sock)
        assert ws.close_frame() == (4408, 'no input or output for 0.3 s')
        ws.send(CLOSE, b'\x03\xe8')
        thread.join(10)
    assert session.ending[0] == 'idle'


def test_a_client_that_stops_reading_is_cut_off_and_memory_stays_bounded(conn):
    registry = Bridges(buffer_size=65536)
    session = open_console(registry, conn, conn.dom, None, 0, WebSocketFraming())
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    thread = threading.Thread(target=session, args=(theirs, b''), daemon=True)
    thread.start()
    with ours:
        until(lambda: conn.streams[0]._cb is not None)
        chunk = os.urandom(8192)
        deadline = time.monotonic() + 20
        while thread.is_alive() and time.monotonic() < deadline:  # a chatty guest, nobody reading
            conn.streams[0].emit(chunk)
            time.sleep(0.001)
            assert len(session.guest._output) <= 65536
        thread.join(15)
    assert not thread.is_alive()
    assert session.ending[:2] == ('client_too_slow', 1008)
    assert len(registry) == 0
    assert conn.streams[0].state == 'aborted'


def test_the_other_sessions_go_on_while_one_client_stalls(conn):
    registry = Bridges(buffer_size=65536)
    stalled = open_console(registry, conn, conn.dom, 'serial0', 0, WebSocketFraming())
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    threading.Thread(target=stalled, args=(theirs, b''), daemon=True).start()
    sock, session, thread = bridged(conn, registry, dev='serial1')
    with sock, ours:
        for _ in range(20):
            conn.streams[0].emit(os.urandom(8192))
        ws = FrameClient(sock)
        ws.send(BINARY, b'echo still here\n')
        ws.output_until(b'still here\r\n', timeout=5)
    thread.join(10)
    assert registry.close_all(timeout=10)


def test_bytes_sent_with_the_upgrade_request_are_input(conn, consoles):
    hello = websocket.encode(BINARY, b'echo buffered\n', mask=b'wxyz')
    sock, session, thread = bridged(conn, consoles, buffered=hello)
    with sock:
        FrameClient(sock).output_until(b'buffered\r\n')


def test_a_session_the_server_never_ran_can_be_discarded(conn, consoles):
    session = open_console(consoles, conn, conn.dom, None, 0, WebSocketFraming())
    assert len(consoles) == 1
    session.discard()
    assert len(consoles) == 0
    assert conn.streams[0].state == 'aborted'


# -- the app under other servers, and the test driver --------------------------------------------

def upgrade_headers(hook=True):
    headers = {'HTTP_CONNECTION': 'Upgrade', 'HTTP_UPGRADE': 'websocket',
               'HTTP_SEC_WEBSOCKET_VERSION': '13',
               'HTTP_SEC_WEBSOCKET_KEY': base64.b64encode(os.urandom(16)).decode()}
    if hook:
        headers['xend_rest.upgrade'] = Upgrade()  # what our server puts there
    return headers


@pytest.fixture
def test_driver(node_uri):
    app = make_app(uri=node_uri)
    yield Client(app)
    app.close()


def test_under_a_foreign_wsgi_server_the_console_is_501_saying_why(test_driver):
    answer = test_driver.request('GET', CONSOLE, headers=upgrade_headers(hook=False))
    assert answer.status == 501
    assert answer.json['code'] == 'upgrade_unsupported'
    assert "xend-rest's own server" in answer.json['message']


def test_without_the_upgrade_the_console_is_426(test_driver):
    answer = test_driver.request('GET', CONSOLE, headers={'xend_rest.upgrade': Upgrade()})
    assert answer.status == 426
    assert answer.headers['Upgrade'] == 'websocket'


def test_the_test_driver_has_no_consoles_501(test_driver):
    answer = test_driver.request('GET', CONSOLE, headers=upgrade_headers())
    assert answer.status == 501
    assert answer.json['code'] == 'console_unsupported'
    assert test_driver.app.consoles.totals() == (0, 0, 0)


def test_a_shut_off_domain_is_409(test_driver):
    answer = test_driver.request('GET', '/libvirt/xen/nodes/idle/console', headers=upgrade_headers())
    assert (answer.status, answer.json['code']) == (409, 'invalid_state')


def test_console_stream_is_a_bounded_buffer(conn):
    """The guest side alone: the callback never holds more than the limit."""
    stream = conn.newStream(1)
    guest = ConsoleStream(conn, conn.dom, stream, limit=10)
    assert guest.send(b'x' * 25) == 10
    assert guest.send(b'more') == 0  # full until the event loop sends some
    guest.close()
    assert stream.state == 'aborted'


def test_session_counts_reach_the_registry_totals(client, consoles):
    ws, session = client
    ws.send(BINARY, b'echo 12345\n')
    ws.output_until(b'12345\r\n')
    open_sessions, typed, shown = consoles.totals()
    assert open_sessions == 1
    assert typed == len(b'echo 12345\n')
    assert shown >= len(b'echo 12345\n12345\r\n')
    assert isinstance(session, Bridge)


# -- through the daemon's own server ------------------------------------------------------------

def test_the_most_consoles_open_do_not_starve_the_api(conn):
    """Sessions run on threads of their own, not request workers: with every console place
    taken and two workers, API requests are still answered at once."""
    sessions = Bridges(max_sessions=4)
    daemon = Daemon(make_app(connection=FixedConnection(conn), consoles=sessions), workers=2)
    try:
        with contextlib.ExitStack() as opened:
            for i in range(4):
                opened.enter_context(connect(daemon.url(CONSOLE) + '?dev=serial%d' % i))
            until(lambda: daemon.server.open_sessions == 4)
            for _ in range(10):
                started = time.monotonic()
                sock = socket.create_connection(('127.0.0.1', daemon.port), timeout=5)
                with sock:
                    sock.sendall(b'GET /_ping HTTP/1.1\r\nHost: localhost\r\n\r\n')
                    assert sock.recv(4096).startswith(b'HTTP/1.1 200 ')
                assert time.monotonic() - started < 1.0
            with pytest.raises(InvalidStatus) as refused:
                connect(daemon.url(CONSOLE) + '?dev=serial0&safe=1')
            assert refused.value.response.status_code == 429
    finally:
        daemon.close()
    assert sessions.close_all(timeout=10)


def test_daemon_shutdown_tells_each_client_1001(conn):
    sessions = Bridges()
    daemon = Daemon(make_app(connection=FixedConnection(conn), consoles=sessions))
    with connect(daemon.url(CONSOLE)) as ws:
        until(lambda: daemon.server.open_sessions == 1)
        closer = threading.Thread(target=daemon.close, kwargs={'grace': 10})
        closer.start()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=10)
        closer.join(15)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, 'the daemon is shutting down')
    assert len(sessions) == 0
    assert conn.streams[0].state == 'aborted'


def test_a_console_over_tls_carries_bulk_output_intact(conn, pki):
    """On a TLS listener the session gets the TLS socket: non-blocking reads and writes of it."""
    context = security.tls_context(str(pki / 'server.pem'), str(pki / 'server.key'),
                                   str(pki / 'ca.pem'))
    sessions = Bridges()
    daemon = Daemon(make_app(connection=FixedConnection(conn), consoles=sessions), tls=context)
    client = ssl.create_default_context(cafile=str(pki / 'ca.pem'))
    client.load_cert_chain(str(pki / 'alice.pem'), str(pki / 'alice.key'))
    try:
        with connect('wss://127.0.0.1:%d%s' % (daemon.port, CONSOLE), ssl=client) as ws:
            ws.send(b'echo over tls\n')
            seen = b''
            while b'over tls\r\n' not in seen:
                seen += ws.recv(timeout=10)
            bulk = os.urandom(600000)
            conn.streams[0].emit(bulk)
            received = b''
            while len(received) < len(bulk):
                received += ws.recv(timeout=10)
            assert received == bulk
    finally:
        daemon.close()
    assert sessions.close_all(timeout=10)


def test_shutdown_frees_a_session_the_server_never_ran(conn):
    sessions = Bridges()
    app = make_app(connection=FixedConnection(conn), consoles=sessions)
    open_console(sessions, conn, conn.dom, None, 0, WebSocketFraming())
    app.end_streams()  # what the daemon's shutdown calls
    assert len(sessions) == 0
    assert conn.streams[0].state == 'aborted'


@pytest.mark.parametrize('method, path, query', [
    ('GET', 'console', 'safe=maybe'), ('GET', 'console', 'force=1&force=1'),
    ('POST', 'attach', 'safe=2'),
])
def test_a_bad_console_parameter_is_400_before_the_handshake_is_looked_at(api, method, path,
                                                                           query):
    response = api.request(method, '/libvirt/xen/nodes/web/' + path, query=query)
    assert (response.status, response.json['code']) == (400, 'bad_parameter')
