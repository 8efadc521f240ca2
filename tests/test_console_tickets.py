"""Browsers and consoles: the Origin check on upgrades, allowed-origins, and console tickets
(single-use, short-lived, bound to the connection, the domain, the route and the role)."""
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import Client, until
from test_consoles import upgrade_headers
from consoles_support import FakeConnection, FakeDomain, FixedConnection, Daemon
from xend_rest.accesslog import printable
from xend_rest.app import make_app
from xend_rest.bridges import Bridges
from xend_rest.connection import start_event_loop
from xend_rest.security import Guard, origin_name
from xend_rest.tickets import Tickets, redact_ticket

PAGE = 'https://admin.example.org'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = '/libvirt/xen/nodes/web'
TOKENS = {'o' * 20: ('operator', 'ops'), 'r' * 20: ('read', 'monitor')}


@pytest.fixture
def conn():
    start_event_loop()
    fake = FakeConnection()
    yield fake
    until(lambda: all(stream.state != 'open' for stream in fake.streams), 10)


@pytest.fixture
def daemon(conn):
    """(upgrade server, in-process client, sessions) of one app that wants tokens and lets
    PAGE open consoles with tickets."""
    sessions = Bridges()
    guard = Guard(tokens=TOKENS, allowed_origins=[PAGE + ':443/'])
    app = make_app(connection=FixedConnection(conn), guard=guard, consoles=sessions)
    server = Daemon(app, on_refused=app.refused)  # as the CLI wires it
    yield server, Client(app), sessions
    assert sessions.close_all(timeout=10)
    server.close()


def ticket(client, route='console', token='o' * 20, node=NODE):
    answer = client.request('POST', node + '/console/ticket', query='for=' + route,
                            headers={'HTTP_AUTHORIZATION': 'Bearer ' + token} if token else {})
    assert answer.status == 201, answer.json
    return answer.json


def refused(url, **options):
    with pytest.raises(InvalidStatus) as raised:
        connect(url, **options)
    response = raised.value.response
    return response.status_code, response.body


def test_a_page_opens_the_console_with_a_ticket_once(daemon, conn):
    server, client, _ = daemon
    issued = ticket(client)
    assert issued['Expires'] == 30
    assert issued['Path'] == '%s/console?ticket=%s' % (
        '/libvirt/xen/nodes/11111111-2222-3333-4444-555555555555', issued['Ticket'])
    with connect(server.url(issued['Path']), origin=PAGE) as ws:
        ws.send(b'echo from a page\n')
        seen = b''
        while b'from a page\r\n' not in seen:
            seen += ws.recv(timeout=10)
    status, body = refused(server.url(issued['Path']), origin=PAGE)
    assert (status, b'"bad_ticket"' in body) == (401, True)  # single-use


def test_a_cross_site_page_cannot_open_a_console(daemon, conn):
    server, client, _ = daemon
    issued = ticket(client)
    status, body = refused(server.url(issued['Path']), origin='https://evil.example')
    assert (status, b'"cross_origin"' in body) == (403, True)
    status, body = refused(server.url(NODE + '/console'), origin='https://evil.example')
    assert (status, b'"cross_origin"' in body) == (403, True)
    assert conn.streams == []


def test_an_allowed_page_still_needs_a_ticket(daemon, conn):
    server, _, _ = daemon
    status, body = refused(server.url(NODE + '/console'), origin=PAGE,
                           additional_headers={'Authorization': 'Bearer ' + 'o' * 20})
    assert (status, b'"cross_origin"' in body) == (403, True)
    assert conn.streams == []


def test_without_an_origin_a_token_opens_the_console(daemon):
    server, _, _ = daemon
    with connect(server.url(NODE + '/console'),
                 additional_headers={'Authorization': 'Bearer ' + 'o' * 20}):
        pass
    status, _ = refused(server.url(NODE + '/console'))
    assert status == 401


def test_a_ticket_opens_only_its_route(daemon, conn):
    server, client, _ = daemon
    issued = ticket(client, route='vnc')
    path = issued['Path'].replace('/vnc?', '/console?')
    status, body = refused(server.url(path), origin=PAGE)
    assert (status, b'"ticket_mismatch"' in body) == (403, True)
    status, body = refused(server.url(NODE + '/json?ticket=' + ticket(client)['Ticket']))
    assert (status, b'"ticket_mismatch"' in body) == (403, True)


