"""Operations: long actions on domains, each on a thread of its own, kept in memory for a while.

At most `threads` run at once (one more is refused: 503, never queued, so that a running
operation is one that runs); finished ones are kept up to `kept` in number and `age` seconds.
Nothing is written to disk: after a restart of the daemon an old id is unknown (404), and ids
are random so that a new operation never answers for an old one's id.
"""
import copy
import logging
import threading
import time
import uuid
from datetime import datetime, timezone

import libvirt

from xend_rest import defaults
from xend_rest.errors import RETRY_AFTER, HTTPError
from xend_rest.logtext import printable_text, traceback_text
from ..bounded import StillRunning
from ..libvirt_errors import from_libvirt

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED, CANCELLED = 'running', 'succeeded', 'failed', 'cancelled'
STATES = (RUNNING, SUCCEEDED, FAILED, CANCELLED)
PROGRESS_INTERVAL = 1.0  # seconds between two reads of a job's progress
# virDomainGetJobStats' fields a client may follow a job by, as the operation's Progress says them.
PROGRESS_FIELDS = {'data_total': 'DataTotal', 'data_processed': 'DataProcessed',
                   'data_remaining': 'DataRemaining', 'time_elapsed': 'TimeElapsedMs'}


def _now():
    return datetime.now(timezone.utc).isoformat(timespec='milliseconds').replace('+00:00', 'Z')


def too_many_operations(limit, whose='the daemon runs at once'):
    return HTTPError(503, f'{limit} operations are running, the most {whose}; '
                     'try again later', 'too_many_operations', [('Retry-After', RETRY_AFTER)])


class InProgress(HTTPError):
    """409 for a change to a domain while an operation on it runs (Destroy is never refused):
    the body names the operation (`operation`: its id)."""

    def __init__(self, operation, connection):
        """A host's operation is named by `connection`, the one the request named: the
        credentials may not cover the connection it was started through (docs/security.md)."""
        what, name = ('domain', operation.target['Name']) if operation.dom is not None \
            else ('host', connection)
        super().__init__(409, f"{what} {name} has an operation in "
                         f'progress ({operation.kind} {operation.id}): wait for it to end',
                         'operation_in_progress')
        self.operation = operation.id

    def body(self):
        return {**super().body(), 'operation': self.operation}


