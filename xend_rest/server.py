"""A small threaded HTTP/1.1 WSGI server (stdlib only): the selector, the workers, the life cycle.

One selector thread accepts connections, watches idle keep-alive connections and accumulates
each request head without blocking; only a connection whose request is complete is handed,
through a bounded queue, to one of a bounded pool of workers (started on demand, so an idle
daemon stays small). So slow, idle or half-open clients cost a file descriptor, never a worker
thread. Parsing and writing HTTP is http11.py's; binding listeners is listeners.py's.
"""
import collections
import logging
import queue
import selectors
import signal
import socket
import ssl
import threading
import time

from . import defaults, http11, listeners, sessions
from .errors import RETRY_AFTER, HTTPError
from .listeners import format_address, parse_listen, sd_notify
from .tickets import redact_ticket

log = logging.getLogger('xend_rest.server')
access_log = logging.getLogger('xend_rest.access')

# What becomes of a connection after a request: closed, kept, upgraded, or closing (see _refuse).
CLOSE, KEEP, UPGRADED, LINGER = 'close', 'keep', 'upgraded', 'linger'
LINGER_TIME = 2.0  # seconds a refused client's remaining bytes are read and dropped


class Connection:
    """A client connection: its socket, what has been read of it, and its per-connection environ."""
    __slots__ = ('sock', 'buf', 'deadline', 'client', 'environ', 'transport', 'handshaking',
                 'request', 'closing')

    def __init__(self, sock, environ):
        self.sock, self.environ = sock, environ
        self.client = environ['REMOTE_ADDR']
        self.transport = environ['xend_rest.transport']  # unix, tcp or tls
        self.buf = bytearray()
        self.deadline = 0.0
        self.handshaking = self.transport == 'tls'
        self.request = None  # a complete head whose body the selector is still reading
        self.closing = False  # answered and half-closed: what the client still sends is dropped

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Server:
    """Serve a WSGI app on listeners ('HOST:PORT', '[::1]:PORT', 'unix:/path')."""

    def __init__(self, app, listeners, workers=defaults.WORKERS, queue_size=defaults.QUEUE_SIZE,
                 timeout=defaults.TIMEOUT, keepalive_timeout=defaults.KEEPALIVE_TIMEOUT,
                 grace=defaults.GRACE, max_head=defaults.MAX_HEAD, backlog=defaults.BACKLOG,
                 request_timeout=defaults.REQUEST_TIMEOUT, tls=None, socket_mode=defaults.SOCKET_MODE,
                 socket_gid=-1, max_body=defaults.MAX_BODY, on_shutdown=None):
        """tls: an ssl.SSLContext for every TCP listener; request_timeout: the deadline of a
        body of up to max_body (larger ones are streamed, `timeout` per read); socket_mode,
        socket_gid: who may connect to unix listeners; on_shutdown: called once shutdown
        begins, to end long-lived responses (event streams)."""
        self.app = app
        self.request_timeout, self.tls, self.max_body = request_timeout, tls, max_body
        self.socket_mode, self.socket_gid = socket_mode, socket_gid
        self.on_shutdown = on_shutdown
        self.listeners = list(listeners)
        for spec in self.listeners:
            parse_listen(spec)  # fail early, before anything is bound
        self.workers, self.timeout, self.keepalive_timeout = workers, timeout, keepalive_timeout
        self.grace, self.max_head, self.backlog = grace, max_head, backlog
        self.addresses = []  # bound addresses, from getsockname(): tuples or unix paths
        self._queue = queue.Queue(queue_size)
        self._returned = collections.deque()  # keep-alive connections back from workers
        self._active = set()  # connections a worker is serving, cut after the grace period
        self._sockets = []
        self._threads = []  # the selector, then the workers started so far
        self._idle = 0  # workers waiting on the queue (or about to)
        self._idle_lock = threading.Lock()
        self._stopping = False
        self._stop_requested = False
        self._selector = None
        self._wake_r = self._wake_w = None
        self._sessions = sessions.Sessions()

    @property
    def open_sessions(self):
        """How many upgraded connections (consoles) are open."""
        return len(self._sessions)

    # -- life cycle --------------------------------------------------------------

    def start(self):
        """Bind every listener and start the threads; return once listening."""
        try:
            for spec in self.listeners:
                sock = listeners.bind(spec, self.backlog, self.socket_mode, self.socket_gid)
                self._sockets.append(sock)
                self.addresses.append(sock.getsockname())
        except OSError:
            for sock in self._sockets:
                sock.close()
            raise
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, 'wake')
        for sock in self._sockets:
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, 'listen')
        self._threads = [threading.Thread(target=self._select_loop, name='xend-rest-selector',
                                          daemon=True)]
        self._threads[0].start()
        log.info('listening on %s', ', '.join(map(format_address, self.addresses)))

    def serve_forever(self):
        """start(), notify systemd, serve until SIGTERM/SIGINT or stop(), then shut down."""
        received = []

        def on_signal(signum, frame):
            received.append(signal.Signals(signum).name)
            self.stop()
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            sd_notify('READY=1')
            # A plain flag and a short sleep: a signal handler must not take a lock
            # (Event.set, logging) that the interrupted main thread may be holding.
            while not self._stop_requested:
                time.sleep(0.1)
            log.info('%s, shutting down', f'received {received[0]}' if received else 'asked to stop')
            sd_notify('STOPPING=1')
            self.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self):
        """Ask serve_forever() to shut down (safe from a signal handler or another thread)."""
        self._stop_requested = True

    def shutdown(self, grace=None):
        """Stop accepting, let in-flight and queued requests finish within grace seconds, close."""
        if self._stopping or self._selector is None:
            return
        grace = self.grace if grace is None else grace
        deadline = time.monotonic() + grace
        self._stopping = True
        self._wake()
        self._threads[0].join()  # the selector closes listeners and idle connections
        if self.on_shutdown:
            self.on_shutdown()
        self._sessions.end()
        self._stop_workers(deadline)
        self._sessions.join(deadline)
        while self._returned:  # handed back by a worker as the selector was exiting
            self._returned.popleft().close()
        self._wake_r.close()
        self._wake_w.close()
        log.info('stopped')

    def _stop_workers(self, deadline):
        workers = self._threads[1:]
        for _ in workers:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                break
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        for conn in list(self._active):  # past the grace period: cut blocked I/O short
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in workers:
            thread.join(1.0)

    def _wake(self):
        try:
            self._wake_w.send(b'x')
        except BlockingIOError:
            pass  # the selector already has wake-ups pending

    # -- selector thread ---------------------------------------------------------

    def _select_loop(self):
        selector = self._selector
        interval = min(1.0, self.timeout, self.keepalive_timeout) / 2  # deadline resolution
        next_sweep = time.monotonic() + interval
        while not self._stopping:
            for key, _ in selector.select(timeout=interval):
                if key.data == 'listen':
                    self._accept(key.fileobj)
                elif key.data == 'wake':
                    self._drain_wake()
                elif key.data.handshaking:
                    self._handshake(key.data)
                elif key.data.closing:
                    self._discard_input(key.data)
                else:
                    self._read_head(key.data)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + interval
                self._sweep(now)
        for key in list(selector.get_map().values()):
            if isinstance(key.data, Connection):
                key.data.close()
        for sock in self._sockets:
            listeners.close(sock)
        selector.close()

    def _sweep(self, now):
        """Close idle and too-slow connections."""
        for key in list(self._selector.get_map().values()):
            conn = key.data
            if isinstance(conn, Connection) and conn.deadline < now:
                self._selector.unregister(conn.sock)
                if conn.request is not None and not conn.closing:  # the head was fine: say why
                    self._refuse(conn, HTTPError(408, 'the request body did not arrive in time',
                                                 'timeout'))
                else:
                    conn.close()

    def _accept(self, listener):
        for _ in range(64):  # several per wake-up under load, but never starve the others
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. EMFILE: keep serving the connections we have
                log.error('accept failed: %s', err)
                return
            conn = self._connection(sock, peer, listener)
            conn.deadline = time.monotonic() + self.timeout  # for the handshake and the head
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _connection(self, sock, peer, listener):
        sock.setblocking(False)
        if sock.family == socket.AF_UNIX:
            environ = http11.connection_environ('unix', 'unix', '', listener.getsockname(), '')
            return Connection(sock, environ)
        # Without it a small response on a keep-alive connection can wait 40 ms for an ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host, port = listener.getsockname()[:2]
        transport = 'tcp' if self.tls is None else 'tls'
        if self.tls is not None:  # the handshake happens in _handshake(), never here
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        environ = http11.connection_environ(transport, peer[0], str(peer[1]), host, str(port))
        return Connection(sock, environ)

    def _handshake(self, conn):
        """One non-blocking step of a TLS handshake; the sweep drops it if it takes too long."""
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        except OSError as err:  # SSLError included: bad or missing client certificate
            log.info('TLS handshake with %s failed: %s', conn.client, err)
            self._drop(conn)
            return
        conn.handshaking = False
        subject = dict(field[0] for field in (conn.sock.getpeercert() or {}).get('subject', ()))
        if subject.get('commonName') is not None:  # the verified client certificate's CN
            conn.environ['xend_rest.client_cn'] = subject['commonName']
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        deadline = time.monotonic() + self.keepalive_timeout
        while self._returned:
            conn = self._returned.popleft()
            if not conn.closing:
                conn.deadline = deadline
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            if conn.transport == 'tls' and conn.sock.pending():  # already decrypted: no event
                self._read_head(conn)

    def _read_head(self, conn):
        try:
            data = conn.sock.recv(http11.RECV_SIZE)
            while conn.transport == 'tls' and conn.sock.pending():  # decrypted, not on the fd
                data += conn.sock.recv(http11.RECV_SIZE)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:
            data = b''
        if not data:
            self._drop(conn)
            return
        if not conn.buf:  # a new head has begun: the client gets `timeout` to finish it
            conn.deadline = time.monotonic() + self.timeout
        conn.buf += data
        try:
            complete = self._complete(conn)
        except HTTPError as err:
            self._selector.unregister(conn.sock)
            self._refuse(conn, err, time.perf_counter())
            return
        if complete:
            self._selector.unregister(conn.sock)
            self._dispatch(conn)

    def _complete(self, conn):
        """Whether a worker may take the request: its head, and its body unless that is larger
        than max_body (a worker streams those), are here. So a client that sends a head and then
        stalls its body costs a descriptor, not a worker. HTTPError if the head is malformed."""
        if conn.request is None:
            found = http11.find_head(conn.buf)
            if found is None:
                http11.check_partial_head(conn.buf, self.max_head)
                return False
            conn.request = http11.parse_request(conn.buf, found, conn.environ, self.max_head)
            request = conn.request
            if request.length <= self.max_body and len(conn.buf) < request.body_start + request.length:
                conn.deadline = time.monotonic() + self.request_timeout  # the body's own deadline
                if request.expect_continue:
                    try:
                        conn.sock.send(http11.CONTINUE)  # small: fits the buffer
                    except OSError:
                        pass
        request = conn.request
        return request.length > self.max_body or len(conn.buf) >= request.body_start + request.length

    def _dispatch(self, conn):
        try:
            self._queue.put_nowait(conn)
            self._add_worker_if_all_busy()
        except queue.Full:
            log.warning('all workers busy and queue full, refusing %s', conn.client)
            self._refuse(conn, HTTPError(503, 'server busy', 'busy', [('Retry-After', RETRY_AFTER)]))

    def _refuse(self, conn, err, start=None, selector=True):
        """Answer err and half-close; start: log the request too (its head was read). Closing a
        socket with unread bytes resets the connection, which can destroy the answer in flight:
        so for a while what the client still sends is read and dropped (by the selector, which
        a worker hands the connection to: selector=False)."""
        response, nbytes = http11.error_response(err)
        if start is not None:
            self._log(*http11.request_line_of(conn.buf), err.status, nbytes, start, conn)
        try:
            conn.sock.sendall(response)  # small: fits the socket buffer
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        conn.closing, conn.deadline = True, time.monotonic() + LINGER_TIME
        if selector:
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _discard_input(self, conn):
        try:
            if conn.sock.recv(http11.RECV_SIZE):
                return
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:
            pass
        self._drop(conn)

    def _drop(self, conn):
        self._selector.unregister(conn.sock)
        conn.close()

    # -- workers -----------------------------------------------------------------

    def _add_worker_if_all_busy(self):
        """Workers start on demand, up to `workers`: an idle daemon keeps a small footprint."""
        with self._idle_lock:
            if self._idle or len(self._threads) > self.workers:
                return
            self._idle += 1  # counted now, so the next request does not start another one
        thread = threading.Thread(target=self._worker, name=f'xend-rest-worker-{len(self._threads)}',
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def _worker(self):
        while True:
            conn = self._queue.get()
            with self._idle_lock:
                self._idle -= 1
            if conn is None:
                return
            self._active.add(conn)
            outcome = CLOSE
            try:
                # A client that stalls in the middle of its body holds this worker up to `timeout`.
                conn.sock.settimeout(self.timeout)
                outcome = self._serve(conn)
            except OSError as err:  # client gone, timed out, or connection cut at shutdown
                log.debug('connection from %s: %s', conn.client, err)
            except Exception:
                log.exception('unexpected error serving %s', conn.client)
            finally:
                self._active.discard(conn)
            if outcome == LINGER or outcome == KEEP and not self._stopping:
                conn.sock.setblocking(False)
                self._returned.append(conn)
                self._wake()
            elif outcome != UPGRADED:
                conn.close()
            with self._idle_lock:
                self._idle += 1

    def _serve(self, conn):
        """Serve every complete request buffered on conn: CLOSE, KEEP or UPGRADED."""
        while True:
            outcome = self._serve_one(conn)
            if outcome != KEEP or self._stopping:
                return outcome
            if http11.find_head(conn.buf) is None:  # no pipelined request: back to the selector
                return KEEP

    def _serve_one(self, conn):
        start = time.perf_counter()
        request, conn.request = conn.request, None
        if request is None:  # a pipelined request, not parsed by the selector
            try:
                request = http11.parse_request(conn.buf, http11.find_head(conn.buf), conn.environ,
                                               self.max_head)
            except HTTPError as err:
                self._refuse(conn, err, start, selector=False)
                return LINGER
        upgrade = request.environ['xend_rest.upgrade'] = sessions.Upgrade()
        # A body of up to max_body gets the request's deadline (it is usually here already). A
        # larger one is streamed (an image upload) for as long as it keeps coming: each read
        # still waits at most `timeout`, so a client that stalls is cut off all the same.
        deadline = (time.monotonic() + self.request_timeout if request.length <= self.max_body
                    else float('inf'))
        response, conn.buf, keep = http11.respond(self.app, conn.sock, conn.buf, request,
                                                  self.timeout, deadline, not self._stopping)
        environ = request.environ
        self._log(environ['REQUEST_METHOD'], environ['RAW_URI'], response.status[:3],
                  response.nbytes, start, conn)
        if response.status[:3] == '101':  # no longer HTTP: a session's, or nobody's
            if keep and upgrade.session is not None:
                self._sessions.start(conn.sock, bytes(conn.buf), upgrade, conn.client)
                return UPGRADED
            return CLOSE
        return KEEP if keep else CLOSE

    def _log(self, method, target, status, nbytes, start, conn):
        if access_log.isEnabledFor(logging.INFO):  # skip the formatting when nobody listens
            # A console ticket is a credential: never written down (the rest of the target is).
            access_log.info('%s %s %s %d %.2fms %s', method, redact_ticket(target), status,
                            nbytes, (time.perf_counter() - start) * 1000, conn.client)
