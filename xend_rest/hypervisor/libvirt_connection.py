"""The one place that opens, watches and reopens libvirt connections."""
import dataclasses
import logging
import os
import threading
import time
from urllib.parse import urlsplit

import libvirt

from xend_rest import defaults
from xend_rest.logtext import printable_text
from .libvirt_errors import hypervisor_timeout, open_failure, unavailable

log = logging.getLogger(__name__)

_event_loop_lock = threading.Lock()
_event_loop_started = False
_event_loop_thread = None  # its ident: its calls never wait at a gate (see Gated)

# What libvirt answers from the object itself, without asking libvirtd: never gated.
LOCAL_CALLS = frozenset({'name', 'UUID', 'UUIDString', 'isAlive'})
# Objects whose calls go to their connection: what a gated call returns is gated too.
LIBVIRT_OBJECTS = tuple(getattr(libvirt, name) for name in (
    'virConnect', 'virDomain', 'virDomainSnapshot', 'virDomainCheckpoint', 'virNetwork',
    'virNetworkPort', 'virInterface', 'virStoragePool', 'virStorageVol', 'virNodeDevice',
    'virSecret', 'virNWFilter', 'virNWFilterBinding', 'virStream') if hasattr(libvirt, name))


def _ignore_libvirt_error(_context, _error):
    """libvirt prints every error to stderr unless a handler is set; we log them ourselves."""


