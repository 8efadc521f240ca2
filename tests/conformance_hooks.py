"""Schemathesis hooks for the conformance run (schemathesis.toml loads this file).

The event stream ends only at its `timeout`, and a wait (Wait's `timeout`, `wait` on Stop and
Restart and Addresses) may hold its answer for up to 600 s: a schema-valid duration, or a missing one where
missing means "long", is made CAP seconds before the call, so that the run stays bounded.
Every other value is sent as generated: each way of writing a number, and each invalid
duration, still reaches the daemon.
"""
import re

import schemathesis

from xend_rest.api.handlers.events import MAX_STREAM_SECONDS
from xend_rest.defaults import MAX_WAIT_SECONDS

CAP = '0.2'
# path end -> (parameter, its documented maximum, whether its absence means a long wait)
DURATIONS = {
    '/events': ('timeout', MAX_STREAM_SECONDS, True),  # absent: until the client leaves
    '/wait': ('timeout', MAX_WAIT_SECONDS, True),      # absent: 60 s
    '/stop': ('wait', MAX_WAIT_SECONDS, False),
    '/restart': ('wait', MAX_WAIT_SECONDS, False),
    '/addresses': ('wait', MAX_WAIT_SECONDS, False),
}
NUMBER = re.compile(r'-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\Z')


@schemathesis.hook
def before_call(context, case, kwargs):
    found = [spec for end, spec in DURATIONS.items() if case.operation.path.endswith(end)]
    if not found:
        return
    name, maximum, absent_is_long = found[0]
    query = dict(case.query or {})
    value = query.get(name)
    if value is None:
        if absent_is_long:
            query[name] = CAP
    elif NUMBER.match(str(value)) and float(CAP) < float(value) <= maximum:
        query[name] = CAP
    case.query = query
