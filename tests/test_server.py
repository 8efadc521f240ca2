"""The threaded server, through real sockets: TCP on 127.0.0.1 port 0 and unix sockets."""

import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
import wsgiref.validate

import pytest

from conftest import UnixHTTPConnection, serving, until

from xend_rest.listeners import parse_listen, sd_notify
from xend_rest.server import Server


def echo_app(environ, start_response):
    """Answers the request's method, path, query and body as JSON."""
    body = environ['wsgi.input'].read(int(environ.get('CONTENT_LENGTH') or 0))
    data = json.dumps({
        'method': environ['REQUEST_METHOD'], 'path': environ['PATH_INFO'],
        'query': environ['QUERY_STRING'], 'body': body.decode('latin-1'),
        'remote': environ['REMOTE_ADDR'], 'port': environ['REMOTE_PORT'],
    }).encode()
    start_response('200 OK', [('Content-Type', 'application/json'), ('Content-Length', str(len(data)))])
    return [data]


def client(server, timeout=5):
    host, port = server.addresses[0]
    return http.client.HTTPConnection(host, port, timeout=timeout)


def get_json(conn, method='GET', path='/', body=None, headers={}):
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def raw_connect(server):
    sock = socket.create_connection(server.addresses[0], timeout=5)
    return sock


def read_until_closed(sock):
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b''.join(chunks)
        chunks.append(data)


def raw_exchange(server, data):
    """Send data, half-close, and return everything the server answers before closing."""
    with raw_connect(server) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock)


def split_response(raw):
    head, _, body = raw.partition(b'\r\n\r\n')
    return head.decode('latin-1').split('\r\n'), body


def test_get_returns_json_body():
    with serving(echo_app) as server:
        status, data = get_json(client(server), path='/libvirt/xen/nodes/json?all=1')
    assert status == 200
    assert data['method'] == 'GET'
    assert data['path'] == '/libvirt/xen/nodes/json'
    assert data['query'] == 'all=1'
    assert data['remote'] == '127.0.0.1'


def test_keep_alive_reuses_one_connection():
    with serving(echo_app, workers=2) as server:
        conn = client(server)
        ports = {get_json(conn, path=f'/{i}')[1]['port'] for i in range(50)}
    assert len(ports) == 1


def test_http10_keep_alive_when_asked():
    with serving(echo_app) as server, raw_connect(server) as sock:
        for _ in range(2):
            sock.sendall(b'GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n')
            head = sock.recv(65536)
            assert b'Connection: keep-alive' in head


def test_pipelined_requests_are_answered_in_order():
    requests = b''.join(b'GET /%d HTTP/1.1\r\nHost: x\r\n\r\n' % i for i in range(5))
    with serving(echo_app) as server:
        raw = raw_exchange(server, requests)
    assert raw.count(b'HTTP/1.1 200 OK') == 5
    assert re.findall(rb'"path": "(/\d)"', raw) == [b'/0', b'/1', b'/2', b'/3', b'/4']


def test_forty_concurrent_clients_with_four_workers():
    def slow_app(environ, start_response):
        time.sleep(0.005)
        return echo_app(environ, start_response)

    results = []
    with serving(slow_app, workers=4) as server:
        def one(i):
            results.append(get_json(client(server), path=f'/{i}'))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(data['path'] for _, data in results) == sorted(f'/{i}' for i in range(40))
    assert all(status == 200 for status, _ in results)


def worker_threads():
    return [t for t in threading.enumerate() if t.name.startswith('xend-rest-worker-')]


