"""Guest consoles over the API: sessions that bridge a client's socket and a guest's console.

A session runs as session(sock, buffered) on a thread the server gives it (not a request
worker), after the 101 answer; that thread is the only one touching the client's socket. Every
call on the libvirt console stream (recv, send, its event callback) is made on libvirt's
event-loop thread, as `virsh console` does, and never blocks there; only the closing finish or
abort, which waits for libvirtd, runs on the session's thread.

Memory is bounded each way: the guest's output waits in a buffer of `buffer_size` bytes, and a
client that stops reading has its session closed once that is full (libvirt's client library
would otherwise queue what libvirtd sends without limit); the client's input is read only while
the guest side has room for it.
"""
import logging
import selectors
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ElementTree

import libvirt

from . import defaults, websocket
from .errors import HTTPError, is_connection_error, is_no_domain

log = logging.getLogger(__name__)

CHUNK = 65536  # bytes per read, per send, per frame
TICK = 1.0  # seconds between checks that libvirt's connection is alive
CLOSE_WAIT = 5.0  # seconds a client gets to take the last bytes and answer our close frame
STOP_WAIT = 3.0  # seconds libvirt gets to tell that a domain whose console ended has stopped
UNSTARTED = 60.0  # seconds after which a session the server never ran is given up

CONSOLE_FLAGS = (('force', libvirt.VIR_DOMAIN_CONSOLE_FORCE),
                 ('safe', libvirt.VIR_DOMAIN_CONSOLE_SAFE))
STREAM_EVENTS = libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR | \
    libvirt.VIR_STREAM_EVENT_HANGUP
CLIENT_ERRORS = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

# Why a session ended -> (WebSocket close code, reason). Codes 4xxx are ours: 4000 plus the HTTP
# status that would say the same.
ENDINGS = {
    'client_closed': (websocket.NORMAL, 'the client closed the session'),
    'client_gone': (None, 'the client went away'),  # nobody to send a close frame to
    'guest_stopped': (websocket.NORMAL, 'the domain stopped'),
    'console_closed': (websocket.NORMAL, 'the console was closed'),
    'console_lost': (websocket.INTERNAL_ERROR, 'the console stream failed'),
    'taken_over': (4409, 'another session took the console over (force=1)'),
    'idle': (4408, 'no input or output within the idle timeout'),
    'client_too_slow': (websocket.POLICY_VIOLATION, 'the client stopped reading: its buffer is full'),
    'libvirt_lost': (websocket.BAD_GATEWAY, 'the connection to libvirt was lost'),
    'shutdown': (websocket.GOING_AWAY, 'the daemon is shutting down'),
    'protocol_error': (websocket.PROTOCOL_ERROR, 'protocol error'),
}


class Ended(Exception):
    """The guest side of a session ended: `kind` is eof, error or overflow."""

    def __init__(self, kind, detail=''):
        super().__init__(detail or kind)
        self.kind, self.detail = kind, detail


# -- opening -------------------------------------------------------------------------------------

def upgrade_hook(environ):
    """The server's upgrade(session) callable; 501 under a server that cannot hand the app its
    connection (gunicorn, uwsgi, mod_wsgi: PEP 3333 has no way to)."""
    hook = environ.get('xend_rest.upgrade')
    if hook is None:
        raise HTTPError(501, "consoles need xend-rest's own server: this WSGI server cannot hand "
                        'the connection over to the application', 'upgrade_unsupported')
    return hook


def console_aliases(dom):
    """The aliases of the domain's consoles, then of its serial ports (how libvirt names them)."""
    root = ElementTree.fromstring(dom.XMLDesc(0))
    aliases = []
    for tag in ('console', 'serial'):
        for device in root.iterfind('devices/' + tag):
            alias = device.find('alias')
            name = alias.get('name') if alias is not None else None
            if name and name not in aliases:
                aliases.append(name)
    return aliases


def pick_console(dom, dev):
    """The alias to open (None: libvirt's default, the first console); 404 when there is none."""
    aliases = console_aliases(dom)
    if dev is None:
        return aliases[0] if aliases else None
    if aliases and dev not in aliases:
        raise HTTPError(404, 'domain %s has no console or serial device "%s"; it has: %s'
                        % (dom.name(), dev, ', '.join(aliases)), 'no_such_device')
    return dev


