"""The screen: a domain's VNC server carried over a WebSocket, on the test driver.

The test driver has no virDomainOpenGraphicsFD, so the daemon connects to the address and port
of the definition's <graphics type='vnc'>: here a fake RFB server on a free loopback port.
tests/realhv/test_consoles_real.py talks to QEMU's own VNC server."""
import socket
import threading

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import DOMAINS, node_xml, until
from consoles_support import Daemon
from xend_rest.app import make_app
from xend_rest.bridges import Bridges
from xend_rest import vnc
from xend_rest.security import Guard


class FakeRFBServer:
    """Speaks the first steps of RFB 3.8, then echoes what the client sends, upper-cased."""

    def __init__(self):
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.port = self.listener.getsockname()[1]
        self.clients = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.clients += 1
            with sock:
                sock.sendall(b'RFB 003.008\n')
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    sock.sendall(data.upper())

    def close(self):
        self.listener.close()


def domain(name, graphics):
    return (name, None, 'hvm', '<devices>%s</devices>' % graphics)


@pytest.fixture
def rfb():
    server = FakeRFBServer()
    yield server
    server.close()


@pytest.fixture
def screens(tmp_path, rfb):
    """An upgrade server in front of a test node whose domains have various screens."""
    extra = [
        domain('desktop', "<graphics type='vnc' port='%d' listen='127.0.0.1'/>" % rfb.port),
        domain('anywhere', "<graphics type='vnc' port='%d' listen='0.0.0.0'/>" % rfb.port),
        domain('elsewhere', "<graphics type='vnc' port='5900' listen='192.0.2.1'/>"),
        domain('unstarted', "<graphics type='vnc' port='-1' autoport='yes'/>"),
        domain('spicy', "<graphics type='spice' port='5900'/>"),
    ]
    path = tmp_path / 'node.xml'
    path.write_text(node_xml(DOMAINS + extra))
    sessions = Bridges()
    app = make_app(uri='test://%s' % path, consoles=sessions)
    server = Daemon(app)
    yield server, sessions
    assert sessions.close_all(timeout=10)
    server.close()
    app.close()


def test_rfb_bytes_pass_through_a_websocket_both_ways(screens, rfb):
    server, sessions = screens
    with connect(server.url('/libvirt/xen/nodes/desktop/vnc'), subprotocols=['binary']) as ws:
        assert ws.subprotocol == 'binary'
        assert ws.recv(timeout=10) == b'RFB 003.008\n'
        ws.send(b'rfb 003.008\n')
        assert ws.recv(timeout=10) == b'RFB 003.008\n'
        assert len(sessions) == 1
    until(lambda: len(sessions) == 0)
    assert sessions.totals()[1:] == (12, 24)


def test_a_screen_listening_on_any_address_is_reached_on_loopback(screens, rfb):
    server, _ = screens
    with connect(server.url('/libvirt/xen/nodes/anywhere/vnc')) as ws:
        assert ws.recv(timeout=10) == b'RFB 003.008\n'


@pytest.mark.parametrize('name, status, code', [
    ('web', 404, 'no_vnc'),
    ('spicy', 501, 'graphics_unsupported'),
    ('elsewhere', 501, 'vnc_not_local'),  # never connects where a definition points elsewhere
    ('unstarted', 409, 'vnc_not_listening'),
    ('idle', 409, 'invalid_state'),
])
def test_screens_that_cannot_be_reached(screens, rfb, name, status, code):
    server, sessions = screens
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url('/libvirt/xen/nodes/%s/vnc' % name))
    assert refused.value.response.status_code == status
    assert ('"%s"' % code).encode() in refused.value.response.body
    assert rfb.clients == 0
    assert len(sessions) == 0


def test_a_remote_hypervisor_uri_is_501():
    class Remote:
        def getURI(self):
            return 'xen+ssh://root@dom0.example/system'
    with pytest.raises(vnc.HTTPError) as refused:
        vnc.open_screen(Bridges(), Remote(), None, None)
    assert (refused.value.status, refused.value.code) == (501, 'remote_hypervisor')


@pytest.mark.parametrize('address, local', [
    ('127.0.0.1', True), ('::1', True), ('127.3.4.5', True),
    ('192.0.2.1', False), ('example.com', False), ('localhost', False),
])
def test_only_this_hosts_addresses_are_local(address, local):
    assert vnc.is_local_address(address) is local


