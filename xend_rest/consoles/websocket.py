"""RFC 6455 WebSocket, server side: the handshake check and a frame codec that does no I/O.

The codec is fed whatever bytes arrived and hands back whole messages and control frames, so
the caller can read its socket without blocking and test the framing without a socket at all.
"""
import base64
import codecs
import hashlib
import struct
from collections import namedtuple

from xend_rest import defaults
from xend_rest.errors import HTTPError

GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'  # RFC 6455 section 1.3
VERSION = '13'

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (TEXT, BINARY)
CONTROL_OPCODES = (CLOSE, PING, PONG)

# Close codes (RFC 6455 section 7.4.1, and 1014 from the IANA registry)
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
POLICY_VIOLATION = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011
BAD_GATEWAY = 1014
# What a peer may put in a close frame: the registered codes, and 3000-4999 for applications.
VALID_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
                               1014)) | frozenset(range(3000, 5000))

MAX_MESSAGE = defaults.CONSOLE_MESSAGE  # bytes of one message, fragments included
MAX_CONTROL = 125  # a control frame's payload, by the RFC

Frame = namedtuple('Frame', 'opcode data')  # a whole message (TEXT, BINARY) or a control frame


class ProtocolError(Exception):
    """The client broke the protocol: the connection closes with `code`."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code, self.reason = code, reason


def accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode('latin-1')).digest()).decode()


def header_tokens(environ, name):
    """The comma-separated tokens of a request header, lowercased: 'Connection' -> {'upgrade'}."""
    value = environ.get('HTTP_' + name.upper().replace('-', '_'), '')
    return {token.strip().lower() for token in value.split(',') if token.strip()}


def asks_upgrade(environ, protocol):
    """Whether the request asks to switch to `protocol` (Connection: Upgrade, Upgrade: protocol)."""
    return 'upgrade' in header_tokens(environ, 'Connection') and \
        protocol in header_tokens(environ, 'Upgrade')


def upgrade_required(protocol, message=None, headers=()):
    """426: the route speaks only `protocol`, which the request did not ask for."""
    return HTTPError(426, message or 'this endpoint needs "Connection: Upgrade" '
                     f'and "Upgrade: {protocol}"', 'upgrade_required',
                     [('Upgrade', protocol), *headers])


def handshake(environ, subprotocols=('binary',)):
    """The headers of the 101 answer to a WebSocket opening handshake; 426 or 400 for a request
    that is not one. The first of `subprotocols` the client offers is chosen (noVNC offers
    'binary'; a browser fails a connection whose offer gets no answer)."""
    # RFC 6455 4.1: the opening handshake is a GET (a HEAD learns what a plain GET would).
    if environ.get('REQUEST_METHOD') != 'GET' or not asks_upgrade(environ, 'websocket'):
        raise upgrade_required('websocket')
    if environ.get('HTTP_SEC_WEBSOCKET_VERSION') != VERSION:
        raise upgrade_required('websocket', f'WebSocket version {VERSION} is required',
                               [('Sec-WebSocket-Version', VERSION)])
    key = environ.get('HTTP_SEC_WEBSOCKET_KEY', '')
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:  # binascii.Error is one
        valid = False
    if not valid:
        raise HTTPError(400, 'Sec-WebSocket-Key must be 16 bytes in base64', 'bad_handshake')
    headers = [('Upgrade', 'websocket'), ('Connection', 'Upgrade'),
               ('Sec-WebSocket-Accept', accept_key(key))]
    offered = {token.strip() for token in environ.get('HTTP_SEC_WEBSOCKET_PROTOCOL', '').split(',')}
    for protocol in subprotocols:
        if protocol in offered:
            headers.append(('Sec-WebSocket-Protocol', protocol))
            break
    return headers


def encode(opcode, payload=b'', mask=None):
    """One whole frame; a server's frames are unmasked (`mask`: 4 bytes, for clients in tests)."""
    length = len(payload)
    head = bytes([0x80 | opcode])
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack('!H', length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack('!Q', length)
    if mask:
        return head + mask + unmask(payload, mask)
    return head + bytes(payload)


def close_frame(code, reason=''):
    """A close frame with a code and a reason cut to fit 125 bytes (on a character boundary)."""
    reason = reason.encode()[:MAX_CONTROL - 2].decode('utf-8', 'ignore')
    return encode(CLOSE, struct.pack('!H', code) + reason.encode())


def parse_close(payload):
    """(code, reason) of a received close frame; (None, '') when it carries no code."""
    if not payload:
        return None, ''
    if len(payload) == 1:
        raise ProtocolError(PROTOCOL_ERROR, 'a close frame cannot be 1 byte long')
    code = struct.unpack('!H', payload[:2])[0]
    if code not in VALID_CLOSE_CODES:
        raise ProtocolError(PROTOCOL_ERROR, f'close code {code} is not one a peer may send')
    try:
        return code, payload[2:].decode('utf-8')
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_DATA, 'the close reason is not UTF-8') from None


