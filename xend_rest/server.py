"""A small threaded HTTP/1.1 WSGI server (stdlib only): the workers, the acceptor, the life cycle.

Every connection is registered, one-shot, in one epoll set (Linux). `concurrency` workers at
a time (started on demand) wait on it and serve what is ready: threads taking turns on one GIL
can cost more than they bring (see docs/server.md). A worker reads without blocking: an
incomplete request is re-armed (a slow or idle client costs a descriptor, never a worker), a
complete one is served at once, with no hand-off between threads. One more thread accepts,
enforces deadlines, and gives a turn to another worker (up to `workers`) whenever one stalls on
a request for longer than `stall`. See docs/server.md; HTTP framing is http11.py's.
"""
import logging
import select
import selectors
import signal
import socket
import threading
import time

from . import accesslog, defaults, http11, listeners, sessions
from .client_connection import WAIT_WRITE, ClientConnection
from .errors import HTTPError
from .listeners import format_address, parse_listen, sd_notify

log = logging.getLogger('xend_rest.server')

# What becomes of a connection after a request: closed, kept, upgraded, or closing (see _refuse).
CLOSE, KEEP, UPGRADED, LINGER = 'close', 'keep', 'upgraded', 'linger'
LINGER_TIME = 2.0  # seconds a refused client's remaining bytes are read and dropped
READ, WRITE = select.EPOLLIN | select.EPOLLONESHOT, select.EPOLLOUT | select.EPOLLONESHOT


