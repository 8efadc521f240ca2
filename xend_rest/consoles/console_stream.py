"""Guest consoles: the guest side of a console session, a libvirt console stream.

Every call on the stream (recv, send, its event callback) is made on libvirt's event-loop
thread, as `virsh console` does, and never blocks there; only the closing finish or abort,
which waits for libvirtd, runs on the session's thread. The stream is drained as soon as it is
readable (libvirt's client library would queue what libvirtd sends without limit otherwise)
into a buffer of at most `limit` bytes; a client that lets it fill is cut off.
"""
import logging
import socket
import threading
import time
import xml.etree.ElementTree as ElementTree

import libvirt

from xend_rest import defaults
from xend_rest.errors import HTTPError
from xend_rest.hypervisor.bounded import StillRunning, call_within
from xend_rest.hypervisor.libvirt_errors import is_connection_error, is_no_domain
from xend_rest.logtext import printable_text
from .bridge import CHUNK, Ended

log = logging.getLogger(__name__)

# A domain paused for its migration's switch-over, whose console ended: its QEMU is gone.
MIGRATING = {(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION),
             (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY)}
STOP_WAIT = 3.0  # seconds libvirt gets to tell that a domain whose console ended has stopped
# ...and while it holds the domain (a state call that does not answer: QEMU stopped after a
# migration, with the domain locked until it is gone; libxl shutting a domain down).
HELD_WAIT = 15.0
CONSOLE_FLAGS = (('force', libvirt.VIR_DOMAIN_CONSOLE_FORCE),
                 ('safe', libvirt.VIR_DOMAIN_CONSOLE_SAFE))
STREAM_EVENTS = libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR | \
    libvirt.VIR_STREAM_EVENT_HANGUP


def open_console(sessions, conn, dom, dev, flags, framing, owner=None):
    """A Bridge on the domain's console (dev: an alias, None for the first console) for `owner`;
    429 past the limits, 409 when another session holds the console, unless flags has FORCE."""
    alias = pick_console(dom, dev)
    place = sessions.admit((conn.getURI(), dom.UUIDString(), alias or ''),
                           take_over=bool(flags & libvirt.VIR_DOMAIN_CONSOLE_FORCE), owner=owner)
    try:
        stream = open_console_stream(conn, dom, alias, flags)
        try:
            guest = ConsoleStream(conn, dom, stream, sessions.buffer_size)
        except BaseException:
            _abort(stream)
            raise
    except BaseException:
        sessions.cancel(place)
        raise
    return sessions.start(place, guest, framing, (dom.name(), alias or 'console'))


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
        raise HTTPError(404, f'domain {dom.name()} has no console or serial device "{dev}"; '
                        f"it has: {', '.join(aliases)}", 'no_such_device')
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
                            f'none): {err.get_error_message()}', 'console_unsupported') from None
        if code == libvirt.VIR_ERR_OPERATION_FAILED and not flags & libvirt.VIR_DOMAIN_CONSOLE_FORCE:
            raise HTTPError(409, f'the console of {dom.name()} is held by another session; force=1 '
                            f'takes it over: {err.get_error_message()}', 'console_busy') from None
        if code == libvirt.VIR_ERR_OPERATION_INVALID:
            raise HTTPError(409, err.get_error_message(), 'invalid_state') from None
        raise
    return stream


def _abort(stream):
    try:
        stream.abort()
    except libvirt.libvirtError as err:
        log.debug('aborting a console stream: %s', printable_text(err.get_error_message()))


def call_in_event_loop(function):
    """Run function() once, soon, on libvirt's event-loop thread."""
    def fire(timer, _opaque):
        libvirt.virEventRemoveTimeout(timer)
        try:
            function()
        except Exception:
            log.exception('console work on the libvirt event loop failed')
    libvirt.virEventAddTimeout(0, fire, None)


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
                return self._end(Ended('overflow',
                                       f'more than {self.limit} bytes waited for the client'))
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
                log.debug('removing a console stream callback: %s',
                          printable_text(err.get_error_message()))
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
        held = time.monotonic() + HELD_WAIT
        while True:  # the console may close a moment before libvirt marks the domain stopped
            if not self.alive():
                return 'libvirt_lost'
            unknown = 'console_closed' if ended.kind == 'eof' else 'console_lost'
            try:
                # bounded: libxl holds a domain that is shutting down for up to 60 s
                state, reason = call_within(self.dom.state, max(held - time.monotonic(), 0.1),
                                            f'state of {self.dom.name()}')
                if state == libvirt.VIR_DOMAIN_SHUTOFF:  # what libvirt says it stopped for
                    return 'guest_migrated' if reason == libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED \
                        else 'guest_stopped'
                if (state, reason) in MIGRATING:  # its QEMU gone at the switch-over, libvirt
                    return 'guest_migrated'  # has yet to mark it: the console ended for that
            except StillRunning:
                return unknown
            except libvirt.libvirtError as err:
                if is_no_domain(err):
                    return 'guest_stopped'  # a transient domain is gone with its run
                return 'libvirt_lost' if is_connection_error(err) else 'console_lost'
            if time.monotonic() >= deadline:
                return unknown
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
            log.debug('closing a console stream: %s', printable_text(err.get_error_message()))
        self._wake_r.close()
        self._wake_w.close()
