"""The one place that opens, watches and reopens libvirt connections."""
import logging
import os
import threading

import libvirt

from .errors import unavailable

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


class ConnectionPool:
    """One libvirt connection, opened lazily, shared by every thread, reopened once it breaks."""

    def __init__(self, uri, keepalive_interval=5, keepalive_count=3):
        self.uri = uri
        self.keepalive = (keepalive_interval, keepalive_count)
        self.connects = 0  # successful opens; every one after the first is a reconnect
        self._conn = None
        self._lock = threading.Lock()

    def get(self):
        """The shared connection, opening it first if there is none (503 when that fails)."""
        conn = self._conn
        if conn is not None:
            return conn
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            return self._conn

    def _open(self):
        start_event_loop()
        node = self.uri[len('test://'):] if self.uri.startswith('test:///') else None
        if node and node != '/default' and not os.path.exists(node):
            # libxml2 would print an "I/O warning" to stderr before libvirt fails; say it ourselves
            raise unavailable('test node file %s does not exist' % node)
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as err:
            log.warning('cannot connect to %s: %s', self.uri, err.get_error_message())
            raise unavailable(err.get_error_message() or str(err)) from None
        try:
            conn.setKeepAlive(*self.keepalive)
        except libvirt.libvirtError:
            pass  # local drivers (test, and the in-process ones) have no keepalive
        try:
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError:
            pass  # only remote connections can close behind our back
        self.connects += 1
        log.info('connected to %s%s', self.uri, ' (reconnect)' if self.connects > 1 else '')
        return conn

    def _on_close(self, conn, reason, _opaque):
        log.warning('libvirt closed the connection to %s (reason %d)', self.uri, reason)
        self.discard(conn)

    def discard(self, conn):
        """Forget a connection that broke, so that the next request opens a new one."""
        with self._lock:
            if self._conn is conn:
                self._conn = None
        if conn is not None:
            try:
                conn.unregisterCloseCallback()
            except libvirt.libvirtError:
                pass

    def close(self):
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
