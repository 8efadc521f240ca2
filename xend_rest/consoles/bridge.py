"""Console sessions: a client's upgraded connection bridged to a guest's console or screen.

A session (a Bridge) runs as session(sock, buffered) on a thread the server gives it (not a
request worker), after the 101 answer; that thread alone touches the client's socket. What
is on the guest's side (a libvirt console stream, a VNC socket) is an object with start(),
fileno(), receive(), send(), alive(), explain(), close() and watch_always: see
console_stream.py and vnc.py. The sessions of an app, together: registry.py.

Memory is bounded each way: the guest's output is taken only while the frame under way to the
client is sent (a console's stream buffers at most its limit, then cuts a client that stopped
reading off), and the client's input is read only while the guest side has room for it.
"""
import logging
import selectors
import socket
import ssl
import threading
import time

from xend_rest import defaults
from xend_rest.errors import HTTPError
from xend_rest.logtext import ACCESS_LOG, REQUEST_LINE, printable, traceback_text
from . import websocket

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOG)

CHUNK = 65536  # bytes per read, per send, per frame
TICK = 1.0  # seconds between checks that the guest side is still reachable
CLOSE_WAIT = defaults.CONSOLE_CLOSE_WAIT  # for the last bytes and the answer to our close frame
CLIENT_ERRORS = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

# Why a session ended -> (WebSocket close code, reason). Codes 4xxx are ours: 4000 plus the HTTP
# status that would say the same.
ENDINGS = {
    'client_closed': (websocket.NORMAL, 'the client closed the session'),
    'client_gone': (None, 'the client went away'),  # nobody to send a close frame to
    'guest_stopped': (websocket.NORMAL, 'the domain stopped'),
    'guest_migrated': (websocket.NORMAL, 'the domain migrated to another host'),
    'console_closed': (websocket.NORMAL, 'the console was closed'),
    'console_lost': (websocket.INTERNAL_ERROR, 'the console stream failed'),
    'screen_closed': (websocket.NORMAL, 'the VNC server closed the connection'),
    'screen_lost': (websocket.INTERNAL_ERROR, 'the connection to the VNC server failed'),
    'taken_over': (4409, 'another session took the console over (force=1)'),
    'idle': (4408, 'no input or output within the idle timeout'),
    'client_too_slow': (websocket.POLICY_VIOLATION,
                        'the client stopped reading: its buffer is full'),
    'libvirt_lost': (websocket.BAD_GATEWAY, 'the connection to libvirt was lost'),
    'shutdown': (websocket.GOING_AWAY, 'the daemon is shutting down'),
    'revoked': (4401, 'a reload withdrew the credentials this session was opened with'),
    'protocol_error': (websocket.PROTOCOL_ERROR, 'protocol error'),
}


class Ended(Exception):
    """The guest side of a session ended: `kind` is eof, error or overflow."""

    def __init__(self, kind, detail=''):
        super().__init__(detail or kind)
        self.kind, self.detail = kind, detail


def upgrade_hook(environ):
    """The server's upgrade(session) callable; 501 under a server that cannot hand the app its
    connection (gunicorn, uwsgi, mod_wsgi: PEP 3333 has no way to), and the server's refusal
    (400, 503) when it could not hand this one over: before anything is opened."""
    hook = environ.get('xend_rest.upgrade')
    if hook is None:
        raise HTTPError(501, "consoles need xend-rest's own server: this WSGI server cannot hand "
                        'the connection over to the application', 'upgrade_unsupported')
    hook.check()
    return hook


