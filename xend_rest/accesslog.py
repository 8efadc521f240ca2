"""The access log: one line per answered request, at INFO on `xend_rest.access`.

The serving worker writes its own line: few workers serve at once (server.py), so there is
little queueing on the handler's lock, and a thread of its own to write the lines cost more
(the GIL changing hands with it) than the writing itself.
"""
import logging
import time

from .tickets import redact_ticket

log = logging.getLogger('xend_rest.access')


def request(method, target, status, nbytes, start, client):
    """Log one answered request; start: its time.perf_counter() when it began."""
    if log.isEnabledFor(logging.INFO):
        # A console ticket is a credential: never written down (the rest of the target is).
        log.info('%s %s %s %d %.2fms %s', method, redact_ticket(target), status, nbytes,
                 (time.perf_counter() - start) * 1000, client)
