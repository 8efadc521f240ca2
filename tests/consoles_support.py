"""What the console tests share: a fake console stream and domain, the daemon's server on a free
port, and a WebSocket client of our own for what client libraries will not send."""
import struct
import threading
import time

import libvirt

from xend_rest.consoles import websocket
from xend_rest.hypervisor.libvirt_connection import SharedConnection
from xend_rest.server.serving import Server

MASK = b'\x11\x22\x33\x44'
CONSOLE_XML = """<domain><name>%s</name><devices>
  <serial type='pty'><target port='0'/><alias name='serial0'/></serial>
  <serial type='pty'><target port='1'/><alias name='serial1'/></serial>
  <serial type='pty'><target port='2'/><alias name='serial2'/></serial>
  <serial type='pty'><target port='3'/><alias name='serial3'/></serial>
  <console type='pty'><target type='serial' port='0'/><alias name='serial0'/></console>
</devices></domain>"""


class FakeError(libvirt.libvirtError):
    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.err = (code, libvirt.VIR_FROM_NONE, message, 2, None, None, None, 0, 0)


class FakeStream:
    """A non-blocking console stream whose callbacks come from libvirt's event loop, as a remote
    stream's do (a timer, level-triggered). The guest behind it echoes what is typed; a line
    `echo X` also prints X."""

    def __init__(self, opened):
        opened.append(self)
        self.state = 'open'  # then finished or aborted
        self.guest_input = bytearray()
        self._output = bytearray()
        self._lock = threading.Lock()
        self._cb = self._timer = None
        self._events = 0
        self.eof = False
        self.error = None
        self.most_queued = 0  # the largest output waiting in the stream

    def emit(self, data):
        with self._lock:
            self._output += data

    def eventAddCallback(self, events, cb, opaque):
        assert threading.current_thread().name == 'libvirt-events'
        self._cb, self._events, self._opaque = cb, events, opaque
        self._timer = libvirt.virEventAddTimeout(5, self._tick, None)

    def _tick(self, _timer, _opaque):
        if self._cb is None:
            return
        with self._lock:
            readable = self._output or self.eof or self.error
        events = self._events & (libvirt.VIR_STREAM_EVENT_READABLE if readable else 0)
        events |= self._events & libvirt.VIR_STREAM_EVENT_WRITABLE
        if events:
            self._cb(self, events, self._opaque)

    def eventUpdateCallback(self, events):
        self._events = events

    def eventRemoveCallback(self):
        assert threading.current_thread().name == 'libvirt-events'
        self._cb = None
        libvirt.virEventRemoveTimeout(self._timer)

    def recv(self, size):
        assert threading.current_thread().name == 'libvirt-events'
        with self._lock:
            if self._output:
                data = bytes(self._output[:size])
                del self._output[:size]
                return data
        if self.error:
            raise FakeError(libvirt.VIR_ERR_RPC, self.error)
        return b'' if self.eof else -2

    def send(self, data):
        assert threading.current_thread().name == 'libvirt-events'
        self.guest_input += data
        self.emit(data)  # the terminal echoes
        while b'\n' in self.guest_input:
            line, _, rest = bytes(self.guest_input).partition(b'\n')
            self.guest_input = bytearray(rest)
            if line.startswith(b'echo '):
                self.emit(line[5:] + b'\r\n')
        return len(data)

    def finish(self):
        assert self._cb is None, 'finish() with a callback registered'
        self.state = 'finished'

    def abort(self):
        assert self._cb is None, 'abort() with a callback registered'
        self.state = 'aborted'


