"""The server's side of security, through real sockets: mutual TLS with handshakes that never
stall the server, unix socket permissions, slow clients cut off, refusal to start exposed."""
import hashlib
import http.client
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time

import libvirt
import pytest

from conftest import UnixHTTPConnection, node_xml, serving, until
from xend_rest import cli, listeners, security
from xend_rest.app import make_app
from xend_rest.server import Server

NODES = '/libvirt/xen/nodes'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENSSL_SUBJECT = '/CN=%s'
FORGER_SUBJECT = '/O=xend-rest tests/CN=Jürgen Smith\nINFO xend_rest.access: GET forged 200'


def openssl(*args, cwd):
    subprocess.run(['openssl', *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    """A throwaway CA, a server certificate for 127.0.0.1, clients 'alice' and 'monitor', an
    'eve' signed by another CA, a 'nocn' of our CA whose subject has no CN (its name is only
    in subjectAltName), two of our CA that name two CNs ('twocns': two RDNs; 'multicn': one
    multi-valued RDN, which DER sorts: admin first), and a 'forger' whose CN holds a non-ASCII
    letter, spaces and a newline followed by a fake log line. Made at test time: no key is
    ever committed."""
    d = tmp_path_factory.mktemp('pki')
    for ca in ('ca', 'otherca'):
        openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj',
                OPENSSL_SUBJECT % ca, '-keyout', ca + '.key', '-out', ca + '.pem', cwd=d)
    (d / 'san.ext').write_text('subjectAltName=IP:127.0.0.1,DNS:localhost\n')
    (d / 'alice-san.ext').write_text('subjectAltName=DNS:alice\n')
    for name, subject, ca, extra in (
            ('server', OPENSSL_SUBJECT % 'server', 'ca', ['-extfile', 'san.ext']),
            ('alice', OPENSSL_SUBJECT % 'alice', 'ca', []),
            ('monitor', OPENSSL_SUBJECT % 'monitor', 'ca', []),
            ('eve', OPENSSL_SUBJECT % 'eve', 'otherca', []),
            ('nocn', '/O=xend-rest tests', 'ca', ['-extfile', 'alice-san.ext']),
            ('twocns', '/CN=alice/CN=admin', 'ca', []),
            ('multicn', '/CN=alice+CN=admin', 'ca', []),
            ('forger', FORGER_SUBJECT, 'ca', [])):
        openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', subject, '-utf8',
                '-multivalue-rdn', '-keyout', name + '.key', '-out', name + '.csr', cwd=d)
        openssl('x509', '-req', '-in', name + '.csr', '-CA', ca + '.pem', '-CAkey', ca + '.key',
                '-CAcreateserial', '-days', '1', '-out', name + '.pem', *extra, cwd=d)
    return d


@pytest.fixture
def app(node_uri):
    made = []

    def make(**guard_settings):
        made.append(make_app(uri=node_uri, guard=security.Guard(**guard_settings)))
        return made[-1]
    yield make
    for each in made:
        each.close()


def tls_client(server, pki, who=None, timeout=10):
    context = ssl.create_default_context(cafile=str(pki / 'ca.pem'))
    if who:
        context.load_cert_chain(str(pki / (who + '.pem')), str(pki / (who + '.key')))
    host, port = server.addresses[0]
    return http.client.HTTPSConnection(host, port, context=context, timeout=timeout)


def call(conn, method, path, body=None, headers=None):
    headers = dict(headers or {})
    if body is not None:
        body = json.dumps(body).encode()
        headers['Content-Type'] = 'application/json'
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else None


def mtls_server(app, pki, **guard):
    context = security.tls_context(str(pki / 'server.pem'), str(pki / 'server.key'), str(pki / 'ca.pem'))
    return serving(app(**guard), tls=context, workers=2)


def domain_state(node_uri_conn, name):
    return node_uri_conn.lookupByName(name).state()[0]


# -- mutual TLS -----------------------------------------------------------------------------

def test_a_client_with_a_certificate_from_our_ca_is_served(app, pki):
    with mtls_server(app, pki) as server:
        conn = tls_client(server, pki, 'alice')
        status, body = call(conn, 'GET', NODES + '/json')
        assert status == 200 and {d['domain']['name'] for d in body} >= {'web', 'db'}
        assert call(conn, 'POST', NODES + '/web/destroy')[0] == 204  # same connection, kept alive


@pytest.mark.parametrize('who', [None, 'eve'])
def test_a_client_without_a_good_certificate_gets_no_answer(app, pki, who):
    with mtls_server(app, pki) as server:
        conn = tls_client(server, pki, who)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            call(conn, 'POST', NODES + '/web/destroy')
        conn.close()
        status, _ = call(tls_client(server, pki, 'alice'), 'GET', NODES + '/web/json')
        assert status == 200
        assert server.app.hypervisor.connection.get().lookupByName('web').isActive()


def test_plain_http_to_a_tls_listener_gets_no_answer(app, pki):
    with mtls_server(app, pki) as server:
        with socket.create_connection(server.addresses[0], timeout=10) as sock:
            sock.sendall(b'POST ' + NODES.encode() + b'/web/destroy HTTP/1.1\r\nHost: localhost\r\n\r\n')
            try:
                answer = sock.recv(65536)
            except ConnectionResetError:
                answer = b''
            assert b'HTTP/1.1 2' not in answer
        assert server.app.hypervisor.connection.get().lookupByName('web').isActive()


