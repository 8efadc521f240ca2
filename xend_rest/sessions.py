"""Connections upgraded away from HTTP (WebSocket, 'Upgrade: tcp'), each on a thread of its own.

A request worker answers the upgrade request, then hands the socket over: a console held open
for an hour must never hold a request worker, or consoles could starve the API.
"""
import logging
import socket
import threading
import time

log = logging.getLogger('xend_rest.server')


class Upgrade:
    """environ['xend_rest.upgrade'], put there by our own server only (a foreign WSGI server
    cannot hand an app its connection, so there the key is absent).

    The app calls check() before it commits to anything (a console it takes): it raises, as an
    HTTPError, why this connection cannot be handed over (HTTP/1.0, Connection: close, a daemon
    shutting down), so that such a request is refused before any 101. It then calls
    upgrade(session) (which checks again), and start_response('101 Switching Protocols',
    headers) with its own Connection and Upgrade headers, and returns an empty body. Once the
    101 head is sent the server stops speaking HTTP on the connection and calls
    session(sock, buffered) on a thread of its own (not a request worker): sock is the raw
    socket (TLS-wrapped on a TLS listener), blocking and without a timeout (the session sets its
    own); buffered holds the bytes the client sent past the request already read from it. The
    server closes sock when session returns. on_shutdown, if given, is called (from another
    thread) when the daemon shuts down: it should make session return soon; whatever is still
    running after the shutdown grace period has its socket shut down.

    A session the server does not run (the app answered anything but 101, the 101 could not be
    sent, the daemon began to stop, no thread could be started) is called once as
    session(None, b''), at once: it must release what it holds and return. So every session
    given to upgrade() is called exactly once. Without a 101 the connection stays HTTP.
    """
    __slots__ = ('session', 'on_shutdown', 'refusal')

    def __init__(self, refusal=None):
        self.session = self.on_shutdown = None
        self.refusal = refusal  # why the connection cannot be handed over (an exception), or None

    def check(self):
        """Raise why this connection cannot be handed over to a session, if it cannot."""
        if self.refusal is not None:
            raise self.refusal

    def __call__(self, session, on_shutdown=None):
        self.check()
        self.session, self.on_shutdown = session, on_shutdown

    def abandon(self):
        """The server will not run the session: session(None, b'') releases what it holds."""
        session, self.session = self.session, None
        if session is None:
            return
        try:
            session(None, b'')
        except Exception:
            log.exception('releasing an upgraded session that never ran failed')


class Sessions:
    """The open upgraded sessions: started, counted, and told to end at shutdown."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open = {}  # thread -> (socket, on_shutdown)
        self._ending = False
        self._started = 0

    def __len__(self):
        return len(self._open)

    def start(self, sock, buffered, upgrade, client):
        """Run upgrade.session(sock, buffered) on a new thread and close sock afterwards; or,
        once the daemon is stopping or if no thread starts, release the session and close sock."""
        with self._lock:
            thread = None
            if not self._ending:
                self._started += 1
                thread = threading.Thread(target=self._run, daemon=True,
                                          args=(sock, buffered, upgrade.session, client),
                                          name=f'xend-rest-session-{self._started}')
                self._open[thread] = (sock, upgrade.on_shutdown)
        if thread is not None:
            sock.settimeout(None)
            try:
                return thread.start()
            except RuntimeError as err:  # no thread to be had (memory, limits)
                log.error('cannot start an upgraded session from %s: %s', client, err)
                with self._lock:
                    del self._open[thread]
        upgrade.abandon()
        sock.close()

    def _run(self, sock, buffered, session, client):
        try:
            session(sock, buffered)
        except OSError as err:  # the client went away, or the socket was cut at shutdown
            log.debug('upgraded session from %s: %s', client, err)
        except Exception:
            log.exception('upgraded session from %s failed', client)
        finally:
            with self._lock:
                self._open.pop(threading.current_thread(), None)
            try:
                sock.close()
            except OSError:
                pass

    def end(self):
        """Tell every open session to end (their on_shutdown), and start no new one."""
        with self._lock:
            self._ending = True
            callbacks = [on_shutdown for _, on_shutdown in self._open.values() if on_shutdown]
        for on_shutdown in callbacks:
            try:
                on_shutdown()
            except Exception:
                log.exception('ending an upgraded session failed')

    def join(self, deadline):
        """Wait for the sessions until deadline (time.monotonic()), then cut what is left."""
        with self._lock:
            threads = list(self._open.items())
        for thread, _ in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread, (sock, _) in threads:
            if thread.is_alive():
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread, _ in threads:
            thread.join(1.0)
