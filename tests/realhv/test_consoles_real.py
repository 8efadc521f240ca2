"""Consoles against real QEMU guests: a shell on the guest's serial console, reached through the
WebSocket route and the raw attach, taken over with force=1, and ended by the guest's power-off.

The console routes run on the daemon's own server (which carries the upgrades out).
"""
import gc
import os
import socket

import libvirt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from consoles_support import FakeError, Daemon
from xend_rest.api.app import make_app
from xend_rest.consoles import vnc
from xend_rest.consoles.registry import Bridges

from . import guest
from .conftest import SESSION_PREFIX, _remove_domain
from .guest import READY_MARKER, typed, wait_until
from .rfb import RFBClient
from .test_faults import app, guest_on_private, private_libvirtd  # noqa: F401 (fixtures)

NODES = '/libvirt/qemu/nodes'


@pytest.fixture(scope='module')
def consoles():
    registry = Bridges()
    yield registry
    assert registry.close_all(timeout=10)


@pytest.fixture(scope='module')
def server(libvirtd, consoles):
    app = make_app(connections={'qemu': libvirtd.uri}, consoles=consoles)
    running = Daemon(app)
    yield running
    consoles.close_all(timeout=10)
    running.close()
    app.close()


def boot(libvirt_conn, guest_xml, guest_console, name, **options):
    dom = libvirt_conn.defineXML(guest_xml(name, **options))
    dom.create()
    guest_console(name).wait_for(READY_MARKER, timeout=60)
    return dom


@pytest.fixture(scope='module')
def shared_guest(libvirtd, libvirt_conn, guest_files, console_dir):
    """One running guest for the tests that leave it running."""
    name = SESSION_PREFIX + 'console-shared'
    console = guest.Console(console_dir / f'{name}.log')
    dom = libvirt_conn.defineXML(guest.domain_xml(name, guest_files, console.path))
    dom.create()
    console.wait_for(READY_MARKER, timeout=60)
    yield name
    _remove_domain(libvirt_conn, name)


def open_fds():
    # A socket an earlier test left in a reference cycle closes when the collector runs, which
    # the import order decides: collected first, the count is what the sessions hold.
    gc.collect()
    return len(os.listdir('/proc/self/fd'))


def test_a_command_typed_through_the_websocket_console_runs_in_the_guest(server, shared_guest):
    with connect(server.url(f'{NODES}/{shared_guest}/console')) as ws:
        typed(ws.send, lambda: ws.recv(timeout=30))


def test_the_same_through_the_raw_attach(server, shared_guest, consoles):
    sock = socket.create_connection(('127.0.0.1', server.port), timeout=30)
    with sock:
        sock.sendall(f'POST {NODES}/{shared_guest}/attach HTTP/1.1\r\nHost: localhost\r\n'
                     'Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n'.encode())
        head = b''
        while b'\r\n\r\n' not in head:
            head += sock.recv(1)
        assert head.startswith(b'HTTP/1.1 101 ')
        typed(sock.sendall, lambda: sock.recv(65536))
    wait_until(lambda: len(consoles) == 0, 10, 'the session to end after the client left')


def test_force_takes_the_console_over_from_another_client(server, shared_guest):
    url = server.url(f'{NODES}/{shared_guest}/console')
    with connect(url) as first:
        typed(first.send, lambda: first.recv(timeout=30))
        with pytest.raises(InvalidStatus) as refused:
            connect(url)
        assert refused.value.response.status_code == 409
        assert b'"console_busy"' in refused.value.response.body
        with connect(url + '?force=1') as second:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    first.recv(timeout=30)
            assert closed.value.rcvd.code == 4409
            typed(second.send, lambda: second.recv(timeout=30))


