"""A small threaded HTTP/1.1 WSGI server (stdlib only): the workers, the acceptor, the life cycle.

Every connection is registered, one-shot, in one epoll set (Linux). `concurrency` workers at
a time (started on demand) wait on it and serve what is ready: threads taking turns on one GIL
can cost more than they bring (see docs/server.md). A worker reads without blocking: an
incomplete request is re-armed (a slow or idle client costs a descriptor, never a worker), a
complete one is served at once, with no hand-off between threads; an answer the client does
not take at once waits for the socket the same way. One more thread accepts, enforces
deadlines, and gives a turn to another worker (up to `workers`) whenever one stalls on a request
for longer than `stall`. Requests that hold a worker for long (uploads, and what the app says
will: event streams, waits) are bounded together below `workers`, so that `concurrency` workers
are always left for the rest. See docs/server.md; HTTP framing is http11.py's.
"""
import collections
import dataclasses
import functools
import logging
import os
import select
import selectors
import signal
import socket
import threading
import time

from xend_rest import defaults
from xend_rest.errors import HTTPError
from xend_rest.logtext import printable_text, traceback_text
from . import accesslog, http11, listeners, reloads, upgrades
from .client_connection import WAIT_WRITE, ClientConnection
from .listeners import format_address, parse_listen, sd_notify

log = logging.getLogger(__name__)

LINGER_TIME = 2.0  # seconds a refused client's remaining bytes are read and dropped
# Seconds the listeners rest after accept() failed (out of file descriptors, as a rule): the
# waiting connection keeps them readable, and trying again at once spins (nginx waits 0.5 s).
ACCEPT_PAUSE = 0.5
# Bytes of request bodies let go after which the acceptor has freed memory handed back to the
# kernel (release_memory): glibc keeps what Python frees, below the top of its heap.
RELEASE_AFTER = 4 << 20
READ, WRITE = select.EPOLLIN | select.EPOLLONESHOT, select.EPOLLOUT | select.EPOLLONESHOT


class Exchange:
    """A request served, whose answer is on its way to the client (see Server._send)."""
    __slots__ = ('response', 'body', 'upgrade', 'start', 'parked', 'held')

    def __init__(self, response, body, upgrade, start, held):
        self.response, self.body, self.upgrade, self.start = response, body, upgrade, start
        self.parked = 0  # bytes of it counted in Server.unsent_bytes while it waits for the socket
        self.held = held  # the key it holds its worker under (Server._hold), until it ends


class Holds:
    """Requests that hold a worker for long: at most `limit` at once, and at most half of them
    (at least one) under one key (who made them, as the app names it; uploads have none)."""

    def __init__(self, limit):
        self.limit, self.per_key = limit, max(1, limit // 2)
        self._keys = collections.Counter()
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self):
        return self._count

    def take(self, key=None):
        """True, and one more is counted, unless `limit` are held, or `per_key` under `key`."""
        with self._lock:
            if self._count >= self.limit or (key is not None and self._keys[key] >= self.per_key):
                return False
            self._count += 1
            if key is not None:
                self._keys[key] += 1
            return True

    def give(self, key=None):
        with self._lock:
            self._count -= 1
            if key is not None:
                self._keys[key] -= 1
                if not self._keys[key]:
                    del self._keys[key]


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """How the server serves: everything the CLI and the configuration file tune (cli.OPTIONS
    fills the fields of the same names), each defaulting to defaults.py."""
    workers: int = defaults.WORKERS  # threads at most
    # Workers that serve at once while none stalls (at most `workers`; more start, up to it, for
    # those that stall longer than `stall` seconds).
    concurrency: int = defaults.CONCURRENCY_IN_PROCESS
    stall: float = defaults.STALL
    timeout: float = defaults.TIMEOUT  # seconds a read or write on a client socket may take
    keepalive_timeout: float = defaults.KEEPALIVE_TIMEOUT
    # The deadline of a body of up to max_body (larger ones are streamed, `timeout` per read).
    request_timeout: float = defaults.REQUEST_TIMEOUT
    grace: float = defaults.GRACE  # seconds requests in flight get at shutdown
    max_head: int = defaults.MAX_HEAD
    max_body: int = defaults.MAX_BODY
    max_uploads: int = defaults.MAX_UPLOADS  # streamed bodies read at once (each holds a worker)
    # Bytes of answers that may wait for slow clients, together, before one more is cut off.
    max_parked: int = defaults.MAX_PARKED
    # Bytes of request bodies on their way, together, before one more is refused.
    max_buffered: int = defaults.MAX_BUFFERED
    backlog: int = defaults.BACKLOG
    socket_mode: int = defaults.SOCKET_MODE  # with socket_gid: who may connect to unix listeners
    socket_gid: int = -1  # -1: the daemon's own group
    tls: object = None  # an ssl.SSLContext for every TCP listener