def test_a_reader_gets_no_ticket(daemon):
    _, client, _ = daemon
    answer = client.request('POST', NODE + '/console/ticket',
                            headers={'HTTP_AUTHORIZATION': 'Bearer ' + 'r' * 20})
    assert (answer.status, answer.json['code']) == (403, 'forbidden')


def test_an_expired_ticket_is_401(conn):
    guard = Guard(allowed_origins=[PAGE], tickets=Tickets(lifetime=0.05))
    app = make_app(connection=FixedConnection(conn), guard=guard)
    server = Daemon(app)
    issued = ticket(Client(app))
    time.sleep(0.1)
    status, body = refused(server.url(issued['Path']), origin=PAGE)
    assert (status, b'"bad_ticket"' in body) == (401, True)
    server.close()


def test_a_ticket_for_another_domain_is_403(node_uri):
    app = make_app(uri=node_uri)
    client = Client(app)
    issued = ticket(client, node='/libvirt/xen/nodes/web')
    answer = client.request('GET', '/libvirt/xen/nodes/db/console', query='ticket=' + issued['Ticket'],
                            headers=upgrade_headers())
    assert (answer.status, answer.json['code']) == (403, 'ticket_mismatch')
    app.close()


def test_tickets_are_bounded():
    tickets = Tickets(max_tickets=2)
    tickets.issue('xen', 'u', None, 'operator', 'token:ops')
    tickets.issue('xen', 'u', None, 'operator', 'token:ops')
    with pytest.raises(Exception) as raised:
        tickets.issue('xen', 'u', None, 'operator', 'token:ops')
    assert (raised.value.status, raised.value.code) == (429, 'too_many_tickets')


def test_a_session_is_one_access_log_line_without_its_ticket(daemon, caplog):
    server, client, _ = daemon
    issued = ticket(client)
    with caplog.at_level(logging.INFO, logger='xend_rest.access'):
        with connect(server.url(issued['Path']), origin=PAGE) as ws:
            ws.send(b'echo 1\n')
            ws.recv(timeout=10)
        until(lambda: any(' session ' in r.getMessage() for r in caplog.records))
    lines = [r.getMessage() for r in caplog.records if ' session ' in r.getMessage()]
    assert len(lines) == 1
    assert issued['Ticket'] not in lines[0]
    assert lines[0].startswith('GET /libvirt/xen/nodes/11111111-2222-3333-4444-555555555555'
                               '/console?ticket=- session client_closed ')
    assert ' in=7 ' in lines[0]
    # Whoever opens a ticket is whoever asked for it: the page acted for the 'ops' token.
    opened = [r.getMessage() for r in caplog.records if ' 101 ' in r.getMessage()]
    assert [line.split(' ')[-1] for line in opened + lines] == ['token:ops', 'token:ops']


@pytest.mark.parametrize('name', ['web 101 0 1.00ms 192.0.2.7 token:alice', 'web\u00a0\u2028x'])
def test_each_field_of_a_session_line_is_one_token(conn, caplog, name):
    """A domain's name with spaces (libvirt allows them) is one field, percent-encoded: it
    cannot shift the client and caller fields, nor forge them."""
    conn.dom = FakeDomain(conn, name=name)
    sessions = Bridges()
    app = make_app(connection=FixedConnection(conn), consoles=sessions)
    server = Daemon(app)
    caplog.set_level(logging.INFO, logger='xend_rest.access')
    with connect(server.url(NODE.replace('web', '11111111-2222-3333-4444-555555555555') +
                            '/console')) as ws:
        ws.send(b'echo 1\n')
        ws.recv(timeout=10)
    until(lambda: any(' session ' in r.getMessage() for r in caplog.records))
    assert sessions.close_all(timeout=10)
    server.close()
    [line] = [r.getMessage() for r in caplog.records if ' session ' in r.getMessage()]
    fields = line.split(' ')
    assert len(fields) == 11, line
    assert fields[7:] == [printable(name), 'serial0', '127.0.0.1', 'anonymous']
    assert re.fullmatch(r'[\x21-\x7e ]+', line)


def access_lines(caplog, count=1):
    """The access-log lines, once there are `count`: a line is written after its answer."""
    until(lambda: len([r for r in caplog.records if r.name == 'xend_rest.access']) >= count)
    return [r.getMessage() for r in caplog.records if r.name == 'xend_rest.access']