def test_sessions_leave_no_descriptor_behind(server, shared_guest, consoles):
    url = server.url(f'{NODES}/{shared_guest}/console')
    with connect(url) as ws:  # the first one may open libvirt's and the loop's own descriptors
        typed(ws.send, lambda: ws.recv(timeout=30))
    wait_until(lambda: len(consoles) == 0, 10, 'the session to end')
    before = open_fds()
    for _ in range(5):
        with connect(url) as ws:
            typed(ws.send, lambda: ws.recv(timeout=30))
        wait_until(lambda: len(consoles) == 0, 10, 'the session to end')
    # None left behind (five sessions leaking would be five or more); fewer is no leak: a
    # connection an earlier test's daemon left to the collector may close meanwhile.
    assert open_fds() <= before


def test_the_guest_powering_off_ends_the_session_cleanly(server, libvirt_conn, guest_name,
                                                         guest_xml, guest_console, consoles):
    name = guest_name('console-off')
    boot(libvirt_conn, guest_xml, guest_console, name)
    with connect(server.url(f'{NODES}/{name}/console')) as ws:
        typed(ws.send, lambda: ws.recv(timeout=30))
        ws.send(b'poweroff -f\n')
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=60)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, 'the domain stopped')
    assert libvirt_conn.lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    wait_until(lambda: len(consoles) == 0, 10, 'the session to end')


def test_a_stopped_domain_is_409(server, libvirt_conn, guest_name, guest_xml):
    name = guest_name('console-stopped')
    libvirt_conn.defineXML(guest_xml(name))
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url(f'{NODES}/{name}/console'))
    assert refused.value.response.status_code == 409


@pytest.mark.parametrize('via', ['libvirt', 'listen address'])
def test_the_screen_through_vnc_gives_a_real_rfb_handshake_and_pixels(server, libvirt_conn,
                                                                       guest_name, guest_xml,
                                                                       guest_console, monkeypatch,
                                                                       via):
    """Through virDomainOpenGraphicsFD (QEMU on a local connection offers it), and through the
    definition's 127.0.0.1 listen address as for a driver that does not."""
    if via == 'libvirt':
        monkeypatch.setattr(vnc, '_connect_listen', None)  # must not be needed
    else:
        def not_offered(*_args):
            raise FakeError(libvirt.VIR_ERR_NO_SUPPORT, 'virDomainOpenGraphicsFD: not supported')
        monkeypatch.setattr(libvirt.virDomain, 'openGraphicsFD', not_offered)
    name = guest_name('screen')
    boot(libvirt_conn, guest_xml, guest_console, name, vnc=True)
    with connect(server.url(f'{NODES}/{name}/vnc'), subprotocols=['binary'],
                 max_size=None) as ws:
        assert ws.subprotocol == 'binary'
        rfb = RFBClient(ws)
        width, height, bpp, desktop = rfb.handshake()
        assert width >= 320 and height >= 200 and bpp in (8, 16, 32)
        assert name in desktop  # QEMU names the desktop after the domain
        pixels = rfb.full_update(width, height, bpp)
    assert pixels and len(pixels) % (bpp // 8) == 0  # the mode may have changed since ServerInit
    assert pixels.count(0) < len(pixels)  # something is drawn: the firmware's text at least


def test_libvirtd_going_away_ends_the_session_with_1014(private_libvirtd, app, guest_on_private):
    """On a private libvirtd (see test_faults.py), killed while a console is open."""
    name, console = guest_on_private('console')
    libvirt.open(private_libvirtd.uri).lookupByName(name).create()
    console.wait_for(READY_MARKER, timeout=60)
    daemon = Daemon(app)
    try:
        with connect(daemon.url(f'{NODES}/{name}/console')) as ws:
            typed(ws.send, lambda: ws.recv(timeout=30))
            private_libvirtd.kill()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=30)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            1014, 'the connection to libvirt was lost')
        wait_until(lambda: len(app.consoles) == 0, 10, 'the session count to go back')
    finally:
        daemon.close()
        private_libvirtd.start()
        try:  # the restarted libvirtd may still be taking the guest back: stop it here
            libvirt.open(private_libvirtd.uri).lookupByName(name).destroy()
        except libvirt.libvirtError:
            pass  # not running (any more)
