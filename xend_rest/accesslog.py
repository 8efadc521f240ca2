"""The access log: one line per request, written by a thread of its own.

Sixteen workers each writing their own line queue on the log handler's lock (held across the
write to the stream): measured, that doubled the CPU cost of a request. A worker only queues
the line's fields; one thread formats and writes them, in order.
"""
import logging
import queue
import threading
import time

from .tickets import redact_ticket

log = logging.getLogger('xend_rest.access')
BACKLOG = 1000  # lines waiting past which a worker writes its own: bounded memory


class AccessLog:
    """request() from any thread; close() writes what is waiting."""

    def __init__(self):
        self._lines = queue.SimpleQueue()
        self._thread = None
        self._lock = threading.Lock()

    def request(self, method, target, status, nbytes, start, client):
        """Log one answered request; start: its time.perf_counter() when it began."""
        if not log.isEnabledFor(logging.INFO):  # skip it all when nobody listens
            return
        fields = (method, target, status, nbytes, (time.perf_counter() - start) * 1000, client)
        if self._thread is None:
            self._start()
        if self._lines.qsize() > BACKLOG:
            _write(fields)
        else:
            self._lines.put(fields)

    def close(self):
        """Write the lines waiting, and end the writing thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._lines.put(None)
            thread.join()

    def _start(self):
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name='xend-rest-access-log',
                                                daemon=True)
                self._thread.start()

    def _run(self):
        while True:
            fields = self._lines.get()
            if fields is None:
                return
            _write(fields)


def _write(fields):
    method, target, *rest = fields
    # A console ticket is a credential: never written down (the rest of the target is).
    log.info('%s %s %s %d %.2fms %s', method, redact_ticket(target), *rest)