SPELLINGS = ['ticket', '%74icket', 'ti%63ket', '%74%69%63%6B%65%74']  # one name, as the app reads it
REFUSALS = [  # (path, headers, code): refused before any session opens
    (NODE + '/console', {'Origin': 'https://evil.example'}, 'cross_origin'),
    (NODE + '/console', {'Origin': PAGE, 'Host': 'evil.example'}, 'foreign_host'),
    ('/libvirt/xen/nodes/json', {'Origin': PAGE}, 'ticket_mismatch'),
]


@pytest.mark.parametrize('spelling', SPELLINGS)
@pytest.mark.parametrize('path, headers, code', REFUSALS)
def test_a_ticket_on_a_refused_request_is_spent_and_never_logged(daemon, caplog, spelling, path,
                                                                  headers, code):
    server, client, _ = daemon
    issued = ticket(client)
    caplog.set_level(logging.INFO, logger='xend_rest.access')
    conn = http.client.HTTPConnection('127.0.0.1', server.port, timeout=10)
    conn.request('GET', f"{path}?{spelling}={issued['Ticket']}", headers=headers)
    answer = conn.getresponse()
    assert (answer.status, json.loads(answer.read())['code']) == (403, code)
    [line] = access_lines(caplog)
    assert issued['Ticket'] not in line
    assert f'?{spelling}=- 403 ' in line
    status, body = refused(server.url(issued['Path']), origin=PAGE)  # spent: it was seen
    assert (status, b'"bad_ticket"' in body) == (401, True)


def test_a_ticket_given_twice_spends_both(daemon):
    server, client, _ = daemon
    first, second = ticket(client)['Ticket'], ticket(client)['Ticket']
    answer = client.request('GET', NODE + '/console', query=f'ticket={first}&%74icket={second}',
                            headers={**upgrade_headers(), 'HTTP_ORIGIN': PAGE})
    assert (answer.status, answer.json['code']) == (400, 'bad_parameter')
    for token in (first, second):
        status, _ = refused(server.url(f'{NODE}/console?ticket={token}'), origin=PAGE)
        assert status == 401


@pytest.mark.parametrize('target, logged', [
    ('/a?ticket=T', '/a?ticket=-'),
    ('/a?x=1&%74icket=T&y=2', '/a?x=1&%74icket=-&y=2'),
    ('/a?%74%69%63%6b%65%74=T', '/a?%74%69%63%6b%65%74=-'),
    ('/a?ticket=T&ticket=U', '/a?ticket=-&ticket=-'),
    # Names the app does not read as ticket, but another reader might: hidden all the same.
    ('/a?x=1;ticket=T', '/a?x=1;ticket=-'),
    ('/a?ticket+=T', '/a?ticket+=-'),
    ('/a?TICKET=T&Ticket=U', '/a?TICKET=-&Ticket=-'),
    ('/a?ticket%00=T&t%20i%09cket=U', '/a?ticket%00=-&t%20i%09cket=-'),
    ('/a/console;ticket=T?x=1', '/a/console;ticket=-?x=1'),
    ('/a;x=1;%54icket=T/b', '/a;x=1;%54icket=-/b'),
    ('/a/ticket=T', '/a/ticket=-'),
    ('/a?ticket=T=U&y=2', '/a?ticket=-&y=2'),  # the whole value, as parse_qs reads it
    ('/a?ticket', '/a?ticket'),  # no value: nothing to hide
    ('/a?tickets=T&xticket=T&ticket2=T', '/a?tickets=T&xticket=T&ticket2=T'),  # other names
])
def test_the_log_hides_every_value_of_a_parameter_named_ticket_however_spelled(target, logged):
    assert redact_ticket(target) == logged


def test_the_log_hides_a_ticket_by_its_value_whatever_its_name():
    tickets = Tickets()
    token = tickets.issue('xen', 'u', None, 'operator', 'token:ops')
    encoded = ''.join('%%%02X' % ord(char) for char in token[:4]) + token[4:]
    for target, logged in [
            (f'/a?x={token}', '/a?x=-'),
            (f'/a?x=1&{token}', '/a?x=1&-'),
            (f'/a/{token}/console', '/a/-/console'),
            (f'/a?x={encoded}&y=2', '/a?x=-&y=2'),
            (f'/a?x=({token})', '/a?x=-'),
            (f'/a?{token}=1', '/a?-'),
            (f'/a?x={token}x', f'/a?x={token}x'),  # another value, not this ticket
            ('/a?x=1', '/a?x=1')]:
        assert tickets.hide(target) == logged
    assert tickets.redeem(token) is not None
    assert tickets.hide(f'/a?x={token}') == '/a?x=-'  # spent: still hidden for its lifetime


UPGRADE = ('Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n'
           'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n')


