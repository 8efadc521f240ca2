"""Domain events: libvirt's callbacks feed one bounded ring; each subscriber reads its own bounded queue.

libvirt runs the callbacks on its event-loop thread, which also serves keepalives and every other
connection's events: there they only build a small record, append it to the ring and hand it to the
subscribers' queues, never anything that blocks.
"""
import collections
import logging
import threading
import time
from datetime import datetime, timezone

import libvirt

from xend_rest import defaults
from xend_rest.errors import RETRY_AFTER, HTTPError, client_gone
from xend_rest.logtext import printable_text
from .bounded import StillRunning
from .libvirt_errors import is_no_domain
from .stats import state_name

log = logging.getLogger(__name__)

# libvirt's virDomainEventType values, in order, and each one's detail names (also in order).
LIFECYCLE_EVENTS = (
    ('defined', ('added', 'updated', 'renamed', 'from_snapshot')),
    ('undefined', ('removed', 'renamed')),
    ('started', ('booted', 'migrated', 'restored', 'from_snapshot', 'wakeup')),
    ('suspended', ('paused', 'migrated', 'ioerror', 'watchdog', 'restored', 'from_snapshot',
                   'api_error', 'postcopy', 'postcopy_failed')),
    ('resumed', ('unpaused', 'migrated', 'from_snapshot', 'postcopy', 'postcopy_failed')),
    ('stopped', ('shutdown', 'destroyed', 'crashed', 'migrated', 'saved', 'failed',
                 'from_snapshot')),
    ('shutdown', ('finished', 'guest', 'host')),
    ('pmsuspended', ('memory', 'disk')),
    ('crashed', ('panicked', 'crashloaded')),
)
OTHER_EVENTS = ('reboot', 'device_added', 'device_removed')
EVENT_NAMES = tuple(name for name, _details in LIFECYCLE_EVENTS) + OTHER_EVENTS
# The kinds of event the hub carries, each with its event names. A domain event has no `Type`
# (as before there were others); every other kind's does. A stream asks for kinds with `type=`,
# domain events only by default: a client from before other kinds sees what it always saw.
# libvirt's virNetworkEventLifecycleType values, in order (their detail is always 0: none).
NETWORK_EVENTS = ('defined', 'undefined', 'started', 'stopped')
EVENT_TYPES = {'domain': EVENT_NAMES, 'network': NETWORK_EVENTS,
               'operation': ('created', 'finished')}
DEFAULT_TYPES = frozenset({'domain'})

# The state each event leaves the domain in, where the event alone says so.
STATE_AFTER = {'started': 'running', 'resumed': 'running', 'suspended': 'paused',
               'stopped': 'shutoff', 'pmsuspended': 'pmsuspended'}
# What a client may wait for, and the states that satisfy it: Xen reports an idle guest as blocked.
CONDITION_STATES = {
    'running': ('running', 'blocked'),
    'paused': ('paused',),
    'shutoff': ('shutoff',),
    'undefined': ('undefined',),
}
RESTART_EVENTS = ('reboot', 'started')  # Xen restarts a guest as a new domain: stopped, started
RECONNECT_MESSAGE = 'libvirt reconnected: events may have been missed; read the current state again'
CLIENT_CHECK = 1.0  # seconds between looks at whether the client of a wait or stream hung up


def lifecycle_names(event, detail):
    """libvirt's (event, detail) numbers as names; a number this table predates stays visible."""
    if 0 <= event < len(LIFECYCLE_EVENTS):
        name, details = LIFECYCLE_EVENTS[event]
    else:
        name, details = f'unknown_{event}', ()
    return name, details[detail] if 0 <= detail < len(details) else f'unknown_{detail}'


def too_many_watchers(limit):
    """503 for one stream or wait more than the daemon serves at once: libvirt itself is fine."""
    return HTTPError(503, f'too many event streams and waits are open ({limit}); try again later',
                     'too_many_watchers', [('Retry-After', RETRY_AFTER)])


def no_worker_to_spare():
    """503 when the server has no worker to spare for one more request that holds one."""
    return HTTPError(503, 'every server worker that may wait for long is taken (by event streams, '
                     'waits and uploads); try again later', 'too_many_watchers',
                     [('Retry-After', RETRY_AFTER)])


