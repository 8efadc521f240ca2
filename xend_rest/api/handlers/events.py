"""Watching instead of polling: the domain event stream, and waiting for a domain's state."""
import json
import time

from xend_rest import defaults
from xend_rest.api.bodies import Raw
from xend_rest.api.params import MAX_WHOLE, is_whole, parse_choice, parse_int, parse_seconds
from xend_rest.defaults import MAX_WAIT_SECONDS
from xend_rest.errors import HTTPError, bad_request, wait_timeout
from xend_rest.hypervisor.domain_events import (CLIENT_CHECK, CONDITION_STATES, DEFAULT_TYPES,
                                                EVENT_TYPES, is_notice, record_type,
                                                wait_for_state)
from .domains import lookup_domain

MAX_STREAM_SECONDS = 7 * 24 * 3600
DEFAULT_WAIT_SECONDS = 60
STREAM_HEADERS = [('Cache-Control', 'no-cache'), ('X-Accel-Buffering', 'no')]


def stream_events(request):
    """GET /events: domain events as they happen (after a replay of those since `since`)."""
    since = _since(request)
    types = _types(request)
    wanted = _filter(_listed(request, 'domain'), _listed(request, 'event'), types)
    limit = parse_int(request, 'limit', minimum=1) if request.arg('limit') is not None else None
    timeout = parse_seconds(request, 'timeout', maximum=MAX_STREAM_SECONDS)
    sse = defaults.SSE in request.environ.get('HTTP_ACCEPT', '')
    request.conn  # the hypervisor registers for events when it connects: be connected
    hub = request.hypervisor.events
    subscription = hub.subscribe(wanted, since, owner=request.caller, hold=request.hold,
                                 types=types)
    subscription.credential = request.credential  # ended by a reload that takes it away
    stream = EventStream(hub, subscription, request.hypervisor.connection, sse, limit, timeout,
                         request.client_gone)
    return 200, Raw(stream, defaults.SSE if sse else defaults.NDJSON), list(STREAM_HEADERS)


def _since(request):
    value = request.arg('since')
    if value is None:  # an EventSource reconnecting says where it stopped in this header
        value = request.environ.get('HTTP_LAST_EVENT_ID') or None
    if value is None:
        return None
    if not is_whole(value) or int(value) > MAX_WHOLE:
        raise bad_request(f'since={value}: expected the id of an event, a whole number')
    return int(value)


def _listed(request, name):
    """A filter's values: the parameter may be repeated, or list values separated by commas."""
    return {item for value in request.query.get(name, ()) for item in value.split(',') if item}


def _types(request):
    types = _listed(request, 'type')
    unknown = types - set(EVENT_TYPES)
    if unknown:
        raise bad_request(f"type={','.join(sorted(unknown))}: "
                          f"expected some of {', '.join(EVENT_TYPES)}")
    return frozenset(types) or DEFAULT_TYPES


def _filter(domains, events, types=DEFAULT_TYPES):
    """Which events a stream wants: `events` by name among its `types`; `domains`, only the
    events about one of them (an operation on it: yes; a network's or a host's: no)."""
    known = [name for kind in EVENT_TYPES if kind in types for name in EVENT_TYPES[kind]]
    unknown = events - set(known)
    if unknown:
        raise bad_request(f"event={','.join(sorted(unknown))}: "
                          f"expected some of {', '.join(dict.fromkeys(known))}")
    # libvirt's names are case-sensitive and matched exactly; a UUID matches in either case.
    uuids = {name.lower() for name in domains}

    def wanted(record):
        domain = record.get('Domain')
        return ((not events or record['Event'] in events)
                and (not domains or domain is not None and (
                    domain['Name'] in domains or domain['Uuid'].lower() in uuids)))
    return wanted