class Operation:
    """One long action on one domain of one connection: its state, progress and outcome."""

    def __init__(self, kind, hypervisor, dom, caller, job, target=None, on_cancel=None,
                 also=None):
        self.id = str(uuid.uuid4())
        self.kind = kind
        self.hypervisor = hypervisor  # its connection's Hypervisor: events go to its hub
        self.dom = dom
        # a domain, or (an evacuation) the host: {"Name": connection, "Uuid": host UUID}
        self.target = target or {'Name': dom.name(), 'Uuid': dom.UUIDString()}
        self.extra = {}  # what a kind adds to the description (an evacuation: its Guests)
        self.caller = caller
        self.job = job  # a libvirt job (a migration): has progress, may be aborted
        self.state = RUNNING
        self.created = self.updated = _now()
        self.ended = None  # time.monotonic() when it ended
        self.progress = None
        self.error = None  # the answer's {"code", "message"}, once it failed
        self.failure = None  # the exception, for a request still waiting for it
        self.cancel_asked = False
        self.host = host_key(hypervisor)  # the hypervisor's host: what "in flight" is keyed by
        # every host the domain is changed on (a migration's destination too): the domain's
        # copy there is as busy as its source
        self.hosts = {self.host} | ({host_key(also)} if also is not None else set())
        self.on_cancel = on_cancel  # how one that is no libvirt job is cancelled (an evacuation)
        self.counted = True  # takes a place of the pool (an evacuation's guests do not)
        self._done = threading.Event()

    @property
    def running(self):
        return self.state == RUNNING

    def describe(self):
        return {'Id': self.id, 'Kind': self.kind, 'Target': dict(self.target),
                'State': self.state, 'Created': self.created, 'Updated': self.updated,
                'Progress': self.progress, 'Caller': self.caller, 'Error': self.error,
                **copy.deepcopy(self.extra)}  # as it stands: the action goes on changing it

    def wait(self, timeout):
        """True once it ended, waiting up to `timeout` seconds."""
        return self._done.wait(timeout)

    def within(self, seconds):
        """Its outcome if it ends within `seconds` (its exception raised again), else
        StillRunning carrying the operation, which goes on."""
        if not self.wait(seconds):
            late = StillRunning(f"{self.kind} of {self.target['Name']}")
            late.operation = self
            raise late
        if self.failure is not None:
            raise self.failure

    def follow(self, interval=PROGRESS_INTERVAL):
        """Read the job's progress every `interval` s until it ends, on a thread and a libvirt
        connection of its own: QEMU answers only between the steps of a migration, which may
        take seconds, and neither a reader of the operation nor a lane of the pool (a console
        asking its domain's state) waits for that meanwhile."""
        try:
            conn = self.hypervisor.connection.open_own()
        except (libvirt.libvirtError, HTTPError):
            return  # libvirt away: no progress, the operation goes on
        try:
            dom = conn.lookupByUUIDString(self.target['Uuid'])
            while not self.wait(interval):
                self.refresh(dom)
        except libvirt.libvirtError:
            pass  # the domain left (migrated), or libvirt went away
        finally:
            conn.close()

    def refresh(self, dom):
        """Read the job's progress from libvirt (where it reports one), while it runs."""
        if not (self.job and self.running):
            return
        try:
            stats = dom.jobStats()
        except libvirt.libvirtError:
            return  # no job yet, a driver without job statistics: as it stood
        progress = {name: stats.get(key) for key, name in PROGRESS_FIELDS.items()}
        if progress != self.progress and self.running:
            self.progress, self.updated = progress, _now()

    def cancel(self):
        """Abort its libvirt job; 409 when the driver cannot, or nothing is left to abort."""
        if not self.running:
            raise HTTPError(409, f'operation {self.id} has already ended ({self.state})',
                            'operation_ended')
        if self.on_cancel is not None:
            self.cancel_asked = True
            self.on_cancel()
            return
        if not self.job:
            raise not_cancellable(self, f'a {self.kind} is not a libvirt job that can be aborted')
        self.cancel_asked = True
        try:
            self._domain().abortJob()
        except libvirt.libvirtError as err:
            if not self.running:
                raise HTTPError(409, f'operation {self.id} has already ended ({self.state})',
                                'operation_ended') from None
            self.cancel_asked = False
            raise not_cancellable(self, printable_text(err.get_error_message())) from None

    def _domain(self):
        """The domain, looked up on the pool's least busy connection (an abort is quick)."""
        return self.hypervisor.connection.get().lookupByUUIDString(self.target['Uuid'])

    def _run(self, action, operations):
        try:
            action()
        except libvirt.libvirtError as err:
            self.failure = err
            self.error = from_libvirt(err, True).body()
        except HTTPError as err:
            self.failure, self.error = err, err.body()
        except Exception as err:
            log.error('operation %s (%s) failed\n%s', self.id, self.kind, traceback_text(err))
            self.failure = HTTPError(500, 'internal server error', 'internal_error')
            self.error = self.failure.body()
        state = SUCCEEDED if self.error is None else CANCELLED if self.cancel_asked else FAILED
        operations.ended(self, state)


def host_key(hypervisor):
    """The host a connection reaches (Hypervisor.host), or, never known, the connection."""
    return hypervisor.host() or ('connection', hypervisor.name)


def not_cancellable(operation, why):
    return HTTPError(409, f'operation {operation.id} cannot be cancelled: {why}',
                     'operation_not_cancellable')