def too_many_watchers_for_caller(owner, limit):
    """429 for one stream or wait more than one caller's share: the others keep theirs."""
    return HTTPError(429, f'{owner} has {limit} event streams and waits open, the most one caller '
                     'may (watchers-per-caller); end one, or try again later',
                     'too_many_watchers_for_caller', [('Retry-After', RETRY_AFTER)])


def record_type(record):
    return record.get('Type', 'domain')


def is_notice(record):
    """A ring entry that is a notice to every reader (no domain, no event), not an event."""
    return 'Notice' in record


def _now():
    return datetime.now(timezone.utc).isoformat(timespec='milliseconds').replace('+00:00', 'Z')


class Watchers:
    """The places for event streams and waits of one app, on all its connections together: at
    most `limit`, and `per_caller` of them for one caller. Each holds a server worker while it
    lasts: so that they never take every worker, the server may refuse one more too (hold)."""

    def __init__(self, limit=defaults.WATCHERS, per_caller=defaults.WATCHERS_PER_CALLER):
        self.limit, self.per_caller = limit, per_caller
        self._callers = collections.Counter()
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self):
        return self._count

    def take(self, owner=None, hold=None):
        """A place for `owner`: 429 past its share, 503 past `limit`, or when hold(owner) says
        the server has no worker to spare (environ['xend_rest.hold'] of our server)."""
        with self._lock:
            if owner is not None and self._callers[owner] >= self.per_caller:
                raise too_many_watchers_for_caller(owner, self.per_caller)
            if self._count >= self.limit:
                raise too_many_watchers(self.limit)
            self._count += 1
            self._callers[owner] += 1
        if hold is not None and not hold(owner):
            self.give(owner)
            raise no_worker_to_spare()

    def give(self, owner=None):
        with self._lock:
            self._count -= 1
            self._callers[owner] -= 1
            if not self._callers[owner]:
                del self._callers[owner]


class Subscription:
    """One reader's view of the hub: a replay of the ring, then live records, up to `limit` queued."""

    def __init__(self, wanted, limit, replay, last_id, gap, owner=None, types=DEFAULT_TYPES):
        self.wanted = wanted
        self.types = types  # the kinds of event it reads (EVENT_TYPES)
        self.owner = owner  # the caller it counts against (None: nobody's)
        self.counted = True  # its place among the Watchers is taken, until unsubscribed
        self.end = None  # why no more records will come: 'overflow', 'closed' or 'revoked'
        self.credential = None  # what its reader was admitted with (the app's business)
        self.last_id = last_id  # of the last record read (or the `since` it started from)
        self.gap = gap  # True when the ring no longer holds every record after `since`
        self._limit = limit
        self._replay = collections.deque(replay)
        self._live = collections.deque()
        self._ready = threading.Condition(threading.Lock())

    def offer(self, record):
        """Queue a record (event-loop thread, never blocks); False once this reader fell behind."""
        with self._ready:
            if self.end:
                return False
            if len(self._live) >= self._limit:
                self.end = 'overflow'
            else:
                self._live.append(record)
            self._ready.notify()
            return self.end is None

    def finish(self, reason):
        with self._ready:
            self.end = self.end or reason
            self._ready.notify()

    def get(self, timeout):
        """The next record, or None after `timeout` seconds or once `end` is set and all is read."""
        with self._ready:
            if not self._replay and not self._live and self.end is None:
                self._ready.wait(timeout)
            queue = self._replay or self._live
            if not queue:
                return None
            record = queue.popleft()
            self.last_id = record['Id']
            return record


