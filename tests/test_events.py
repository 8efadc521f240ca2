"""GET /libvirt/xen/events and waiting: what a watching client sees while another one acts."""
import contextlib
import http.client
import io
import json
import socket
import time
import struct
import threading
from wsgiref.util import setup_testing_defaults

import libvirt
import pytest

from xend_rest.api.app import make_app
from xend_rest.hypervisor.domain_events import (CLIENT_CHECK, EVENT_TYPES, LIFECYCLE_EVENTS,
                                                EventHub, lifecycle_names)
from xend_rest.server.serving import Server

from conftest import Client, WEB_UUID, until

EVENTS = '/libvirt/xen/events'
NODES = '/libvirt/xen/nodes'
BOUND = 10  # seconds: only ever reached when something is broken


class Stream:
    """A streaming response read on its own thread, line by line, as a client would."""

    def __init__(self, client, query='', headers=None):
        environ = {}
        setup_testing_defaults(environ)
        environ.update({'REQUEST_METHOD': 'GET', 'PATH_INFO': EVENTS, 'QUERY_STRING': query,
                        'wsgi.input': io.BytesIO(b''), 'CONTENT_LENGTH': '0'})
        environ.update(headers or {})
        captured = {}

        def start_response(status, response_headers, exc_info=None):
            captured['status'], captured['headers'] = status, dict(response_headers)

        self.result = client.checked(environ, start_response)
        self.status = int(captured['status'].split()[0])
        self.headers = captured['headers']
        self.chunks = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self.thread.start()

    def _read(self):
        try:
            for chunk in self.result:
                self.chunks.append(chunk)
        finally:
            self.result.close()

    def finish(self):
        """Every chunk, once the stream has ended by itself (limit or timeout)."""
        self.thread.join(BOUND)
        assert not self.thread.is_alive(), 'the stream did not end'
        return b''.join(self.chunks)

    def records(self):
        return [json.loads(line) for line in self.finish().split(b'\n') if line]


def transitions(records):
    return [(record['Domain']['Name'], record['Event'], record['Detail']) for record in records]


def test_a_watcher_sees_every_transition_once_in_order(api):
    stream = Stream(api, 'limit=4')
    assert stream.status == 200
    assert stream.headers['Content-Type'] == 'application/x-ndjson'
    for action in ('start', 'suspend', 'resume', 'stop'):
        assert api.post(NODES + '/idle/' + action).status == 204
    records = stream.records()
    assert transitions(records) == [('idle', 'started', 'booted'), ('idle', 'suspended', 'paused'),
                                    ('idle', 'resumed', 'unpaused'), ('idle', 'stopped', 'shutdown')]
    ids = [record['Id'] for record in records]
    assert ids == sorted(set(ids))
    assert all(record['Time'].endswith('Z') for record in records)
    assert records[0]['Domain']['Uuid'] == api.conn.lookupByName('idle').UUIDString()


@contextlib.contextmanager
def serving(node_uri, hub=None):
    """The app behind the real threaded server, on a free local port."""
    app = make_app(uri=node_uri, events=hub)
    server = Server(app, ['127.0.0.1:0'], workers=4)
    server.start()
    try:
        yield app, server.addresses[0]
    finally:
        server.shutdown(grace=2)
        app.close()


def test_a_watcher_through_the_server_sees_another_clients_actions(node_uri):
    with serving(node_uri) as (app, address):
        watcher = http.client.HTTPConnection(*address, timeout=BOUND)
        watcher.request('GET', EVENTS + '?limit=4&domain=idle')
        stream = watcher.getresponse()
        assert stream.status == 200
        assert stream.readline() == b'\n'  # the head and a heartbeat come at once
        actor = http.client.HTTPConnection(*address, timeout=BOUND)
        for action in ('start', 'suspend', 'resume', 'stop'):
            actor.request('POST', NODES + '/idle/' + action)
            answer = actor.getresponse()
            answer.read()
            assert answer.status == 204
        records = [json.loads(line) for line in stream.read().split(b'\n') if line]
        assert [record['Event'] for record in records] == \
            ['started', 'suspended', 'resumed', 'stopped']
        until(lambda: app.hypervisor.events.subscribers == 0)


