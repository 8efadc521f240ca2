"""Operations (docs/api.md, Operations): Stop and Restart past their bound answer 202 with the
operation; it is read, waited for and cancelled under /libvirt/{connection}/operations, a change
to its domain meanwhile is 409 (Destroy never is), it is announced on the event stream, and the
daemon keeps a bounded number of them, in memory.

The test driver shuts a guest down at once; to hold an operation running, `held` makes the
daemon's own operations wait for the test's word before they call libvirt (the libvirt call is
then the real one)."""
import json
import threading
import time

import libvirt
import pytest

from conftest import Client, until
from test_connections import as_, scoped, tokens_file, uris  # noqa: F401 (fixtures)
from xend_rest.api import security
from xend_rest.api.app import make_app
from xend_rest.api.handlers import domains
from xend_rest.api.security import Guard

NODES = '/libvirt/xen/nodes'
OPERATIONS = '/libvirt/xen/operations'
KEYS = ['Caller', 'Created', 'Error', 'Id', 'Kind', 'Progress', 'State', 'Target', 'Updated']


class Held:
    """Holds every operation the app starts before its libvirt call, until released."""

    def __init__(self, app):
        self.release = threading.Event()
        operations = app.operations
        start = operations.start

        def held_start(kind, hypervisor, dom, action, *args, **kwargs):
            def after_release():
                assert self.release.wait(20)
                return action()
            return start(kind, hypervisor, dom, after_release, *args, **kwargs)
        operations.start = held_start


@pytest.fixture
def held(api, monkeypatch):
    """Operations held (see Held), and Stop and Restart bounded at 0.2 s instead of 10."""
    monkeypatch.setattr(domains, 'GUEST_REQUEST_SECONDS', 0.2)
    holder = Held(api.app)
    yield holder
    holder.release.set()


def state(api, name):
    return api.conn.lookupByName(name).state()[0]


def running_stop(api):
    """Stop web, held: the 202 and the operation it carries."""
    response = api.post(NODES + '/web/stop')
    assert response.status == 202, response.body
    return response


# -- Stop and Restart past their bound --------------------------------------------------------

def test_stop_past_its_bound_answers_202_with_the_operation_and_its_location(api, held):
    response = running_stop(api)
    body = response.json
    assert sorted(body) == sorted(KEYS + ['message'])
    assert body['Kind'] == 'shutdown' and body['State'] == 'running'
    assert body['Target'] == {'Name': 'web', 'Uuid': api.conn.lookupByName('web').UUIDString()}
    assert body['Caller'] == 'anonymous' and body['Error'] is None and body['Progress'] is None
    assert '/wait?condition=shutoff' in body['message']  # the pointer of before operations
    location = response.headers['Location']
    assert location == f"{OPERATIONS}/{body['Id']}/json"
    assert api.get(location).json['State'] == 'running'
    assert state(api, 'web') == libvirt.VIR_DOMAIN_RUNNING
    held.release.set()
    done = api.get(location, query='wait=10').json
    assert done['State'] == 'succeeded' and done['Error'] is None
    assert done['Created'] == body['Created'] and done['Updated'] >= body['Updated']
    assert state(api, 'web') == libvirt.VIR_DOMAIN_SHUTOFF


def test_restart_past_its_bound_is_a_reboot_operation(api, held):
    response = api.post(NODES + '/web/restart')
    assert response.status == 202
    assert response.json['Kind'] == 'reboot'
    assert '/wait?condition=running' in response.json['message']
    held.release.set()
    assert api.get(response.headers['Location'], query='wait=10').json['State'] == 'succeeded'


def test_a_stop_in_time_is_204_and_a_succeeded_operation(api):
    assert api.post(NODES + '/web/stop').status == 204
    listed = api.get(OPERATIONS + '/json').json
    assert [(op['Kind'], op['State'], op['Target']['Name']) for op in listed] == [
        ('shutdown', 'succeeded', 'web')]


def test_a_failed_operation_carries_the_error_any_answer_would(api, held):
    body = running_stop(api).json
    api.conn.lookupByName('web').destroy()  # the shutdown it was to ask for now has no guest
    held.release.set()
    done = api.get(f"{OPERATIONS}/{body['Id']}/json", query='wait=10').json
    assert done['State'] == 'failed'
    assert sorted(done['Error']) == ['code', 'message']
    assert done['Error'] == {'code': 'libvirt_error',  # as a request meeting it would answer
                             'message': "internal error: domain 'web' not running"}