class EventHub:
    """The last `ring_size` domain events of one connection, and the subscribers that read them."""

    def __init__(self, ring_size=1000, queue_size=1000, max_subscribers=defaults.WATCHERS,
                 heartbeat=15.0, per_owner=defaults.WATCHERS_PER_CALLER, watchers=None):
        """watchers: the places its subscribers take, shared with the app's other connections
        (make_app); by default a Watchers of its own, of max_subscribers, per_owner a caller."""
        self.queue_size = queue_size
        self.heartbeat = heartbeat  # seconds between keep-alives on an idle stream
        self.watchers = Watchers(max_subscribers, per_owner) if watchers is None else watchers
        self.last_id = 0  # of the newest ring entry: events and reconnect notices
        self.events = 0  # received from libvirt
        self.overflows = 0
        self.attached = 0  # connections attached: each after the first followed an outage
        self._ring = collections.deque(maxlen=ring_size)
        self._subscribers = set()
        self._lock = threading.Lock()

    @property
    def subscribers(self):
        return len(self._subscribers)

    def attach(self, conn):
        """Register for the domain and network events of a connection the pool just opened;
        returns the function that deregisters them (the pool calls it before closing the
        connection)."""
        callback_ids = []
        for event_id, callback in (
                (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
                (libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._on_reboot),
                (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._on_device_added),
                (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._on_device_removed)):
            try:
                callback_ids.append(conn.domainEventRegisterAny(None, event_id, callback, None))
            except libvirt.libvirtError as err:
                log.warning('no domain events of kind %d from this driver: %s',
                            event_id, printable_text(err.get_error_message()))
        try:
            network_callback = conn.networkEventRegisterAny(
                None, libvirt.VIR_NETWORK_EVENT_ID_LIFECYCLE, self._on_network, None)
        except libvirt.libvirtError as err:
            network_callback = None
            log.warning('no network events from this driver: %s',
                        printable_text(err.get_error_message()))
        self.attached += 1
        if self.attached > 1:  # whatever happened while libvirt was away was never seen
            self._append({'Notice': 'gap', 'Message': RECONNECT_MESSAGE})

        def detach():
            for callback_id in callback_ids:
                try:
                    conn.domainEventDeregisterAny(callback_id)
                except libvirt.libvirtError:
                    pass  # the connection is dead: libvirt dropped its callbacks with it
            if network_callback is not None:
                try:
                    conn.networkEventDeregisterAny(network_callback)
                except libvirt.libvirtError:
                    pass
        return detach

    def _on_lifecycle(self, _conn, dom, event, detail, _opaque):
        self.publish(dom.name(), dom.UUIDString(), *lifecycle_names(event, detail))

    def _on_reboot(self, _conn, dom, _opaque):
        self.publish(dom.name(), dom.UUIDString(), 'reboot', None)

    def _on_device_added(self, _conn, dom, alias, _opaque):
        self.publish(dom.name(), dom.UUIDString(), 'device_added', alias)

    def _on_device_removed(self, _conn, dom, alias, _opaque):
        self.publish(dom.name(), dom.UUIDString(), 'device_removed', alias)

    def _on_network(self, _conn, net, event, _detail, _opaque):
        name = NETWORK_EVENTS[event] if 0 <= event < len(NETWORK_EVENTS) else f'unknown_{event}'
        self.announce('network', name, Network={'Name': net.name(), 'Uuid': net.UUIDString()})

    def publish(self, name, uuid, event, detail):
        """Number an event, keep it in the ring and offer it to every subscriber that wants it."""
        return self._append({'Event': event, 'Detail': detail,
                             'Domain': {'Name': name, 'Uuid': uuid}})

    def announce(self, kind, event, detail=None, **fields):
        """An event of another kind than a domain's (EVENT_TYPES: its module adds its names
        there), for the streams that ask for that `type`."""
        return self._append({'Type': kind, 'Event': event, 'Detail': detail, **fields})

    def _append(self, entry):
        """Number an entry (an event or a notice), keep it in the ring and offer it to readers."""
        with self._lock:
            self.last_id += 1
            self.events += not is_notice(entry)
            record = {'Id': self.last_id, 'Time': _now(), **entry}
            self._ring.append(record)
            behind = [sub for sub in self._subscribers
                      if _wants(sub, record) and not sub.offer(record)]
            for sub in behind:  # it reads the rest of its queue, then a notice to reconnect
                self._subscribers.discard(sub)
                self.overflows += 1
        return record

    def subscribe(self, wanted=None, since=None, owner=None, hold=None, types=DEFAULT_TYPES):
        """A new Subscription, in a place of the Watchers taken for `owner` (429, 503: see
        Watchers.take, and hold there): replays the ring after `since`.

        Notices reach every subscriber; `wanted` chooses among the events of the kinds `types`.
        """
        wanted = wanted or (lambda _record: True)
        sub_filter = _Filter(wanted, types)
        self.watchers.take(owner, hold)
        with self._lock:
            replay = []
            if since is not None:
                if since > self.last_id:
                    since = 0  # ids from before a restart of the daemon: replay all we have
                replay = [record for record in self._ring
                          if record['Id'] > since and _wants(sub_filter, record)]
            if since is None:
                since = self.last_id
            gap = bool(self._ring) and self._ring[0]['Id'] > since + 1
            sub = Subscription(wanted, self.queue_size, replay, since, gap, owner, types)
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub):
        with self._lock:
            self._subscribers.discard(sub)
            counted, sub.counted = sub.counted, False
        if counted:
            self.watchers.give(sub.owner)
        sub.finish('closed')

    def end_where(self, condition, reason):
        """End the subscriptions for which condition(subscription) holds; how many."""
        with self._lock:
            ending = [sub for sub in self._subscribers if condition(sub)]
        for sub in ending:
            sub.finish(reason)
        return len(ending)

    def close(self):
        """End every subscription (the daemon is stopping)."""
        with self._lock:
            subscribers, self._subscribers = self._subscribers, set()
        for sub in subscribers:
            sub.finish('closed')


