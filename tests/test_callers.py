"""Who made a request: named in the access log (a token's name, a unix peer's uid, a client
certificate's subject: see test_server_security.py), and bounded in what one caller may hold
(event streams and waits, console sessions)."""
import http.client
import logging
import os
import re
import select
import socket

import libvirt
import pytest

from conftest import Client, UnixHTTPConnection, serving, until
from consoles_support import Daemon, FakeConnection, FixedConnection
from test_events import Stream
from xend_rest.app import make_app
from xend_rest.bridges import Bridges
from xend_rest.connection import start_event_loop
from xend_rest.events import EventHub
from xend_rest.security import Guard

NODES = '/libvirt/xen/nodes'
OPS, READER, ADMIN = 'o' * 20, 'r' * 20, 'a' * 20
TOKENS = {OPS: ('operator', 'ops'), READER: ('read', 'monitor'), ADMIN: ('admin', 'alice')}


def bearer(token):
    return {'Authorization': 'Bearer ' + token}


def access_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == 'xend_rest.access']


def callers(caplog):
    return [line.split(' ')[-1] for line in access_lines(caplog)]


def call(conn, method, path, headers=None):
    conn.request(method, path, headers=headers or {})
    answer = conn.getresponse()
    answer.read()
    return answer.status


@pytest.fixture
def tokens_app(node_uri):
    app = make_app(uri=node_uri, guard=Guard(tokens=TOKENS))
    yield app
    app.close()


# -- the access log -------------------------------------------------------------------------

@pytest.mark.parametrize('method, path, headers, status, caller', [
    ('POST', '/web/suspend', bearer(OPS), 204, 'token:ops'),
    ('POST', '/web/destroy', bearer(READER), 403, 'token:monitor'),  # refused, but known
    ('POST', '/web/destroy', {}, 401, '-'),
    ('POST', '/web/destroy', bearer('x' * 20), 401, '-'),  # what was sent is not a credential
    ('POST', '/web/destroy', {**bearer(OPS), 'Host': 'evil.example'}, 403, '-'),  # not yet read
])
def test_the_access_log_names_the_caller_of_every_request(tokens_app, caplog, method, path,
                                                          headers, status, caller):
    caplog.set_level(logging.INFO, logger='xend_rest.access')
    with serving(tokens_app) as server:
        conn = http.client.HTTPConnection(*server.addresses[0], timeout=10)
        assert call(conn, method, NODES + path, headers) == status
    [line] = access_lines(caplog)
    assert line.startswith(f'{method} {NODES}{path} {status} ')
    assert line.endswith(' 127.0.0.1 ' + caller)
    assert 'x' * 20 not in line and OPS not in line  # never a token


def test_a_unix_caller_is_its_uid_unless_a_token_decides(tokens_app, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger='xend_rest.access')
    path = str(tmp_path / 'api.sock')
    with serving(tokens_app, ['unix:' + path]):
        conn = UnixHTTPConnection(path)
        assert call(conn, 'POST', NODES + '/web/suspend') == 204
        assert call(conn, 'POST', NODES + '/web/resume', bearer(READER)) == 403
        assert call(conn, 'POST', NODES + '/web/resume', bearer('x' * 20)) == 401
    uid = f'uid:{os.getuid()}'  # the kernel's word (SO_PEERCRED), whatever the client claims
    assert callers(caplog) == [uid, 'token:monitor', uid]
    assert all(' unix ' in line for line in access_lines(caplog))


def test_without_credentials_on_loopback_the_caller_is_anonymous(node_uri, caplog):
    caplog.set_level(logging.INFO, logger='xend_rest.access')
    app = make_app(uri=node_uri)
    with serving(app) as server:
        assert call(http.client.HTTPConnection(*server.addresses[0], timeout=10), 'GET',
                    NODES + '/json') == 200
    app.close()
    assert callers(caplog) == ['anonymous']


def test_a_token_name_cannot_forge_log_lines(node_uri, caplog):
    """A name from the tokens file holds no whitespace, but may hold control characters: they
    are percent-encoded, in the log as in the caller the limits count."""
    caplog.set_level(logging.INFO, logger='xend_rest.access')
    app = make_app(uri=node_uri, guard=Guard(tokens={OPS: ('operator', 'ops\x1b[2J\x85%41')}))
    with serving(app) as server:
        conn = http.client.HTTPConnection(*server.addresses[0], timeout=10)
        assert call(conn, 'GET', NODES + '/json', bearer(OPS)) == 200
    app.close()
    [line] = access_lines(caplog)
    assert line.endswith(' token:ops%1B[2J%C2%85%2541')  # '%' too: no two names read the same
    assert re.fullmatch(r'[\x21-\x7e ]+', line)