# -- a domain with an operation in flight -----------------------------------------------------

@pytest.mark.parametrize('action, query', [
    ('suspend', ''), ('restart', ''), ('memory/resize', 'size=524288'), ('vcpu/resize', 'size=2'),
    ('delete', ''),
])
def test_a_change_while_an_operation_runs_is_409_with_its_id(api, held, action, query):
    operation = running_stop(api).json['Id']
    before = api.conn.lookupByName('web').XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    response = api.post(f'{NODES}/web/{action}', query=query)
    assert response.status == 409
    assert response.json['code'] == 'operation_in_progress'
    assert response.json['operation'] == operation
    dom = api.conn.lookupByName('web')
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and dom.isPersistent()
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before


def test_a_redefinition_while_an_operation_runs_is_409(api, held):
    operation = running_stop(api).json['Id']
    definition = api.get(NODES + '/web/json').json
    definition['domain']['memory'] = {'@unit': 'KiB', '#text': '1048576'}
    before = api.conn.lookupByName('web').XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    response = api.post(NODES + '/create', definition)
    assert response.status == 409 and response.json['operation'] == operation
    assert api.conn.lookupByName('web').XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
    held.release.set()
    api.get(f'{OPERATIONS}/{operation}/json', query='wait=10')
    assert api.post(NODES + '/create', definition).status == 201


def test_another_domain_and_reading_are_never_refused(api, held):
    running_stop(api)
    assert api.post(NODES + '/db/suspend').status == 204
    assert api.get(NODES + '/web/json').status == 200
    assert api.get(NODES + '/web/stats').status == 200


def test_a_second_stop_joins_the_first(api, held):
    """The same request again asks the guest no second time: it answers for the same operation."""
    first = running_stop(api).json['Id']
    again = api.post(NODES + '/web/stop')
    assert again.status == 202 and again.json['Id'] == first
    assert len(api.get(OPERATIONS + '/json').json) == 1


def test_destroy_works_while_an_operation_runs(api, held):
    running_stop(api)
    assert api.post(NODES + '/web/destroy').status == 204
    assert state(api, 'web') == libvirt.VIR_DOMAIN_SHUTOFF


def test_once_it_ended_the_domain_may_be_changed_again(api, held):
    location = running_stop(api).headers['Location']
    held.release.set()
    api.get(location, query='wait=10')
    assert api.post(NODES + '/web/start').status == 204


# -- reading, waiting ---------------------------------------------------------------------------

def test_a_wait_that_runs_out_answers_200_with_the_operation_as_it_stands(api, held):
    location = running_stop(api).headers['Location']
    started = time.monotonic()
    response = api.get(location, query='wait=0.3')
    assert response.status == 200 and response.json['State'] == 'running'
    assert time.monotonic() - started >= 0.3


def test_a_wait_answers_once_the_operation_ends(api, held):
    location = running_stop(api).headers['Location']
    threading.Timer(0.3, held.release.set).start()
    started = time.monotonic()
    assert api.get(location, query='wait=20').json['State'] == 'succeeded'
    assert time.monotonic() - started < 10


def test_a_wait_takes_a_place_among_the_watchers(api, held):
    location = running_stop(api).headers['Location']
    watchers = api.app.hypervisor.events.watchers
    for _ in range(watchers.per_caller):
        watchers.take('anonymous')
    response = api.get(location, query='wait=5')
    assert response.status == 429
    assert response.json['code'] == 'too_many_watchers_for_caller'
    assert api.get(location).status == 200  # without wait: no place needed
    watchers.give('anonymous')
    assert api.get(location, query='wait=0.1').status == 200
    assert len(watchers) == watchers.per_caller - 1  # its place given back


@pytest.mark.parametrize('value', ['-1', '601', 'soon'])
def test_a_bad_wait_is_400(api, held, value):
    location = running_stop(api).headers['Location']
    assert api.get(location, query='wait=' + value).json['code'] == 'bad_parameter'


def test_an_unknown_operation_is_404(api):
    for method, path in (('GET', OPERATIONS + '/{}/json'), ('POST', OPERATIONS + '/{}/cancel')):
        response = api.request(method, path.format('0b6e2f51-3c1d-4a8e-9d0f-5e7a1c2b3d4e'))
        assert response.status == 404 and response.json['code'] == 'no_such_operation'


