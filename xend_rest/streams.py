"""Bodies too large for memory: HTTP bodies moved to and from libvirt streams in bounded chunks."""
import logging

import libvirt

from .accesslog import printable_text

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # per read and per send: memory stays flat whatever the image's size
WINDOW = 8 << 20  # bytes asked of libvirtd per download stream (see Download)


class Download:
    """Bytes [offset, offset + length) of a volume, read from libvirt streams as they are sent.

    libvirt's client library queues whatever libvirtd sends on a stream, however slowly our client
    reads, so the bytes are asked for in windows of WINDOW bytes, one stream each: at most one
    window waits in memory. A WSGI response body: the server iterates it and always calls
    close(), sent in full or not.
    """

    def __init__(self, conn, vol, offset, length):
        self.length = length
        self._conn, self._vol = conn, vol
        self._offset, self._end = offset, offset + length
        self._stream = self._open_window() if length else None  # errors come before any byte

    def _open_window(self):
        size = min(WINDOW, self._end - self._offset)  # never 0: libvirt reads 0 as "to the end"
        stream = self._conn.newStream(0)
        try:
            self._vol.download(stream, self._offset, size, 0)
        except libvirt.libvirtError:
            abort(stream)
            raise
        self._offset += size
        return stream

    def __iter__(self):
        sent = 0
        while self._stream is not None:
            data = self._stream.recv(CHUNK)
            if data:
                sent += len(data)
                yield data
                continue
            stream, self._stream = self._stream, None
            stream.finish()
            if self._offset < self._end:
                self._stream = self._open_window()
        if sent < self.length:  # the image shrank under us: the client must not take it as whole
            raise EOFError(f'the image ended {self.length - sent} bytes before its announced '
                           'length')

    def close(self):
        # Not finished: the client went away (or HEAD); libvirtd must stop reading.
        stream, self._stream = self._stream, None
        if stream is not None:
            abort(stream)


def upload(conn, vol, chunks, length):
    """Send the chunks into the volume from offset 0; any failure aborts the stream and re-raises."""
    stream = conn.newStream(0)
    try:
        vol.upload(stream, 0, length, 0)
        for chunk in chunks:
            _send_all(stream, chunk)
        stream.finish()
    except BaseException:
        abort(stream)
        raise


def _send_all(stream, data):
    while data:
        sent = stream.send(data)  # may take less than offered; takes bytes, not memoryviews
        if sent <= 0:
            raise libvirt.libvirtError(f'libvirt stream refused data (send returned {sent})')
        data = data[sent:]


def abort(stream):
    """Abort a stream whose transfer did not complete; the error that led here matters more."""
    try:
        stream.abort()
    except libvirt.libvirtError as err:
        log.debug('aborting a libvirt stream: %s', printable_text(err.get_error_message()))
