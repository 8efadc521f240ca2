"""Operations: long actions on threads of their own (hypervisor/moves/operations.py), read
and cancelled."""
import time

from xend_rest.api.params import parse_seconds
from xend_rest.defaults import MAX_WAIT_SECONDS
from xend_rest.errors import client_gone
from xend_rest.hypervisor.domain_events import CLIENT_CHECK


def location(hypervisor, operation):
    """Where an operation is read: the Location of the 202 that started it."""
    return f'/libvirt/{hypervisor.name}/operations/{operation.id}/json'


def accepted(hypervisor, operation, **fields):
    """202: the operation runs on; its Location, and the operation as it stands."""
    return 202, {**operation.describe(), **fields}, [('Location', location(hypervisor,
                                                                           operation))]


def list_operations(request):
    """GET /operations/json: the connection's operations kept, newest first."""
    return 200, [operation.describe()
                 for operation in request.app.operations.listed(request.hypervisor)]


def inspect_operation(request, operation):
    """GET /operations/(id)/json; with wait=S, once it ended or S passed (200 either way)."""
    wait = parse_seconds(request, 'wait', maximum=MAX_WAIT_SECONDS)
    operation = request.app.operations.find(request.hypervisor, operation)
    if wait and operation.running:
        _wait(request, operation, wait)
    return 200, operation.describe()


def _wait(request, operation, seconds):
    """Hold the answer until the operation ends or `seconds` pass, in a place of the Watchers
    (as /wait does); 499 once the client hung up."""
    watchers = request.hypervisor.events.watchers
    watchers.take(request.caller, request.hold)
    try:
        deadline = time.monotonic() + seconds
        while not operation.wait(min(CLIENT_CHECK, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return
            if request.client_gone():
                raise client_gone(f'the client hung up while it waited for operation '
                                  f'{operation.id}')
    finally:
        watchers.give(request.caller)


def cancel_operation(request, operation):
    """POST /operations/(id)/cancel: abort its libvirt job; 202 while the job winds down."""
    operation = request.app.operations.find(request.hypervisor, operation)
    operation.cancel()
    return 202, operation.describe()
