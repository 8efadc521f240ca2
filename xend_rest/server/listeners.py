"""Listeners: '--listen' addresses parsed, bound (unix sockets with their mode and group), and
the systemd readiness notification."""
import logging
import os
import socket
import stat

from xend_rest import defaults

log = logging.getLogger(__name__)

LISTEN_HELP = 'expected HOST:PORT, [IPV6]:PORT or unix:/path'


def parse_listen(spec):
    """Parse 'HOST:PORT', '[IPV6]:PORT' or 'unix:/path' into (family, address); ValueError if bad."""
    if spec.startswith('unix:'):
        path = spec[len('unix:'):]
        if not path:
            raise ValueError(f'invalid listen address {spec!r}: empty unix socket path')
        return socket.AF_UNIX, path
    host, sep, port = spec.rpartition(':')
    family = socket.AF_INET
    if host.startswith('[') and host.endswith(']'):
        host, family = host[1:-1], socket.AF_INET6
    if not sep or not host or ':' in host and family == socket.AF_INET:
        raise ValueError(f'invalid listen address {spec!r}: {LISTEN_HELP}')
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f'invalid listen address {spec!r}: bad port {port!r}')
    return family, (host, int(port))


def format_address(address):
    """A bound address (from getsockname()) in --listen syntax."""
    if isinstance(address, str):
        return 'unix:' + address
    host, port = address[:2]
    return f'[{host}]:{port}' if ':' in host else f'{host}:{port}'


def bind(spec, backlog=defaults.BACKLOG, socket_mode=defaults.SOCKET_MODE, socket_gid=-1):
    """A listening socket for spec; a unix socket gets socket_mode and socket_gid."""
    family, address = parse_listen(spec)
    if family != socket.AF_UNIX:
        return socket.create_server(address, family=family, backlog=backlog)
    try:
        if stat.S_ISSOCK(os.stat(address).st_mode):
            os.unlink(address)  # stale socket from a previous run; bind() would fail on it
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # nobody else may connect between bind() and chmod()
    try:
        sock.bind(address)
        os.chown(address, -1, socket_gid)
        os.chmod(address, socket_mode)  # connecting needs write access: mode says who may
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(umask)
    return sock


def accepted(sock, peer, listener, tls=None):
    """Set up a socket accept() gave: non-blocking, TCP_NODELAY, TLS-wrapped (the handshake is
    the caller's, non-blocking). Returns the socket, its transport (unix, tcp or tls), the
    client's address and port, and the server's name and port."""
    sock.setblocking(False)
    if sock.family == socket.AF_UNIX:
        return sock, 'unix', 'unix', '', listener.getsockname(), ''
    # Without it a small response on a keep-alive connection can wait 40 ms for an ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    host, port = listener.getsockname()[:2]
    if tls is not None:
        sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    return sock, 'tcp' if tls is None else 'tls', peer[0], str(peer[1]), host, str(port)


def close(sock):
    """Close a listening socket, and remove a unix socket's file."""
    family, address = sock.family, sock.getsockname()
    sock.close()
    if family == socket.AF_UNIX:
        try:
            os.unlink(address)
        except OSError:
            pass


def sd_notify(state):
    """Send state (e.g. 'READY=1') to systemd if $NOTIFY_SOCKET is set; True if sent."""
    address = os.environ.get('NOTIFY_SOCKET')
    if not address:
        return False
    if address[0] == '@':  # an abstract socket: a leading NUL byte for the kernel
        address = '\0' + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as err:
        log.warning('cannot notify systemd at %s: %s', address, err)
        return False
    return True
