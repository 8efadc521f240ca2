"""Bodies too large for memory: HTTP bodies moved to and from libvirt streams in bounded chunks."""
import logging

import libvirt

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # per read and per send: memory stays flat whatever the image's size
OCTETS = 'application/octet-stream'


class Download:
    """Bytes [offset, offset + length) of a volume, read from a libvirt stream as they are sent.

    A WSGI response body: the server iterates it and always calls close(), sent in full or not.
    """

    def __init__(self, conn, vol, offset, length):
        self.length = length
        self._stream = None
        if length:  # libvirt reads a length of 0 as "to the end"
            stream = conn.newStream(0)
            vol.download(stream, offset, length, 0)
            self._stream = stream

    def __iter__(self):
        remaining = self.length
        while remaining:
            data = self._stream.recv(min(CHUNK, remaining))
            if not data:  # the image shrank under us: the client must not take this as complete
                raise EOFError('the image ended %d bytes before its announced length' % remaining)
            remaining -= len(data)
            yield data
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.finish()

    def close(self):
        # Not finished: the client went away (or HEAD); libvirtd must stop reading.
        stream, self._stream = self._stream, None
        if stream is not None:
            abort(stream)


def upload(conn, vol, chunks, length):
    """Send the chunks into the volume from offset 0; any failure aborts the stream and re-raises."""
    stream = conn.newStream(0)
    vol.upload(stream, 0, length, 0)
    try:
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
            raise libvirt.libvirtError('libvirt stream refused data (send returned %d)' % sent)
        data = data[sent:]


def abort(stream):
    """Abort a stream whose transfer did not complete; the error that led here matters more."""
    try:
        stream.abort()
    except libvirt.libvirtError as err:
        log.debug('aborting a libvirt stream: %s', err.get_error_message())