def open_console_stream(conn, dom, dev, flags):
    """A non-blocking libvirt stream on the domain's console, with the refusals explained."""
    stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
    try:
        dom.openConsole(dev, stream, flags)
    except libvirt.libvirtError as err:
        _abort(stream)
        code = err.get_error_code()
        if code == libvirt.VIR_ERR_NO_SUPPORT:
            raise HTTPError(501, 'this hypervisor driver offers no consoles (the test driver has '
                            'none): %s' % err.get_error_message(), 'console_unsupported') from None
        if code == libvirt.VIR_ERR_OPERATION_FAILED and not flags & libvirt.VIR_DOMAIN_CONSOLE_FORCE:
            raise HTTPError(409, 'the console of %s is held by another session; force=1 takes it '
                            'over: %s' % (dom.name(), err.get_error_message()), 'console_busy') from None
        if code == libvirt.VIR_ERR_OPERATION_INVALID:
            raise HTTPError(409, err.get_error_message(), 'invalid_state') from None
        raise
    return stream


def _abort(stream):
    try:
        stream.abort()
    except libvirt.libvirtError as err:
        log.debug('aborting a console stream: %s', err.get_error_message())


def call_in_event_loop(function):
    """Run function() once, soon, on libvirt's event-loop thread."""
    def fire(timer, _opaque):
        libvirt.virEventRemoveTimeout(timer)
        try:
            function()
        except Exception:
            log.exception('console work on the libvirt event loop failed')
    libvirt.virEventAddTimeout(0, fire, None)


# -- the guest side ------------------------------------------------------------------------------