class Operations:
    """The operations of one app, on all its connections: at most `threads` running, finished
    ones kept up to `kept` in number and `age` seconds."""

    def __init__(self, threads=defaults.OPERATION_THREADS, kept=defaults.OPERATIONS_KEPT,
                 age=defaults.OPERATION_AGE):
        self.threads, self.kept, self.age = threads, kept, age
        self._operations = {}  # id: Operation, oldest first
        self._lock = threading.Lock()

    def start(self, kind, hypervisor, dom, action, caller=None, job=False, join=False,
              target=None, extra=None, on_cancel=None, also=None):
        """Run action() as an operation of `kind` on domain `dom` of `hypervisor`, on a thread
        of its own: 409 while another runs on that domain, 503 with every thread taken.

        join: a repeat of the same action may join one of its kind running on the domain
        (twelve Stops at once ask the guest once): (operation, whether it was joined).
        target: what it acts on when that is no domain (dom None); extra: what its description
        adds (the action may go on filling it); on_cancel: how to cancel one that is no libvirt
        job; also: a second hypervisor the domain is changed on (a migration's destination:
        its copy there is busy too). A caller has at most half the threads (as
        watchers-per-caller): one caller's slow migrations leave the others' Stops and Restarts
        a place."""
        operation = Operation(kind, hypervisor, dom, caller, job, target, on_cancel, also)
        operation.extra = extra or {}
        with self._lock:
            busy = self._register(operation, join)
            if busy is not None:
                return busy, True
        threading.Thread(target=operation._run, args=(action, self), daemon=True,
                         name=f'operation-{operation.kind}').start()
        return (operation, False) if join else operation

    def begin_here(self, kind, hypervisor, dom, caller=None, job=False, also=None):
        """An operation that will run on the calling thread (run_here), taking no place of the
        pool: an evacuation's guests, migrated one by one on the evacuation's own thread. 409
        while another runs on that domain."""
        operation = Operation(kind, hypervisor, dom, caller, job, also=also)
        operation.counted = False
        with self._lock:
            self._register(operation)
        return operation

    def run_here(self, operation, action):
        """Run a begun operation's action on this thread; once it ended."""
        self._follow(operation)
        operation._run(action, self)

    def _register(self, operation, join=False):
        """Keep a new operation (with the lock held): the running one it joins, else None."""
        self._prune()
        busy = next(filter(None, (self._running_on(host, operation.target['Uuid'])
                                  for host in operation.hosts)), None)
        if busy is not None and join and busy.kind == operation.kind:
            return busy
        if busy is not None:
            raise InProgress(busy, operation.hypervisor.name)
        if operation.counted:
            counted = [op for op in self._operations.values() if op.running and op.counted]
            if len(counted) >= self.threads:
                raise too_many_operations(self.threads)
            share = max(1, self.threads // 2)
            if sum(op.caller == operation.caller for op in counted) >= share:
                raise too_many_operations(share, f'one caller ({operation.caller}) runs at once '
                                          f'(half of the {self.threads} the daemon runs)')
        self._operations[operation.id] = operation
        self._announce(operation, 'created')
        if operation.counted:
            self._follow(operation)
        return None

    @staticmethod
    def _follow(operation):
        if operation.job:
            threading.Thread(target=operation.follow, daemon=True,
                             name=f'progress-{operation.kind}').start()

    def ended(self, operation, state):
        with self._lock:
            operation.state, operation.updated = state, _now()
            operation.ended = time.monotonic()
        if operation.error is not None:
            log.info('operation %s (%s of %s) %s: %s', operation.id, operation.kind,
                     printable_text(operation.target['Name']), state,
                     printable_text(operation.error['message']))
        self._announce(operation, 'finished', state)  # before a waiter is let go: it may read on
        operation._done.set()

    def refuse_busy(self, hypervisor, dom_uuid, joins=None):
        """409 (InProgress) while an operation runs on that domain, unless it is of the kind
        `joins` (a repeat of it joins it: see start)."""
        host = host_key(hypervisor)
        with self._lock:
            busy = self._running_on(host, dom_uuid)
        if busy is not None and busy.kind != joins:
            raise InProgress(busy, hypervisor.name)

    def refuse_kind(self, hypervisor, kind):
        """409 (InProgress) while an operation of `kind` runs on that connection's host (an
        evacuation, for a lift of its host's maintenance), the host as last known: one that
        ran an operation was known then, and a lift asks libvirt nothing (its host is often
        down)."""
        host = hypervisor.known_host or ('connection', hypervisor.name)
        with self._lock:
            busy = next((op for op in self._operations.values() if op.running
                         and op.kind == kind and op.host == host), None)
        if busy is not None:
            raise InProgress(busy, hypervisor.name)

    def find(self, hypervisor, ident):
        """The operation `ident` of that connection: 404 for another's, or one no longer kept."""
        with self._lock:
            self._prune()
            operation = self._operations.get(ident)
        if operation is None or operation.hypervisor is not hypervisor:
            raise HTTPError(404, f'no such operation: {ident} (operations are kept for '
                            f'{self.age:g} s after they end, and not across a restart of the '
                            'daemon)', 'no_such_operation')
        return operation

    def listed(self, hypervisor):
        """That connection's operations kept, newest first."""
        with self._lock:
            self._prune()
            return [op for op in reversed(self._operations.values())
                    if op.hypervisor is hypervisor]

    def __len__(self):
        return len(self._operations)

    def _running_on(self, host, dom_uuid):
        return next((op for op in self._operations.values() if op.running
                     and host in op.hosts and op.target['Uuid'] == dom_uuid), None)

    def _prune(self):
        """Forget finished operations past their age, then the oldest past `kept` (a running
        one is never forgotten: there are at most `threads` of them)."""
        now = time.monotonic()
        finished = [op for op in self._operations.values() if not op.running]
        old = [op for op in finished if now - op.ended > self.age]
        old += [op for op in finished if op not in old][:max(0, len(finished) - len(old)
                                                              - self.kept)]
        for op in old:
            del self._operations[op.id]

    @staticmethod
    def _announce(operation, event, detail=None):
        # An evacuation's target is a host: `Host`, so that a domain= filter never matches it.
        key = 'Domain' if operation.dom is not None else 'Host'
        operation.hypervisor.events.announce('operation', event, detail,
                                             **{key: dict(operation.target)},
                                             Operation=operation.describe())