class EventStream:
    """The body of an event stream: JSON lines (or Server-Sent Events) and keep-alive heartbeats.

    A client that hung up is noticed within CLIENT_CHECK seconds where the server says so
    (gone()), else when a heartbeat cannot be written (the server closes us); either way we
    unsubscribe: the server calls close() however the stream ends.
    """

    def __init__(self, hub, subscription, connection, sse, limit, timeout, gone=lambda: False):
        self.hub, self.subscription, self.connection = hub, subscription, connection
        self.sse, self.limit, self.gone = sse, limit, gone
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def __iter__(self):
        yield self._heartbeat()  # sends the response head now, before any event
        if self.subscription.gap:
            yield self._notice('gap', 'some events after the one asked for are no longer kept; '
                               'read the current state again')
        sent = 0
        beat = time.monotonic() + self.hub.heartbeat  # the next heartbeat, unless a line goes first
        while self.limit is None or sent < self.limit:
            record = self.subscription.get(self._wait(beat))
            if record is not None and is_notice(record):  # e.g. libvirt reconnected
                yield self._notice(record['Notice'], record['Message'], record['Id'])
            elif record is not None:
                sent += 1
                yield self._event(record)
            elif self.subscription.end:
                yield self._end_notice(self.subscription.end)
                return
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                return
            elif self.gone():
                return  # nobody reads on: the slot is free for another
            elif time.monotonic() >= beat:
                self._reconnect()
                yield self._heartbeat()
            else:
                continue
            beat = time.monotonic() + self.hub.heartbeat

    def _wait(self, beat):
        """Seconds until the next heartbeat is due, the stream's end or the next look at the
        client, whichever comes first."""
        until = beat if self.deadline is None else min(beat, self.deadline)
        return max(0.0, min(until - time.monotonic(), CLIENT_CHECK))

    def close(self):
        self.hub.unsubscribe(self.subscription)

    def _reconnect(self):
        """Reopen a broken libvirt connection (and so register for its events again)."""
        try:
            self.connection.get()
        except HTTPError:
            pass  # libvirt is still away: try again at the next heartbeat

    def _event(self, record):
        data = json.dumps(record, sort_keys=True)
        if self.sse:
            kind = record_type(record)  # another kind's names may be a domain's too: prefixed
            name = record['Event'] if kind == 'domain' else f"{kind}.{record['Event']}"
            return f"id: {record['Id']}\nevent: {name}\ndata: {data}\n\n".encode()
        return data.encode() + b'\n'

    def _notice(self, kind, message, ident=None):
        """A notice; one kept in the ring has an id, which an EventSource resumes after."""
        notice = {'Notice': kind, 'Message': message, 'LastId': self.subscription.last_id}
        data = json.dumps(notice, sort_keys=True)
        if not self.sse:
            return data.encode() + b'\n'
        head = '' if ident is None else f'id: {ident}\n'
        return f'{head}event: notice\ndata: {data}\n\n'.encode()

    def _end_notice(self, reason):
        if reason == 'overflow':
            return self._notice('overflow', 'this client fell behind and was dropped; reconnect '
                                'with since=LastId to read on without a loss')
        if reason == 'revoked':
            return self._notice('revoked', 'a reload of the daemon withdrew the credentials '
                                'this stream was opened with')
        return self._notice('closed', 'the daemon is stopping; reconnect with since=LastId')

    def _heartbeat(self):
        return b':\n\n' if self.sse else b'\n'


def wait_domain(request, ident):
    """POST /nodes/(id)/wait: answers once the domain reaches `condition`; 408 after `timeout`."""
    if request.arg('condition') is None:
        raise bad_request('query parameter "condition" is required: '
                          f"one of {', '.join(CONDITION_STATES)}")
    condition = parse_choice(request, 'condition', {name: name for name in CONDITION_STATES}, None)
    timeout = parse_seconds(request, 'timeout', DEFAULT_WAIT_SECONDS, MAX_WAIT_SECONDS)
    dom = lookup_domain(request.conn, ident)
    if not wait_for_state(request.hypervisor.events, request.conn, dom.UUIDString(), condition,
                          timeout, owner=request.caller, gone=request.client_gone,
                          hold=request.hold):
        raise wait_timeout(f'domain {dom.name()} did not become {condition} within {timeout:g} s')
    return 200, {'State': condition}