class ConsoleStream:
    """The guest side of a console session: a libvirt stream, driven from libvirt's event loop.

    The event callback drains the stream as soon as it is readable (libvirt's client library
    would queue it otherwise) into a buffer of at most `limit` bytes; the session thread takes it
    from there. Input is queued up to `limit` bytes and sent from the event loop too.
    """

    watch_always = True  # fileno() is a wake-up, not backpressure: the session always watches it

    def __init__(self, conn, dom, stream, limit=defaults.CONSOLE_BUFFER):
        self.conn, self.dom, self.stream, self.limit = conn, dom, stream, limit
        self.taken_over = False  # set when another session of ours took the console with force=1
        self._lock = threading.Lock()
        self._output = bytearray()  # guest -> client
        self._input = bytearray()  # client -> guest
        self._ended = None  # Ended, once the stream ended or failed
        self._events = 0  # what the callback is registered for (0: not registered)
        self._flush_posted = False
        self._detached = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def fileno(self):
        return self._wake_r.fileno()

    def start(self):
        call_in_event_loop(self._register)

    def _register(self):
        self._events = STREAM_EVENTS
        self.stream.eventAddCallback(self._events, self._on_event, None)
        self._flush()  # input that came before the callback did

    def _on_event(self, _stream, events, _opaque):
        if self._events == 0:
            return  # removed meanwhile: nothing of ours runs on the stream any more
        if events & libvirt.VIR_STREAM_EVENT_WRITABLE:
            self._flush()
        if events & STREAM_EVENTS:
            self._drain()

    def _drain(self):
        while self._events:
            try:
                data = self.stream.recv(CHUNK)
            except libvirt.libvirtError as err:
                return self._end(Ended('error', err.get_error_message() or str(err)))
            if data == -2:
                return None
            if not data:
                return self._end(Ended('eof'))
            with self._lock:
                if len(self._output) + len(data) > self.limit:
                    overflow = True
                else:
                    overflow = False
                    self._output += data
            if overflow:
                return self._end(Ended('overflow', 'more than %d bytes waited for the client'
                                       % self.limit))
            self._wake()
        return None

    def _flush(self):
        """Send queued input to the guest; ask for WRITABLE only while some is left over."""
        self._flush_posted = False
        while self._events:
            with self._lock:
                data = bytes(self._input[:CHUNK])
            if not data:
                break
            try:
                sent = self.stream.send(data)
            except libvirt.libvirtError as err:
                return self._end(Ended('error', err.get_error_message() or str(err)))
            if sent == -2:
                break
            with self._lock:
                del self._input[:sent]
            self._wake()  # room for more input
        with self._lock:
            wanted = STREAM_EVENTS | (libvirt.VIR_STREAM_EVENT_WRITABLE if self._input else 0)
        if self._events and wanted != self._events:
            self._events = wanted
            self.stream.eventUpdateCallback(wanted)
        return None

    def _end(self, ended):
        """On the event loop: stop the callback; the session thread finishes or aborts."""
        self._unregister()
        with self._lock:
            self._ended = self._ended or ended
        self._wake()

    def _unregister(self):
        if self._events:
            self._events = 0
            try:
                self.stream.eventRemoveCallback()
            except libvirt.libvirtError as err:
                log.debug('removing a console stream callback: %s', err.get_error_message())
        self._detached.set()

    def _wake(self):
        try:
            self._wake_w.send(b'x')
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending already (or the session is over)

    # -- the session thread's side

    def receive(self, size):
        """Up to `size` bytes of the guest's output (b'' for none yet); Ended once the stream
        ended and its output is all taken, or at once when the client fell too far behind."""
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            data = bytes(self._output[:size])
            del self._output[:size]
            ended = self._ended
            left = len(self._output)
        if ended is not None and (ended.kind == 'overflow' or not data and not left):
            raise ended
        return data

    def room(self):
        """Bytes of input the guest side takes now."""
        with self._lock:
            return self.limit - len(self._input)

    def send(self, data):
        """Queue input for the guest; the number of bytes taken."""
        with self._lock:
            taken = data[:self.limit - len(self._input)]
            self._input += taken
            post = bool(taken) and not self._flush_posted
            self._flush_posted = self._flush_posted or post
        if post:
            call_in_event_loop(self._flush)
        return len(taken)

    def alive(self):
        try:
            return self.conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def explain(self, ended):
        """Why the stream ended, from the state of things: an ENDINGS key."""
        if self.taken_over:
            return 'taken_over'
        deadline = time.monotonic() + STOP_WAIT
        while True:  # the console may close a moment before libvirt marks the domain stopped
            if not self.alive():
                return 'libvirt_lost'
            try:
                if not self.dom.isActive():
                    return 'guest_stopped'
            except libvirt.libvirtError as err:
                if is_no_domain(err):
                    return 'guest_stopped'  # a transient domain is gone with its run
                return 'libvirt_lost' if is_connection_error(err) else 'console_lost'
            if time.monotonic() >= deadline:
                return 'console_closed' if ended.kind == 'eof' else 'console_lost'
            time.sleep(0.2)

    def close(self):
        """Detach the callback (on the event loop), then finish a stream that ended cleanly or
        abort it; never leaves it open."""
        if self._events or not self._detached.is_set():
            call_in_event_loop(self._unregister)
            if not self._detached.wait(5.0):
                log.warning('libvirt event loop did not detach a console stream in 5 s')
        with self._lock:
            clean = self._ended is not None and self._ended.kind == 'eof'
        try:
            if clean:
                self.stream.finish()
            else:
                self.stream.abort()
        except libvirt.libvirtError as err:
            log.debug('closing a console stream: %s', err.get_error_message())
        self._wake_r.close()
        self._wake_w.close()


# -- the client side -----------------------------------------------------------------------------

class WebSocketFraming:
    """Console bytes in binary frames both ways; text frames accepted as UTF-8 input."""

    def __init__(self, max_message=websocket.MAX_MESSAGE):
        self._decoder = websocket.Decoder(max_message)
        self.close_answered = False  # the client's close frame was answered

    def decode(self, data):
        """(input bytes, control frames to send, whether the client closed); ProtocolError."""
        inputs, replies = [], []
        for frame in self._decoder.feed(data):
            if frame.opcode in websocket.DATA_OPCODES:
                inputs.append(frame.data)
            elif frame.opcode == websocket.PING:
                replies.append(websocket.encode(websocket.PONG, frame.data))
            elif frame.opcode == websocket.CLOSE:
                code, _reason = websocket.parse_close(frame.data)
                self.close_answered = True
                replies.append(websocket.close_frame(code) if code else
                               websocket.encode(websocket.CLOSE))
                return b''.join(inputs), b''.join(replies), True
        return b''.join(inputs), b''.join(replies), False

    @staticmethod
    def encode(data):
        return websocket.encode(websocket.BINARY, data)

    def goodbye(self, code, reason):
        if self.close_answered or code is None:
            return b''
        return websocket.close_frame(code, reason)

    def awaits_close(self):
        return not self.close_answered