# -- what one caller may hold ---------------------------------------------------------------

@pytest.fixture
def shared_app(node_uri):
    """An app that lets each caller hold 2 of 4 event streams and waits."""
    app = make_app(uri=node_uri, guard=Guard(tokens=TOKENS),
                   events=EventHub(max_subscribers=4, per_owner=2))
    yield app
    app.close()


def as_caller(token):
    return {'HTTP_AUTHORIZATION': 'Bearer ' + token}


def test_one_reader_cannot_take_every_watcher_slot(shared_app):
    """A reader holds its share of streams and waits (429 past it, with its own code); an
    operator can still stop a domain and wait for it, and watch."""
    client = Client(shared_app)
    reader = [Stream(client, 'limit=1', as_caller(READER)) for _ in range(2)]
    assert [stream.status for stream in reader] == [200, 200]
    refused = client.request('POST', NODES + '/web/wait', query='condition=shutoff&timeout=5',
                             headers=as_caller(READER))
    assert (refused.status, refused.json['code']) == (429, 'too_many_watchers_for_caller')
    assert refused.headers['Retry-After']
    assert 'token:monitor has 2 event streams and waits open' in refused.json['message']
    assert client.request('GET', '/libvirt/xen/events', headers=as_caller(READER)).status == 429
    watching = Stream(client, 'limit=1', as_caller(OPS))
    assert watching.status == 200
    stopped = client.request('POST', NODES + '/web/stop', query='wait=5', headers=as_caller(OPS))
    assert stopped.status == 204
    assert client.conn.lookupByName('web').state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    for stream in reader + [watching]:
        stream.finish()  # each saw the stop
    assert shared_app.hypervisor.events.subscribers == 0
    assert Stream(client, 'timeout=0', as_caller(READER)).status == 200  # its share is back


def test_past_every_slot_it_is_still_503(shared_app):
    client = Client(shared_app)
    streams = [Stream(client, 'limit=1', as_caller(token)) for token in (READER, READER, OPS, OPS)]
    refused = client.request('GET', '/libvirt/xen/events', headers=as_caller(ADMIN))
    assert (refused.status, refused.json['code']) == (503, 'too_many_watchers')
    assert client.request('POST', NODES + '/idle/start', headers=as_caller(OPS)).status == 204
    for stream in streams:
        stream.finish()


def test_one_operator_cannot_take_every_console_ticket(tokens_app):
    """Each ticket lives 30 s: an operator that asks for them in a loop gets its share (64 of
    the 1,024), then 429 with its own code; another operator still gets one."""
    client = Client(tokens_app)
    path = NODES + '/web/console/ticket'

    def ask_ticket(token):
        return client.request('POST', path, query='for=console', headers=as_caller(token))
    issued = [ask_ticket(OPS) for _ in range(64)]
    assert [answer.status for answer in issued] == [201] * 64
    refused = ask_ticket(OPS)
    assert (refused.status, refused.json['code']) == (429, 'too_many_tickets_for_caller')
    assert refused.headers['Retry-After'] == '30'
    assert 'token:ops has 64 console tickets outstanding' in refused.json['message']
    assert ask_ticket(ADMIN).status == 201
    tokens_app.guard.tickets.redeem(issued[0].json['Ticket'])  # used: its place is free
    assert ask_ticket(OPS).status == 201


# -- through the server: each stream and wait holds a worker (issue 19 review) ------------------

CONNECTIONS = ('xen', 'b', 'c', 'd')
WAIT_FOR_IDLE = '/nodes/idle/wait?condition=running&timeout=600'


def ask(address, method, path, token):
    """A request sent on a connection of its own, as `token`: the socket, its answer unread."""
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b'%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n'
                 b'Content-Length: 0\r\n\r\n' % (method.encode(), path.encode(), token.encode()))
    return sock


def status_of(sock):
    """The status of the answer's head; socket.timeout after 10 s without one."""
    head = b''
    while b'\r\n' not in head:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError('closed without an answer')
        head += data
    return int(head.split()[1])


def answered(sock):
    return bool(select.select([sock], [], [], 0)[0])


def ping(address):
    """/_ping, as the operator: an answer within 10 s (a daemon whose every worker is held
    gives none: socket.timeout)."""
    return call(http.client.HTTPConnection(*address, timeout=10), 'GET', '/_ping', bearer(OPS))