def exchange(server, data):
    """Send raw bytes; the status line of the answer."""
    with socket.create_connection(('127.0.0.1', server.port), timeout=10) as sock:
        sock.sendall(data.encode('latin-1'))
        return sock.recv(65536).split(b'\r\n')[0].decode()


def assert_spent(server, token):
    status, body = refused(server.url(f'{NODE}/console?ticket={token}'), origin=PAGE)
    assert (status, b'"bad_ticket"' in body) == (401, True)


@pytest.mark.parametrize('target', [
    NODE + '/console?x=1;ticket={T}',
    NODE + '/console?ticket+={T}',
    NODE + '/console?TICKET={T}',
    NODE + '/console?ticket%00={T}',
    NODE + '/console;ticket={T}',
    NODE + '/console?dev=serial0&x={T}',
    NODE + '/console?x=%s{T}' % '%20',
    '/libvirt/xen/nodes/{T}/console',
])
def test_a_ticket_the_app_does_not_read_is_spent_and_never_logged(daemon, caplog, target):
    """The secret is the value: wherever a request carries a ticket, under a name the app reads
    as `ticket` or not, it is used up and kept out of the log."""
    server, client, _ = daemon
    token = ticket(client)['Ticket']
    caplog.set_level(logging.INFO, logger='xend_rest.access')
    status = exchange(server, f"GET {target.replace('{T}', token)} HTTP/1.1\r\nHost: "
                      f"localhost\r\n{UPGRADE}\r\n")
    assert not status.startswith('HTTP/1.1 101 ')
    [line] = access_lines(caplog)
    assert token not in line
    assert_spent(server, token)


SERVER_REFUSALS = {  # what the server answers itself, before the app sees the request
    'two Host headers': ('GET {P} HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n', 400),
    'a control character': ('GET {P} HTTP/1.1\r\nHost: localhost\r\nX: a\x01b\r\n\r\n', 400),
    'no Host': ('GET {P} HTTP/1.1\r\n\r\n', 400),
    'Content-Length: x': ('GET {P} HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n',
                          400),
    'chunked': ('GET {P} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n'
                '0\r\n\r\n', 411),
    'head too large': ('GET {P} HTTP/1.1\r\nHost: localhost\r\nX: ' + 'a' * 70000 + '\r\n\r\n',
                       431),
    'HTTP/2.0': ('GET {P} HTTP/2.0\r\nHost: localhost\r\n\r\n', 505),
    'a space in the target': ('GET {P} x HTTP/1.1\r\nHost: localhost\r\n\r\n', 400),
    'a request line too long': ('GET {P}&x=' + 'a' * 70000, 414),
}


@pytest.mark.parametrize('refusal', SERVER_REFUSALS)
def test_a_ticket_on_a_request_the_server_refuses_is_spent_and_never_logged(daemon, caplog,
                                                                            refusal):
    server, client, _ = daemon
    token = ticket(client)['Ticket']
    caplog.set_level(logging.INFO, logger='xend_rest.access')
    template, status = SERVER_REFUSALS[refusal]
    answer = exchange(server, template.replace('{P}', f'{NODE}/console?ticket={token}'))
    assert answer.startswith(f'HTTP/1.1 {status} ')
    [line] = access_lines(caplog)
    assert token not in line and f' {status} ' in line
    assert_spent(server, token)


def test_a_ticket_in_a_head_that_never_ends_is_spent(conn):
    guard = Guard(allowed_origins=[PAGE])
    app = make_app(connection=FixedConnection(conn), guard=guard)
    server = Daemon(app, on_refused=app.refused, timeout=0.5)
    token = ticket(Client(app), token=None)['Ticket']
    with socket.create_connection(('127.0.0.1', server.port), timeout=10) as sock:
        sock.sendall(f'GET {NODE}/console?ticket={token} HTTP/1.1\r\nHost: local'.encode())
        assert sock.recv(100) == b''  # closed after `timeout`, unanswered
    assert_spent(server, token)
    server.close()


def test_the_servers_own_refusals_hide_tickets_too(daemon, caplog):
    """A request the server refuses before the app runs (here: a malformed header line) is
    logged from its raw request line: a ticket there is hidden as well."""
    server, client, _ = daemon
    token = ticket(client)['Ticket']
    caplog.set_level(logging.INFO, logger='xend_rest.access')
    with socket.create_connection(('127.0.0.1', server.port), timeout=10) as sock:
        sock.sendall(f'GET {NODE}/console?%74icket={token} HTTP/1.1\r\nHost: x\r\n'
                     'bad header\r\n\r\n'.encode())
        assert sock.recv(100).startswith(b'HTTP/1.1 400 ')
    [line] = access_lines(caplog)
    assert token not in line and '?%74icket=- 400 ' in line