class RawFraming:
    """Raw bytes both ways (POST .../attach with Upgrade: tcp); the client's EOF ends it."""

    @staticmethod
    def decode(data):
        return data, b'', False

    @staticmethod
    def encode(data):
        return data

    @staticmethod
    def goodbye(_code, _reason):
        return b''

    @staticmethod
    def awaits_close():
        return False


# -- a session -----------------------------------------------------------------------------------

class Session:
    """One client bridged to one guest side; the server runs it as session(sock, buffered)."""

    def __init__(self, registry, guest, framing, key=None, label=''):
        self.registry, self.guest, self.framing = registry, guest, framing
        self.key = key  # the console it holds, for force=1 takeovers
        self.label = label
        self.created = time.monotonic()
        self.started = None
        self.bytes_in = self.bytes_out = 0  # guest bytes: typed by the client, shown to it
        self.ending = None  # (ENDINGS key, close code, reason)
        self._requested = None  # an ending asked for by another thread
        self._sock = None
        self._wire = b''  # encoded bytes under way to the client
        self._replies = b''  # control frames waiting for the end of the frame under way
        self._input = b''  # client input the guest side has not taken yet
        self._last_traffic = self._last_tick = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._released = False

    def end(self, key):
        """Ask the session to end with an ENDINGS key (any thread: shutdown, takeover)."""
        if self._requested is None:
            self._requested = key
        try:
            self._wake_w.send(b'x')
        except OSError:
            pass

    def __call__(self, sock, buffered=b''):
        self.started = self._last_traffic = self._last_tick = time.monotonic()
        try:
            self._sock = sock
            sock.setblocking(False)
            self._run(bytes(buffered or b''))
        except Exception:
            log.exception('console session %s failed', self.label)
            self.ending = self.ending or ('console_lost', None, 'internal error')
        finally:
            self.discard()

    def discard(self):
        """Close the guest side and give the session's place back (once; also for a session the
        server could not run)."""
        if self._released:
            return
        self._released = True
        try:
            self.guest.close()
        finally:
            self._wake_r.close()
            self._wake_w.close()
            self.registry.release(self)

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
        if self._wire or self._replies:
            client |= selectors.EVENT_WRITE
        _modify(selector, self._sock, client)
        guest = selectors.EVENT_READ if self.guest.watch_always or not self._wire else 0
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
            self._finish('client_too_slow' if ended.kind == 'overflow'
                         else self.guest.explain(ended), ended.detail)
        self._write_client()
        now = time.monotonic()
        if self._requested is not None:
            self._finish(self._requested)
        elif now - self._last_traffic >= self.registry.idle_timeout:
            self._finish('idle', 'no input or output for %g s' % self.registry.idle_timeout)
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
            inputs, replies, closed = self.framing.decode(data)
        except websocket.ProtocolError as err:
            self._finish('protocol_error', err.reason, err.code)
            return
        self._input += inputs
        self._replies += replies
        if closed:
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

    def _write_client(self):
        """Send what is under way; control frames go between whole frames, never inside one."""
        while True:
            if not self._wire:
                self._wire, self._replies = self._replies, b''
                if not self._wire:
                    return
            try:
                sent = self._sock.send(self._wire)
            except CLIENT_ERRORS:
                return
            except OSError:
                self._wire = self._replies = b''
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
        self._replies += self.framing.goodbye(code, reason) if key != 'client_gone' else b''
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
        while (self._wire or self._replies) and time.monotonic() < deadline:
            self._write_client()
            if self._wire or self._replies:
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


