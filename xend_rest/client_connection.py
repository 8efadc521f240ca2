"""One client connection as the server sees it between requests: its socket, the bytes read so
far, an answer still on its way, its deadline, and the non-blocking steps that read a request off
it (TLS handshake, recv, "is the request complete?"). No threads here: server.py decides who runs
them and when."""
import functools
import select
import socket
import ssl
import struct
import time

from . import http11

WAIT_READ, WAIT_WRITE = 'read', 'write'
# A head is rarely more than a few hundred bytes; what is larger comes in more reads. Reading up
# to 64 KiB at a time from every worker thread left about 1.5 MiB more resident after load.
HEAD_RECV_SIZE = 8192


def connection_environ(transport, client, client_port, server_name, server_port):
    """The environ keys that are the same for every request on one connection."""
    return {
        'SCRIPT_NAME': '',
        'SERVER_NAME': server_name,
        'SERVER_PORT': server_port,
        'REMOTE_ADDR': client,
        'REMOTE_PORT': client_port,
        'wsgi.version': (1, 0),
        'wsgi.url_scheme': 'https' if transport == 'tls' else 'http',
        'wsgi.errors': http11.ERROR_STREAM,
        'wsgi.multithread': True,
        'wsgi.multiprocess': False,
        'wsgi.run_once': False,
        'xend_rest.transport': transport,  # what security.Guard authenticates by
    }


def hung_up(fd):
    """Whether the client of a connection hung up: it shut its end (EOF, even behind bytes not
    read yet: a pipelined request, a TLS close_notify) or reset it. A request asks this, as
    environ['xend_rest.client_gone'](), while it waits for something else."""
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP)  # POLLHUP and POLLERR are always reported
    return bool(poller.poll(0))


def peer_uid(sock):
    """The user id of the process that connected to a unix socket (SO_PEERCRED: the kernel's
    word, taken when it connected)."""
    _pid, uid, _gid = struct.unpack('3i', sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize('3i')))
    return uid


class ClientConnection:
    """A client connection: its socket, what has been read of it, and its per-connection environ."""
    __slots__ = ('sock', 'fd', 'buf', 'deadline', 'client', 'environ', 'transport', 'handshaking',
                 'request', 'exchange', 'closing', 'held', 'awaited')

    def __init__(self, sock, transport, *addresses):
        """transport: unix, tcp or tls; addresses: the client's address and port, the server's
        name and port (listeners.accepted())."""
        self.sock, self.fd, self.transport = sock, sock.fileno(), transport
        self.environ = connection_environ(transport, *addresses)
        # Facts for the app: whether the client hung up, and on a unix socket who connected.
        self.environ['xend_rest.client_gone'] = functools.partial(hung_up, self.fd)
        if transport == 'unix':
            self.environ['xend_rest.peer_uid'] = peer_uid(sock)
        self.client = addresses[0]
        self.buf = bytearray()
        self.deadline = 0.0
        self.handshaking = transport == 'tls'
        self.request = None  # a complete head whose body is still arriving
        self.awaited = 0  # bytes of that body counted in the server's max_buffered
        self.exchange = None  # an answer waiting for the socket to take more (server.Exchange)
        self.closing = False  # answered and half-closed: what the client still sends is dropped
        self.held = False  # a thread is working on it (it waits for no event)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def handshake(self):
        """One non-blocking step of the TLS handshake: WAIT_READ or WAIT_WRITE, or None once
        done (a verified client certificate's subject is then in the environ, as getpeercert()
        gives it: every RDN, so that the app can see two CNs); OSError if it failed."""
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            return WAIT_READ
        except ssl.SSLWantWriteError:
            return WAIT_WRITE
        self.handshaking = False
        subject = (self.sock.getpeercert() or {}).get('subject')
        if subject is not None:
            self.environ['xend_rest.client_subject'] = subject
        return None

    def recv(self):
        """What has arrived, b'' at the connection's end, None if nothing yet."""
        try:
            data = self.sock.recv(HEAD_RECV_SIZE)
            while self.transport == 'tls' and self.sock.pending():  # decrypted, not on the fd
                data += self.sock.recv(http11.RECV_SIZE)
            return data
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except OSError:
            return b''

    def waiting(self):
        """Whether bytes have arrived that nobody has read yet (TLS records included)."""
        try:
            return bool(socket.socket.recv(self.sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:
            return False

    def pending(self):
        """Whether TLS has decrypted bytes that no epoll event will announce."""
        return self.transport == 'tls' and self.sock.pending()

    def complete(self, max_head, max_body, request_timeout, await_body=None):
        """Whether the request may be served: its head, and its body unless that is larger than
        max_body (streamed while served), are here. So a client that sends a head and then
        stalls its body costs a descriptor, not a worker. HTTPError if the head is malformed,
        or if what has come of it can no longer become a request we serve. await_body(conn,
        request), if given, is called once its head is here and before its body is waited for
        (it may refuse it: HTTPError)."""
        if self.request is None:
            found = http11.find_head(self.buf)
            if found is None:
                http11.check_partial_head(self.buf, max_head)
                return False
            self.request = request = http11.parse_request(self.buf, found, self.environ, max_head)
            if request.length <= max_body and len(self.buf) < request.body_start + request.length:
                if await_body is not None:
                    await_body(self, request)
                self.deadline = time.monotonic() + request_timeout  # the body's own deadline
                if request.expect_continue:
                    try:
                        self.sock.send(http11.CONTINUE)  # small: fits the buffer
                    except OSError:
                        pass
        request = self.request
        return request.length > max_body or len(self.buf) >= request.body_start + request.length