def test_a_callers_share_of_streams_and_waits_counts_every_connection(node_uri):
    """At the default `workers` (32), with four connections, a reader asks for eight event
    streams on each: it gets eight in all, its share (not 32, every worker). The operator's
    share is still there, on any connection; past both shares a third caller gets 503; and
    /_ping, and an operator's request and wait, are still answered."""
    app = make_app(connections={name: node_uri for name in CONNECTIONS}, guard=Guard(tokens=TOKENS))
    held = []
    with serving(app, on_shutdown=app.end_streams) as server:
        address = server.addresses[0]
        try:
            statuses = []
            for name in CONNECTIONS:
                for _ in range(8):
                    held.append(ask(address, 'GET', f'/libvirt/{name}/events', READER))
                    statuses.append(status_of(held[-1]))
            assert (statuses.count(200), statuses.count(429)) == (8, 24)
            assert ping(address) == 200
            for name in CONNECTIONS[:3] + CONNECTIONS:  # the operator's share: 7 streams, 1 wait
                held.append(ask(address, 'GET', f'/libvirt/{name}/events', OPS))
                assert status_of(held[-1]) == 200
            waiting = ask(address, 'POST', '/libvirt/b' + WAIT_FOR_IDLE, OPS)
            held.append(waiting)
            until(lambda: len(app.hypervisor.events.watchers) == 16)
            third = ask(address, 'GET', '/libvirt/c/events', ADMIN)
            held.append(third)
            assert status_of(third) == 503
            assert ping(address) == 200
            conn = http.client.HTTPConnection(*address, timeout=10)
            assert call(conn, 'POST', '/libvirt/b/nodes/idle/start', bearer(OPS)) == 204
            assert status_of(waiting) == 200
        finally:
            for sock in held:
                sock.close()
    app.close()


def test_with_few_workers_one_caller_cannot_hold_them_all(node_uri):
    """With `workers` 8 (a small dom0), a reader's eight waits on one connection, within its
    share of the watchers, would hold every worker: the server lets one caller hold half of
    the workers it can spare (7: one serves the rest), so /_ping and another caller's wait are
    answered, and past what the server can spare it is 503."""
    app = make_app(uri=node_uri, guard=Guard(tokens=TOKENS))
    held = []
    with serving(app, workers=8, concurrency=1, on_shutdown=app.end_streams) as server:
        address, hub = server.addresses[0], app.hypervisor.events
        try:
            reader = [ask(address, 'POST', '/libvirt/xen' + WAIT_FOR_IDLE, READER) for _ in range(8)]
            held += reader
            until(lambda: sum(map(answered, reader)) + hub.subscribers == 8)
            waiting = [sock for sock in reader if not answered(sock)]
            assert len(waiting) == hub.subscribers == 3
            assert [status_of(sock) for sock in reader if answered(sock)] == [503] * 5
            assert ping(address) == 200
            others = [ask(address, 'POST', '/libvirt/xen' + WAIT_FOR_IDLE, token)
                      for token in (OPS, OPS, OPS, ADMIN)]
            held += others
            waiting += others
            until(lambda: hub.subscribers == 7)
            extra = ask(address, 'GET', '/libvirt/xen/events', ADMIN)
            held.append(extra)
            assert status_of(extra) == 503  # the server has no worker to spare
            assert ping(address) == 200
            conn = http.client.HTTPConnection(*address, timeout=10)
            assert call(conn, 'POST', NODES + '/idle/start', bearer(OPS)) == 204
            assert [status_of(sock) for sock in waiting] == [200] * 7
        finally:
            for sock in held:
                sock.close()
    app.close()


@pytest.fixture
def console_daemon():
    """(upgrade server, sessions) of an app whose callers may hold one console session each."""
    start_event_loop()
    fake = FakeConnection()
    sessions = Bridges(per_owner=1)
    app = make_app(connection=FixedConnection(fake), guard=Guard(tokens=TOKENS), consoles=sessions)
    server = Daemon(app)
    yield server, sessions
    assert sessions.close_all(timeout=10)
    server.close()
    until(lambda: all(stream.state != 'open' for stream in fake.streams), 10)


def test_one_operator_cannot_take_every_console_session(console_daemon):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect
    server, sessions = console_daemon
    url = server.url(NODES + '/web/console?dev=serial1')
    with connect(url, additional_headers=bearer(OPS)):
        with pytest.raises(InvalidStatus) as raised:
            connect(server.url(NODES + '/web/console?dev=serial2'), additional_headers=bearer(OPS))
        response = raised.value.response
        assert response.status_code == 429 and b'"too_many_sessions_for_caller"' in response.body
        assert response.headers['Retry-After']
        with connect(server.url(NODES + '/web/console?dev=serial2'),
                     additional_headers=bearer(ADMIN)):
            assert len(sessions) == 2
