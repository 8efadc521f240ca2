"""The pooled libvirt connection: closed for real when let go; a hung open is waited for once."""
import json
import threading
import time

import libvirt
import pytest

from conftest import Client, until
from xend_rest.app import make_app
from xend_rest.connection import SharedConnection

NODES = '/libvirt/xen/nodes'
BOUND = 10  # seconds: only ever reached when something is broken


def _event_domains(client):
    """The domains of the events the app's hub kept, as a client reads them (no notices)."""
    body = client.get('/libvirt/xen/events', 'since=0&timeout=0').body
    records = [json.loads(line) for line in body.split(b'\n') if line.strip()]
    return [record['Domain']['Name'] for record in records if 'Notice' not in record]


@pytest.mark.parametrize('let_go', [
    lambda pool, conn: pool.discard(conn),  # what the app does when a call says the link broke
    lambda pool, conn: pool.close(),
], ids=['discard', 'close'])
def test_a_connection_the_pool_let_go_is_closed_with_its_event_callbacks(node_uri, let_go):
    # The callbacks held a reference that kept libvirt from closing the connection; while
    # they lived, events of the old connection still reached the hub.
    app = make_app(uri=node_uri)
    client = Client(app)
    try:
        old = app.hypervisor.connection.get()
        idle_there = old.lookupByName('idle')  # holds a reference of its own: still usable
        let_go(app.hypervisor.connection, old)
        idle_there.create()
        assert client.post(NODES + '/db/suspend').status == 204  # a new connection
        until(lambda: app.hypervisor.events.events >= 1)
        assert _event_domains(client) == ['db']
        assert app.hypervisor.connection.connects == 2
    finally:
        app.close()


def test_a_hung_open_is_not_waited_for_again(node_uri, monkeypatch):
    release = threading.Event()
    real_open = libvirt.open

    def hung_open(uri):  # as against a frozen libvirtd: returns only once it thaws
        release.wait(BOUND)
        return real_open(uri)

    monkeypatch.setattr(libvirt, 'open', hung_open)
    app = make_app(connection=SharedConnection(node_uri, open_timeout=0.2))
    client = Client(app)
    try:
        first = client.get(NODES + '/json')
        assert first.status == 504
        assert first.json['code'] == 'hypervisor_timeout'
        app.hypervisor.connection.open_timeout = 3600  # a request that waited afresh would hang here
        answers = []
        second = threading.Thread(target=lambda: answers.append(client.get(NODES + '/json')))
        second.start()
        second.join(BOUND)
        assert not second.is_alive(), 'a request waited again for the hung open'
        assert answers[0].status == 504
        assert answers[0].json['code'] == 'hypervisor_timeout'
        release.set()  # libvirtd thaws: the open in flight finishes and is used
        until(lambda: client.get(NODES + '/json').status == 200)
        assert app.hypervisor.connection.connects == 1
    finally:
        release.set()
        app.close()


def test_calls_on_one_connection_are_made_one_at_a_time(node_uri, monkeypatch):
    """libvirt 9.0's client kills the process when it closes a connection that two threads are
    waiting on (tests/realhv/test_faults.py has the crash): requests sharing a connection make
    their calls on it, and on the domains it returned, one at a time."""
    inside, most, counting = [0], [0], threading.Lock()
    real = libvirt.virDomain.XMLDesc

    def slow_xml(dom, flags=0):
        with counting:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.05)  # as a call waits for libvirtd's answer, the GIL free
            return real(dom, flags)
        finally:
            with counting:
                inside[0] -= 1

    monkeypatch.setattr(libvirt.virDomain, 'XMLDesc', slow_xml)
    app = make_app(uri=node_uri)
    client = Client(app)
    answers = []

    def list_all():
        answers.append(client.get(NODES + '/json', 'all=1'))

    requests = [threading.Thread(target=list_all) for _ in range(4)]
    try:
        for request in requests:
            request.start()
        for request in requests:
            request.join(BOUND)
    finally:
        app.close()
    assert [answer.status for answer in answers] == [200] * 4
    assert most == [1]
