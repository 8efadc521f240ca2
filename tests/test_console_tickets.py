"""Browsers and consoles: the Origin check on upgrades, allowed-origins, and console tickets
(single-use, short-lived, bound to the connection, the domain, the route and the role)."""
import http.client
import json
import logging
import socket
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import Client, until
from test_consoles import upgrade_headers
from consoles_support import FakeConnection, FixedConnection, Daemon
from xend_rest.app import make_app
from xend_rest.bridges import Bridges
from xend_rest.connection import start_event_loop
from xend_rest.security import Guard, origin_name
from xend_rest.tickets import Tickets, redact_ticket

PAGE = 'https://admin.example.org'
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
    server = Daemon(app)
    yield server, Client(app), sessions
    assert sessions.close_all(timeout=10)
    server.close()


def ticket(client, route='console', token='o' * 20, node=NODE):
    answer = client.request('POST', node + '/console/ticket', query='for=' + route,
                            headers={'HTTP_AUTHORIZATION': 'Bearer ' + token})
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
    ('/a?ticket', '/a?ticket'),  # no value: nothing to hide
    ('/a?tickets=T&xticket=T', '/a?tickets=T&xticket=T'),  # other names: the app reads no ticket
    ('/a/ticket=T', '/a/ticket=T'),  # a path, not a query
])
def test_the_log_hides_every_value_the_app_reads_as_a_ticket(target, logged):
    assert redact_ticket(target) == logged


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