def test_shutdown_ends_open_streams_at_once(node_uri):
    app = make_app(uri=node_uri)
    server = Server(app, ['127.0.0.1:0'], workers=4, on_shutdown=app.end_streams)
    server.start()
    watcher = http.client.HTTPConnection(*server.addresses[0], timeout=BOUND)
    watcher.request('GET', EVENTS)
    stream = watcher.getresponse()
    assert stream.readline() == b'\n'
    started = time.monotonic()
    server.shutdown(grace=30)
    app.close()
    assert time.monotonic() - started < 10  # not the 30 s grace period
    assert app.hypervisor.events.subscribers == 0
    assert stream.read() is not None  # the stream ended; the connection did not hang


def test_a_vanished_client_is_noticed_and_unsubscribed(node_uri):
    with serving(node_uri, EventHub(heartbeat=0.05)) as (app, address):
        sock = socket.create_connection(address, timeout=BOUND)
        sock.sendall(b'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' % EVENTS.encode())
        assert sock.recv(100).startswith(b'HTTP/1.1 200')
        assert app.hypervisor.events.subscribers == 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        sock.close()  # a reset, as when a client machine vanishes and comes back
        until(lambda: app.hypervisor.events.subscribers == 0)


def hang_up(sock, how):
    """Leave as a client does: close (FIN), reset (RST: a machine that vanished and came
    back), or send more first (bytes the server has not read, before the FIN)."""
    if how == 'reset':
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    if how == 'more bytes, then close':
        sock.sendall(b'GET /_ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
    sock.close()


@pytest.mark.parametrize('how', ['close', 'reset', 'more bytes, then close'])
def test_a_stream_whose_client_hung_up_frees_its_slot_before_a_heartbeat(node_uri, how):
    """The default heartbeat is 15 s, and a write to a vanished client fails only at the second
    one: the server's word that the client hung up ends the stream within seconds."""
    with serving(node_uri) as (app, address):
        sock = socket.create_connection(address, timeout=BOUND)
        sock.sendall(b'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' % EVENTS.encode())
        assert sock.recv(100).startswith(b'HTTP/1.1 200')
        hang_up(sock, how)
        until(lambda: app.hypervisor.events.subscribers == 0)


WAIT = b'POST %s/idle/wait?condition=running&timeout=600 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' % (
    NODES.encode())


@pytest.mark.parametrize('how', ['close', 'reset', 'more bytes, then close'])
def test_a_wait_whose_client_hung_up_frees_its_slot_within_seconds(node_uri, how, caplog):
    """Not after its timeout (600 s here): sixteen such waits would lock every watcher out."""
    caplog.set_level('INFO', logger='xend_rest.access')
    with serving(node_uri) as (app, address):
        sock = socket.create_connection(address, timeout=BOUND)
        sock.sendall(WAIT)
        until(lambda: app.hypervisor.events.subscribers == 1)
        hang_up(sock, how)
        until(lambda: app.hypervisor.events.subscribers == 0)
        until(lambda: any(' 499 ' in r.getMessage() for r in caplog.records))
    [line] = [r.getMessage() for r in caplog.records if ' 499 ' in r.getMessage()]
    assert line.startswith('POST %s/idle/wait?condition=running&timeout=600 499 ' % NODES)


def test_a_client_that_sends_its_next_request_while_it_waits_is_still_there(node_uri):
    """A pipelined request is no hang-up: the wait goes on, and both are answered in order."""
    with serving(node_uri) as (app, address):
        sock = socket.create_connection(address, timeout=BOUND)
        sock.sendall(WAIT)
        until(lambda: app.hypervisor.events.subscribers == 1)
        sock.sendall(b'GET /_ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        time.sleep(3 * CLIENT_CHECK)  # several looks at the client
        assert app.hypervisor.events.subscribers == 1
        assert Client(app).post(NODES + '/idle/start').status == 204
        answers = b''
        while answers.count(b'HTTP/1.1 200 OK') < 2:
            answers += sock.recv(65536)
        assert answers.startswith(b'HTTP/1.1 200 OK') and b'{"State": "running"}' in answers
        sock.close()


def test_a_reconnecting_client_loses_nothing(api):
    first = Stream(api, 'limit=2')
    for action in ('start', 'suspend'):
        api.post(NODES + '/idle/' + action)
    seen = first.records()
    for action in ('resume', 'stop'):  # while nobody is watching
        api.post(NODES + '/idle/' + action)
    api.post(NODES + '/web/suspend')
    again = Stream(api, 'since=%d&limit=3' % seen[-1]['Id'])
    assert transitions(again.records()) == [('idle', 'resumed', 'unpaused'),
                                            ('idle', 'stopped', 'shutdown'),
                                            ('web', 'suspended', 'paused')]


def test_filters_by_domain_and_event(api):
    by_domain = Stream(api, 'domain=web&limit=2')
    by_uuid_and_event = Stream(api, 'domain=%s&event=resumed,stopped&limit=1' % WEB_UUID.upper())
    api.post(NODES + '/idle/start')
    api.post(NODES + '/web/suspend')
    api.post(NODES + '/web/resume')
    assert transitions(by_domain.records()) == [('web', 'suspended', 'paused'),
                                                ('web', 'resumed', 'unpaused')]
    assert transitions(by_uuid_and_event.records()) == [('web', 'resumed', 'unpaused')]


def test_names_are_case_sensitive_in_filters(api):
    stream = Stream(api, 'domain=WEB,idle&limit=1')
    api.post(NODES + '/web/suspend')
    api.post(NODES + '/idle/start')
    assert transitions(stream.records()) == [('idle', 'started', 'booted')]


def test_a_reconnect_to_libvirt_tells_watchers_events_may_be_lost(api):
    stream = Stream(api, 'domain=idle&limit=1')
    sse = Stream(api, 'domain=idle&limit=1', {'HTTP_ACCEPT': 'text/event-stream'})
    api.app.hypervisor.connection.discard(api.conn)  # as when libvirtd went away
    assert api.post(NODES + '/idle/start').status == 204  # reconnects
    lines = stream.records()
    assert lines[0]['Notice'] == 'gap'
    assert 'libvirt reconnected' in lines[0]['Message']
    assert transitions(lines[1:]) == [('idle', 'started', 'booted')]
    blocks = [block for block in sse.finish().decode().split('\n\n') if block.strip(':\n')]
    assert blocks[0].split('\n')[:2] == ['id: %d' % lines[0]['LastId'], 'event: notice']
    later = Stream(api, 'since=0&timeout=0').records()  # a client back from before the outage
    assert [line.get('Notice') for line in later] == ['gap', None]
    assert api.app.hypervisor.events.events == 1


def test_the_first_connection_is_no_gap(api):
    api.post(NODES + '/idle/start')
    until(lambda: api.app.hypervisor.events.events == 1)
    assert [line.get('Notice') for line in Stream(api, 'since=0&timeout=0').records()] == [None]


def test_server_sent_events_when_the_client_asks_for_them(api):
    stream = Stream(api, 'limit=1', {'HTTP_ACCEPT': 'text/event-stream'})
    api.post(NODES + '/web/suspend')
    text = stream.finish().decode()
    assert stream.headers['Content-Type'] == 'text/event-stream'
    assert stream.headers['Cache-Control'] == 'no-cache'
    blocks = [block for block in text.split('\n\n') if block and not block.startswith(':')]
    lines = blocks[0].split('\n')
    record = json.loads(lines[2][len('data: '):])
    assert lines[:2] == ['id: %d' % record['Id'], 'event: suspended']
    assert record['Domain']['Name'] == 'web'


def test_last_event_id_resumes_an_event_source(api):
    api.post(NODES + '/web/suspend')
    api.post(NODES + '/web/resume')
    first = Stream(api, 'since=0&limit=1')
    start = first.records()[0]['Id']
    stream = Stream(api, 'limit=1', {'HTTP_LAST_EVENT_ID': str(start)})
    assert transitions(stream.records()) == [('web', 'resumed', 'unpaused')]


@pytest.fixture
def other_kind(monkeypatch):
    """A kind of event besides the domain's, as the modules that add one register it."""
    monkeypatch.setitem(EVENT_TYPES, 'gadget', ('started', 'exploded'))
    return 'gadget'


def test_the_default_stream_carries_domain_events_only(api, other_kind):
    default = Stream(api, 'limit=1')
    hub = api.app.hypervisor.events
    hub.announce(other_kind, 'exploded', Gadget='g1')
    api.post(NODES + '/web/suspend')
    (record,) = default.records()
    assert 'Type' not in record and record['Domain']['Name'] == 'web'  # as before other kinds
    replayed = Stream(api, 'since=0&timeout=0').records()
    assert [line['Event'] for line in replayed] == ['suspended']


def test_a_stream_asks_for_other_kinds_by_type(api, other_kind):
    both = Stream(api, 'type=domain,gadget&limit=2')
    only = Stream(api, 'type=gadget&event=started&limit=1', {'HTTP_ACCEPT': 'text/event-stream'})
    hub = api.app.hypervisor.events
    hub.announce(other_kind, 'exploded', Gadget='g1')
    api.post(NODES + '/web/suspend')
    # libvirt hands the domain's event over on its event loop, after the call returned; an
    # announce is at once: the order to check is the one the hub received.
    until(lambda: hub.last_id == 2)
    hub.announce(other_kind, 'started', Gadget='g2')
    first, second = both.records()
    assert (first['Type'], first['Event'], first['Gadget']) == ('gadget', 'exploded', 'g1')
    assert 'Type' not in second and second['Event'] == 'suspended'
    blocks = [block for block in only.finish().decode().split('\n\n') if block.strip(':\n')]
    lines = blocks[0].split('\n')
    assert lines[1] == 'event: gadget.started'  # a domain's 'started' is another event
    assert json.loads(lines[2][len('data: '):])['Gadget'] == 'g2'
    assert transitions(Stream(api, 'since=0&timeout=0&type=domain').records()) == [
        ('web', 'suspended', 'paused')]


def test_a_domain_filter_passes_only_that_domains_events(api, other_kind):
    """As Docker's `container=` filter: events of other kinds that name no domain (a network's,
    an evacuation's host) are not that domain's; the stream ends on idle's event alone."""
    stream = Stream(api, 'type=gadget,network,domain&domain=idle&limit=1')
    api.post(NODES + '/web/suspend')
    api.app.hypervisor.events.announce(other_kind, 'exploded', Gadget='g1')
    api.conn.networkLookupByName('default').destroy()  # a network event, libvirt's own
    until(lambda: api.app.hypervisor.events.last_id >= 3)
    api.post(NODES + '/idle/start')
    assert [(line.get('Type'), line['Event']) for line in stream.records()] == [
        (None, 'started')]
    everything = Stream(api, 'type=gadget,network,domain&since=0&timeout=0').records()
    assert {line.get('Type') for line in everything} == {None, 'gadget', 'network'}


def test_a_wait_is_not_disturbed_by_other_kinds(api, other_kind):
    done = _wait_in_background(api, 'idle', 'running')
    api.app.hypervisor.events.announce(other_kind, 'started', Gadget='g1')
    api.post(NODES + '/idle/start')
    assert done().status == 200


def test_a_stream_ends_at_its_timeout_with_heartbeats_only(api):
    assert Stream(api, 'timeout=0').finish() == b'\n'  # the first heartbeat sends the head


def test_device_events_are_named():
    assert lifecycle_names(libvirt.VIR_DOMAIN_EVENT_STOPPED,
                           libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED) == ('stopped', 'destroyed')
    assert lifecycle_names(42, 0) == ('unknown_42', 'unknown_0')


@pytest.mark.parametrize('event', range(len(LIFECYCLE_EVENTS)))
def test_event_names_follow_libvirts_numbering(event):
    name, details = LIFECYCLE_EVENTS[event]
    assert getattr(libvirt, 'VIR_DOMAIN_EVENT_' + name.upper()) == event
    for number, detail in enumerate(details):
        constant = 'VIR_DOMAIN_EVENT_%s_%s' % (name.upper(), detail.upper())
        assert getattr(libvirt, constant, number) == number  # absent: newer than this libvirt


@pytest.mark.parametrize('query', [
    'since=-1', 'since=abc', 'since=9223372036854775808', 'event=exploded', 'limit=0', 'limit=x',
    'timeout=-1', 'timeout=1e9', 'timeout=604800.5', 'timeout=x', 'timeout=0x1', 'timeout=nan',
    'timeout=inf', 'since=1&since=2', 'type=gadget', 'type=Domain', 'event=exploded&type=domain',
])
def test_bad_stream_parameters_are_400(api, query):
    response = api.get(EVENTS, query)
    assert response.status == 400
    assert response.json['code'] == 'bad_parameter'
    assert api.app.hypervisor.events.subscribers == 0


@pytest.mark.parametrize('timeout', ['0', '0.0', '.0', '0.', '0e0', '0E-5', '-0', '1e-300'])
def test_a_timeout_is_taken_in_every_form_a_number_is_written(api, timeout):
    assert Stream(api, 'timeout=' + timeout).finish() == b'\n'


def test_streams_beyond_the_cap_are_503(node_uri):
    app = make_app(uri=node_uri, events=EventHub(max_subscribers=1))
    client = Client(app)
    try:
        stream = Stream(client, 'limit=1')
        refused = client.get(EVENTS)
        assert refused.status == 503
        assert refused.headers['Retry-After']
        assert refused.json['code'] == 'too_many_watchers'  # libvirt itself is fine
        assert 'too many event streams and waits are open (1)' in refused.json['message']
        client.post(NODES + '/web/suspend')
        stream.finish()
        assert app.hypervisor.events.subscribers == 0
        assert Stream(client, 'timeout=0').status == 200  # the slot is free again
    finally:
        app.close()


def test_a_client_that_falls_behind_is_dropped_with_a_notice(node_uri):
    hub = EventHub(queue_size=2)
    app = make_app(uri=node_uri, events=hub)
    client = Client(app)
    try:
        environ = {}
        setup_testing_defaults(environ)
        environ.update({'PATH_INFO': EVENTS, 'wsgi.input': io.BytesIO(b'')})
        body = app(environ, lambda status, headers: None)  # subscribed, but nobody reads yet
        for number in range(3):
            hub.publish('web', WEB_UUID, 'reboot', None)
        others = Stream(client, 'since=0&limit=3')  # a new client is not held back
        lines = [json.loads(line) for line in b''.join(body).split(b'\n') if line]
        body.close()
        assert [line.get('Id') for line in lines] == [1, 2, None]
        assert lines[-1]['Notice'] == 'overflow' and lines[-1]['LastId'] == 2
        assert [record['Id'] for record in others.records()] == [1, 2, 3]
        assert hub.subscribers == 0
    finally:
        app.close()


def test_the_ring_is_bounded_and_says_when_it_lost_events(node_uri):
    hub = EventHub(ring_size=2)
    for number in range(4):
        hub.publish('web', WEB_UUID, 'reboot', None)
    app = make_app(uri=node_uri, events=hub)
    try:
        lines = Stream(Client(app), 'since=0&timeout=0').records()
        assert lines[0]['Notice'] == 'gap'
        assert [line['Id'] for line in lines[1:]] == [3, 4]
    finally:
        app.close()


# -- waiting --------------------------------------------------------------------------------------

def test_wait_answers_at_once_when_the_state_is_reached(api):
    response = api.post(NODES + '/web/wait', query='condition=running&timeout=0')
    assert response.status == 200
    assert response.json == {'State': 'running'}


def _wait_in_background(api, ident, condition):
    """Start a wait on its own thread; returns once it is subscribed, and a way to its answer."""
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(api.post(
        NODES + '/%s/wait' % ident, query='condition=%s&timeout=%d' % (condition, BOUND))))
    waiter.start()
    until(lambda: api.app.hypervisor.events.subscribers == 1)

    def answer():
        waiter.join(BOUND + 1)
        return answers[0]
    return answer


def test_wait_answers_when_another_client_gets_the_domain_there(api):
    answer = _wait_in_background(api, 'idle', 'paused')
    other = Client(api.app)
    other.post(NODES + '/idle/start')
    other.post(NODES + '/idle/suspend')
    assert answer().status == 200
    assert answer().json == {'State': 'paused'}
    assert api.conn.lookupByName('idle').state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert api.app.hypervisor.events.subscribers == 0


def test_wait_for_undefined_after_a_transient_domain_stops(api):
    answer = _wait_in_background(api, 'scratch', 'undefined')
    Client(api.app).post(NODES + '/scratch/destroy')
    assert answer().status == 200
    assert api.get(NODES + '/scratch/json').status == 404


def test_wait_times_out_with_408(api):
    response = api.post(NODES + '/idle/wait', query='condition=running&timeout=0')
    assert response.status == 408
    assert response.json['code'] == 'wait_timeout'
    assert api.app.hypervisor.events.subscribers == 0


@pytest.mark.parametrize('query', [
    '', 'condition=asleep', 'condition=running&timeout=601', 'condition=running&timeout=-1',
    'condition=running&timeout=soon', 'condition=running&timeout=1e3',
    'condition=running&timeout=0x1', 'condition=running&timeout=nan',
])
def test_wait_rejects_bad_parameters(api, query):
    response = api.post(NODES + '/web/wait', query=query)
    assert response.status == 400
    assert response.json['code'] == 'bad_parameter'


def test_wait_on_an_unknown_domain_is_404(api):
    assert api.post(NODES + '/nosuch/wait', query='condition=undefined').status == 404


def test_stop_with_wait_answers_once_shut_off(api):
    response = api.post(NODES + '/web/stop', query='wait=%d' % BOUND)
    assert response.status == 204
    assert api.conn.lookupByName('web').state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


def test_stop_with_wait_of_a_stopped_domain_is_304(api):
    assert api.post(NODES + '/idle/stop', query='wait=5').status == 304


def test_restart_with_wait_times_out_when_no_reboot_is_seen(api):
    # The test driver reboots without any event: the wait cannot be satisfied.
    response = api.post(NODES + '/web/restart', query='wait=0.2')
    assert response.status == 408
    assert response.json['code'] == 'wait_timeout'
    assert 'no reboot was seen' in response.json['message']
    assert api.conn.lookupByName('web').isActive()


@pytest.mark.parametrize('action', ['stop', 'restart'])
def test_stop_and_restart_with_wait_0_do_not_wait(api, action):
    response = api.post(NODES + '/web/' + action, query='wait=0')
    assert response.status == 204  # as without wait: asked, answered at once
    assert api.app.hypervisor.events.subscribers == 0


@pytest.mark.parametrize('action', ['stop', 'restart'])
@pytest.mark.parametrize('wait', ['601', 'x', '-2'])
def test_stop_and_restart_reject_a_bad_wait(api, action, wait):
    response = api.post(NODES + '/web/' + action, query='wait=' + wait)
    assert response.status == 400
    assert api.conn.lookupByName('web').state()[0] == libvirt.VIR_DOMAIN_RUNNING


