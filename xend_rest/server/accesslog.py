"""The access log: one line per answered request, at INFO on `xend_rest.access` (the name operators
filter on; console sessions write their closing line there too).

The serving worker writes its own line: few workers serve at once (serving.py), so there is
little queueing on the handler's lock, and a thread of its own to write the lines cost more
(the GIL changing hands with it) than the writing itself.
"""
import logging
import time

from xend_rest.logtext import ACCESS_LOG, REQUEST_LINE, printable

log = logging.getLogger(ACCESS_LOG)


def request(method, target, status, nbytes, start, client, caller='-'):
    """Log one answered request; start: its time.perf_counter() when it began; target: as the
    app says it may be logged (it hides credentials there); caller: who the app says made it
    ('-': nobody it knows of)."""
    if log.isEnabledFor(logging.INFO):
        log.info('%s %s %s %d %.2fms %s %s', printable(method, REQUEST_LINE),
                 printable(target, REQUEST_LINE), status, nbytes,
                 (time.perf_counter() - start) * 1000, client, printable(caller))