def test_allowed_clients_and_their_roles(app, pki):
    clients = security.parse_tls_clients('alice monitor:read')
    with mtls_server(app, pki, tls_clients=clients) as server:
        monitor = tls_client(server, pki, 'monitor')
        assert call(monitor, 'GET', NODES + '/json')[0] == 200
        status, body = call(monitor, 'POST', NODES + '/web/destroy')
        assert status == 403 and body['code'] == 'forbidden'
        assert server.app.hypervisor.connection.get().lookupByName('web').isActive()
        assert call(tls_client(server, pki, 'alice'), 'POST', NODES + '/web/destroy')[0] == 204


def test_a_certificate_without_a_cn_is_not_an_allowed_client(app, pki):
    """With tls-allowed-clients, a certificate from our CA whose subject has no CN (only a SAN
    naming an allowed client) gets nothing: 403, and nothing changes."""
    clients = security.parse_tls_clients('alice monitor:read')
    with mtls_server(app, pki, tls_clients=clients) as server:
        nocn = tls_client(server, pki, 'nocn')
        for method, path in (('POST', NODES + '/web/destroy'), ('GET', NODES + '/json')):
            status, body = call(nocn, method, path)
            assert status == 403
            assert body == {'code': 'forbidden',
                            'message': 'a client certificate without a CN is not allowed'}
        assert server.app.hypervisor.connection.get().lookupByName('web').isActive()


@pytest.mark.parametrize('allowed', [None, 'alice:read admin'])
@pytest.mark.parametrize('who', ['twocns', 'multicn'])
def test_a_certificate_that_names_two_cns_is_refused(app, pki, who, allowed):
    """Which CN would name the client is anybody's guess (a dict of the subject took the last
    one: here admin, for a certificate that also says alice): 403, whatever the CNs' roles."""
    clients = security.parse_tls_clients(allowed) if allowed else None
    with mtls_server(app, pki, tls_clients=clients) as server:
        conn = tls_client(server, pki, who)
        for method, path in (('POST', NODES + '/web/destroy'), ('GET', NODES + '/json')):
            status, body = call(conn, method, path)
            assert (status, body['code']) == (403, 'ambiguous_certificate')
        assert 'names 2 CNs' in body['message']
        assert server.app.hypervisor.connection.get().lookupByName('web').isActive()


def test_the_access_log_names_a_certificate_by_its_subject(app, pki, caplog):
    """RFC 4514's form, most specific first, each character outside printable ASCII
    percent-encoded: a subject cannot forge a line, nor shift the fields."""
    caplog.set_level('INFO', logger='xend_rest.access')
    with mtls_server(app, pki) as server:
        for who in ('alice', 'forger'):
            assert call(tls_client(server, pki, who), 'GET', NODES + '/json')[0] == 200
    lines = [r.getMessage() for r in caplog.records if r.name == 'xend_rest.access']
    assert [line.split(' ')[-1] for line in lines] == [
        'cert:CN=alice',
        'cert:CN=J%C3%BCrgen%20Smith%0AINFO%20xend_rest.access:%20GET%20forged%20200,'
        'O=xend-rest%20tests']
    assert all(line.count(' ') == 6 for line in lines)


def test_silent_clients_do_not_stall_handshakes(app, pki):
    """Connections that never start their handshake cost a descriptor, not the server."""
    with mtls_server(app, pki) as server:
        silent = [socket.create_connection(server.addresses[0], timeout=10) for _ in range(50)]
        try:
            for _ in range(3):
                assert call(tls_client(server, pki, 'alice'), 'GET', NODES + '/json')[0] == 200
        finally:
            for sock in silent:
                sock.close()


def test_a_stalled_handshake_is_cut_off(app, pki):
    with mtls_server(app, pki) as server:
        server.timeout = 0.5  # the sweep reads it each round
        with socket.create_connection(server.addresses[0], timeout=10) as sock:
            assert sock.recv(1) == b''  # closed by the server, well before our own timeout


# -- tokens over a real socket --------------------------------------------------------------

def test_bearer_tokens_over_tcp(app, tmp_path):
    path = tmp_path / 'tokens'
    path.write_text('%s operator ops\n' % ('t' * 40))
    path.chmod(0o600)
    with serving(app(tokens=security.load_tokens(str(path)))) as server:
        conn = http.client.HTTPConnection(*server.addresses[0], timeout=10)
        status, body = call(conn, 'POST', NODES + '/web/destroy')
        assert status == 401 and body['code'] == 'unauthorized'
        status, _ = call(conn, 'POST', NODES + '/web/destroy',
                         headers={'Authorization': 'Bearer ' + 't' * 40})
        assert status == 204


def test_a_browser_request_is_refused_over_tcp(app):
    with serving(app()) as server:
        conn = http.client.HTTPConnection(*server.addresses[0], timeout=10)
        status, body = call(conn, 'POST', NODES + '/web/destroy',
                            headers={'Origin': 'http://evil.example'})
        assert status == 403 and body['code'] == 'cross_origin'
        status, body = call(conn, 'POST', NODES + '/web/destroy',
                            headers={'Host': 'rebound.evil.example:8000'})
        assert status == 403 and body['code'] == 'foreign_host'
        assert server.app.hypervisor.connection.get().lookupByName('web').isActive()


# -- unix sockets ---------------------------------------------------------------------------

