"""Who made a request: named in the access log (a token's name, a unix peer's uid, a client
certificate's subject: see test_server_security.py), and bounded in what one caller may hold
(event streams and waits, console sessions)."""
import http.client
import logging
import os
import re

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
