"""The one place that opens, watches and reopens libvirt connections."""
import logging
import os
import threading
import time

import libvirt

from . import defaults
from .accesslog import printable_text
from .errors import hypervisor_timeout, unavailable

log = logging.getLogger(__name__)

_event_loop_lock = threading.Lock()
_event_loop_started = False


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
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:
            log.exception('libvirt event loop iteration failed')


class SharedConnection:
    """One libvirt connection, opened lazily, shared by every thread, reopened once it breaks."""

    def __init__(self, uri, keepalive_interval=defaults.KEEPALIVE_INTERVAL,
                 keepalive_count=defaults.KEEPALIVE_COUNT, open_timeout=defaults.OPEN_TIMEOUT):
        """A stopped libvirtd breaks an open connection after about interval x (count + 1) s of
        silence (libvirt's keepalive), and an opening one after open_timeout s."""
        self.uri = uri
        self.keepalive = (keepalive_interval, keepalive_count)
        self.open_timeout = open_timeout
        self.connects = 0  # successful opens; every one after the first is a reconnect
        self.last_error = None  # why the last open failed, until one succeeds
        self._conn = None
        self._opener = None  # the _Opener in flight: one at a time, however many requests wait
        self._lock = threading.Lock()
        self._on_connect = []
        self._detachers = {}  # conn -> what its on_connect callbacks returned, to undo them
        self._dropped = []  # connections libvirt closed (close callback), still to be released

    def on_connect(self, callback):
        """Call callback(conn) on every connection this opens (e.g. to register for events).

        callback may return a function, called (without arguments) before that connection is
        closed: registrations like event callbacks hold a reference that keeps it open otherwise.
        """
        self._on_connect.append(callback)

    @property
    def connected(self):
        """Whether a connection is open now (never opens one)."""
        return self._conn is not None

    def get(self):
        """The shared connection, opening it first if there is none (503 when that fails, 504
        when libvirtd does not answer within open_timeout)."""
        conn = self._conn
        if conn is not None:
            return conn
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
        if opener.error is not None:
            raise opener.error
        return opener.conn

    def _open(self):
        start_event_loop()
        self._release_dropped()
        node = self.uri[len('test://'):] if self.uri.startswith('test:///') else None
        if node and node != '/default' and not os.path.exists(node):
            # libxml2 would print an "I/O warning" to stderr before libvirt fails; say it ourselves
            self.last_error = f'test node file {node} does not exist'
            raise unavailable(self.last_error)
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as err:
            log.warning('cannot connect to %s: %s', self.uri,
                        printable_text(err.get_error_message()))
            self.last_error = err.get_error_message() or str(err)
            raise unavailable(self.last_error) from None
        try:
            conn.setKeepAlive(*self.keepalive)
        except libvirt.libvirtError:
            pass  # local drivers (test, and the in-process ones) have no keepalive
        try:
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError:
            pass  # only remote connections can close behind our back
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
        return conn

    def _on_close(self, conn, reason, _opaque):
        # libvirt calls this holding its close-callback lock, on whichever thread saw the link
        # drop (often one inside a call): unregistering or closing here would deadlock that
        # thread, so the connection is only set aside; the next open releases it.
        log.warning('libvirt closed the connection to %s (reason %d)', self.uri, reason)
        if self._forget(conn):
            self.last_error = f'libvirt closed the connection (reason {reason})'
            with self._lock:
                self._dropped.append(conn)

    def discard(self, conn):
        """Forget a connection that broke, so that the next request opens a new one; libvirt-python
        closes it once no request holds it (see _release)."""
        if self._forget(conn):
            self.last_error = 'the connection broke'
            self._release(conn, close=False)

    def _forget(self, conn):
        """Stop handing out conn; True if it was the current connection."""
        with self._lock:
            if conn is None or self._conn is not conn:
                return False
            self._conn = None
            return True

    def close(self):
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._release(conn, close=True)
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
        of the object (its __del__), now that no callback keeps a reference.
        """
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


class _Opener(threading.Thread):
    """libvirt.open() in a thread of its own: against a stopped libvirtd it hangs, unbounded."""

    def __init__(self, open_connection, timeout):
        super().__init__(name='libvirt-open', daemon=True)
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
        """The value of `name` for conn, calling compute(conn) the first time."""
        with self._lock:
            if self._conn is not conn:
                self._conn, self._values = conn, {}
            if name in self._values:
                return self._values[name]
        value = compute(conn)  # outside the lock: it may call libvirt
        with self._lock:
            if self._conn is conn:
                self._values[name] = value
        return value