def test_workers_start_on_demand_and_never_exceed_the_bound():
    before = len(worker_threads())
    busy = threading.Barrier(4, timeout=5)

    def meeting_app(environ, start_response):
        busy.wait()  # four requests must run at once, so four workers must exist
        return echo_app(environ, start_response)

    with serving(meeting_app, workers=4) as server:
        assert len(worker_threads()) == before  # idle: no worker yet
        threads = [threading.Thread(target=lambda: get_json(client(server))) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(worker_threads()) - before == 4


class CountingApp:
    """echo_app that notes the most requests it ever ran at once; /block waits for `release`.
    Each request takes 2 ms, waiting as on libvirtd (the GIL free)."""

    def __init__(self):
        self.lock, self.running, self.most = threading.Lock(), 0, 0
        self.release = threading.Event()

    def __call__(self, environ, start_response):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        if environ['PATH_INFO'] == '/block':
            self.release.wait(10)
        time.sleep(0.002)
        with self.lock:
            self.running -= 1
        return echo_app(environ, start_response)

    def burst(self, server, clients=16, each=5):
        """`clients` keep-alive clients at once, `each` requests each; the most run at once."""
        self.most = 0

        def requests():
            conn = client(server)
            for _ in range(each):
                assert get_json(conn)[0] == 200
        threads = [threading.Thread(target=requests) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self.most


def test_one_worker_serves_at_a_time_while_none_stalls():
    """Threads taking turns on one GIL cost more than they bring: sixteen clients at once are
    served one request after another, by one worker, while no request outlasts `stall`; even
    requests that leave the GIL free, while the daemon is not looking for stalls."""
    app = CountingApp()
    before = len(worker_threads())
    with serving(app, workers=8, stall=30) as server:
        assert app.burst(server) == 1
        assert len(worker_threads()) - before == 1


def blocked_requests(server, count):
    """`count` requests to /block, each on a connection of its own, sent at once."""
    conns = [client(server, timeout=15) for _ in range(count)]
    for conn in conns:
        conn.request('GET', '/block')
    return conns


def answered(conns):
    return [(r.status, json.loads(r.read())['path']) for r in (c.getresponse() for c in conns)]


def test_concurrency_workers_serve_at_once_and_no_more():
    """Through libvirtd a request mostly waits for answers: `concurrency` workers serve at once,
    started as the load needs them; the fifth request waits for one of them."""
    app = CountingApp()
    before = len(worker_threads())
    with serving(app, workers=8, stall=30, concurrency=4) as server:
        try:
            conns = blocked_requests(server, 5)
            until(lambda: app.running == 4)
            time.sleep(0.2)
            assert app.running == 4
            assert len(worker_threads()) - before == 4
        finally:
            app.release.set()
        assert answered(conns) == [(200, '/block')] * 5


def test_a_stalled_request_hands_the_others_to_another_worker():
    """A request that blocks (a slow libvirt call, an event stream) holds its worker, not the
    daemon: once it has run for `stall`, another worker serves the rest; after it, one again."""
    app = CountingApp()
    with serving(app, workers=4, stall=0.05) as server:
        try:
            blocked = blocked_requests(server, 1)
            until(lambda: app.running == 1)
            started = time.monotonic()
            assert get_json(client(server), path='/other')[0] == 200
            assert time.monotonic() - started < 2
        finally:
            app.release.set()
        assert answered(blocked) == [(200, '/block')]
        server.stall = 30  # from here on, a request slowed by a loaded machine is no stall
        app.release.clear()
        blocked = blocked_requests(server, 2)
        try:
            until(lambda: app.running == 1)
            time.sleep(0.2)
            assert app.running == 1  # one serves again: the other request waits for it
        finally:
            app.release.set()
        assert answered(blocked) == [(200, '/block')] * 2


def test_stalled_workers_do_not_count_against_concurrency():
    """An event stream or a long wait stalls its worker for good: the others still serve
    `concurrency` requests at once beside it."""
    app = CountingApp()
    with serving(app, workers=8, stall=0.05, concurrency=2) as server:
        try:
            stream = blocked_requests(server, 1)
            until(lambda: app.running == 1)
            time.sleep(0.2)  # it has stalled; another worker has its turn
            server.stall = 30
            conns = blocked_requests(server, 3)
            until(lambda: app.running == 3)
            time.sleep(0.2)
            assert app.running == 3  # the stream, and two more: the third waits
        finally:
            app.release.set()
        assert answered(stream + conns) == [(200, '/block')] * 4


def test_half_sent_head_does_not_block_other_clients():
    with serving(echo_app, workers=1) as server, raw_connect(server) as slow:
        slow.sendall(b'GET / HTTP/1.1\r\nHost: exa')
        started = time.monotonic()
        assert get_json(client(server))[0] == 200
        assert time.monotonic() - started < 1


def test_idle_keep_alive_connection_does_not_pin_a_worker():
    with serving(echo_app, workers=1) as server:
        idle = client(server)
        assert get_json(idle)[0] == 200
        assert get_json(client(server))[0] == 200
        assert get_json(idle)[0] == 200


def test_idle_keep_alive_connection_closed_after_timeout():
    with serving(echo_app, keepalive_timeout=0.2) as server, raw_connect(server) as sock:
        sock.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
        assert sock.recv(65536).startswith(b'HTTP/1.1 200 ')
        started = time.monotonic()
        assert sock.recv(65536) == b''
        assert time.monotonic() - started < 1


def test_body_with_content_length_is_delivered():
    body = os.urandom(300_000).hex()  # more than one recv()
    with serving(echo_app) as server:
        status, data = get_json(client(server), 'POST', '/x', body=body.encode())
    assert status == 200
    assert data['body'] == body


def test_body_read_line_by_line():
    def lines_app(environ, start_response):
        lines = list(environ['wsgi.input'])
        start_response('200 OK', [])
        return [json.dumps([line.decode() for line in lines]).encode()]

    with serving(lines_app) as server:
        status, data = get_json(client(server), 'POST', '/', body=b'a\nbb\nccc')
    assert data == ['a\n', 'bb\n', 'ccc']


def test_expect_100_continue():
    with serving(echo_app) as server, raw_connect(server) as sock:
        sock.sendall(b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n')
        assert sock.recv(65536) == b'HTTP/1.1 100 Continue\r\n\r\n'
        sock.sendall(b'hello')
        sock.shutdown(socket.SHUT_WR)
        lines, body = split_response(read_until_closed(sock))
    assert lines[0] == 'HTTP/1.1 200 OK'
    assert json.loads(body)['body'] == 'hello'


@pytest.mark.parametrize('request_bytes, status', [
    (b'NONSENSE\r\n\r\n', '400'),
    (b'GET / HTTP/1.1\r\nno colon here\r\n\r\n', '400'),
    (b'GET / HTTP/1.1\r\nContent-Length: ten\r\n\r\n', '400'),
    (b'GET / HTTP/2.0\r\n\r\n', '505'),
    (b'POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', '411'),
])
def test_malformed_request_gets_json_error_and_close(request_bytes, status):
    with serving(echo_app) as server:
        lines, body = split_response(raw_exchange(server, request_bytes))
    assert lines[0].split(' ')[1] == status
    assert 'Connection: close' in lines
    assert json.loads(body)['message']


@pytest.mark.parametrize('request_bytes, code', [
    (b'NONSENSE\r\n\r\n', 'bad_request'),
    (b'GET / HTTP/1.1\r\nContent-Length: ten\r\n\r\n', 'bad_parameter'),
    (b'GET / HTTP/1.1\r\nContent-Length:\r\n\r\n', 'bad_request'),
    (b'GET / HTTP/2.0\r\n\r\n', 'version_not_supported'),
    (b'POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n', 'length_required'),
])
def test_protocol_errors_are_the_apps_json_errors(request_bytes, code):
    with serving(echo_app) as server:
        lines, body = split_response(raw_exchange(server, request_bytes))
    assert body == json.dumps(json.loads(body), sort_keys=True).encode() + b'\n'  # HTTPError.payload()
    assert json.loads(body)['code'] == code
    assert 'Content-Type: application/json' in lines


def test_too_large_head_is_refused():
    with serving(echo_app, max_head=1024) as server:
        lines, body = split_response(raw_exchange(server, b'GET / HTTP/1.1\r\nX-Big: ' + b'a' * 4096))
    assert lines[0] == 'HTTP/1.1 431 Request Header Fields Too Large'


def test_app_exception_gives_json_500_and_logged_traceback(caplog):
    def broken_app(environ, start_response):
        raise RuntimeError('boom')

    with serving(broken_app) as server:
        conn = client(server)
        conn.request('GET', '/')
        response = conn.getresponse()
        body = json.loads(response.read())
    assert response.status == 500
    assert body == {'message': 'internal server error', 'code': 'internal_error'}
    # The traceback is the record's text (its messages escaped, see accesslog.traceback_text).
    [record] = [record for record in caplog.records if record.levelname == 'ERROR']
    assert 'in broken_app' in record.getMessage()
    assert record.getMessage().endswith('\nRuntimeError: boom')


def test_head_has_no_body():
    with serving(echo_app) as server:
        lines, body = split_response(raw_exchange(server, b'HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'))
    assert lines[0] == 'HTTP/1.1 200 OK'
    assert any(line.startswith('Content-Length: ') and line != 'Content-Length: 0' for line in lines)
    assert body == b''


def test_content_length_added_to_list_bodies():
    def app(environ, start_response):
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'abc', b'de']

    with serving(app) as server:
        conn = client(server)
        conn.request('GET', '/')
        response = conn.getresponse()
        assert response.getheader('Content-Length') == '5'
        assert response.read() == b'abcde'


def test_access_log_line(caplog):
    caplog.set_level('INFO', logger='xend_rest.access')
    with serving(echo_app) as server:
        get_json(client(server), path='/a/b?c=d')
    [line] = [r.getMessage() for r in caplog.records if r.name == 'xend_rest.access']
    method, path, status, nbytes, duration, remote, caller = line.split(' ')
    assert (method, path, status, remote) == ('GET', '/a/b?c=d', '200', '127.0.0.1')
    assert int(nbytes) > 0
    assert duration.endswith('ms')
    assert caller == '-'  # an app that does not say who called


def naming_app(environ, start_response):
    """Names its caller as xend-rest's app does: here, whoever X-Caller (UTF-8) says."""
    environ['xend_rest.caller'] = environ['HTTP_X_CALLER'].encode('latin-1').decode()
    start_response('204 No Content', [])
    return [b'']


def access_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == 'xend_rest.access']


def test_the_access_log_names_the_caller_the_app_gives(caplog):
    caplog.set_level('INFO', logger='xend_rest.access')
    with serving(naming_app) as server:
        conn = client(server)
        for caller in ('token:ops', 'cert:CN=Jürgen Smith'):
            conn.request('GET', '/', headers={'X-Caller': caller.encode()})
            conn.getresponse().read()
    assert [line.split(' ')[-1] for line in access_lines(caplog)] == [
        'token:ops', 'cert:CN=J%C3%BCrgen%20Smith']  # one field, whatever the name holds


@pytest.mark.parametrize('request_line', [
    b'GET /a\rINFO:forged HTTP/1.1',  # a CR: a terminal starts the line again
    b'GET /\x1b[2J\x1b[H HTTP/1.1',  # an escape sequence that clears a terminal
    b'G\x85T / HTTP/1.1',  # NEL: a line break to some readers
])
def test_a_refused_request_cannot_forge_or_hide_log_lines(caplog, request_line):
    """The server's own refusals log the request line as it came: every byte outside printable
    ASCII is percent-encoded, so a line holds one request and no terminal control."""
    caplog.set_level('INFO', logger='xend_rest.access')
    with serving(echo_app) as server:
        answer = raw_exchange(server, request_line + b'\r\nHost: x\r\n\r\n')
    assert answer.startswith(b'HTTP/1.1 400 ')
    [line] = access_lines(caplog)
    assert re.fullmatch(r'[\x21-\x7e ]+', line), line
    assert ' 400 ' in line


def test_environ_is_valid_pep3333_and_path_is_latin1():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        return echo_app(environ, start_response)

    with serving(wsgiref.validate.validator(app)) as server:
        status, data = get_json(client(server), 'PUT', '/a%20b/%C3%A9?x=%20', body=b'{}',
                                headers={'Content-Type': 'application/json', 'X-Thing': '1'})
    assert status == 200
    assert data['path'] == '/a b/\xc3\xa9'
    assert seen['QUERY_STRING'] == 'x=%20'
    assert seen['CONTENT_TYPE'] == 'application/json'
    assert seen['CONTENT_LENGTH'] == '2'
    assert seen['HTTP_X_THING'] == '1'


def test_unix_socket_replaces_a_stale_one(tmp_path):
    path = str(tmp_path / 'xend-rest.sock')
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    with serving(echo_app, listeners=[f'unix:{path}']) as server:
        status, data = get_json(UnixHTTPConnection(path))
    assert status == 200
    assert data['remote'] == 'unix'
    assert not os.path.exists(path)  # removed on shutdown


def test_several_listeners_at_once(tmp_path):
    path = str(tmp_path / 's.sock')
    with serving(echo_app, listeners=['127.0.0.1:0', f'unix:{path}']) as server:
        assert get_json(client(server))[0] == 200
        assert get_json(UnixHTTPConnection(path))[0] == 200


def test_ipv6_listener():
    try:
        socket.create_server(('::1', 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip('no IPv6 loopback here')
    with serving(echo_app, listeners=['[::1]:0']) as server:
        host, port = server.addresses[0][:2]
        status, data = get_json(http.client.HTTPConnection(host, port, timeout=5))
    assert data['remote'] == '::1'


@pytest.mark.parametrize('spec, expected', [
    ('127.0.0.1:8000', (socket.AF_INET, ('127.0.0.1', 8000))),
    ('localhost:0', (socket.AF_INET, ('localhost', 0))),
    ('[::1]:8000', (socket.AF_INET6, ('::1', 8000))),
    ('unix:/run/xend-rest.sock', (socket.AF_UNIX, '/run/xend-rest.sock')),
])
def test_parse_listen(spec, expected):
    assert parse_listen(spec) == expected


@pytest.mark.parametrize('spec', ['8000', '127.0.0.1', ':8000', '::1:8000', 'host:http', 'host:70000', 'unix:'])
def test_parse_listen_refuses(spec):
    with pytest.raises(ValueError, match='invalid listen address'):
        parse_listen(spec)


def test_graceful_shutdown_lets_in_flight_request_finish():
    entered = threading.Event()

    def slow_app(environ, start_response):
        entered.set()
        time.sleep(0.3)
        return echo_app(environ, start_response)

    server = Server(slow_app, ['127.0.0.1:0'], workers=2)
    server.start()
    results = []
    thread = threading.Thread(target=lambda: results.append(get_json(client(server))))
    thread.start()
    assert entered.wait(2)
    server.shutdown(grace=5)
    thread.join()
    assert results[0][0] == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.addresses[0], timeout=1)


def test_serve_forever_notifies_systemd(tmp_path, monkeypatch):
    notify_path = str(tmp_path / 'notify')
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(5)
    monkeypatch.setenv('NOTIFY_SOCKET', notify_path)
    server = Server(echo_app, ['127.0.0.1:0'], workers=1)
    messages = []

    def systemd():
        messages.append(notify.recv(100))
        messages.append(get_json(client(server))[0])
        server.stop()

    thread = threading.Thread(target=systemd)
    thread.start()
    server.serve_forever()
    thread.join()
    messages.append(notify.recv(100))
    notify.close()
    assert messages == [b'READY=1', 200, b'STOPPING=1']


def test_sd_notify_abstract_socket(monkeypatch):
    name = f'xend-rest-test-{os.getpid()}'
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind('\0' + name)
        monkeypatch.setenv('NOTIFY_SOCKET', '@' + name)
        assert sd_notify('READY=1')
        assert notify.recv(100) == b'READY=1'


def test_sd_notify_without_systemd(monkeypatch):
    monkeypatch.delenv('NOTIFY_SOCKET', raising=False)
    assert not sd_notify('READY=1')


# -- the real application on the demo hypervisor --------------------------------------

@pytest.fixture
def demo_app(tmp_path):
    """The app on this test's own copy of the demo node."""
    from xend_rest.app import make_app
    from xend_rest.demo import DEMO_NODE
    node = tmp_path / 'node.xml'
    node.write_bytes(open(DEMO_NODE, 'rb').read())
    app = make_app(uri=f'test://{node}')
    yield app
    app.close()


def test_real_app_lists_domains(demo_app):
    with serving(demo_app) as server:
        conn = client(server)
        for _ in range(3):  # and keeps the connection alive between calls
            conn.request('GET', '/libvirt/xen/nodes/json?all=1')
            response = conn.getresponse()
            domains = json.loads(response.read())
            assert response.status == 200
            assert response.getheader('Content-Type') == 'application/json'
            assert domains and all('domain' in d for d in domains)


def test_real_app_unknown_domain_is_json_404(demo_app):
    with serving(demo_app) as server:
        conn = client(server)
        conn.request('GET', '/libvirt/xen/nodes/no-such-domain/json')
        response = conn.getresponse()
        body = json.loads(response.read())
    assert response.status == 404
    assert set(body) >= {'message', 'code'}


def test_real_app_head_then_get_on_one_connection(demo_app):
    with serving(demo_app) as server:
        conn = client(server)
        conn.request('HEAD', '/libvirt/xen/nodes/json')
        head = conn.getresponse()
        assert head.read() == b''
        conn.request('GET', '/libvirt/xen/nodes/json')
        get = conn.getresponse()
        body = get.read()
    assert head.status == get.status == 200
    assert head.getheader('Content-Length') == str(len(body))


def test_real_app_over_unix_socket(demo_app, tmp_path):
    path = str(tmp_path / 'api.sock')
    with serving(demo_app, listeners=[f'unix:{path}']) as server:
        conn = UnixHTTPConnection(path)
        conn.request('GET', '/libvirt/xen/nodes/json')
        response = conn.getresponse()
        assert response.status == 200
        assert isinstance(json.loads(response.read()), list)


def test_bad_header_from_app_gives_500():
    def app(environ, start_response):
        start_response('200 OK', [('X-Name', '\u20ac')])  # not latin-1: cannot be sent
        return [b'x']

    with serving(app) as server:
        conn = client(server)
        conn.request('GET', '/')
        response = conn.getresponse()
        assert response.status == 500
        assert json.loads(response.read())['code'] == 'internal_error'


# -- connections upgraded away from HTTP (consoles) -----------------------------------

def upgrading_app(ended=None):
    """A toy app: /echo upgrades to a session that echoes every byte; anything else is echo_app."""
    def echo(sock, buffered):
        if buffered:
            sock.sendall(buffered)
        while True:
            data = sock.recv(65536)
            if not data:
                return
            sock.sendall(data)

    def on_shutdown():
        ended.append('told to end')

    def app(environ, start_response):
        if environ['PATH_INFO'] != '/echo':
            return echo_app(environ, start_response)
        environ['xend_rest.upgrade'](echo, on_shutdown if ended is not None else None)
        start_response('101 Switching Protocols', [('Connection', 'Upgrade'), ('Upgrade', 'echo')])
        return []
    return app


def upgrade(sock, extra=b''):
    """Ask for /echo, with extra bytes right behind the head; return the 101 head's lines."""
    sock.sendall(b'GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n'
                 + extra)
    head = b''
    while b'\r\n\r\n' not in head:
        head += sock.recv(1)
    return head.decode('latin-1').split('\r\n')


def test_an_upgraded_connection_echoes_raw_bytes_after_101():
    with serving(upgrading_app()) as server, raw_connect(server) as sock:
        lines = upgrade(sock, b'already sent;')
        assert lines[0] == 'HTTP/1.1 101 Switching Protocols'
        assert 'Connection: Upgrade' in lines and 'Upgrade: echo' in lines
        assert not any(line.lower().startswith('content-length') for line in lines)
        assert sock.recv(100) == b'already sent;'  # read past the head by the server: handed over
        for message in (b'hello', b'GET / HTTP/1.1\r\n\r\n', bytes(range(256))):
            sock.sendall(message)
            received = b''
            while len(received) < len(message):
                received += sock.recv(65536)
            assert received == message  # no longer HTTP: even a request line is just bytes
        assert server.open_sessions == 1
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b''  # the session returned: the server closed the socket
        until(lambda: server.open_sessions == 0)


def test_sessions_do_not_hold_request_workers():
    with serving(upgrading_app(), workers=1) as server:
        sockets = [raw_connect(server) for _ in range(3)]
        for sock in sockets:
            assert upgrade(sock)[0] == 'HTTP/1.1 101 Switching Protocols'
        until(lambda: server.open_sessions == 3)
        started = time.monotonic()
        assert get_json(client(server))[0] == 200  # the one worker is free for the API
        assert time.monotonic() - started < 1
        for sock in sockets:
            sock.close()
        until(lambda: server.open_sessions == 0)


def test_shutdown_tells_sessions_to_end_and_closes_them():
    ended = []
    server = Server(upgrading_app(ended), ['127.0.0.1:0'], workers=2)
    server.start()
    with raw_connect(server) as sock:
        upgrade(sock)
        until(lambda: server.open_sessions == 1)
        server.shutdown(grace=0.5)  # this echo session ignores the request: it gets cut
        assert ended == ['told to end']
        assert sock.recv(100) == b''
        assert server.open_sessions == 0


def test_a_101_without_an_upgrade_closes_the_connection():
    def app(environ, start_response):
        start_response('101 Switching Protocols', [('Connection', 'Upgrade'), ('Upgrade', 'x')])
        return []

    with serving(app) as server, raw_connect(server) as sock:
        sock.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
        assert read_until_closed(sock).startswith(b'HTTP/1.1 101 ')
        assert server.open_sessions == 0


def test_an_upgrade_answered_with_another_status_stays_http():
    def app(environ, start_response):
        environ['xend_rest.upgrade'](lambda sock, buffered: None)
        return echo_app(environ, start_response)  # e.g. refused: 403, 426...

    with serving(app) as server:
        conn = client(server)
        assert get_json(conn)[0] == 200
        assert get_json(conn)[0] == 200  # the same connection, still HTTP
        assert server.open_sessions == 0


# -- input the server refuses, at once (issue 10) -------------------------------------

def exchange_at_once(server, data):
    """Send data without closing our side: the answer must come, and the close, well before
    the server's 30 s timeout."""
    with raw_connect(server) as sock:
        sock.settimeout(2)
        sock.sendall(data)
        return split_response(read_until_closed(sock))


@pytest.mark.parametrize('request_bytes, status, code', [
    (b'GET /' + b'a' * 120_000 + b' HTTP/1.1\r\nHost: x\r\n\r\n', '414', 'uri_too_long'),
    (b'GET /' + b'a' * 120_000, '414', 'uri_too_long'),  # the line has not even ended
    (b'GET / HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'a' * 70_000 + b'\r\n\r\n', '431', 'head_too_large'),
    (b'GET / HTTP/1.1\r\nHost: x\r\n' + b'X-Many: a\r\n' * 7000 + b'\r\n', '431', 'head_too_large'),
    (b'GET / HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'a' * 70_000, '431', 'head_too_large'),
])
def test_max_head_is_enforced_as_stated(request_bytes, status, code):
    with serving(echo_app) as server:  # max_head: 65,536 bytes of request line and fields
        lines, body = exchange_at_once(server, request_bytes)
    assert lines[0].split(' ')[1] == status
    assert json.loads(body)['code'] == code


def test_max_head_is_a_setting():
    with serving(echo_app, max_head=1024) as server:
        lines, _ = exchange_at_once(server, b'GET /' + b'a' * 1100 + b' HTTP/1.1\r\nHost: x\r\n\r\n')
        assert lines[0] == 'HTTP/1.1 414 Request-URI Too Long'
        lines, _ = exchange_at_once(server, b'GET /' + b'a' * 900 + b' HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
        assert lines[0] == 'HTTP/1.1 200 OK'


@pytest.mark.parametrize('request_bytes', [
    b'GET / HTTP/1.1\r\n\r\n',
    b'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n',
])
def test_http11_needs_one_host(request_bytes):
    with serving(echo_app) as server:
        lines, body = exchange_at_once(server, request_bytes)
    assert lines[0] == 'HTTP/1.1 400 Bad Request'
    assert 'Host' in json.loads(body)['message']


def test_http10_needs_no_host():
    with serving(echo_app) as server:
        lines, _ = exchange_at_once(server, b'GET / HTTP/1.0\r\n\r\n')
    assert lines[0] == 'HTTP/1.1 200 OK'


@pytest.mark.parametrize('value', [b'a\x00b', b'a\rb', b'a\x01', b'\x1b[31m', b'a\x7f', b'a\x0bb'])
def test_control_characters_in_a_header_value_are_400(value):
    with serving(echo_app) as server:
        lines, body = exchange_at_once(server, b'GET / HTTP/1.1\r\nHost: x\r\nX-A: ' + value + b'\r\n\r\n')
    assert lines[0] == 'HTTP/1.1 400 Bad Request'
    assert json.loads(body)['code'] == 'bad_request'


def test_htab_and_obs_text_in_a_header_value_are_fine():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        return echo_app(environ, start_response)

    with serving(app) as server:
        lines, _ = exchange_at_once(server, b'GET / HTTP/1.1\r\nHost: x\r\nX-A: a\tb\xe9\r\n'
                                            b'Connection: close\r\n\r\n')
    assert lines[0] == 'HTTP/1.1 200 OK'
    assert seen['HTTP_X_A'] == 'a\tb\xe9'


def client_hello():
    """The first bytes a TLS client sends."""
    context = ssl.create_default_context()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname='localhost')
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize('request_bytes', [
    b'GET /\r\n',  # HTTP/0.9: no version, and the client waits for an answer after one line
    b'GET /\n',
    client_hello(),  # a TLS client on a plain listener
    b'\x16\x03\x01',
])
def test_what_is_not_http11_is_answered_at_once(request_bytes):
    with serving(echo_app) as server:
        started = time.monotonic()
        lines, body = exchange_at_once(server, request_bytes)
    assert lines[0] == 'HTTP/1.1 400 Bad Request'
    assert json.loads(body)['code'] == 'bad_request'
    assert time.monotonic() - started < 1


def test_bare_lf_line_endings_are_served_without_a_hang():
    with serving(echo_app) as server, raw_connect(server) as sock:
        sock.settimeout(2)
        for i in range(2):  # and the connection stays usable
            sock.sendall(b'POST /%d HTTP/1.1\nHost: x\nContent-Length: 2\n\nhi' % i)
            lines, body = split_response(sock.recv(65536))
            assert lines[0] == 'HTTP/1.1 200 OK'
            assert json.loads(body)['path'] == '/%d' % i
            assert json.loads(body)['body'] == 'hi'


def test_the_raw_request_target_is_in_raw_uri_and_request_uri():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        return echo_app(environ, start_response)

    with serving(app) as server:
        get_json(client(server), 'POST', '/libvirt/xen/nodes/web-pv1%2Fstart?x=%2F%20')
    assert seen['RAW_URI'] == seen['REQUEST_URI'] == '/libvirt/xen/nodes/web-pv1%2Fstart?x=%2F%20'
    assert seen['PATH_INFO'] == '/libvirt/xen/nodes/web-pv1/start'  # PEP 3333: decoded


@pytest.mark.parametrize('method, path', [
    ('POST', '/libvirt/xen/nodes/web-pv1%2Fdestroy'),
    ('POST', '/libvirt/xen/nodes/web-pv1%2fdestroy'),
    ('GET', '/libvirt/xen/nodes/test0%2Fjson'),
])
def test_an_encoded_slash_stays_in_its_name(demo_app, method, path):
    conn = demo_app.hypervisor.connection.get()
    before = {dom.name(): dom.state()[0] for dom in conn.listAllDomains()}
    with serving(demo_app) as server:
        status, body = get_json(client(server), method, path)
    assert status == 404 and body['code'] == 'no_such_endpoint'
    assert {dom.name(): dom.state()[0] for dom in conn.listAllDomains()} == before


def test_many_keep_alive_clients_share_few_workers():
    """Connections outnumber the workers: each request is served by whichever worker is free,
    on the connection it came on, in order."""
    results = {}

    def one(i):
        conn = client(server)
        results[i] = [get_json(conn, path=f'/{i}/{n}')[1]['path'] for n in range(30)]

    with serving(echo_app, workers=3) as server:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == {i: [f'/{i}/{n}' for n in range(30)] for i in range(20)}


def test_a_request_that_waits_for_a_busy_worker_is_answered_late_not_dropped():
    """Its bytes arrived in time: that no worker was free to read them is the server's doing."""
    release = threading.Event()

    def app(environ, start_response):
        if environ['PATH_INFO'] == '/slow':
            release.wait(5)
        return echo_app(environ, start_response)

    with serving(app, workers=1, timeout=0.5) as server:
        slow = threading.Thread(target=lambda: get_json(client(server), path='/slow'))
        slow.start()
        time.sleep(0.2)  # the only worker is busy
        with raw_connect(server) as sock:
            sock.sendall(b'GET /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
            time.sleep(1.5)  # three times `timeout`
            release.set()
            lines, body = split_response(read_until_closed(sock))
        slow.join()
    assert lines[0] == 'HTTP/1.1 200 OK'
    assert json.loads(body)['path'] == '/late'


def test_a_request_waiting_for_a_worker_at_shutdown_is_served_within_the_grace():
    entered, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        if environ['PATH_INFO'] == '/slow':
            entered.set()
            release.wait(5)
        return echo_app(environ, start_response)

    server = Server(app, ['127.0.0.1:0'], workers=1)
    server.start()
    slow = threading.Thread(target=lambda: get_json(client(server), path='/slow'))
    slow.start()
    assert entered.wait(2)  # the only worker is busy
    with raw_connect(server) as sock:
        sock.sendall(b'GET /waiting HTTP/1.1\r\nHost: x\r\n\r\n')
        time.sleep(0.2)
        stopping = threading.Thread(target=server.shutdown, kwargs={'grace': 5})
        stopping.start()
        time.sleep(0.2)
        release.set()
        lines, body = split_response(read_until_closed(sock))
    stopping.join()
    slow.join()
    assert lines[0] == 'HTTP/1.1 200 OK'
    assert 'Connection: close' in lines
    assert json.loads(body)['path'] == '/waiting'


def hiding_app(environ, start_response):
    """Says how its target may be logged, as xend-rest's app does (it hides tickets there)."""
    environ['xend_rest.log_target'] = environ['RAW_URI'].replace('secret', '-')
    start_response('204 No Content', [])
    return [b'']


def test_the_access_log_shows_the_target_as_the_app_says(caplog):
    caplog.set_level('INFO', logger='xend_rest.access')
    with serving(hiding_app) as server:
        conn = client(server)
        conn.request('GET', '/a?key=secret')
        conn.getresponse().read()
    [line] = access_lines(caplog)
    assert line.startswith('GET /a?key=- 204 ')


REFUSED = [  # (request bytes, status, (method, target) as on_refused is told)
    (b'GET /t?k=v HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n', 400, ('GET', '/t?k=v')),
    (b'GET /t?k=v HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n', 400, ('GET', '/t?k=v')),
    (b'GET /t?k=v HTTP/1.1\r\n\r\n', 400, ('GET', '/t?k=v')),
    (b'POST /t?k=v HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n', 400, ('POST', '/t?k=v')),
    (b'POST /t?k=v HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 411,
     ('POST', '/t?k=v')),
    (b'GET /t?k=v HTTP/1.1\r\nHost: x\r\nX: ' + b'a' * 70000 + b'\r\n\r\n', 431, ('GET', '/t?k=v')),
    (b'GET /t?k=v HTTP/2.0\r\nHost: x\r\n\r\n', 505, ('GET', '/t?k=v')),
    (b'\r\nGET /t?k=v HTTP/1.0\r\nContent-Length: -1\r\n\r\n', 400, ('GET', '/t?k=v')),
    # A line that does not parse: the whole of it, and the log says '- -'.
    (b'GET /t?k=v x HTTP/1.1\r\nHost: x\r\n\r\n', 400, ('-', 'GET /t?k=v x HTTP/1.1')),
    (b'GET /t?k=' + b'v' * 70000, 414, ('-', 'GET /t?k=' + 'v' * 70000)),
]


@pytest.mark.parametrize('data, status, told', REFUSED)
def test_on_refused_hears_of_every_request_the_server_refuses(caplog, data, status, told):
    """The server knows no credentials: it tells the app's hook what it refused (the CLI's
    spends the console tickets there), and logs the target the hook gives back."""
    heard = []

    def on_refused(method, target):
        heard.append((method, target))
        return target.replace('k=v', 'k=-')

    caplog.set_level('INFO', logger='xend_rest.access')
    with serving(echo_app, on_refused=on_refused) as server:
        answer = raw_exchange(server, data)
    assert answer.startswith(b'HTTP/1.1 %d ' % status)
    assert heard == [told]
    [line] = access_lines(caplog)
    assert line.startswith('GET /t?k=- ' if told[0] == 'GET' else
                           'POST /t?k=- ' if told[0] == 'POST' else '- - ')


def test_on_refused_hears_of_a_head_dropped_unfinished():
    heard = []
    with serving(echo_app, timeout=0.5,
                 on_refused=lambda method, target: heard.append((method, target))) as server:
        with raw_connect(server) as sock:  # the head does not come in time
            sock.sendall(b'GET /slow?k=v HTTP/1.1\r\nHost: x')
            assert read_until_closed(sock) == b''
        with raw_connect(server) as sock:  # the client goes away in the middle of it
            sock.sendall(b'GET /gone?k=v HTTP/1.1\r\n')
        until(lambda: len(heard) == 2)
    assert sorted(heard) == [('GET', '/gone?k=v'), ('GET', '/slow?k=v')]


def test_an_application_error_cannot_forge_a_log_line(caplog):
    def app(environ, start_response):
        start_response('200 OK', [])
        raise ValueError('bad request\n2026-12-06 17:00:00,000 INFO xend_rest.access: forged')
        yield b''

    with serving(app) as server:
        answer = raw_exchange(server, b'GET /a HTTP/1.1\r\nHost: x\r\n\r\n')
    assert answer.startswith(b'HTTP/1.1 500 ')
    assert 'ValueError: bad request%0A2026-12-06' in caplog.text
    assert not [line for line in caplog.text.splitlines() if line.startswith('2026-12-06')]