def start_event_loop():
    """Run libvirt's default event loop in one daemon thread (keepalive and close callbacks need it).

    libvirt allows one event implementation per process, registered before the first connection,
    so this is process-wide state and is started at most once.
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name='libvirt-events', daemon=True).start()
        _event_loop_started = True


def _run_event_loop():
    global _event_loop_thread
    _event_loop_thread = threading.get_ident()
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:
            log.exception('libvirt event loop iteration failed')


@dataclasses.dataclass(frozen=True)
class LibvirtSettings:
    """How a connection to libvirt is kept: what the CLI and the configuration file tune, for all
    connections or one (a [connection NAME] section); each field defaults to defaults.py."""
    # A stopped libvirtd breaks an open connection after about interval x (count + 1) s of
    # silence (libvirt's keepalive), and an opening one after open_timeout s.
    keepalive_interval: int = defaults.KEEPALIVE_INTERVAL
    keepalive_count: int = defaults.KEEPALIVE_COUNT
    open_timeout: float = defaults.OPEN_TIMEOUT
    lanes: int = defaults.LANES  # connections to one libvirtd at most
    # Migrations to this connection's host (docs/connections.md, Migration): the libvirt URI
    # by which the source host's libvirtd reaches this one (None: the connection's own URI),
    # and the address the hypervisors send the guest's memory to, as libvirt's migration URI
    # (tcp://ADDRESS for QEMU, ADDRESS for libxl; None: libvirt's choice, from the host name).
    migration_uri: str = None
    migration_address: str = None


class SharedConnection:
    """The libvirt connections to one hypervisor, opened lazily, shared by every thread, reopened
    once they break.

    Calls on a connection are made one at a time (Gated). So that a slow call does not hold up
    the others, there are `lanes` connections to one libvirtd: the first (events hang off it),
    and the others opened beside it, one after another, once it is; get() hands out the least
    busy. If one breaks, all are given up (one libvirtd: they break together) and reopened.
    """

    def __init__(self, uri, settings=None, **overrides):
        """settings: a LibvirtSettings; overrides: some of its fields by name, which beat it
        (SharedConnection(uri, open_timeout=5))."""
        self.settings = settings = dataclasses.replace(settings or LibvirtSettings(), **overrides)
        self.uri = uri
        self.keepalive = (settings.keepalive_interval, settings.keepalive_count)
        self.open_timeout = settings.open_timeout
        # The test driver keeps a node per connection: a second one would be another host.
        self.lanes = 1 if urlsplit(uri).scheme.partition('+')[0] == 'test' else settings.lanes
        self.connects = 0  # successful opens of a first connection; after the first, reconnects
        self.last_error = None  # why the last open failed, until one succeeds
        self._conn = None  # the first connection, which on_connect callbacks saw
        self._more = []  # the other lanes opened beside it
        self._opener = None  # the _Opener in flight: one at a time, however many requests wait
        self._lane_opener = None  # the one opening another lane, in the background
        self._no_more_beside = None  # a first connection beside which an open failed: no retry
        self._handed = 0  # connections handed out
        self._lock = threading.Lock()
        self._on_connect = []
        self._detachers = {}  # conn -> what its on_connect callbacks returned, to undo them
        self._dropped = []  # connections libvirt closed (close callback), still to be released

    def on_connect(self, callback):
        """Call callback(conn) on every first connection this opens (e.g. to register for events).

        callback may return a function, called (without arguments) before that connection is
        closed: registrations like event callbacks hold a reference that keeps it open otherwise.
        """
        self._on_connect.append(callback)

    @property
    def connected(self):
        """Whether a connection is open now (never opens one)."""
        return self._conn is not None

    def get(self):
        """A connection to the hypervisor, opening one first if there is none (503 when that
        fails, 504 when libvirtd does not answer within open_timeout)."""
        first = self._conn or self._wait_for_open()
        if self.lanes == 1 or not isinstance(first, Gated):
            return first
        return self._least_busy(first)

    def _wait_for_open(self):
        with self._lock:
            if self._conn is not None:
                return self._conn
            opener = self._opener = self._opener or _Opener(self._open, self.open_timeout)
        # Wait no longer than the opener's own deadline: once one open has hung past it, every
        # request answers at once instead of holding a worker for another open_timeout.
        if not opener.done.wait(max(0.0, opener.deadline - time.monotonic())):
            self.last_error = f'connecting has taken longer than {opener.timeout:g} s'
            raise hypervisor_timeout(f'connecting to {self.uri} has taken longer than '
                                     f'{opener.timeout:g} s')
        with self._lock:
            if self._opener is opener:  # the first to see it finished adopts its connection
                self._opener, self._conn = None, opener.conn
                if isinstance(opener.conn, Gated) and self.lanes > 1:
                    self._add_lane(opener.conn)  # and the lanes beside it, one after another
        if opener.error is not None:
            raise opener.error
        return opener.conn

    def _least_busy(self, first):
        """The lane (first or one beside it) with the fewest callers, the one handed out longest
        ago among equals; if even that one is busy, another lane is opened for those to come."""
        with self._lock:
            lanes = [first, *self._more] if self._conn is first else [first]
            chosen = min(lanes, key=lambda lane: (lane._gate.callers, lane._gate.handed))
            if chosen._gate.callers:
                self._add_lane(first)
            self._handed += 1
            chosen._gate.handed = self._handed
        return chosen

    def _add_lane(self, first):
        """Open another lane beside first in the background, if first is current, lanes are
        fewer than `lanes`, none is being opened and none failed to (under self._lock)."""
        if (self._conn is first and len(self._more) < self.lanes - 1
                and self._lane_opener is None and self._no_more_beside is not first):
            self._lane_opener = _Opener(lambda: self._open_lane(first), self.open_timeout,
                                        'libvirt-lane')

    def open_own(self):
        """A libvirt connection of the caller's own, outside the pool, for one long call (a
        migration, or reading its progress) that would hold a lane: opened as the pool opens
        its own (within open_timeout, else 504; with keepalive, so that a call to a libvirtd
        that stops answering fails after about keepalive_interval * (keepalive_count + 1) s).
        The caller closes it; one that opens after the caller gave up is closed."""
        start_event_loop()
        abandoned = threading.Event()

        def open_it():
            conn = self._connect(own=True)
            if abandoned.is_set():
                conn.close()
                return None
            return conn
        opener = _Opener(open_it, self.open_timeout, name='libvirt-open-own')
        if not opener.done.wait(self.open_timeout):
            abandoned.set()
            if opener.done.is_set() and opener.conn is not None:
                opener.conn.close()  # it opened as we gave up
            raise hypervisor_timeout(f'connecting to {self.uri} has taken longer than '
                                     f'{self.open_timeout:g} s')
        if opener.error is not None:
            raise opener.error
        return opener.conn

    def _connect(self, own=False):
        """A new libvirt connection, with keepalive and (but one of a caller's own) our close
        callback."""
        conn = libvirt.open(self.uri)
        try:
            conn.setKeepAlive(*self.keepalive)
        except libvirt.libvirtError:
            pass  # local drivers (test, and the in-process ones) have no keepalive
        if own:
            return conn
        try:
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError:
            pass  # only remote connections can close behind our back
        return conn

    def _open(self):
        start_event_loop()
        self._release_dropped()
        node = self.uri[len('test://'):] if self.uri.startswith('test:///') else None
        if node and node != '/default' and not os.path.exists(node):
            # libxml2 would print an "I/O warning" to stderr before libvirt fails; say it ourselves
            self.last_error = f'test node file {node} does not exist'
            raise unavailable(self.last_error)
        try:
            conn = self._connect()
        except libvirt.libvirtError as err:
            reason = open_failure(err, self.uri)
            if reason != self.last_error:  # once while it lasts, not at every request's retry
                log.warning('cannot connect to %s: %s', self.uri, printable_text(reason))
            self.last_error = reason
            refused = unavailable(reason)
            refused.logged = True  # each request's 503 is in the access log
            raise refused from None
        detachers = []
        for callback in self._on_connect:
            try:
                detach = callback(conn)
            except Exception:  # a failed hook must not cost the API its connection
                log.exception('connection hook %r failed', callback)
            else:
                if detach is not None:
                    detachers.append(detach)
        with self._lock:
            self._detachers[conn] = detachers
        self.connects += 1
        self.last_error = None
        log.info('connected to %s%s', self.uri, ' (reconnect)' if self.connects > 1 else '')
        return Gated(conn, _Gate())

    def _open_lane(self, first):
        """Another connection beside first (on a thread of its own), kept while first is."""
        lane = None
        try:
            lane = Gated(self._connect(), _Gate(first._gate))
        except libvirt.libvirtError as err:
            # e.g. libvirtd's max_clients: the lanes there are will do until the next reconnect
            log.warning('cannot open another connection to %s: %s', self.uri,
                        err.get_error_message())
        finally:
            with self._lock:
                self._lane_opener = None
                if lane is None:
                    self._no_more_beside = first
                kept = lane is not None and self._conn is first and len(self._more) < self.lanes - 1
                if kept:
                    self._more.append(lane)
                    self._add_lane(first)
        if lane is not None and not kept:
            self._release(lane, close=True)  # the ones it was to join broke meanwhile: unused

    def _on_close(self, conn, reason, _opaque):
        # libvirt calls this holding its close-callback lock, on whichever thread saw the link
        # drop (often one inside a call): unregistering or closing here would deadlock that
        # thread, so the connections are only set aside; the next open releases them.
        log.warning('libvirt closed the connection to %s (reason %d)', self.uri, reason)
        lanes = self._forget(conn)
        if lanes:
            self.last_error = f'libvirt closed the connection (reason {reason})'
            with self._lock:
                self._dropped += lanes

    def discard(self, conn):
        """Forget a connection that broke, and the others to the same libvirtd, so that the next
        request opens a new one; libvirt-python closes them once no request holds them (see
        _release)."""
        lanes = self._forget(conn)
        if lanes:
            self.last_error = 'the connection broke'
            for lane in lanes:
                self._release(lane, close=False)

    def _forget(self, conn):
        """Stop handing out conn and the lanes beside it (one libvirtd: they break together);
        those connections, or [] if conn is not one of the current ones."""
        with self._lock:
            lanes = [self._conn, *self._more] if self._conn is not None else []
            if conn is None or all(unwrap(lane) is not unwrap(conn) for lane in lanes):
                return []
            self._conn, self._more = None, []
            return lanes

    def close(self):
        with self._lock:
            lanes = [self._conn, *self._more] if self._conn is not None else []
            self._conn, self._more = None, []
        for lane in lanes:
            self._release(lane, close=True)
        self._release_dropped()

    def _release_dropped(self):
        with self._lock:
            dropped, self._dropped = self._dropped, []
        for conn in dropped:
            self._release(conn, close=False)

    def _release(self, conn, close):
        """Undo what the on_connect callbacks registered on conn, so that nothing but requests
        holds it; close it only when no request can still be using it (close=True, at shutdown).

        A broken connection is not closed here: other threads may be inside a call on it, and
        closing would free it under them. libvirt-python closes it when the last request lets go
        of the object (its __del__), now that no callback keeps a reference. Undoing is calls
        too: while a call is under way on conn, it is left for the next open (_dropped).
        """
        gate = conn._gate if isinstance(conn, Gated) else None
        if gate is not None and not gate.enter(blocking=False):
            with self._lock:
                self._dropped.append(conn)
            return
        try:
            self._undo(unwrap(conn), close)
        finally:
            if gate is not None:
                gate.leave()

    def _undo(self, conn, close):
        with self._lock:
            detachers = self._detachers.pop(conn, ())
        for detach in detachers:
            try:
                detach()
            except Exception:
                log.exception('undoing connection hook %r failed', detach)
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass  # libvirt already dropped it when it closed the connection
        if not close:
            return
        try:
            left = conn.close()
        except libvirt.libvirtError:
            return
        if left > 0:
            log.debug('libvirt still holds %d references to the connection it closed', left)


class _Gate:
    """What lets the callers of one libvirt connection through one at a time (see Gated)."""

    def __init__(self, first=None):
        self.callers = 0  # inside a call or waiting to be
        self.handed = 0  # when the pool last handed the connection out
        self.first = first or self  # the first connection's: values worked out per libvirtd
        self._turn = threading.RLock()
        self._counting = threading.Lock()

    def enter(self, blocking=True):
        with self._counting:
            self.callers += 1
        if self._turn.acquire(blocking):
            return True
        with self._counting:
            self.callers -= 1
        return False

    def leave(self):
        self._turn.release()
        with self._counting:
            self.callers -= 1

    __enter__ = enter

    def __exit__(self, *_exc):
        self.leave()


class Gated:
    """A libvirt object whose calls pass its connection's gate, one thread at a time.

    libvirt's remote client (9.0) kills the process (SIGSEGV) when it closes a connection
    (keepalive timeout, close()) while two threads wait for answers on it: the thread polling the
    socket leaves, its GLib watch left behind with a pointer into its own stack, and the next
    waiter, handed the socket, runs that watch on a dead frame once the socket stirs. One caller
    at a time per connection leaves no next waiter. Calls on libvirt's event-loop thread (console
    streams) pass at once: they never wait for an answer, and that thread, which runs the
    keepalive, must never wait behind a request.
    """

    __slots__ = ('_target', '_gate')

    def __init__(self, target, gate):
        self._target = target
        self._gate = gate

    def __getattr__(self, name):
        value = getattr(self._target, name)
        if name in LOCAL_CALLS or not callable(value):
            return value  # e.g. _o, which libvirt-python reads off objects passed as arguments
        gate = self._gate

        def call(*args, **kwargs):
            # libvirt-python checks some arguments' types (domainListGetStats): pass its own
            args = [_ungated(arg) for arg in args]
            if threading.get_ident() == _event_loop_thread:
                return _gated(value(*args, **kwargs), gate)
            with gate:
                return _gated(value(*args, **kwargs), gate)
        return call

    def __repr__(self):
        return f'<gated {self._target!r}>'


def _gated(result, gate):
    """What a call returned, its libvirt objects gated like the object called."""
    if isinstance(result, LIBVIRT_OBJECTS):
        return Gated(result, gate)
    if isinstance(result, list) and result and isinstance(result[0], LIBVIRT_OBJECTS):
        return [Gated(item, gate) for item in result]
    return result


def unwrap(obj):
    """The libvirt object behind a gated one."""
    return obj._target if isinstance(obj, Gated) else obj


def _ungated(arg):
    """An argument as libvirt-python takes it: libvirt objects, alone or in a list, ungated."""
    if isinstance(arg, list):
        return [unwrap(item) for item in arg]
    return unwrap(arg)


class _Opener(threading.Thread):
    """libvirt.open() in a thread of its own: against a stopped libvirtd it hangs, unbounded."""

    def __init__(self, open_connection, timeout, name='libvirt-open'):
        super().__init__(name=name, daemon=True)
        self._open_connection = open_connection
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout  # requests stop waiting for it then
        self.conn = self.error = None
        self.done = threading.Event()
        self.start()

    def run(self):
        try:
            self.conn = self._open_connection()
        except Exception as err:  # an HTTPError (503) from _open, or a bug: raised in get()
            self.error = err
        finally:
            self.done.set()


class PerConnection:
    """Values worked out once per libvirt connection, worked out again after a reconnect."""

    def __init__(self):
        self._conn = None
        self._values = {}
        self._lock = threading.Lock()

    def get(self, conn, name, compute):
        """The value of `name` for conn (or the lanes beside it: one libvirtd), calling
        compute(conn) the first time."""
        key = conn._gate.first if isinstance(conn, Gated) else conn
        with self._lock:
            if self._conn is not key:
                self._conn, self._values = key, {}
            if name in self._values:
                return self._values[name]
        value = compute(conn)  # outside the lock: it may call libvirt
        with self._lock:
            if self._conn is key:
                self._values[name] = value
        return value

    def set(self, conn, name, value):
        """Remember a value found out on the way (a call the driver lacks), for conn and the
        lanes beside it, until a reconnect."""
        key = conn._gate.first if isinstance(conn, Gated) else conn
        with self._lock:
            if self._conn is not key:
                self._conn, self._values = key, {}
            self._values[name] = value