def test_metrics_count_sessions_and_their_bytes(daemon):
    server, client, sessions = daemon
    with connect(server.url(NODE + '/console'),
                 additional_headers={'Authorization': 'Bearer ' + 'o' * 20}) as ws:
        ws.send(b'echo 42\n')
        seen = b''
        while b'42\r\n' not in seen:
            seen += ws.recv(timeout=10)
        scrape = client.request('GET', '/metrics', headers={
            'HTTP_AUTHORIZATION': 'Bearer ' + 'r' * 20}).body.decode()
        assert 'xend_console_sessions 1\n' in scrape
    until(lambda: len(sessions) == 0)
    scrape = client.request('GET', '/metrics', headers={
        'HTTP_AUTHORIZATION': 'Bearer ' + 'r' * 20}).body.decode()
    assert 'xend_console_sessions 0\n' in scrape
    assert 'xend_console_bytes_total{direction="in"} 8\n' in scrape
    assert 'xend_console_bytes_total{direction="out"} %d\n' % len(b'echo 42\n42\r\n') in scrape


@pytest.mark.parametrize('given, compared', [
    ('https://Admin.Example.org', 'https://admin.example.org'),
    ('https://admin.example.org:443/', 'https://admin.example.org'),
    ('http://admin.example.org:80', 'http://admin.example.org'),
    ('https://admin.example.org:8443', 'https://admin.example.org:8443'),
])
def test_origins_are_compared_normalized(given, compared):
    assert origin_name(given) == compared


def test_tickets_are_redacted_from_targets():
    assert redact_ticket('/x/console?dev=serial0&ticket=abc&force=1') == \
        '/x/console?dev=serial0&ticket=-&force=1'
    assert redact_ticket('/x/vnc?ticket=abc') == '/x/vnc?ticket=-'


def test_an_upgrade_to_a_foreign_host_is_refused(daemon, conn):
    """A DNS-rebinding page names its own host: the Host check applies to upgrades too."""
    server, client, _ = daemon
    issued = ticket(client)
    with socket.create_connection(('127.0.0.1', server.port), timeout=10) as sock:
        sock.sendall(('GET %s HTTP/1.1\r\nHost: rebound.example\r\nOrigin: %s\r\n'
                      'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n'
                      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'
                      % (issued['Path'], PAGE)).encode())
        answer = sock.recv(65536).decode()
    assert answer.startswith('HTTP/1.1 403 ')
    assert '"foreign_host"' in answer
    assert conn.streams == []


def test_the_daemon_spends_a_ticket_its_server_refuses(tmp_path):
    """As the CLI wires it: a request the daemon's server refuses (two Host headers) uses up
    the ticket it carries, and the daemon's log never holds it (the demo: the test driver has
    no consoles, so a good ticket is answered 501 there, a spent one 401)."""
    with socket.create_server(('127.0.0.1', 0)) as probe:
        port = probe.getsockname()[1]
    env = dict(os.environ)
    env.pop('XEND_REST_URI', None)
    log = tmp_path / 'daemon.log'
    with open(log, 'w') as out:
        daemon = subprocess.Popen([sys.executable, 'xend_rest.py', '--demo', '--listen',
                                   f'127.0.0.1:{port}'], cwd=REPO, env=env, stderr=out)
    try:
        def send(data):
            for _ in range(100):
                try:
                    with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
                        sock.sendall(data.encode())
                        return sock.recv(65536).decode('latin-1')
                except ConnectionRefusedError:
                    time.sleep(0.1)
            raise AssertionError('the daemon did not listen')

        console = '/libvirt/xen/nodes/web-pv1/console'
        issued = send(f'POST {console}/ticket HTTP/1.1\r\nHost: localhost\r\n'
                      'Content-Length: 0\r\n\r\n')
        token = json.loads(issued.partition('\r\n\r\n')[2])['Ticket']
        use = f'GET {console}?ticket={token} HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}'
        assert send(use + 'Host: localhost\r\n\r\n').startswith('HTTP/1.1 400 ')
        answer = send(use + '\r\n')
        assert answer.startswith('HTTP/1.1 401 ') and '"bad_ticket"' in answer
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
    assert token not in log.read_text()
    assert ' 400 ' in log.read_text()
