"""How a session's bytes travel to and from its client: in WebSocket frames, or raw (attach).

A framing turns what the client sent into input for the guest and control frames to answer
with, and the guest's output into what the client is sent.
"""
from . import websocket


class WebSocketFraming:
    """Console bytes in binary frames both ways; text frames accepted as UTF-8 input."""

    def __init__(self, max_message=websocket.MAX_MESSAGE):
        self._decoder = websocket.Decoder(max_message)
        self.close_answered = False  # the client's close frame was answered

    def decode(self, data):
        """(input bytes, a pong to send or b'', a close frame to send or b''); ProtocolError.

        Only the last ping of a batch is answered (RFC 6455 5.5.3 allows it): a client that
        pings without reading costs one pong, not a queue of them."""
        inputs, pong = [], b''
        for frame in self._decoder.feed(data):
            if frame.opcode in websocket.DATA_OPCODES:
                inputs.append(frame.data)
            elif frame.opcode == websocket.PING:
                pong = websocket.encode(websocket.PONG, frame.data)
            elif frame.opcode == websocket.CLOSE:
                code, _reason = websocket.parse_close(frame.data)
                self.close_answered = True
                return b''.join(inputs), pong, (websocket.close_frame(code) if code else
                                                websocket.encode(websocket.CLOSE))
        return b''.join(inputs), pong, b''

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
        return data, b'', b''

    @staticmethod
    def encode(data):
        return data

    @staticmethod
    def goodbye(_code, _reason):
        return b''

    @staticmethod
    def awaits_close():
        return False