class FakeUnixRFBServer(FakeRFBServer):
    """The same server on a unix socket."""

    def __init__(self, path):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.clients = 0
        threading.Thread(target=self._serve, daemon=True).start()


@pytest.fixture
def socket_screens(tmp_path):
    """Domains whose VNC server listens on a unix socket, inside allowed-paths and outside it
    (through a link, too): the test driver offers no graphics fd, so the daemon would connect to
    the socket the live definition names."""
    inside, outside = tmp_path / 'inside', tmp_path / 'outside'
    inside.mkdir()
    outside.mkdir()
    (inside / 'link').symlink_to(outside)
    servers = {'in': FakeUnixRFBServer(inside / 'vnc.sock'),
               'out': FakeUnixRFBServer(outside / 'vnc.sock')}
    extra = [domain('in', "<graphics type='vnc' socket='%s'/>" % (inside / 'vnc.sock')),
             domain('out', "<graphics type='vnc' socket='%s'/>" % (outside / 'vnc.sock')),
             domain('linked', "<graphics type='vnc'><listen type='socket' socket='%s'/></graphics>"
                    % (inside / 'link' / 'vnc.sock'))]
    path = tmp_path / 'node.xml'
    path.write_text(node_xml(DOMAINS + extra))
    sessions = Bridges()
    app = make_app(uri='test://%s' % path, consoles=sessions,
                   guard=Guard(allowed_paths=[str(inside)]))
    server = Daemon(app)
    yield server, servers
    assert sessions.close_all(timeout=10)
    server.close()
    app.close()
    for rfb in servers.values():
        rfb.close()


def test_a_screen_socket_inside_allowed_paths_is_reached(socket_screens):
    server, servers = socket_screens
    with connect(server.url('/libvirt/xen/nodes/in/vnc')) as ws:
        assert ws.recv(timeout=10) == b'RFB 003.008\n'
    assert servers['in'].clients == 1


@pytest.mark.parametrize('name', ['out', 'linked'])
def test_a_screen_socket_outside_allowed_paths_is_never_connected(socket_screens, name):
    server, servers = socket_screens
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url('/libvirt/xen/nodes/%s/vnc' % name))
    assert refused.value.response.status_code == 403
    assert b'"path_not_allowed"' in refused.value.response.body
    assert servers['out'].clients == 0


@pytest.fixture
def dead_screens(tmp_path, monkeypatch):
    """Running domains whose VNC server does not take connections: nothing listens at its TCP
    port, its unix socket does not exist, or it does not accept (its backlog is full), as on
    Xen when the device model has not opened its VNC server yet, or has died (libxl hands over
    no graphics fd, so the daemon connects to the definition's address)."""
    with socket.create_server(('127.0.0.1', 0)) as probe:
        free = probe.getsockname()[1]
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.bind(str(tmp_path / 'stuck.sock'))
    stuck.listen(0)
    queued = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    queued.connect(str(tmp_path / 'stuck.sock'))  # fills the backlog: the next connect waits
    monkeypatch.setattr(vnc, 'CONNECT_TIMEOUT', 0.5)
    extra = [domain('refused', "<graphics type='vnc' port='%d' autoport='no' listen='127.0.0.1'/>"
                    % free),
             domain('nosocket', "<graphics type='vnc' socket='%s'/>" % (tmp_path / 'absent.sock')),
             domain('stuck', "<graphics type='vnc' socket='%s'/>" % (tmp_path / 'stuck.sock'))]
    path = tmp_path / 'node.xml'
    path.write_text(node_xml(DOMAINS + extra))
    sessions = Bridges()
    app = make_app(uri='test://%s' % path, consoles=sessions)
    server = Daemon(app)
    yield server, sessions
    server.close()
    app.close()
    queued.close()
    stuck.close()


@pytest.mark.parametrize('name, status, code, retry', [
    ('refused', 409, 'vnc_not_listening', None),
    ('nosocket', 409, 'vnc_not_listening', None),
    ('stuck', 502, 'vnc_unreachable', '5'),
])
def test_a_screen_whose_vnc_server_does_not_answer_is_refused_by_state(dead_screens, name,
                                                                       status, code, retry):
    server, sessions = dead_screens
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url('/libvirt/xen/nodes/%s/vnc' % name))
    response = refused.value.response
    assert response.status_code == status
    assert ('"%s"' % code).encode() in response.body
    assert response.headers.get('Retry-After') == retry
    assert len(sessions) == 0  # its place is given back
