"""A libvirt call with a bound on how long a request waits for it.

A libvirt call cannot be cancelled. Where one may block far longer than the request should
(libxl's shutdown() right after a guest's own power-off holds the domain for 60 s), it runs on
a thread of its own and the request stops waiting after its bound; the call finishes there.
"""
import logging
import threading

from .accesslog import printable_text

log = logging.getLogger(__name__)


class StillRunning(Exception):
    """The call outlived its bound; it goes on in the background."""


def call_within(action, seconds, what):
    """action()'s result (or its exception) if it returns within `seconds`, else StillRunning."""
    outcome = {}
    done, late = threading.Event(), threading.Event()

    def run():
        try:
            outcome['value'] = action()
        except Exception as err:  # raised again on the request's thread, if it still waits
            outcome['error'] = err
        done.set()
        if late.is_set():
            log.info('%s returned after its %g s bound: %s', printable_text(what), seconds,
                     printable_text(outcome.get('error', 'done')))  # a domain's name, its message

    threading.Thread(target=run, daemon=True, name=what).start()
    if not done.wait(seconds):
        late.set()
        raise StillRunning(what)
    if 'error' in outcome:
        raise outcome['error']
    return outcome['value']