# -- the sessions of an app ----------------------------------------------------------------------

class Consoles:
    """The console sessions of one app: how many may be open, which holds which console, and the
    bytes they moved (for /metrics)."""

    def __init__(self, max_sessions=defaults.CONSOLE_SESSIONS, idle_timeout=defaults.CONSOLE_IDLE,
                 buffer_size=defaults.CONSOLE_BUFFER, max_message=websocket.MAX_MESSAGE):
        self.max_sessions, self.idle_timeout = max_sessions, idle_timeout
        self.buffer_size, self.max_message = buffer_size, max_message
        self.bytes_in = self.bytes_out = 0  # of the sessions that ended
        self._sessions = set()
        self._holders = {}  # console key -> the session holding it
        self._lock = threading.Condition()

    def __len__(self):
        with self._lock:
            return len(self._sessions)

    def framing(self, websocket_session):
        return WebSocketFraming(self.max_message) if websocket_session else RawFraming()

    def open_console(self, conn, dom, dev, flags, framing):
        """A Session on the domain's console (dev: an alias, None for the first console);
        429 past max_sessions, 409 when the console is held, unless flags has FORCE."""
        self._give_up_unstarted()
        alias = pick_console(dom, dev)
        key = (conn.getURI(), dom.UUIDString(), alias or '')
        with self._lock:
            self._admit()
            placeholder = _Placeholder()
            self._sessions.add(placeholder)
            holder = self._holders.get(key)
        try:
            if holder is not None and flags & libvirt.VIR_DOMAIN_CONSOLE_FORCE:
                holder.guest.taken_over = True
            stream = open_console_stream(conn, dom, alias, flags)
        except BaseException:
            if holder is not None:
                holder.guest.taken_over = False
            self._forget(placeholder)
            raise
        guest = ConsoleStream(conn, dom, stream, self.buffer_size)
        session = Session(self, guest, framing, key, '%s %s' % (dom.name(), alias or 'console'))
        with self._lock:
            self._sessions.discard(placeholder)
            self._sessions.add(session)
            self._holders[key] = session
        if holder is not None and flags & libvirt.VIR_DOMAIN_CONSOLE_FORCE:
            holder.end('taken_over')
        return session

    def _admit(self):
        if len(self._sessions) >= self.max_sessions:
            raise HTTPError(429, '%d console sessions are open, the most this daemon allows'
                            % self.max_sessions, 'too_many_sessions', [('Retry-After', '5')])

    def _forget(self, session):
        with self._lock:
            self._sessions.discard(session)
            self._lock.notify_all()

    def release(self, session):
        """A session ended: its place and its console are free, its bytes counted."""
        with self._lock:
            self._sessions.discard(session)
            if self._holders.get(session.key) is session:
                del self._holders[session.key]
            self.bytes_in += session.bytes_in
            self.bytes_out += session.bytes_out
            self._lock.notify_all()

    def _give_up_unstarted(self):
        """Sessions the server never ran (the 101 could not be sent) hold a stream: free them."""
        now = time.monotonic()
        with self._lock:
            stale = [s for s in self._sessions
                     if isinstance(s, Session) and s.started is None and now - s.created > UNSTARTED]
        for session in stale:
            session.discard()

    def totals(self):
        """(open sessions, bytes in, bytes out), the open sessions' bytes included."""
        with self._lock:
            sessions = [s for s in self._sessions if isinstance(s, Session)]
            return (len(self._sessions), self.bytes_in + sum(s.bytes_in for s in sessions),
                    self.bytes_out + sum(s.bytes_out for s in sessions))

    def close_all(self, timeout=CLOSE_WAIT + 1):
        """At shutdown: every session says 1001 and ends; wait up to timeout for them."""
        with self._lock:
            sessions = [s for s in self._sessions if isinstance(s, Session)]
        for session in sessions:
            if session.started is None:
                session.discard()
            else:
                session.end('shutdown')
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._sessions and time.monotonic() < deadline:
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            return not self._sessions


class _Placeholder:
    """A place taken while a console is being opened, so that the limit holds across threads."""
