"""A guest's screen: the guest side of a screen session, a socket to the domain's VNC server.

RFB passes through as it is, as websockify does, so noVNC works against the daemon alone; the
RFB password stays the guest's business (never read, never skipped). The socket comes from
libvirt (virDomainOpenGraphicsFD, where the driver offers it: local connections) or else from
the live definition's <graphics type='vnc'> address and port, and only when that address is
one of this host's: the daemon never connects where a definition points elsewhere. A unix
socket the definition names is judged as any host path of a definition is (allowed-paths).
"""
import ipaddress
import socket
import xml.etree.ElementTree as ElementTree
from urllib.parse import urlsplit

import libvirt

from .errors import RETRY_AFTER, HTTPError, is_no_domain
from .bridge import CHUNK, Ended

CONNECT_TIMEOUT = 5.0
NOT_OFFERED = (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
               libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED)
ANY_ADDRESS = {'0.0.0.0': '127.0.0.1', '::': '::1', '': '127.0.0.1'}


def open_screen(sessions, conn, dom, framing, owner=None, check_path=None):
    """A Bridge on the domain's VNC screen for `owner`: 404 without VNC graphics, 501 for SPICE
    only or a hypervisor reached through a remote URI, 409 when its VNC server is not listening,
    502 when it cannot be reached otherwise, 429 past the session limits;
    check_path(where, path) refuses a socket outside allowed-paths (None: no policy)."""
    uri = conn.getURI()
    if urlsplit(uri).hostname:
        raise HTTPError(501, 'the screen is only reachable when libvirt runs on this host, not '
                        f'through the remote URI {uri}', 'remote_hypervisor')
    index, graphics = vnc_graphics(dom)
    place = sessions.admit(owner=owner)
    try:
        sock = connect_vnc(dom, index, graphics, check_path)
    except BaseException:
        sessions.cancel(place)
        raise
    return sessions.start(place, VncSocket(sock, dom), framing, (dom.name(), 'vnc'))


def vnc_graphics(dom):
    """(index among the domain's <graphics>, the element) of its first VNC screen."""
    devices = ElementTree.fromstring(dom.XMLDesc(0)).findall('devices/graphics')
    for index, graphics in enumerate(devices):
        if graphics.get('type') == 'vnc':
            return index, graphics
    kinds = sorted({graphics.get('type') for graphics in devices})
    if kinds:
        raise HTTPError(501, f"domain {dom.name()} has no VNC screen, only {', '.join(kinds)} "
                        "graphics, which this daemon does not carry", 'graphics_unsupported')
    raise HTTPError(404, f'domain {dom.name()} has no VNC graphics', 'no_vnc')


def connect_vnc(dom, index, graphics, check_path=None):
    """A connected socket to the VNC server: through libvirt if it can, else to a local address
    or a unix socket that check_path allows."""
    try:
        fd = dom.openGraphicsFD(index, 0)  # no SKIPAUTH: the password stays in force
    except libvirt.libvirtError as err:
        if err.get_error_code() not in NOT_OFFERED:
            raise
    else:
        return socket.socket(fileno=fd)
    return _connect_listen(dom, graphics, check_path)


def _connect_listen(dom, graphics, check_path):
    listen = graphics.find('listen')
    path = graphics.get('socket') or (listen.get('socket') if listen is not None else None)
    if path:
        if check_path is not None:
            check_path(f'the VNC socket of {dom.name()}', path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            _connect(dom, path, lambda: sock.connect(path))
        except BaseException:
            sock.close()
            raise
        return sock
    port = int(graphics.get('port') or -1)
    if port <= 0:
        raise HTTPError(409, f'the VNC server of {dom.name()} is not listening on a port',
                        'vnc_not_listening')
    address = graphics.get('listen')
    if listen is not None and listen.get('address'):
        address = listen.get('address')
    address = ANY_ADDRESS.get(address or '', address)
    if not is_local_address(address):
        raise HTTPError(501, f'the VNC server of {dom.name()} listens on {address}, not on this '
                        'host; the daemon connects to local addresses only', 'vnc_not_local')
    where = f'[{address}]:{port}' if ':' in address else f'{address}:{port}'
    return _connect(dom, where, lambda: socket.create_connection((address, port),
                                                                 timeout=CONNECT_TIMEOUT))


def _connect(dom, where, connect):
    """connect()'s result. Nothing accepting there is a state of the domain (409: its device
    model has not opened its VNC server yet, or it died: libxl hands no graphics fd over, so
    on Xen this is how a missing screen shows); any other failure, 502 (a timeout included)."""
    try:
        return connect()
    except (ConnectionRefusedError, FileNotFoundError) as err:
        raise HTTPError(409, f'the VNC server of {dom.name()} does not accept connections at '
                        f'{where} ({err.strerror}): it has not started yet, or has stopped',
                        'vnc_not_listening') from None
    except OSError as err:
        raise HTTPError(502, f'the VNC server of {dom.name()} at {where} cannot be reached: '
                        f'{err.strerror or err}', 'vnc_unreachable',
                        [('Retry-After', RETRY_AFTER)]) from None


def is_local_address(address):
    """Whether an IP address is this host's own (loopback, or one it can bind); names are not."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


class VncSocket:
    """The guest side of a screen session: RFB bytes read only while the client keeps up (QEMU's
    VNC server copes with a slow client itself), written as the socket takes them."""

    watch_always = False  # a real socket: watched for reading only when there is room
    taken_over = False

    def __init__(self, sock, dom):
        self.sock, self.dom = sock, dom
        self.sock.setblocking(False)
        self._failed = None

    def fileno(self):
        return self.sock.fileno()

    def start(self):
        pass

    def receive(self, size):
        if self._failed is not None:
            raise Ended('error', str(self._failed))
        if not size:
            return b''
        try:
            data = self.sock.recv(min(size, CHUNK))
        except (BlockingIOError, InterruptedError):
            return b''
        except OSError as err:
            raise Ended('error', str(err)) from None
        if not data:
            raise Ended('eof')
        return data

    def send(self, data):
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as err:
            self._failed = err
            return 0

    @staticmethod
    def alive():
        return True  # QEMU serves the screen; libvirtd is not in the way once it is open

    def explain(self, ended):
        try:
            if not self.dom.isActive():
                return 'guest_stopped'
        except libvirt.libvirtError as err:
            if is_no_domain(err):
                return 'guest_stopped'
        return 'screen_closed' if ended.kind == 'eof' else 'screen_lost'

    def close(self):
        self.sock.close()
