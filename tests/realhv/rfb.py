"""Just enough of an RFB (VNC) client for the screen tests of the real-hypervisor tiers."""

import struct


class RFBClient:
    """Just enough of an RFB 3.8 client: handshake, no authentication, one full update in raw."""

    def __init__(self, ws):
        self.ws, self._buf = ws, b''

    def read(self, size):
        while len(self._buf) < size:
            self._buf += self.ws.recv(timeout=30)
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def handshake(self):
        """(width, height, bits per pixel, desktop name) once ServerInit is in."""
        assert self.read(12) == b'RFB 003.008\n'
        self.ws.send(b'RFB 003.008\n')
        count = self.read(1)[0]
        assert 1 in self.read(count), 'QEMU offers no "None" security with no password set'
        self.ws.send(b'\x01')
        assert self.read(4) == b'\0\0\0\0'  # SecurityResult: OK
        self.ws.send(b'\x01')  # ClientInit: shared
        width, height = struct.unpack('!HH', self.read(4))
        pixel_format = self.read(16)
        name = self.read(struct.unpack('!I', self.read(4))[0]).decode()
        return width, height, pixel_format[0], name

    def full_update(self, width, height, bpp):
        """The pixels of one non-incremental update, raw encoding, as one bytes object."""
        self.ws.send(struct.pack('!BBHHHH', 3, 0, 0, 0, width, height))
        while True:
            kind = self.read(1)[0]
            if kind == 0:
                break
            assert kind == 2, f'unexpected server message {kind}'  # Bell: skip
        self.read(1)
        pixels = b''
        for _ in range(struct.unpack('!H', self.read(2))[0]):
            x, y, w, h, encoding = struct.unpack('!HHHHi', self.read(12))
            if encoding == 0:
                pixels += self.read(w * h * bpp // 8)
            else:  # pseudo-encodings we did not ask for carry no pixels
                assert w * h == 0 or encoding < 0, f'encoding {encoding}'
        return pixels