class Server:
    """Serve a WSGI app on listeners ('HOST:PORT', '[::1]:PORT', 'unix:/path')."""

    def __init__(self, app, listeners, settings=None, *, on_shutdown=None, screen=None,
                 release_memory=None, on_refused=None, on_reload=None, **overrides):
        """settings: a ServerSettings; overrides: some of its fields by name, which beat it
        (Server(app, listeners, workers=4)). The rest are the app's hooks:

        on_shutdown(): called once shutdown begins, to end long-lived responses (event
        streams); screen(environ): called with a request's head before its body is kept (not
        when it came with the head), it may refuse the request by raising an HTTPError (the
        app's credentials check: a body is kept only for a caller the app knows);
        release_memory(): called by the acceptor (at most every half second) once request
        bodies of RELEASE_AFTER bytes were let go, to hand freed memory back (malloc_trim);
        on_refused(method, target): called for each request the server refuses (or drops
        unfinished) before the app sees it, with its request line's method and target as sent
        (a line that does not parse: method '-' and the whole line); what it returns is the
        target as the access log shows it (None: as sent). The CLI's is App.refused: it spends
        the console tickets the target carries, and hides them. on_reload(): called on the
        main thread for each SIGHUP serve_forever() receives, to read credentials again; it
        returns the problems that made it keep the old ones ([] if it took the new), and the
        server answers `xend-rest --reload` (reloads.py) and systemd (RELOADING=1, READY=1).

        Uploads, and the requests the app says will hold their worker for long (through
        environ['xend_rest.hold']: event streams, waits), are at most `workers` minus
        `concurrency` together (but one, with one worker), half of them for one caller: so
        `concurrency` workers always serve the rest, and one caller cannot take every place."""
        self.settings = settings = dataclasses.replace(settings or ServerSettings(), **overrides)
        self.app = app
        self.request_timeout, self.tls = settings.request_timeout, settings.tls
        self.max_body, self.max_buffered = settings.max_body, settings.max_buffered
        self.screen, self.release_memory = screen, release_memory
        self.workers = settings.workers
        self.concurrency = min(settings.concurrency, settings.workers)
        self._holds = Holds(max(1, self.workers - self.concurrency))
        self.max_uploads = max(1, min(settings.max_uploads, self._holds.limit))
        self.max_parked = settings.max_parked
        self.socket_mode, self.socket_gid = settings.socket_mode, settings.socket_gid
        self.on_shutdown, self.on_refused, self.on_reload = on_shutdown, on_refused, on_reload
        self._reload_asked = False
        self.reloads = 0  # begun so far
        self.listeners = list(listeners)
        for spec in self.listeners:
            parse_listen(spec)  # fail early, before anything is bound
        self.timeout, self.keepalive_timeout = settings.timeout, settings.keepalive_timeout
        self.grace, self.max_head = settings.grace, settings.max_head
        self.backlog, self.stall = settings.backlog, settings.stall
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
        self._uploads = 0  # streamed bodies being read
        self._parked = 0  # bytes of answers waiting for the socket
        self._buffered = 0  # bytes of request bodies on their way (ClientConnection.awaited)
        self._bodies_let_go = 0  # bytes of such bodies let go since memory was last released
        self._stopping = False
        self._stop_requested = False
        self._accept_paused_until = None  # time.monotonic() when the listeners are watched again
        self._accept_failing_since = None  # time.monotonic() of the first of accept()'s failures
        self._accept_failures = 0  # since then, until it catches up with the waiting connections
        self._selector = self._epoll = None
        self._wake_r = self._wake_w = None
        self._sessions = upgrades.Sessions()

    @property
    def open_sessions(self):
        """How many upgraded connections (consoles) are open."""
        return len(self._sessions)

    @property
    def held(self):
        """How many requests hold a worker for long (uploads, event streams, waits)."""
        return len(self._holds)

    @property
    def awaited_bytes(self):
        """Bytes of request bodies on their way, kept until they are complete (at most
        max_buffered, unless one body alone is larger)."""
        return self._buffered

    @property
    def unsent_bytes(self):
        """Bytes of answers waiting for slow clients to take them (at most max_parked, unless
        one answer alone is larger)."""
        return self._parked

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
        """start(), notify systemd, serve until SIGTERM/SIGINT or stop(), then shut down; reload
        on SIGHUP (on_reload)."""
        received = []

        def on_signal(signum, frame):
            received.append(signal.Signals(signum).name)
            self.stop()

        def on_hangup(signum, frame):
            self._reload_asked = True
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        if self.on_reload is not None:
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
        try:
            self.start()
            sd_notify('READY=1')
            # A plain flag and a short sleep: a signal handler must not take a lock
            # (Event.set, logging) that the interrupted main thread may be holding.
            while not self._stop_requested:
                if self._reload_asked:
                    self._reload()
                time.sleep(0.1)
            log.info('%s, shutting down', f'received {received[0]}' if received else 'asked to stop')
            sd_notify('STOPPING=1')
            self.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _reload(self):
        """One reload, for however many SIGHUPs came before it began (reloads.py: the flag is
        cleared, then the reply says it began, then on_reload reads)."""
        self._reload_asked = False
        self.reloads += 1
        pid = os.getpid()
        reloads.write_reply(pid, self.reloads, reloads.RELOADING)
        sd_notify('RELOADING=1')
        try:
            problems = self.on_reload()
        except Exception:
            log.exception('reload failed; the settings in force stay')
            problems = ['the reload failed: see the log']
        sd_notify('READY=1')
        reloads.write_reply(pid, self.reloads, reloads.REFUSED if problems else reloads.DONE,
                            '; '.join(problems))

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
        # Lingering, answers still waiting for their clients, or handed back as we stopped:
        # closed now, so that the workers find nothing left to wait for.
        for conn in self._release(lambda conn: True):
            self._forget(conn)
        for thread in workers:
            thread.join(1.0)
        for conn in self._release(lambda conn: True):  # handed back by a worker meanwhile
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
            if self._accept_paused_until is not None and now >= self._accept_paused_until:
                self._watch_listeners(True)
            if self._busy:
                self._take_over_stalled(now)
            if now >= next_sweep:
                next_sweep = now + interval
                self._sweep(now)
        for sock in self._sockets:
            listeners.close(sock)
        self._selector.close()
        # A request that has arrived is served, and an answer under way sent, within the grace
        # period; the rest are closed.
        for conn in self._release(lambda conn: conn.exchange is None and (
                conn.closing or conn.handshaking or not conn.waiting())):
            self._forget(conn)

    def _accept(self, listener):
        for _ in range(64):  # several per wake-up under load, but never starve the others
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return self._accept_recovered()
            except ConnectionAbortedError:  # the client gave up while it waited: nothing to do
                continue
            except OSError as err:  # e.g. EMFILE: keep serving the connections we have
                return self._accept_failed(err)
            conn = ClientConnection(*listeners.accepted(sock, peer, listener, self.tls))
            conn.deadline = time.monotonic() + self.timeout  # for the handshake and the head
            with self._lock:
                self._conns[conn.fd] = conn
                threads = self._worker_if_all_busy()
            self._epoll.register(conn.fd, READ)
            _start(threads)

    def _accept_failed(self, err):
        """Rest the listeners for ACCEPT_PAUSE; one log line for the episode, not one per try."""
        if self._accept_failing_since is None:
            log.error('accept failed: %s; not accepting for %g s at a time until it works again '
                      '(the connections open are served meanwhile)', err, ACCEPT_PAUSE)
            self._accept_failing_since = time.monotonic()
        self._accept_failures += 1
        self._watch_listeners(False)

    def _accept_recovered(self):
        """accept() caught up with the waiting connections: the episode of failures, if any,
        is over."""
        if self._accept_failing_since is not None:
            log.warning('accepting again after %.1f s, in which accept() failed %d times',
                        time.monotonic() - self._accept_failing_since, self._accept_failures)
            self._accept_failing_since, self._accept_failures = None, 0

    def _watch_listeners(self, watch):
        """Have the acceptor select the listeners again, or rest them for ACCEPT_PAUSE."""
        if watch == (self._accept_paused_until is None):
            return  # as asked already (two listeners failed in one look)
        for sock in self._sockets:
            if watch:
                self._selector.register(sock, selectors.EVENT_READ, 'listen')
            else:
                self._selector.unregister(sock)
        self._accept_paused_until = None if watch else time.monotonic() + ACCEPT_PAUSE

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
        """Close idle and too-slow connections; release the memory of bodies let go."""
        if self._bodies_let_go >= RELEASE_AFTER and self.release_memory is not None:
            self._bodies_let_go = 0
            self.release_memory()
        for conn in self._release(lambda conn: conn.deadline < now):
            if conn.exchange is not None:  # nothing of its answer taken for `timeout`: a worker
                try:                       # finds the socket shut, and ends the answer
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.deadline = now + self.timeout
                self._rearm(conn, WRITE)
            elif conn.closing:
                self._forget(conn)
            elif conn.waiting():  # its bytes came in time, but every worker was busy: not its fault
                conn.deadline = now + self.timeout
                self._rearm(conn)
            elif conn.request is not None:  # the head was fine: say why we hang up
                self._refuse(conn, HTTPError(408, 'the request body did not arrive in time', 'timeout'))
            else:
                if conn.buf:  # a head that did not come in time
                    self._unserved(conn)
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
                time.sleep(0.01)  # the wake-up stays ready: do not spin while answers wait
                continue
            conn = self._take(events[0][0], me)
            if conn is None:
                continue
            try:
                self._ready(conn)
            except Exception as err:  # a bug, maybe in reading what the client sent
                log.error('unexpected error serving %s\n%s', conn.client,
                          traceback_text(err))
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
        elif conn.exchange is not None:  # the socket takes more of an answer
            if self._send(conn) and self._serve_buffered(conn):
                self._read(conn)
        else:
            self._read(conn)

    def _rearm(self, conn, events=READ):
        conn.held = False  # first: the event may come at once, to another worker
        try:
            self._epoll.modify(conn.fd, events)
        except (OSError, ValueError):  # closed at shutdown
            pass

    def _forget(self, conn, close=True):
        """Remove a held connection from the server (before its fd can be reused), and close it;
        an answer still under way ends with it."""
        with self._lock:
            self._conns.pop(conn.fd, None)
        self._no_longer_awaited(conn)
        try:
            self._epoll.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        if conn.exchange is not None:
            self._end_exchange(conn).upgrade.abandon()
        if close:
            conn.close()

    def _handshake(self, conn):
        """One non-blocking step of a TLS handshake; the sweep drops it if it takes too long."""
        try:
            wait = conn.handshake()
        except OSError as err:  # SSLError included: bad or missing client certificate
            log.info('TLS handshake with %s failed: %s', conn.client, printable_text(err))
            return self._forget(conn)
        if wait is not None:
            return self._rearm(conn, WRITE if wait == WAIT_WRITE else READ)
        self._read(conn)  # the request may have come with the handshake's last bytes

    def _read(self, conn):
        """Read what has arrived, and serve the requests it completes."""
        while True:
            data = conn.recv()
            if data is None:
                return self._rearm(conn)
            if not data:
                if conn.buf:  # the client went away in the middle of a request
                    self._unserved(conn)
                return self._forget(conn)
            if not conn.buf:  # a new head has begun: the client gets `timeout` to finish it
                conn.deadline = time.monotonic() + self.timeout
            conn.buf += data
            if not self._serve_buffered(conn):
                return
            if not conn.pending():
                return self._rearm(conn)

    def _serve_buffered(self, conn):
        """Serve the requests buffered on conn, in order, each once it is complete, pipelined or
        not (a body that stalls costs a descriptor, never a worker). True while conn is ours and
        waits for more bytes; False once it is not (an answer waits for the socket, or conn was
        closed or upgraded)."""
        while conn.buf:
            try:
                complete = conn.complete(self.max_head, self.max_body, self.request_timeout,
                                         self._await_body)
            except HTTPError as err:
                self._refuse(conn, err, time.perf_counter())
                return False
            if not complete:
                break
            if not self._serve(conn):
                return False
        if self._stopping:  # no new request once shutting down
            self._forget(conn)
            return False
        return True

    def _await_body(self, conn, request):
        """A request whose body is on its way: the app may refuse it now (screen), before any
        of it is kept; else its length counts in max_buffered until it is complete (503 past
        it, unless none is counted: a body larger than the bound alone still comes)."""
        if self.screen is not None:
            self.screen(request.environ)
        with self._lock:
            full = self._buffered and self._buffered + request.length > self.max_buffered
            if not full:
                self._buffered += request.length
                conn.awaited = request.length
        if full:
            raise HTTPError(503, f'request bodies of {self._buffered} bytes are on their way '
                            'already, the most this daemon keeps at once', 'too_many_bodies',
                            [('Retry-After', '5')])

    def _no_longer_awaited(self, conn):
        if conn.awaited:
            with self._lock:
                self._buffered -= conn.awaited
                self._bodies_let_go += conn.awaited
                conn.awaited = 0

    def _refuse(self, conn, err, start=None):
        """Answer err and half-close; start: log the request too (its head was read)."""
        self._no_longer_awaited(conn)
        response, nbytes = http11.error_response(err)
        method, target = self._unserved(conn)
        if start is not None:
            accesslog.request(method, target, err.status, nbytes, start, conn.client)
        try:
            conn.sock.send(response)  # small: fits the socket buffer
        except OSError:
            return self._forget(conn)
        self._linger(conn)

    def _unserved(self, conn):
        """(method, target) for the log of the request that begins conn's buffer, which the app
        will not see; on_refused is told of it."""
        method, target = http11.request_line_of(conn.buf)
        shown = self.on_refused(method, target) if self.on_refused is not None else None
        if method == '-':
            return '-', '-'  # a line that does not parse is not written down
        return method, target if shown is None else shown

    def _linger(self, conn):
        """Half-close, then for a while read and drop what the client still sends: closing a
        socket with unread bytes resets the connection, which can destroy the answer in flight."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return self._forget(conn)
        if self._stopping:  # nobody is left to linger with it
            return self._forget(conn)
        conn.closing, conn.deadline = True, time.monotonic() + LINGER_TIME
        self._rearm(conn)

    # -- serving a request -------------------------------------------------------

    def _serve(self, conn):
        """Call the app for conn's complete request, and send its answer. True if conn may serve
        another request; False once it is not ours (see _serve_buffered)."""
        start = time.perf_counter()
        request, conn.request = conn.request, None
        self._no_longer_awaited(conn)
        streamed = request.length > self.max_body  # an upload: read while the app runs
        if streamed and not self._begin_upload():
            self._refuse(conn, HTTPError(
                503, f'request bodies larger than {self.max_body} bytes are received at most '
                f'{self.max_uploads} at once, each holding a worker, and while workers are to '
                'spare: not now', 'too_many_uploads', [('Retry-After', '5')]), start)
            return False
        upgrade = request.environ['xend_rest.upgrade'] = upgrades.Upgrade(
            self._cannot_upgrade(request))
        held = []  # the key the request holds its worker under, once the app says it will
        request.environ['xend_rest.hold'] = functools.partial(self._hold, held)
        # A body of up to max_body gets the request's deadline (it is here already). A larger
        # one is streamed (an image upload) for as long as it keeps coming: each read still
        # waits at most `timeout`, so a client that stalls is cut off all the same.
        deadline = float('inf') if streamed else time.monotonic() + self.request_timeout
        self._active.add(conn)
        try:
            response, body = http11.respond(self.app, conn.sock, conn.buf, request, self.timeout,
                                            deadline, not self._stopping)
        except OSError as err:  # the client went away while the app read its body
            log.debug('connection from %s: %s', conn.client, err)
            upgrade.abandon()
            self._let_go(held)
            self._forget(conn)
            return False
        except Exception:
            upgrade.abandon()
            self._let_go(held)
            raise
        finally:
            self._active.discard(conn)
            if streamed:
                self._end_upload()
        conn.buf = body.extra
        conn.exchange = Exchange(response, body, upgrade, start, held)
        return self._send(conn)

    def _cannot_upgrade(self, request):
        """Why this request's connection could not be handed over to a session (an HTTPError
        the app gets from the Upgrade before it commits to anything), or None."""
        environ = request.environ
        if 'HTTP_UPGRADE' not in environ:
            return None
        if self._stopping:
            return HTTPError(503, 'the daemon is shutting down: no upgraded session starts',
                             'shutting_down', [('Retry-After', '5')])
        if environ['SERVER_PROTOCOL'] != 'HTTP/1.1':
            return HTTPError(400, 'an upgrade needs HTTP/1.1', 'bad_request')
        if not request.keep_alive:
            return HTTPError(400, 'Connection: close asks to close the connection after the '
                             'answer: it cannot be upgraded', 'bad_request')
        if request.length > self.max_body:
            return HTTPError(400, f'a request with a body larger than {self.max_body} bytes '
                             'cannot be upgraded', 'bad_request')
        return None

    def _begin_upload(self):
        with self._lock:
            if self._uploads >= self.max_uploads or not self._holds.take():
                return False
            self._uploads += 1
            return True

    def _end_upload(self):
        with self._lock:
            self._uploads -= 1
        self._holds.give()

    def _hold(self, held, key=None):
        """environ['xend_rest.hold'](key): the app says that this request will hold its worker
        for long (an event stream, a wait), for `key` (who made it). False if the server has
        no worker to spare for it (see Holds): the app refuses it then. Counted until the
        answer ends."""
        if held:
            return True
        if not self._holds.take(key):
            return False
        held.append(key)
        return True

    def _let_go(self, held):
        while held:
            self._holds.give(held.pop())

    def _send(self, conn):
        """Send as much of conn's answer as the socket takes now. The rest waits for the socket
        in the epoll set (a client that reads slowly costs its bytes, never a worker), within
        max_parked bytes for all such clients. True once all is sent and conn may serve another
        request; False if it waits, or conn was closed or upgraded."""
        exchange = conn.exchange
        self._unpark(exchange)
        self._active.add(conn)
        try:
            done = exchange.response.send_more()
        except OSError as err:  # client gone, or cut off for not reading (see _sweep)
            log.debug('connection from %s: %s', conn.client, err)
            self._forget(conn)
            return False
        finally:
            self._active.discard(conn)
        if done:
            return self._answered(conn)
        size = exchange.response.unsent()
        with self._lock:
            cut = self._parked and self._parked + size > self.max_parked
            if not cut:
                self._parked += size
                exchange.parked = size
        if cut:
            log.warning('%s takes its answer slowly while answers of %d bytes wait for slow '
                        'clients already: cut off', conn.client, self._parked)
            self._forget(conn)
            return False
        conn.deadline = time.monotonic() + self.timeout  # for the socket to take more
        self._rearm(conn, WRITE)
        return False

    def _unpark(self, exchange):
        if exchange.parked:
            with self._lock:
                self._parked -= exchange.parked
                exchange.parked = 0

    def _end_exchange(self, conn):
        """The answer on conn is over, sent or not: close it, log it; the Exchange."""
        exchange, conn.exchange = conn.exchange, None
        self._unpark(exchange)
        self._let_go(exchange.held)
        response, environ = exchange.response, exchange.response.environ
        try:
            response.close()
        except Exception as err:
            log.error('closing the answer to %s failed\n%s', http11.logged_request(environ),
                      traceback_text(err))
        # The app names its caller, and says how its target may be shown (it hides credentials).
        accesslog.request(environ['REQUEST_METHOD'], http11.logged_target(environ),
                          response.status[:3] if response.status else '-', response.nbytes,
                          exchange.start, conn.client, environ.get('xend_rest.caller', '-'))
        return exchange

    def _answered(self, conn):
        """The answer is sent: hand an upgraded connection over to its session, or go on with the
        next request. True if conn may serve another request."""
        exchange = self._end_exchange(conn)
        response, upgrade = exchange.response, exchange.upgrade
        keep = response.keep_alive and not exchange.body.remaining
        if response.status[:3] == '101':  # no longer HTTP: a session's, or nobody's
            if keep and upgrade.session is not None:
                self._forget(conn, close=False)  # first: once the session closes it, its fd is reused
                self._sessions.start(conn.sock, bytes(conn.buf), upgrade, conn.client)
                return False
            keep = False
        upgrade.abandon()  # a session the app took, then answered otherwise: released
        if not keep or self._stopping:
            if exchange.body.remaining or conn.buf:  # unread bytes: do not reset the answer
                self._linger(conn)
            else:
                self._forget(conn)
            return False
        conn.deadline = time.monotonic() + (self.timeout if conn.buf else self.keepalive_timeout)
        return True


def _start(threads):
    for thread in threads:
        thread.start()