class FakeDomain:
    def __init__(self, conn, name='web'):
        self.conn, self._name = conn, name
        self.active = True
        self.stopped_for = libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN  # the reason once not active
        self.reported = None  # [state, reason] state() says instead, if set
        self.held = {}  # alias -> the stream holding that console

    def name(self):
        return self._name

    def ID(self):
        return 7

    def UUIDString(self):
        return '11111111-2222-3333-4444-555555555555'

    def isActive(self):
        return self.active

    def state(self):
        if self.reported is not None:
            return self.reported
        return ([libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED] if self.active
                else [libvirt.VIR_DOMAIN_SHUTOFF, self.stopped_for])

    def XMLDesc(self, _flags=0):
        return CONSOLE_XML % self._name

    def openConsole(self, dev, stream, flags):
        holder = self.held.get(dev or 'serial0')
        if holder is not None and holder.state == 'open':
            if not flags & libvirt.VIR_DOMAIN_CONSOLE_FORCE:
                raise FakeError(libvirt.VIR_ERR_OPERATION_FAILED,
                                'operation failed: Active console session exists for this domain')
            holder.error = 'stream aborted: console taken over'
        self.held[dev or 'serial0'] = stream


class FakeConnection:
    def __init__(self):
        self.streams = []
        self.alive = True
        self.dom = FakeDomain(self)

    def newStream(self, flags):
        assert flags == libvirt.VIR_STREAM_NONBLOCK
        return FakeStream(self.streams)

    def isAlive(self):
        return 1 if self.alive else 0

    def getURI(self):
        return 'fake:///system'

    def lookupByName(self, name):
        if name != self.dom.name():
            raise FakeError(libvirt.VIR_ERR_NO_DOMAIN, 'no domain %s' % name)
        return self.dom

    def lookupByID(self, _id):
        raise FakeError(libvirt.VIR_ERR_NO_DOMAIN, 'no domain')

    def lookupByUUIDString(self, uuid):
        if uuid != self.dom.UUIDString():
            raise FakeError(libvirt.VIR_ERR_NO_DOMAIN, 'no domain %s' % uuid)
        return self.dom

    def listAllDomains(self, _flags=0):
        return [self.dom]

    def unregisterCloseCallback(self):
        pass

    def close(self):
        return 0

    def getAllDomainStats(self, _stats=0, _flags=0):
        return []  # a scrape of the fake host: no domain counters, only the daemon's own


class FixedConnection(SharedConnection):
    """A SharedConnection already holding a given connection (a fake), which it never reopens."""

    def __init__(self, conn):
        super().__init__(conn.getURI())
        self._conn = conn
        self.connects = 1


class Daemon:
    """The daemon's own server (which carries upgrades out) in front of an app, on a free port."""

    def __init__(self, app, **options):
        self.server = Server(app, ['127.0.0.1:0'], **options)
        self.server.start()
        self.port = self.server.addresses[0][1]

    def url(self, path):
        return 'ws://127.0.0.1:%d%s' % (self.port, path)

    def close(self, grace=2):
        self.server.shutdown(grace=grace)


class FrameClient:
    """A WebSocket client of our own over a connected socket, for what libraries will not send."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(10)
        self._buf = b''

    def send(self, opcode, payload=b'', mask=MASK):
        self.sock.sendall(websocket.encode(opcode, payload, mask=mask))

    def send_raw(self, data):
        self.sock.sendall(data)

    def _read(self, size):
        while len(self._buf) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError('the server closed the connection')
            self._buf += chunk
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def frame(self):
        """(opcode, payload) of the next server frame, which must be unmasked and whole."""
        first, second = self._read(2)
        assert first & 0x80 and not second & 0x80, 'server frames are whole and unmasked'
        length = second & 0x7F
        if length == 126:
            length = struct.unpack('!H', self._read(2))[0]
        elif length == 127:
            length = struct.unpack('!Q', self._read(8))[0]
        return first & 0x0F, self._read(length)

    def output_until(self, wanted, timeout=10):
        """Binary payloads joined, until `wanted` is among them."""
        seen, deadline = b'', time.monotonic() + timeout
        while wanted not in seen:
            assert time.monotonic() < deadline, 'no %r in %r' % (wanted, seen)
            opcode, payload = self.frame()
            assert opcode == websocket.BINARY, (opcode, payload)
            seen += payload
        return seen

    def close_frame(self, timeout=10):
        """The (code, reason) of the server's close frame, skipping the data before it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            opcode, payload = self.frame()
            if opcode == websocket.CLOSE:
                return websocket.parse_close(payload)
        raise AssertionError('no close frame within %g s' % timeout)