class Bridge:
    """One client bridged to one guest side; the server runs it as session(sock, buffered)."""

    def __init__(self, registry, guest, framing, key=None, label=()):
        self.registry, self.guest, self.framing = registry, guest, framing
        self.key = key  # the console it holds, for force=1 takeovers
        self.label = tuple(label)  # (domain name, device): two fields of its access-log line
        self.request, self.client = ('-', '-'), '-'  # (method, target as logged): for that line
        self.owner = None  # the caller it counts against, and is logged for
        self.credential = None  # what it was opened with (the app's business: a reload's)
        self.created = time.monotonic()
        self.started = None
        self.bytes_in = self.bytes_out = 0  # guest bytes: typed by the client, shown to it
        self.ending = None  # (ENDINGS key, close code, reason)
        self._requested = None  # an ending asked for by another thread
        self._sock = None
        self._wire = b''  # encoded bytes under way to the client
        self._pong = b''  # the latest pong owed, sent between frames (one, however many pings)
        self._closing = b''  # our close frame, sent after everything else
        self._input = b''  # client input the guest side has not taken yet
        self._last_traffic = self._last_tick = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._released = False
        self._release_lock = threading.Lock()

    def end(self, key):
        """Ask the session to end with an ENDINGS key (any thread: shutdown, takeover)."""
        if self._requested is None:
            self._requested = key
        try:
            self._wake_w.send(b'x')
        except OSError:
            pass

    def __call__(self, sock, buffered=b''):
        if sock is None:  # the server will not run it: its place and console are free again
            return self.discard()
        if self._released:
            return  # given up before the server ran it (see registry.Bridges)
        self.started = self._last_traffic = self._last_tick = time.monotonic()
        try:
            self._sock = sock
            sock.setblocking(False)
            self._run(bytes(buffered or b''))
        except Exception as err:
            log.error('console session %s failed\n%s', self._fields(self.label),
                      traceback_text(err))
            self.ending = self.ending or ('console_lost', None, 'internal error')
        finally:
            self.discard()

    def discard(self):
        """Close the guest side and give the session's place back (once; also for a session the
        server could not run)."""
        with self._release_lock:
            if self._released:
                return
            self._released = True
        try:
            self.guest.close()
        finally:
            self._wake_r.close()
            self._wake_w.close()
            self.registry.release(self)
            self._log()

    def _log(self):
        """One access-log line per session, once it is over: how long, how much, why it ended."""
        if access_log.isEnabledFor(logging.INFO):
            took = time.monotonic() - self.started if self.started is not None else 0.0
            ending = self.ending[0] if self.ending else 'never_started'
            access_log.info('%s session %s %.1fs in=%d out=%d %s %s %s',
                            self._fields(self.request, REQUEST_LINE), ending, took, self.bytes_in,
                            self.bytes_out, self._fields(self.label), self.client,
                            printable(self.owner or '-'))

    @staticmethod
    def _fields(values, encoding='utf-8'):
        """Log fields, each one printable token, as in the server's lines (a space in a
        domain's name is percent-encoded, never a field's end)."""
        return ' '.join(printable(value, encoding) for value in values)

    def _run(self, buffered):
        selector = selectors.DefaultSelector()
        try:
            self.guest.start()
            selector.register(self._wake_r, selectors.EVENT_READ)
            selector.register(self.guest, selectors.EVENT_READ)
            selector.register(self._sock, selectors.EVENT_READ)
            if buffered:
                self._take_from_client(buffered)
            while self.ending is None:
                self._watch(selector)
                for key, events in selector.select(self._timeout()):
                    if key.fileobj is self._sock and events & selectors.EVENT_READ:
                        self._read_client()
                    elif key.fileobj is self._wake_r:
                        _drain(self._wake_r)
                self._step()
            self._say_goodbye()
        finally:
            selector.close()

    def _watch(self, selector):
        client = selectors.EVENT_READ if not self._input and self.ending is None else 0
        if self._unsent():
            client |= selectors.EVENT_WRITE
        _modify(selector, self._sock, client)
        if self.guest.watch_always:  # a wake-up that says anything changed
            guest = selectors.EVENT_READ
        else:  # a socket: read while the client keeps up, write while input waits
            guest = (0 if self._wire else selectors.EVENT_READ) | \
                (selectors.EVENT_WRITE if self._input else 0)
        _modify(selector, self.guest, guest)

    def _timeout(self):
        idle_left = self._last_traffic + self.registry.idle_timeout - time.monotonic()
        return max(0.0, min(TICK, idle_left))

    def _step(self):
        """Move what can move without blocking, then check the reasons to end."""
        self._feed_guest()
        try:
            self._take_from_guest()
        except Ended as ended:
            key = 'client_too_slow' if ended.kind == 'overflow' else self.guest.explain(ended)
            # A takeover says so in our words, whether its stream error or its end() came first.
            self._finish(key, '' if key == 'taken_over' else ended.detail)
        self._write_client()
        now = time.monotonic()
        if self._requested is not None:
            self._finish(self._requested)
        elif now - self._last_traffic >= self.registry.idle_timeout:
            self._finish('idle', f'no input or output for {self.registry.idle_timeout:g} s')
        elif now - self._last_tick >= TICK:
            self._last_tick = now
            if not self.guest.alive():
                self._finish('libvirt_lost')

    def _finish(self, key, detail='', code=None):
        if self.ending is None:
            default_code, reason = ENDINGS[key]
            self.ending = (key, code or default_code, detail or reason)

    def _read_client(self):
        try:
            data = _recv(self._sock)
        except CLIENT_ERRORS:
            return
        except OSError:
            data = b''
        if not data:
            self._finish('client_gone' if self.framing.awaits_close() else 'client_closed')
            return
        self._take_from_client(data)

    def _take_from_client(self, data):
        try:
            inputs, pong, close_reply = self.framing.decode(data)
        except websocket.ProtocolError as err:
            self._finish('protocol_error', err.reason, err.code)
            return
        self._input += inputs
        self._pong = pong or self._pong
        if close_reply:
            self._closing = close_reply
            self._finish('client_closed')
        self._feed_guest()

    def _feed_guest(self):
        if self._input:
            taken = self.guest.send(self._input)
            self._input = self._input[taken:]
            self.bytes_in += taken
            if taken:
                self._last_traffic = time.monotonic()

    def _take_from_guest(self):
        if self._wire:
            self.guest.receive(0)  # only to hear of an overflow
            return
        data = self.guest.receive(CHUNK)
        if data:
            self._wire = self.framing.encode(data)
            self.bytes_out += len(data)
            self._last_traffic = time.monotonic()

    def _unsent(self):
        return self._wire or self._pong or self._closing

    def _write_client(self):
        """Send what is under way; control frames go between whole frames, never inside one,
        and a close frame goes last."""
        while True:
            if not self._wire:
                self._wire, self._pong = self._pong, b''
            if not self._wire and self.ending is not None:
                self._wire, self._closing = self._closing, b''
            if not self._wire:
                return
            try:
                sent = self._sock.send(self._wire)
            except CLIENT_ERRORS:
                return
            except OSError:
                self._wire = self._pong = self._closing = b''
                self._finish('client_gone')
                return
            self._wire = self._wire[sent:]
            if self._wire:
                return

    def _say_goodbye(self):
        """Deliver what the guest said last, our close frame, and wait for the client's."""
        key, code, reason = self.ending
        if key in ('client_gone', 'protocol_error', 'client_too_slow'):
            self._input = b''
        if key in ('guest_stopped', 'console_closed'):
            self._drain_guest()
        if key != 'client_gone':
            self._closing = self._closing or self.framing.goodbye(code, reason)
        deadline = time.monotonic() + (CLOSE_WAIT if key != 'client_gone' else 0)
        self._flush_client(deadline)
        if key not in ('client_gone', 'protocol_error') and self.framing.awaits_close():
            self._await_close(deadline)

    def _drain_guest(self):
        while True:
            try:
                data = self.guest.receive(CHUNK)
            except Ended:
                return
            if not data:
                return
            self._wire += self.framing.encode(data)
            self.bytes_out += len(data)

    def _flush_client(self, deadline):
        while self._unsent() and time.monotonic() < deadline:
            self._write_client()
            if self._unsent():
                _wait(self._sock, selectors.EVENT_WRITE, deadline)

    def _await_close(self, deadline):
        while time.monotonic() < deadline and self.framing.awaits_close():
            if not _wait(self._sock, selectors.EVENT_READ, deadline):
                return
            try:
                data = _recv(self._sock)
            except CLIENT_ERRORS:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                self.framing.decode(data)  # data frames after our close are dropped
            except websocket.ProtocolError:
                return


def _recv(sock):
    data = sock.recv(CHUNK)
    while data and isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted already
        data += sock.recv(CHUNK)
    return data


def _drain(sock):
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, OSError):
        pass


def _modify(selector, fileobj, events):
    try:
        registered = selector.get_key(fileobj)
    except KeyError:
        registered = None
    if registered is None:
        if events:
            selector.register(fileobj, events)
    elif not events:
        selector.unregister(fileobj)
    elif registered.events != events:
        selector.modify(fileobj, events)


def _wait(sock, events, deadline):
    with selectors.DefaultSelector() as selector:
        selector.register(sock, events)
        return bool(selector.select(max(0.0, deadline - time.monotonic())))