_Filter = collections.namedtuple('_Filter', 'wanted types')


def _wants(reader, record):
    """Whether a reader (a Subscription, or a _Filter before it exists) takes a record."""
    return is_notice(record) or (record_type(record) in reader.types and reader.wanted(record))


def wait_for(hub, uuid, reached, timeout, first, owner=None, gone=None, hold=None):
    """Wait up to `timeout` s until reached(record) for an event of domain `uuid`, as `owner`
    (hold: see Watchers.take); 499 client_gone once gone() says the client hung up (asked
    every CLIENT_CHECK s).

    Subscribes before calling first() (which acts and/or checks the current state, True when
    already there), so an event that happens in between cannot be missed.
    """
    sub = hub.subscribe(lambda record: record['Domain']['Uuid'] == uuid, owner=owner, hold=hold)
    try:
        if first():
            return True
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or sub.end:
                return False
            if gone is not None and gone():
                raise client_gone(f'the client hung up after {timeout - remaining:.1f} s of a '
                                  'wait: it was given up')
            record = sub.get(remaining if gone is None else min(remaining, CLIENT_CHECK))
            if record is not None and reached(record):
                return True
    finally:
        hub.unsubscribe(sub)


def current_state(conn, uuid):
    """The domain's state name now; 'undefined' once libvirt no longer knows it."""
    try:
        return state_name(conn.lookupByUUIDString(uuid).state()[0])
    except libvirt.libvirtError as err:
        if is_no_domain(err):
            return 'undefined'
        raise


def wait_for_state(hub, conn, uuid, condition, timeout, action=None, owner=None, gone=None,
                   hold=None):
    """Run action() (if any), then wait until the domain is in `condition`; False on timeout
    (owner, gone, hold: see wait_for).

    A timeout of 0 with an action does not wait (True once acted); without one, checks now.
    """
    if action is not None and timeout == 0:
        action()
        return True
    states = CONDITION_STATES[condition]

    def first():
        if action is not None and not _asked(action):
            return False  # libvirt holds the domain meanwhile: its state would block, wait instead
        return current_state(conn, uuid) in states

    def reached(record):
        # The event names the state it led to; a later one (or a reconnect notice: events lost)
        # may already have passed: ask too.
        return STATE_AFTER.get(record.get('Event')) in states or current_state(conn, uuid) in states

    return wait_for(hub, uuid, reached, timeout, first, owner, gone, hold)


def wait_for_restart(hub, uuid, timeout, action, owner=None, gone=None, hold=None):
    """Run action() (a reboot), then wait for the reboot event or the domain starting again
    (owner, gone, hold: see wait_for).

    A timeout of 0 does not wait: True once the reboot was asked for.
    """
    if timeout == 0:
        action()
        return True

    def first():
        _asked(action)
        return False
    return wait_for(hub, uuid, lambda record: record.get('Event') in RESTART_EVENTS, timeout,
                    first, owner, gone, hold)


def _asked(action):
    """Run action(); False if it outlived its bound (bounded.StillRunning): the request waits on
    for the event, up to the time the client gave."""
    try:
        action()
    except StillRunning:
        return False
    return True