def test_the_list_is_newest_first(api):
    for name in ('web', 'db'):
        assert api.post(f'{NODES}/{name}/stop').status == 204
    listed = api.get(OPERATIONS + '/json').json
    assert [op['Target']['Name'] for op in listed] == ['db', 'web']
    assert all(sorted(op) == KEYS for op in listed)


def test_after_a_restart_of_the_daemon_an_old_id_is_404(node_uri):
    """Operations live in memory: a new daemon on the same host knows none of the old ones."""
    old = make_app(uri=node_uri)
    assert Client(old).post(NODES + '/web/stop').status == 204
    ident = Client(old).get(OPERATIONS + '/json').json[0]['Id']
    old.close()
    new = make_app(uri=node_uri)
    response = Client(new).get(f'{OPERATIONS}/{ident}/json')
    assert response.status == 404 and response.json['code'] == 'no_such_operation'
    assert Client(new).get(OPERATIONS + '/json').json == []
    new.close()


# -- cancelling ---------------------------------------------------------------------------------

def test_a_shutdown_cannot_be_cancelled(api, held):
    location = running_stop(api).headers['Location']
    response = api.post(location.replace('/json', '/cancel'))
    assert response.status == 409 and response.json['code'] == 'operation_not_cancellable'
    assert api.get(location).json['State'] == 'running'


def test_an_ended_operation_cannot_be_cancelled(api):
    api.post(NODES + '/web/stop')
    ident = api.get(OPERATIONS + '/json').json[0]['Id']
    response = api.post(f'{OPERATIONS}/{ident}/cancel')
    assert response.status == 409 and response.json['code'] == 'operation_ended'


def test_a_job_the_driver_cannot_abort_is_409_and_runs_on(api):
    """The test driver has no virDomainAbortJob: a job there cannot be cancelled."""
    release = threading.Event()
    dom = api.conn.lookupByName('web')
    operation = api.app.operations.start('migrate', api.app.hypervisor, dom,
                                         lambda: release.wait(20), job=True)
    response = api.post(f'{OPERATIONS}/{operation.id}/cancel')
    assert response.status == 409 and response.json['code'] == 'operation_not_cancellable'
    assert 'not supported' in response.json['message']
    assert api.get(f'{OPERATIONS}/{operation.id}/json').json['State'] == 'running'
    release.set()
    assert operation.wait(10) and operation.state == 'succeeded'


def test_cancelling_needs_the_operator_role(tmp_path, node_uri):
    tokens = tmp_path / 'tokens'
    tokens.write_text('%s read reader\n' % ('r' * 32))
    tokens.chmod(0o600)
    client = Client(make_app(uri=node_uri, guard=Guard(tokens=security.load_tokens(str(tokens)))))
    response = client.request('POST', OPERATIONS + '/0b6e2f51-3c1d-4a8e-9d0f-5e7a1c2b3d4e/cancel',
                              headers={'HTTP_AUTHORIZATION': 'Bearer ' + 'r' * 32})
    assert response.status == 403
    client.app.close()


# -- who sees them ------------------------------------------------------------------------------

def test_an_operation_is_seen_only_under_its_connection_by_credentials_covering_it(scoped):
    assert as_(scoped, 'everything', 'POST', '/libvirt/b/nodes/mail/stop').status == 204
    ident = as_(scoped, 'everything', 'GET', '/libvirt/b/operations/json').json[0]['Id']
    assert as_(scoped, 'b-reader', 'GET', f'/libvirt/b/operations/{ident}/json').status == 200
    # under another connection's path, its id is unknown
    response = as_(scoped, 'everything', 'GET', f'/libvirt/a/operations/{ident}/json')
    assert response.status == 404 and response.json['code'] == 'no_such_operation'
    assert as_(scoped, 'everything', 'GET', '/libvirt/a/operations/json').json == []
    # a credential that does not cover b sees no b at all
    for path in ('/libvirt/b/operations/json', f'/libvirt/b/operations/{ident}/json'):
        response = as_(scoped, 'a-operator', 'GET', path)
        assert response.status == 404 and response.json['code'] == 'no_such_connection'


# -- events ---------------------------------------------------------------------------------------

def stream(api, query):
    response = api.get('/libvirt/xen/events', query=query)
    assert response.status == 200
    return [json.loads(line) for line in response.body.splitlines() if line.strip()]