class Server:
    """Serve a WSGI app on listeners ('HOST:PORT', '[::1]:PORT', 'unix:/path')."""

    def __init__(self, app, listeners, workers=defaults.WORKERS, timeout=defaults.TIMEOUT,
                 keepalive_timeout=defaults.KEEPALIVE_TIMEOUT, grace=defaults.GRACE,
                 max_head=defaults.MAX_HEAD, backlog=defaults.BACKLOG,
                 request_timeout=defaults.REQUEST_TIMEOUT, tls=None, socket_mode=defaults.SOCKET_MODE,
                 socket_gid=-1, max_body=defaults.MAX_BODY, on_shutdown=None, stall=defaults.STALL,
                 concurrency=defaults.CONCURRENCY_IN_PROCESS):
        """tls: an ssl.SSLContext for every TCP listener; request_timeout: the deadline of a
        body of up to max_body (larger ones are streamed, `timeout` per read); socket_mode,
        socket_gid: who may connect to unix listeners; on_shutdown: called once shutdown
        begins, to end long-lived responses (event streams); concurrency: workers that serve at
        once while none stalls (at most `workers`; more start, up to it, for those that stall)."""
        self.app = app
        self.request_timeout, self.tls, self.max_body = request_timeout, tls, max_body
        self.socket_mode, self.socket_gid = socket_mode, socket_gid
        self.on_shutdown = on_shutdown
        self.listeners = list(listeners)
        for spec in self.listeners:
            parse_listen(spec)  # fail early, before anything is bound
        self.workers, self.timeout, self.keepalive_timeout = workers, timeout, keepalive_timeout
        self.grace, self.max_head, self.backlog, self.stall = grace, max_head, backlog, stall
        self.concurrency = min(concurrency, workers)
        self.addresses = []  # bound addresses, from getsockname(): tuples or unix paths
        self._conns = {}  # fd -> ClientConnection: every open HTTP connection
        # guards _conns, each ClientConnection.held, _threads, _busy, _stalled, _standby
        self._lock = threading.Lock()
        self._active = set()  # connections whose request is being served, cut after the grace period
        self._sockets = []
        self._threads = []  # the acceptor, then the workers started so far
        # A turn is taken by each worker that serves: `concurrency`, and one more per stalled one.
        self._turns = threading.Semaphore(self.concurrency)
        self._busy = {}  # worker thread -> time.monotonic() when it took the connection it serves
        self._stalled = set()  # workers whose turn went to another while they served one request
        self._standby = 0  # workers waiting for a turn (or about to)
        self._stopping = False
        self._stop_requested = False
        self._selector = self._epoll = None
        self._wake_r = self._wake_w = None
        self._sessions = sessions.Sessions()

    @property
    def open_sessions(self):
        """How many upgraded connections (consoles) are open."""
        return len(self._sessions)

    # -- life cycle --------------------------------------------------------------

    def start(self):
        """Bind every listener and start accepting; return once listening."""
        try:
            for spec in self.listeners:
                sock = listeners.bind(spec, self.backlog, self.socket_mode, self.socket_gid)
                self._sockets.append(sock)
                self.addresses.append(sock.getsockname())
        except OSError:
            for sock in self._sockets:
                sock.close()
            raise
        self._epoll = select.epoll()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._epoll.register(self._wake_r, select.EPOLLIN)  # level-triggered: wakes every worker
        self._selector.register(self._wake_r, selectors.EVENT_READ, 'wake')
        for sock in self._sockets:
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, 'listen')
        self._threads = [threading.Thread(target=self._accept_loop, name='xend-rest-selector',
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
        """Stop accepting, let requests in flight finish within grace seconds, close."""
        if self._stopping or self._selector is None:
            return
        deadline = time.monotonic() + (self.grace if grace is None else grace)
        self._stopping = True
        self._wake_w.send(b'x')
        self._threads[0].join()  # the acceptor closes listeners and idle connections
        if self.on_shutdown:
            self.on_shutdown()
        self._sessions.end()
        workers = self._threads[1:]
        if workers:  # every worker then polls, sees the wake-up, and ends
            self._turns.release(len(workers))
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        for conn in list(self._active):  # past the grace period: cut blocked I/O short
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in workers:
            thread.join(1.0)
        for conn in self._release(lambda conn: True):  # lingering, or handed back as we stopped
            self._forget(conn)
        self._sessions.join(deadline)
        self._epoll.close()
        self._wake_r.close()
        self._wake_w.close()
        log.info('stopped')

    # -- the acceptor thread -----------------------------------------------------

    def _accept_loop(self):
        interval = min(1.0, self.timeout, self.keepalive_timeout) / 2  # deadline resolution
        next_sweep = time.monotonic() + interval
        while not self._stopping:
            # While a connection is open, a request may stall the serving worker: look often.
            for key, _ in self._selector.select(
                    timeout=min(self.stall, interval) if self._conns else interval):
                if key.data == 'listen':
                    self._accept(key.fileobj)
            now = time.monotonic()
            if self._busy:
                self._take_over_stalled(now)
            if now >= next_sweep:
                next_sweep = now + interval
                self._sweep(now)
        for sock in self._sockets:
            listeners.close(sock)
        self._selector.close()
        # A request that has arrived is served within the grace period; the rest are closed.
        for conn in self._release(lambda conn: conn.closing or conn.handshaking or not conn.waiting()):
            self._forget(conn)

    def _accept(self, listener):
        for _ in range(64):  # several per wake-up under load, but never starve the others
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. EMFILE: keep serving the connections we have
                log.error('accept failed: %s', err)
                return
            conn = ClientConnection(*listeners.accepted(sock, peer, listener, self.tls))
            conn.deadline = time.monotonic() + self.timeout  # for the handshake and the head
            with self._lock:
                self._conns[conn.fd] = conn
                threads = self._worker_if_all_busy()
            self._epoll.register(conn.fd, READ)
            _start(threads)

    def _release(self, wanted):
        """Take the connections no thread holds that wanted(conn) selects."""
        with self._lock:
            taken = [conn for conn in self._conns.values() if not conn.held and wanted(conn)]
            for conn in taken:
                conn.held = True
        return taken

    def _any_waiting(self):
        """Whether a connection waits for a worker (no thread holds it)."""
        with self._lock:
            return any(not conn.held for conn in self._conns.values())

    def _sweep(self, now):
        """Close idle and too-slow connections."""
        for conn in self._release(lambda conn: conn.deadline < now):
            if conn.closing:
                self._forget(conn)
            elif conn.waiting():  # its bytes came in time, but every worker was busy: not its fault
                conn.deadline = now + self.timeout
                self._rearm(conn)
            elif conn.request is not None:  # the head was fine: say why we hang up
                self._refuse(conn, HTTPError(408, 'the request body did not arrive in time', 'timeout'))
            else:
                self._forget(conn)

    # -- workers -----------------------------------------------------------------

    def _new_workers(self, count):
        """Up to `count` more workers (under _lock), within `workers`, to _start() once _lock is
        released: each waits for a turn."""
        count = min(count, self.workers - (len(self._threads) - 1))
        if self._stopping or count <= 0:
            return []
        self._standby += count  # counted now, so the next look does not start them again
        threads = [threading.Thread(target=self._worker, daemon=True,
                                    name=f'xend-rest-worker-{len(self._threads) + n}')
                   for n in range(count)]
        self._threads += threads
        return threads

    def _worker_if_all_busy(self):
        """A new worker (under _lock) while every one serves and fewer than `concurrency` have not
        stalled; never more than connections (each thread stays resident: about 200 KiB)."""
        workers = len(self._threads) - 1
        if (workers > len(self._busy)
                or workers - len(self._stalled) >= min(self.concurrency, len(self._conns))):
            return []
        return self._new_workers(1)

    def _take_over_stalled(self, now):
        """A turn for another worker per worker stalled on one request (a slow libvirt call, an
        event stream, a client that does not read): the ready connections wait no longer."""
        with self._lock:
            stalled = [worker for worker, since in self._busy.items()
                       if now - since > self.stall and worker not in self._stalled]
            self._stalled.update(stalled)
            threads = self._new_workers(len(stalled) - self._standby)
        _start(threads)
        if stalled:
            self._turns.release(len(stalled))

    def _take(self, fd, me):
        """The connection an event is for, now held by worker `me`; None for a stale event
        (another thread has it, and will re-arm it)."""
        with self._lock:
            conn = self._conns.get(fd)
            if conn is None or conn.held:
                return None
            conn.held = True
            self._busy[me] = time.monotonic()
            threads = self._worker_if_all_busy()
        _start(threads)
        return conn

    def _worker(self):
        """Wait for a turn; serve until shutdown, or until this worker stalled and another took
        over (then wait for a turn again, so that `concurrency` serve)."""
        while True:
            self._turns.acquire()
            with self._lock:
                self._standby -= 1
            if not self._serve_turn(threading.current_thread()):
                return

    def _serve_turn(self, me):
        """Serve ready connections: True once this worker's turn went to another, False at shutdown."""
        wake = self._wake_r.fileno()
        while True:
            try:
                events = self._epoll.poll(-1, 1)
            except (OSError, ValueError):  # closed: a worker still busy past the grace period
                return False
            if not events:
                continue
            if events[0][0] == wake:  # shutting down: once no request waits for a worker
                if self._stopping and not self._any_waiting():
                    return False
                continue
            conn = self._take(events[0][0], me)
            if conn is None:
                continue
            try:
                self._ready(conn)
            except Exception:
                log.exception('unexpected error serving %s', conn.client)
                self._forget(conn)
            finally:
                with self._lock:
                    del self._busy[me]
                    stalled = me in self._stalled
                    if stalled:
                        self._stalled.remove(me)
                        self._standby += 1
            if stalled:
                return True

    def _ready(self, conn):
        """Work on a connection the epoll set says is ready; re-arm it, or let it go."""
        if conn.handshaking:
            self._handshake(conn)
        elif conn.closing:  # drop what the client still sends, until it closes
            if conn.recv() == b'':
                return self._forget(conn)
            self._rearm(conn)
        else:
            self._read(conn)

    def _rearm(self, conn, events=READ):
        conn.held = False  # first: the event may come at once, to another worker
        try:
            self._epoll.modify(conn.fd, events)
        except (OSError, ValueError):  # closed at shutdown
            pass

    def _forget(self, conn, close=True):
        """Remove a held connection from the server (before its fd can be reused), and close it."""
        with self._lock:
            self._conns.pop(conn.fd, None)
        try:
            self._epoll.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        if close:
            conn.close()

    def _handshake(self, conn):
        """One non-blocking step of a TLS handshake; the sweep drops it if it takes too long."""
        try:
            wait = conn.handshake()
        except OSError as err:  # SSLError included: bad or missing client certificate
            log.info('TLS handshake with %s failed: %s', conn.client, err)
            return self._forget(conn)
        if wait is not None:
            return self._rearm(conn, WRITE if wait == WAIT_WRITE else READ)
        self._read(conn)  # the request may have come with the handshake's last bytes

    def _read(self, conn):
        """Read what has arrived; serve the request once it is complete, as often as there is one."""
        while True:
            data = conn.recv()
            if data is None:
                return self._rearm(conn)
            if not data:
                return self._forget(conn)
            if not conn.buf:  # a new head has begun: the client gets `timeout` to finish it
                conn.deadline = time.monotonic() + self.timeout
            conn.buf += data
            try:
                complete = conn.complete(self.max_head, self.max_body, self.request_timeout)
            except HTTPError as err:
                return self._refuse(conn, err, time.perf_counter())
            if not complete:  # wait for the rest; but not once shutting down
                return self._forget(conn) if self._stopping else self._rearm(conn)
            outcome = self._serve_held(conn)
            if outcome != KEEP:
                return
            if not conn.pending():
                return self._rearm(conn)

    def _refuse(self, conn, err, start=None):
        """Answer err and half-close; start: log the request too (its head was read). Closing a
        socket with unread bytes resets the connection, which can destroy the answer in flight:
        so for a while what the client still sends is read and dropped."""
        response, nbytes = http11.error_response(err)
        if start is not None:
            accesslog.request(*http11.request_line_of(conn.buf), err.status, nbytes, start,
                              conn.client)
        try:
            conn.sock.send(response)  # small: fits the socket buffer
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return self._forget(conn)
        if self._stopping:  # nobody is left to linger with it
            return self._forget(conn)
        conn.closing, conn.deadline = True, time.monotonic() + LINGER_TIME
        self._rearm(conn)

    # -- serving a request -------------------------------------------------------

    def _serve_held(self, conn):
        """Serve the complete request(s) on conn; KEEP means conn is ours to re-arm."""
        self._active.add(conn)
        outcome = CLOSE
        try:
            # The socket stays non-blocking: each read or write that must wait waits up to
            # `timeout` (http11.send, Input), so a client that stalls holds this worker that long.
            outcome = self._serve(conn)
        except OSError as err:  # client gone, timed out, or connection cut at shutdown
            log.debug('connection from %s: %s', conn.client, err)
        except Exception:
            log.exception('unexpected error serving %s', conn.client)
        finally:
            self._active.discard(conn)
        if outcome == KEEP and not self._stopping:
            conn.deadline = time.monotonic() + (self.timeout if conn.buf else self.keepalive_timeout)
            return KEEP
        if outcome not in (UPGRADED, LINGER):  # those are a session's, or re-armed already
            self._forget(conn)
        return CLOSE

    def _serve(self, conn):
        """Serve every complete request buffered on conn: CLOSE, KEEP, UPGRADED or LINGER."""
        while True:
            outcome = self._serve_one(conn)
            if outcome != KEEP or self._stopping:
                return outcome
            if not conn.buf or http11.find_head(conn.buf) is None:  # none pipelined: wait
                return KEEP

    def _serve_one(self, conn):
        start = time.perf_counter()
        request, conn.request = conn.request, None
        if request is None:  # a pipelined request, already here
            try:
                request = http11.parse_request(conn.buf, http11.find_head(conn.buf), conn.environ,
                                               self.max_head)
            except HTTPError as err:
                self._refuse(conn, err, start)
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
        # The app names its caller in the environ (the server knows no credentials).
        accesslog.request(environ['REQUEST_METHOD'], environ['RAW_URI'],
                          (response.status or '-')[:3], response.nbytes, start, conn.client,
                          environ.get('xend_rest.caller', '-'))
        if response.failed is not None:  # client gone, timed out, or cut at shutdown
            log.debug('connection from %s: %s', conn.client, response.failed)
            return CLOSE
        if response.status[:3] == '101':  # no longer HTTP: a session's, or nobody's
            if keep and upgrade.session is not None:
                self._forget(conn, close=False)  # first: once the session closes it, its fd is reused
                self._sessions.start(conn.sock, bytes(conn.buf), upgrade, conn.client)
                return UPGRADED
            return CLOSE
        return KEEP if keep else CLOSE


def _start(threads):
    for thread in threads:
        thread.start()