def unmask(data, mask):
    """XOR data with the repeated 4-byte mask (as one big integer: fast without numpy)."""
    length = len(data)
    if not length:
        return b''
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(data, 'little') ^ int.from_bytes(key, 'little')).to_bytes(length, 'little')


class Decoder:
    """Client frames in, whole messages and control frames out; ProtocolError when the client
    breaks RFC 6455 (unmasked frame, bad opcode, a message over max_message, bad UTF-8...)."""

    def __init__(self, max_message=MAX_MESSAGE):
        self.max_message = max_message
        self._buf = bytearray()
        self._opcode = None  # of the fragmented message under way
        self._fragments = bytearray()
        self._text = None  # its incremental UTF-8 decoder, for a TEXT message

    def feed(self, data):
        """The frames completed by `data`, in order."""
        self._buf += data
        frames = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return frames
            frames.append(frame)

    def _next_frame(self):
        while True:
            parsed = self._parse_one()
            if parsed is None:
                return None
            fin, opcode, payload = parsed
            if opcode in CONTROL_OPCODES:
                return Frame(opcode, payload)
            message = self._assemble(fin, opcode, payload)
            if message is not None:
                return message

    def _parse_one(self):
        """(fin, opcode, unmasked payload) of the first whole frame buffered, else None."""
        buf = self._buf
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        fin, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
        if first & 0x70:
            raise ProtocolError(PROTOCOL_ERROR, 'reserved bits set without an extension')
        if opcode not in DATA_OPCODES + CONTROL_OPCODES + (CONTINUATION,):
            raise ProtocolError(PROTOCOL_ERROR, f'unknown opcode {opcode}')
        if not second & 0x80:
            raise ProtocolError(PROTOCOL_ERROR, 'client frames must be masked')
        if opcode in CONTROL_OPCODES and (not fin or length > MAX_CONTROL):
            raise ProtocolError(PROTOCOL_ERROR, 'a control frame must be whole and at most 125 bytes')
        offset = 2
        if length >= 126:
            size = 2 if length == 126 else 8
            if len(buf) < offset + size:
                return None
            length = int.from_bytes(buf[offset:offset + size], 'big')
            offset += size
            if length >> 63:
                raise ProtocolError(PROTOCOL_ERROR, 'the frame length has its top bit set')
        if opcode not in CONTROL_OPCODES and len(self._fragments) + length > self.max_message:
            raise ProtocolError(TOO_BIG, f'a message is limited to {self.max_message} bytes')
        if len(buf) < offset + 4 + length:
            return None
        mask = bytes(buf[offset:offset + 4])
        payload = unmask(bytes(buf[offset + 4:offset + 4 + length]), mask)
        del buf[:offset + 4 + length]
        return fin, opcode, payload

    def _assemble(self, fin, opcode, payload):
        """A whole message once its last fragment is in; text is checked as it arrives."""
        if opcode == CONTINUATION:
            if self._opcode is None:
                raise ProtocolError(PROTOCOL_ERROR, 'a continuation frame with no message to continue')
        elif self._opcode is not None:
            raise ProtocolError(PROTOCOL_ERROR, 'a new message began before the last one ended')
        else:
            self._opcode = opcode
            self._text = codecs.getincrementaldecoder('utf-8')() if opcode == TEXT else None
        if self._text is not None:
            try:
                self._text.decode(payload, final=bool(fin))
            except UnicodeDecodeError:
                raise ProtocolError(INVALID_DATA, 'a text message is not valid UTF-8') from None
        self._fragments += payload
        if not fin:
            return None
        message = Frame(self._opcode, bytes(self._fragments))
        self._opcode, self._text = None, None
        self._fragments = bytearray()
        return message