def test_unix_socket_mode_and_group(app, tmp_path):
    path = tmp_path / 'api.sock'
    gid = os.getgid()
    with serving(app(), ['unix:%s' % path], socket_mode=0o600, socket_gid=gid):
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_gid == gid


def test_unix_socket_callers_need_no_token(app, tmp_path):
    path = tmp_path / 'api.sock'
    tokens = {'t' * 40: ('read', 'reader')}
    with serving(app(tokens=tokens), ['unix:%s' % path]):
        status, _ = call(UnixHTTPConnection(str(path)), 'POST', NODES + '/web/destroy')
        assert status == 204


# -- slow clients ---------------------------------------------------------------------------

def test_slowloris_does_not_stop_normal_requests(app):
    """200 half-open connections against 4 workers: heads that never end, and bodies that
    never arrive; normal requests meanwhile still get their answers."""
    with serving(app(), workers=4, timeout=30, request_timeout=30) as server:
        address = server.addresses[0]
        slow = []
        try:
            for index in range(200):
                sock = socket.create_connection(address, timeout=10)
                if index % 2:
                    sock.sendall(b'GET ' + NODES.encode() + b'/json HTTP/1.1\r\nHost: localhost\r\n')
                else:  # a complete head, then a body that never comes: these reach workers
                    sock.sendall(b'POST ' + NODES.encode() + b'/create HTTP/1.1\r\nHost: localhost\r\n'
                                 b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{')
                slow.append(sock)
            for _ in range(5):
                conn = http.client.HTTPConnection(*address, timeout=20)
                assert call(conn, 'GET', NODES + '/web/json')[0] == 200
                conn.close()
        finally:
            for sock in slow:
                sock.close()


@pytest.mark.parametrize('buffered_up_to, timeout, request_timeout', [
    (1 << 20, 30, 0.5), (10, 0.5, 30)], ids=['by the selector', 'by the worker'])
def test_a_body_that_never_arrives_is_cut_off(app, buffered_up_to, timeout, request_timeout):
    """The selector gives a buffered body request-timeout; a worker streaming a larger one waits
    at most `timeout` for each read."""
    with serving(app(), workers=1, timeout=timeout, request_timeout=request_timeout,
                 max_body=buffered_up_to) as server:
        with socket.create_connection(server.addresses[0], timeout=20) as sock:
            sock.sendall(b'POST ' + NODES.encode() + b'/create HTTP/1.1\r\nHost: localhost\r\n'
                         b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{')
            answer = sock.recv(65536)
        assert answer.startswith(b'HTTP/1.1 408 ')
        assert b'"code": "timeout"' in answer
        conn = http.client.HTTPConnection(*server.addresses[0], timeout=20)
        assert call(conn, 'GET', NODES + '/json')[0] == 200  # the one worker is free again


def counting_app(environ, start_response):
    """Reads the whole body and answers its length and SHA-256."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: environ['wsgi.input'].read(65536), b''):
        digest.update(chunk)
        size += len(chunk)
    body = json.dumps({'size': size, 'sha256': digest.hexdigest()}).encode()
    start_response('200 OK', [('Content-Type', 'application/json'),
                              ('Content-Length', str(len(body)))])
    return [body]


def test_a_streamed_body_that_keeps_arriving_outlasts_the_request_timeout():
    """An upload larger than max-body, sent steadily for longer than request-timeout: a worker
    streams it, and it all arrives (a long upload is not a slow client)."""
    data = os.urandom(300 * 1024)
    sent = []

    def steadily():  # 30 pieces over about 1.5 s
        started = time.monotonic()
        for offset in range(0, len(data), 10 * 1024):
            yield data[offset:offset + 10 * 1024]
            time.sleep(0.05)
        sent.append(time.monotonic() - started)
    with serving(counting_app, workers=1, timeout=5, request_timeout=0.5, max_body=1024) as server:
        conn = http.client.HTTPConnection(*server.addresses[0], timeout=20)
        conn.request('PUT', '/upload', body=steadily(), headers={
            'Content-Length': str(len(data)), 'Content-Type': 'application/octet-stream'})
        response = conn.getresponse()
        assert sent[0] > 0.5  # the premise: it took longer than request-timeout
        assert response.status == 200
        assert json.loads(response.read()) == {'size': len(data),
                                               'sha256': hashlib.sha256(data).hexdigest()}


# -- clients that stall cost a descriptor, never a worker (issue 19, sections 2 and 9) ------

PING = b'GET /_ping HTTP/1.1\r\nHost: localhost\r\n\r\n'
SMALL_BODY = 1024  # max_body of these servers: larger bodies are streamed


def body_head(length, method=b'POST'):
    return (b'%s /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n'
            b'Content-Length: %d\r\n\r\n' % (method, length))


# How a request body can stall: what each stalled client sends at once (behind a /_ping in the
# same write, or alone), then nothing more.
STALLED_BODIES = {
    'pipelined, none of it': PING + body_head(100),
    'pipelined, part of it': PING + body_head(100) + b'{"a": ',
    'alone, part of it': body_head(100) + b'{"a": ',
    'pipelined, chunked': PING + b'POST /upload HTTP/1.1\r\nHost: localhost\r\n'
                                 b'Transfer-Encoding: chunked\r\n\r\n10\r\n{"a"',
    'pipelined, streamed (larger than max-body)': PING + body_head(100 * SMALL_BODY) + b'x' * 100,
    'alone, streamed (larger than max-body)': body_head(100 * SMALL_BODY) + b'x' * 100,
}


def read_response(sock):
    """One response with a Content-Length off a raw socket, read no further than its end (the
    next one may be behind it): (status, body). ConnectionError if it is cut short."""
    head = b''
    while b'\r\n\r\n' not in head:
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError('closed before the end of the head')
        head += byte
    lines = head.decode('latin-1').split('\r\n')
    length = next(int(line.partition(':')[2]) for line in lines
                  if line.lower().startswith('content-length:'))
    body = bytearray()
    while len(body) < length:
        data = sock.recv(min(length - len(body), 1 << 20))
        if not data:
            raise ConnectionError(f'closed after {len(body)} of {length} body bytes')
        body += data
    return int(lines[0].split(' ')[1]), bytes(body)


def stalled_server(app, workers=2, **options):
    """Two workers, one serving at a time, and deadlines far beyond any wait of these tests: a
    request answered while the stalled ones wait was not served after a stalled one timed out."""
    options = {'timeout': 60, 'request_timeout': 60, 'max_body': SMALL_BODY, **options}
    return serving(app, workers=workers, concurrency=1, **options)


def ping(server, headers=None):
    """GET /_ping on a new connection: the status, or an error once 10 s have gone by (the
    stalled clients' deadlines are 60 s away)."""
    conn = http.client.HTTPConnection(*server.addresses[0], timeout=10)
    try:
        conn.request('GET', '/_ping', headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def peek(sock):
    """The next byte the server sent (left to read), b'' once it closed, None while nothing came
    (on a TLS socket, of the records under it)."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return socket.socket.recv(sock, 1, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    except ConnectionError:
        return b''
    finally:
        sock.settimeout(timeout)


def still_waiting(sock):
    """Whether the server has neither answered nor closed this connection (yet)."""
    return peek(sock) is None


@pytest.mark.parametrize('way', STALLED_BODIES)
def test_as_many_stalled_bodies_as_workers_leave_ping_answered(way):
    """Each of `workers` clients stalls a body (after a /_ping of its own that it gets answered,
    in the same write, for the pipelined ways): a /_ping of another client is still answered
    while every stalled body still waits, a long way from its deadline."""
    data = STALLED_BODIES[way]
    with stalled_server(counting_app) as server:
        stalled = [socket.create_connection(server.addresses[0], timeout=10)
                   for _ in range(server.workers)]
        try:
            for sock in stalled:
                sock.sendall(data)
                if data.startswith(PING):  # it reached a worker, which answered the first
                    assert read_response(sock)[0] == 200
            for _ in range(3):
                assert ping(server) == 200
            if 'chunked' in way:  # refused at once, not held: 411
                assert [read_response(sock)[0] for sock in stalled] == [411] * len(stalled)
            elif 'streamed' in way:  # one streams (holding a worker), the rest are turned away
                assert sum(still_waiting(sock) for sock in stalled) == 1
            else:
                assert all(still_waiting(sock) for sock in stalled)
        finally:
            for sock in stalled:
                sock.close()


def test_a_body_trickled_a_byte_at_a_time_behind_a_ping_holds_no_worker():
    """`workers` clients trickle a body of at most max-body a byte at a time, each behind a
    pipelined /_ping, and hold back its last byte until other clients have been served: they
    are, and the bodies then arrive whole."""
    body = b'{"trickled": "' + b'x' * 40 + b'"}'
    with stalled_server(counting_app) as server:
        stalled = [socket.create_connection(server.addresses[0], timeout=10)
                   for _ in range(server.workers)]
        served = threading.Event()

        def trickle():
            for byte in body[:-1]:
                for sock in stalled:
                    sock.sendall(bytes([byte]))
                time.sleep(0.02)
            served.wait(30)
            for sock in stalled:
                sock.sendall(body[-1:])
        feeder = threading.Thread(target=trickle)
        try:
            for sock in stalled:
                sock.sendall(PING + body_head(len(body)))
                assert read_response(sock)[0] == 200
            feeder.start()
            for _ in range(3):
                assert ping(server) == 200
            served.set()
            for sock in stalled:
                status, answer = read_response(sock)
                assert status == 200 and json.loads(answer)['size'] == len(body)
        finally:
            served.set()
            if feeder.ident:
                feeder.join()
            for sock in stalled:
                sock.close()


def test_unauthenticated_streamed_bodies_hold_no_worker(app):
    """Without a token a streamed upload is answered 401 before its body is read: `workers`
    such clients, each stalling the last bytes of its body, leave /_ping answered."""
    token = 't' * 40
    with stalled_server(app(tokens={token: ('read', 'reader')})) as server:
        stalled = [socket.create_connection(server.addresses[0], timeout=10)
                   for _ in range(server.workers)]
        try:
            for sock in stalled:
                head = body_head(2 * SMALL_BODY, b'PUT').replace(
                    b'/upload', b'/libvirt/xen/images/default/new.raw/upload').replace(
                    b'application/json', b'application/octet-stream')
                sock.sendall(head + b'x' * (SMALL_BODY + 100))  # all but the last bytes
                assert read_response(sock)[0] == 401
            assert ping(server, {'Authorization': 'Bearer ' + token}) == 200
        finally:
            for sock in stalled:
                sock.close()


def test_streamed_bodies_past_max_uploads_are_503_before_they_are_read():
    entered = []

    def app(environ, start_response):
        entered.append(environ['PATH_INFO'])
        return counting_app(environ, start_response)
    with stalled_server(app, workers=4, max_uploads=2) as server:
        data = os.urandom(10 * SMALL_BODY)
        streaming = [socket.create_connection(server.addresses[0], timeout=10) for _ in range(2)]
        for sock in streaming:
            sock.sendall(body_head(len(data)) + data[:100])
        until(lambda: len(entered) == 2)
        with socket.create_connection(server.addresses[0], timeout=10) as sock:
            sock.sendall(body_head(len(data)) + data[:100])
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 503
            assert response.getheader('Retry-After') == '5'
            assert json.loads(response.read())['code'] == 'too_many_uploads'
        assert ping(server) == 200
        for sock in streaming:  # the uploads under way are not disturbed
            sock.sendall(data[100:])
            status, answer = read_response(sock)
            assert status == 200 and json.loads(answer)['size'] == len(data)
            sock.close()
        with socket.create_connection(server.addresses[0], timeout=10) as sock:
            sock.sendall(body_head(len(data)) + data)  # a place is free again
            assert read_response(sock)[0] == 200


def test_bodies_on_their_way_are_bounded_together():
    """Request bodies that have not all arrived are kept in memory: at most max_buffered bytes
    of them together (by their Content-Length). One more is refused before any of it is kept
    (503 too_many_bodies, Retry-After), the others are not disturbed, and a place is free
    again once a body is complete."""
    with stalled_server(counting_app, max_buffered=3 * 1000) as server:
        waiting = [socket.create_connection(server.addresses[0], timeout=10) for _ in range(3)]
        try:
            for sock in waiting:
                sock.sendall(body_head(1000) + b'x' * 10)
            until(lambda: server.awaited_bytes == 3000)
            with socket.create_connection(server.addresses[0], timeout=10) as sock:
                sock.sendall(body_head(1000) + b'x' * 10)
                response = http.client.HTTPResponse(sock)
                response.begin()
                assert (response.status, response.getheader('Retry-After')) == (503, '5')
                assert json.loads(response.read())['code'] == 'too_many_bodies'
            assert ping(server) == 200
            waiting[0].sendall(b'x' * 990)
            assert read_response(waiting[0]) == (200, json.dumps(
                {'size': 1000, 'sha256': hashlib.sha256(b'x' * 1000).hexdigest()}).encode())
            waiting[0].sendall(body_head(1000))  # the next request on it: a place is free
            until(lambda: server.awaited_bytes == 3000)
            assert all(still_waiting(sock) for sock in waiting)
        finally:
            for sock in waiting:
                sock.close()
        until(lambda: server.awaited_bytes == 0)


def test_a_body_is_kept_only_for_a_caller_with_credentials(tmp_path):
    """With tokens, a client without one that sends the head of a request with a body, and part
    of the body, is answered 401 at once, before any of its body is kept: 600 such clients
    each sending all but a byte of 1 MiB made the daemon hold 700 MiB. With its token, the
    same request waits for the rest of its body."""
    token = 't' * 32
    tokens = tmp_path / 'tokens'
    tokens.write_text(token + ' admin ops\n')
    tokens.chmod(0o600)
    node = tmp_path / 'node.xml'
    node.write_text(node_xml())
    port = cli_port()
    log = tmp_path / 'daemon.log'
    with open(log, 'w') as stderr:
        daemon = subprocess.Popen(
            [sys.executable, 'xend_rest.py', '--uri', f'test://{node}', '--tokens-file',
             str(tokens), '--listen', f'127.0.0.1:{port}', '--state-dir', str(tmp_path / 'state')],
            cwd=REPO, stderr=stderr)
    head = (b'POST /libvirt/xen/nodes/create HTTP/1.1\r\nHost: localhost\r\n%s'
            b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"domain": ')
    try:
        until(lambda: 'listening on' in log.read_text())
        with socket.create_connection(('127.0.0.1', port), timeout=10) as stranger, \
                socket.create_connection(('127.0.0.1', port), timeout=10) as known:
            stranger.sendall(head % b'')
            assert read_response(stranger)[0] == 401
            known.sendall(head % b'Authorization: Bearer %s\r\n' % token.encode())
            time.sleep(1)
            assert still_waiting(known)
            known.sendall(b' ' * (100000 - 11))
            assert read_response(known)[0] == 400  # not a definition: it was read, then judged
    finally:
        daemon.terminate()
        daemon.wait(10)


def holding_app(release):
    """GET /hold?KEY holds its worker until `release` is set, once the server said it may (as
    event streams and waits do: xend_rest.hold, for the caller KEY), else 503; anything else is
    counting_app."""
    def app(environ, start_response):
        if environ['PATH_INFO'] != '/hold':
            return counting_app(environ, start_response)
        status = '503 Service Unavailable'
        if environ['xend_rest.hold'](environ['QUERY_STRING']):
            release.wait(30)
            status = '200 OK'
        start_response(status, [('Content-Length', '0')])
        return [b'']
    return app


def test_uploads_and_held_requests_never_take_every_worker():
    """With 4 workers serving 1 at a time, 3 are to spare for requests that hold one (uploads,
    and those the app says will: event streams, waits), and one caller gets at most half of
    them (1): past either it is refused, and /_ping is still answered."""
    release = threading.Event()
    hold = b'GET /hold?%s HTTP/1.1\r\nHost: localhost\r\n\r\n'
    data = os.urandom(10 * SMALL_BODY)
    with stalled_server(holding_app(release), workers=4, max_uploads=2) as server:
        socks = [socket.create_connection(server.addresses[0], timeout=10) for _ in range(6)]
        upload, alice, alice_again, bob, carol, second_upload = socks
        try:
            upload.sendall(body_head(len(data)) + data[:100])
            alice.sendall(hold % b'alice')
            until(lambda: server.held == 2)
            alice_again.sendall(hold % b'alice')
            assert read_response(alice_again)[0] == 503  # half of 3 for one caller
            bob.sendall(hold % b'bob')
            until(lambda: server.held == 3)
            carol.sendall(hold % b'carol')
            assert read_response(carol)[0] == 503  # nothing more to spare
            second_upload.sendall(body_head(len(data)) + data[:100])
            response = http.client.HTTPResponse(second_upload)
            response.begin()
            assert (response.status, json.loads(response.read())['code']) == \
                (503, 'too_many_uploads')
            assert ping(server) == 200
            release.set()
            upload.sendall(data[100:])
            assert [read_response(sock)[0] for sock in (upload, alice, bob)] == [200] * 3
            until(lambda: server.held == 0)
        finally:
            release.set()
            for sock in socks:
                sock.close()


def large_answer_app(size, chunk=None):
    """Answers any path but /_ping with `size` bytes: at once (a JSON list's way), or in chunks of
    `chunk` bytes from an iterable (an image download's way) whose close() is noted."""
    closed = []

    class Chunks:
        def __iter__(self):
            for offset in range(0, size, chunk):
                yield b'x' * min(chunk, size - offset)

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        if environ['PATH_INFO'] == '/_ping':
            start_response('200 OK', [('Content-Length', '2')])
            return [b'OK']
        start_response('200 OK', [('Content-Type', 'application/octet-stream'),
                                  ('Content-Length', str(size))])
        return Chunks() if chunk else [b'x' * size]
    app.closed = closed
    return app


def slow_reader(server, path='/large', headers=b''):
    """A client that asks for an answer and reads none of it (a small receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(server.addresses[0])
    sock.sendall(b'GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n' % (path.encode(), headers))
    return sock


def answer_begun(sock):
    return bool(peek(sock))


def body_size(sock):
    """The size of the body of a 200 answer, read whole."""
    status, body = read_response(sock)
    assert status == 200
    return len(body)


SIZE = 16 << 20  # more than the kernel's buffers on both sides take


@pytest.mark.parametrize('chunk', [None, 1 << 20], ids=['at once', 'streamed'])
def test_as_many_slow_readers_as_workers_leave_ping_answered(chunk):
    """`workers` clients ask for 16 MiB each and read none of it: /_ping is answered meanwhile,
    and each slow reader still gets its whole answer once it reads."""
    app = large_answer_app(SIZE, chunk)
    with stalled_server(app) as server:
        readers = [slow_reader(server) for _ in range(server.workers)]
        try:
            until(lambda: all(answer_begun(sock) for sock in readers))
            for _ in range(3):
                assert ping(server) == 200
            for sock in readers:
                assert body_size(sock) == SIZE
        finally:
            for sock in readers:
                sock.close()


def test_slow_readers_of_the_apps_large_answers_hold_no_worker(tmp_path, monkeypatch):
    """The real app's List and /metrics on 200 domains, to clients that read nothing (the
    server's send buffer made small, so that these answers do not fit in the kernel's buffers):
    /_ping is still answered, and the answers arrive whole once read."""
    accepted = listeners.accepted

    def small_send_buffer(sock, *args):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return accepted(sock, *args)
    monkeypatch.setattr(listeners, 'accepted', small_send_buffer)
    (tmp_path / 'node.xml').write_text(
        node_xml([('vm%03d' % i, None, 'xen', '') for i in range(200)]))
    app = make_app(uri='test://%s' % (tmp_path / 'node.xml'))
    try:
        with stalled_server(app) as server:
            readers = [slow_reader(server, path) for path in (NODES + '/json?all=1', '/metrics')]
            try:
                until(lambda: all(answer_begun(sock) for sock in readers))
                for _ in range(3):
                    assert ping(server) == 200
                listed = json.loads(read_response(readers[0])[1])
                assert len(listed) == 200
                assert read_response(readers[1])[1].count(b'\nxend_domain_state{') == 200
            finally:
                for sock in readers:
                    sock.close()
    finally:
        app.close()


@pytest.mark.parametrize('chunk', [None, 1 << 20], ids=['at once', 'streamed'])
def test_a_large_answer_over_tls_to_a_slow_reader_arrives_whole(pki, chunk):
    """TLS writes that the socket does not take wait in the epoll set too: a /_ping is answered
    meanwhile, and the answer, once read, is whole."""
    context = security.tls_context(str(pki / 'server.pem'), str(pki / 'server.key'),
                                   str(pki / 'ca.pem'))
    client = ssl.create_default_context(cafile=str(pki / 'ca.pem'))
    client.load_cert_chain(str(pki / 'alice.pem'), str(pki / 'alice.key'))
    with stalled_server(large_answer_app(SIZE, chunk), tls=context) as server:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(server.addresses[0])
        with client.wrap_socket(raw, server_hostname='127.0.0.1') as sock:
            sock.settimeout(10)
            sock.sendall(b'GET /large HTTP/1.1\r\nHost: localhost\r\n\r\n')
            until(lambda: answer_begun(sock))
            other = tls_client(server, pki, 'alice')
            other.request('GET', '/_ping')
            assert other.getresponse().read() == b'OK'
            assert body_size(sock) == SIZE


def test_an_answer_nobody_reads_is_cut_off_after_timeout_and_its_iterable_closed():
    app = large_answer_app(SIZE, 1 << 20)
    with stalled_server(app, timeout=0.5) as server:
        with slow_reader(server) as sock:
            until(lambda: app.closed)
            assert ping(server) == 200
            sock.settimeout(10)
            with pytest.raises(ConnectionError):
                read_response(sock)


def test_answers_waiting_for_slow_clients_are_bounded_in_memory():
    """Past max_parked bytes of answers waiting for their clients, the next client that does not
    read is cut off; the one already waiting still gets its whole answer."""
    app = large_answer_app(SIZE)
    with stalled_server(app, max_parked=SIZE // 2) as server:
        with slow_reader(server) as first:
            until(lambda: server.unsent_bytes)
            with slow_reader(server) as second:
                with pytest.raises(ConnectionError):
                    read_response(second)
            assert body_size(first) == SIZE


def test_pipelined_requests_behind_a_slowly_read_answer_are_answered_in_order():
    app = large_answer_app(SIZE)
    with stalled_server(app) as server:
        with slow_reader(server) as sock:
            sock.sendall(PING * 3)
            until(lambda: answer_begun(sock))
            assert ping(server) == 200
            assert body_size(sock) == SIZE
            assert [read_response(sock) for _ in range(3)] == [(200, b'OK')] * 3


def test_out_of_descriptors_the_daemon_rests_its_listeners_and_says_so_once(tmp_path):
    """A daemon whose clients hold every file descriptor it may open (here 64: RLIMIT_NOFILE,
    lowered for it alone) cannot accept more: the waiting connection keeps the listener
    readable. It rests its listeners and writes one line for the whole episode, not one per
    try (which spun at full CPU and wrote 200,000 lines in 5 s); the connections it has are
    served meanwhile, and once they close, the waiting ones are accepted and answered."""
    import resource
    port = cli_port()
    log = tmp_path / 'daemon.log'
    limit = 64

    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    with open(log, 'w') as stderr:
        daemon = subprocess.Popen([sys.executable, 'xend_rest.py', '--demo', '--listen',
                                   f'127.0.0.1:{port}'], cwd=REPO, stderr=stderr,
                                  preexec_fn=lower)
    held = []
    try:
        until(lambda: 'listening on' in log.read_text())
        for _ in range(limit + 16):
            held.append(socket.create_connection(('127.0.0.1', port), timeout=10))
        until(lambda: 'accept failed' in log.read_text())
        first = held[0]
        time.sleep(3)  # several more tries (0.5 s apart)
        first.sendall(PING)
        assert read_response(first)[0] == 200  # those accepted are served
        assert log.read_text().count('accept failed') == 1
        for sock in held[1:]:
            sock.close()
        last = held[-1] = socket.create_connection(('127.0.0.1', port), timeout=10)
        last.sendall(PING)
        assert read_response(last)[0] == 200
        until(lambda: 'accepting again' in log.read_text())
    finally:
        for sock in held:
            sock.close()
        daemon.terminate()
        daemon.wait(10)
    text = log.read_text()
    assert text.count('accept failed') == 1 and 'Too many open files' in text


def cli_port():
    with socket.create_server(('127.0.0.1', 0)) as sock:
        return sock.getsockname()[1]


@pytest.mark.parametrize('length, status', [('-1', b'400'), ('x', b'400'), ('', b'411')])
def test_bad_lengths_over_tcp(app, length, status):
    with serving(app()) as server:
        with socket.create_connection(server.addresses[0], timeout=10) as sock:
            header = b'Content-Length: %s\r\n' % length.encode() if length else b''
            sock.sendall(b'POST ' + NODES.encode() + b'/create HTTP/1.1\r\nHost: localhost\r\n'
                         b'Content-Type: application/json\r\n' + header + b'\r\n')
            assert sock.recv(65536).split(b' ')[1] == status


# -- start-up -------------------------------------------------------------------------------

def run_cli(*args, timeout=20):
    return subprocess.run([sys.executable, '-m', 'xend_rest', '--demo', *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('listen', ['0.0.0.0:0', '[::]:0', '192.0.2.1:0'])
def test_refuses_to_start_exposed_without_authentication(listen):
    result = run_cli('--listen', listen)
    assert result.returncode == 2
    assert 'refusing to start' in result.stderr and '--insecure' in result.stderr


def test_tls_without_client_certificates_is_still_exposed(pki):
    result = run_cli('--listen', '0.0.0.0:0', '--tls-cert', str(pki / 'server.pem'),
                     '--tls-key', str(pki / 'server.key'))
    assert result.returncode == 2 and 'refusing to start' in result.stderr


def test_refuses_to_start_with_a_readable_tokens_file(tmp_path):
    path = tmp_path / 'tokens'
    path.write_text('%s admin\n' % ('t' * 40))
    path.chmod(0o644)
    result = run_cli('--listen', '127.0.0.1:0', '--tokens-file', str(path))
    assert result.returncode == 2 and 'chmod 600' in result.stderr


@pytest.mark.parametrize('args', [
    ['--tls-ca', 'x.pem'], ['--tls-cert', '/nonexistent.pem'],
    ['--tls-cert', 'c.pem', '--tls-allowed-clients', 'alice'], ['--socket-group', 'no-such-group-x'],
])
def test_refuses_to_start_with_broken_tls_or_group(args):
    result = run_cli('--listen', '127.0.0.1:0', *args)
    assert result.returncode == 2 and 'refusing to start' in result.stderr


def test_insecure_is_allowed_but_warned(monkeypatch, tmp_path):
    args = cli.parse_args(['--listen', '0.0.0.0:0', '--insecure'])
    guard, tls, gid = cli.build_security(args)
    assert tls is None and guard.tokens == {}
    with pytest.raises(security.ConfigError):
        cli.build_security(cli.parse_args(['--listen', '0.0.0.0:0']))


def tokens_file(tmp_path):
    path = tmp_path / 'tokens'
    path.write_text('%s admin\n' % ('t' * 40))
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize('listen', ['0.0.0.0:0', '[::]:0', '192.0.2.1:0'])
def test_refuses_to_start_with_tokens_in_cleartext_beyond_loopback(tmp_path, listen):
    result = run_cli('--listen', listen, '--tokens-file', tokens_file(tmp_path))
    assert result.returncode == 2
    assert 'refusing to start' in result.stderr and 'in cleartext' in result.stderr
    assert 'set tls-cert and tls-key (HTTPS), or pass --insecure' in result.stderr


def test_tokens_in_cleartext_start_with_insecure_and_a_warning(tmp_path, caplog):
    args = cli.parse_args(['--listen', '0.0.0.0:0', '--tokens-file', tokens_file(tmp_path),
                           '--insecure'])
    guard, tls, _ = cli.build_security(args)
    assert tls is None and guard.tokens
    assert 'INSECURE: 0.0.0.0 is reachable from other machines, and bearer tokens would ' \
        'cross the network in cleartext' in caplog.text


@pytest.mark.parametrize('listen', ['127.0.0.1:0', '[::1]:0', 'localhost:0',
                                    'unix:/run/nonexistent/api.sock'])
def test_tokens_without_tls_on_loopback_or_a_unix_socket_are_allowed(tmp_path, listen):
    guard, tls, _ = cli.build_security(cli.parse_args(['--listen', listen,
                                                       '--tokens-file', tokens_file(tmp_path)]))
    assert tls is None and guard.tokens


def test_exposed_with_tokens_over_tls_or_client_certificates_is_allowed(pki, tmp_path):
    guard, tls, _ = cli.build_security(cli.parse_args([
        '--listen', '0.0.0.0:0', '--tokens-file', tokens_file(tmp_path),
        '--tls-cert', str(pki / 'server.pem'), '--tls-key', str(pki / 'server.key')]))
    assert guard.tokens == {'t' * 40: (security.Grant('admin', None), 'line 1')}
    assert tls.verify_mode == ssl.CERT_NONE  # tokens authenticate; TLS keeps them secret
    assert '0.0.0.0' in guard.allowed_hosts  # the listen address is one of its names
    guard, tls, _ = cli.build_security(cli.parse_args([
        '--listen', '0.0.0.0:0', '--tls-cert', str(pki / 'server.pem'),
        '--tls-key', str(pki / 'server.key'), '--tls-ca', str(pki / 'ca.pem'),
        '--tls-allowed-clients', 'alice monitor:read']))
    assert guard.tokens == {} and guard.tls_clients == {'alice': security.Grant('admin', None),
                                                        'monitor': security.Grant('read', None)}
    assert tls.verify_mode == ssl.CERT_REQUIRED
    assert tls.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.cert_store_stats()['x509_ca'] == 1  # our CA, and only it, signs clients


def test_security_keys_in_the_configuration_file(tmp_path):
    config = tmp_path / 'xend-rest.conf'
    config.write_text('[xend-rest]\nsocket-mode = 640\nallowed-hosts = xen1 xen1.example.org\n'
                      'allowed-paths = /var/lib/xen/images /var/lib/xen/boot\nmax-body = 4096\n'
                      'request-timeout = 5\nmax-uploads = 2\n')
    args = cli.parse_args(['--config', str(config)])
    assert (args.socket_mode, args.allowed_hosts, args.allowed_paths, args.max_body,
            args.request_timeout, args.max_uploads) == (
        0o640, ['xen1', 'xen1.example.org'], ['/var/lib/xen/images', '/var/lib/xen/boot'], 4096,
        5.0, 2)
    assert cli.parse_args([]).max_uploads == 4


def test_an_upgraded_connection_stays_tls(pki):
    """A session gets the TLS-wrapped socket: what it reads and writes is encrypted."""
    from test_server import upgrade, upgrading_app
    context = security.tls_context(str(pki / 'server.pem'), str(pki / 'server.key'), str(pki / 'ca.pem'))
    client = ssl.create_default_context(cafile=str(pki / 'ca.pem'))
    client.load_cert_chain(str(pki / 'alice.pem'), str(pki / 'alice.key'))
    with serving(upgrading_app(), tls=context, workers=2) as server, \
            socket.create_connection(server.addresses[0], timeout=5) as raw, \
            client.wrap_socket(raw, server_hostname='127.0.0.1') as sock:
        assert upgrade(sock, b'early;')[0] == 'HTTP/1.1 101 Switching Protocols'
        assert sock.recv(100) == b'early;'
        sock.sendall(b'over tls')
        assert sock.recv(100) == b'over tls'
        assert server.open_sessions == 1