def test_operations_are_announced_with_type_operation(api):
    assert api.post(NODES + '/web/stop').status == 204
    ident = api.get(OPERATIONS + '/json').json[0]['Id']
    records = stream(api, 'type=operation&since=0&limit=2&timeout=5')
    assert [(r['Type'], r['Event'], r['Detail']) for r in records] == [
        ('operation', 'created', None), ('operation', 'finished', 'succeeded')]
    assert [r['Operation']['State'] for r in records] == ['running', 'succeeded']
    assert {r['Operation']['Id'] for r in records} == {ident}
    assert records[0]['Domain'] == records[0]['Operation']['Target']
    # by default a stream reads domain events only, as it always did
    assert all('Type' not in r for r in stream(api, 'since=0&timeout=0.2'))
    # domain= selects an operation's events by the domain it acts on
    assert stream(api, 'type=operation&since=0&timeout=0.2&domain=db') == []
    assert stream(api, 'type=operation&event=finished&since=0&timeout=0.2&domain=web')[0][
        'Detail'] == 'succeeded'


# -- bounds ---------------------------------------------------------------------------------------

def test_one_operation_more_than_the_threads_is_503_with_retry_after(node_uri, monkeypatch):
    monkeypatch.setattr(domains, 'GUEST_REQUEST_SECONDS', 0.2)
    app = make_app(uri=node_uri, operation_threads=1)
    api = Client(app)
    holder = Held(app)
    assert api.post(NODES + '/web/stop').status == 202
    response = api.post(NODES + '/db/stop')
    assert response.status == 503 and response.json['code'] == 'too_many_operations'
    assert response.headers['Retry-After']
    assert api.conn.lookupByName('db').state()[0] == libvirt.VIR_DOMAIN_RUNNING
    holder.release.set()
    until(lambda: not any(op.running for op in app.operations.listed(app.hypervisor)))
    assert api.post(NODES + '/db/stop').status == 204
    app.close()


def test_finished_operations_are_kept_up_to_their_number(node_uri):
    app = make_app(uri=node_uri, operations_kept=2)
    api = Client(app)
    for name in ('web', 'db'):
        api.post(f'{NODES}/{name}/stop')
    first = api.get(OPERATIONS + '/json').json[-1]['Id']
    api.post(NODES + '/web/start')
    api.post(NODES + '/web/stop')
    listed = api.get(OPERATIONS + '/json').json
    assert len(listed) == 2 and first not in [op['Id'] for op in listed]
    assert api.get(f'{OPERATIONS}/{first}/json').status == 404
    app.close()


def test_finished_operations_are_kept_up_to_their_age(node_uri):
    app = make_app(uri=node_uri, operation_age=0.2)
    api = Client(app)
    api.post(NODES + '/web/stop')
    ident = api.get(OPERATIONS + '/json').json[0]['Id']
    time.sleep(0.3)
    assert api.get(f'{OPERATIONS}/{ident}/json').status == 404
    assert api.get(OPERATIONS + '/json').json == []
    app.close()


def test_a_running_operation_is_kept_past_its_age(node_uri, monkeypatch):
    monkeypatch.setattr(domains, 'GUEST_REQUEST_SECONDS', 0.2)
    app = make_app(uri=node_uri, operation_age=0.1, operations_kept=1)
    api = Client(app)
    holder = Held(app)
    location = api.post(NODES + '/web/stop').headers['Location']
    time.sleep(0.2)
    assert api.get(location).json['State'] == 'running'
    holder.release.set()
    assert api.get(location, query='wait=10').json['State'] == 'succeeded'
    app.close()


def test_one_caller_has_half_the_threads(node_uri, monkeypatch):
    """One caller's slow operations leave the others' Stops a place (as watchers-per-caller)."""
    monkeypatch.setattr(domains, 'GUEST_REQUEST_SECONDS', 0.2)
    app = make_app(uri=node_uri, operation_threads=4)
    api = Client(app)
    holder = Held(app)
    assert [api.post(NODES + f'/{name}/stop').status for name in ('web', 'db')] == [202, 202]
    response = api.post(NODES + '/scratch/stop')
    assert response.status == 503 and response.json['code'] == 'too_many_operations'
    assert 'one caller (anonymous)' in response.json['message'] and response.headers['Retry-After']
    assert api.conn.lookupByName('scratch').state()[0] == libvirt.VIR_DOMAIN_RUNNING
    other = type(app.operations).start(app.operations, 'shutdown', app.hypervisor,                                        api.conn.lookupByName('scratch'), lambda: None,
                                       'token:other')  # not held
    assert other.wait(10) and other.state == 'succeeded'
    holder.release.set()
    app.close()
