"""Maintenance and Evacuate (docs/api.md): a host in maintenance starts no guest and receives
none, across a restart of the daemon; an evacuation is one operation over every running guest
(dom0 never), each guest's outcome its own. The test driver migrates nothing: every guest's
outcome there is its 501, and the others are still tried (the QEMU tier moves them)."""
import pytest

from conftest import Client, node_xml, until
from test_migration import nodes, silent_libvirtd  # noqa: F401 (fixtures)
from xend_rest.api.app import make_app

RUNNING = ['db', 'frozen', 'scratch', 'web']  # active on conftest's node (paused too; dom0 aside)


@pytest.fixture
def hosts(nodes, tmp_path):  # noqa: F811
    app = make_app(connections=nodes, state_dir=str(tmp_path / 'state'))
    yield Client(app)
    app.close()


def maintenance(client, name='a'):
    return client.get(f'/libvirt/{name}/maintenance/json').json


def test_maintenance_refuses_a_start_until_lifted(hosts):
    assert maintenance(hosts) == {'Maintenance': False, 'Since': None, 'Caller': None}
    entered = hosts.post('/libvirt/a/maintenance/enter')
    assert entered.status == 200 and entered.json['Maintenance'] is True
    assert entered.json['Caller'] == 'anonymous' and entered.json['Since']
    response = hosts.post('/libvirt/a/nodes/idle/start')
    assert response.status == 409 and response.json['code'] == 'in_maintenance'
    assert not hosts.app.hypervisors['a'].connection.get().lookupByName('idle').isActive()
    assert hosts.post('/libvirt/b/nodes/idle/start').status == 204  # another host's guests
    assert hosts.post('/libvirt/a/nodes/web/stop').status == 204  # stopping is fine
    assert hosts.post('/libvirt/a/maintenance/lift').status == 204
    assert maintenance(hosts)['Maintenance'] is False
    assert hosts.post('/libvirt/a/nodes/idle/start').status == 204


def test_entering_again_keeps_the_first_entry(hosts):
    first = hosts.post('/libvirt/a/maintenance/enter').json
    assert hosts.post('/libvirt/a/maintenance/enter').json == first


def test_maintenance_survives_a_restart_of_the_daemon(nodes, tmp_path):  # noqa: F811
    state = str(tmp_path / 'state')
    old = make_app(connections=nodes, state_dir=state)
    entered = Client(old).post('/libvirt/a/maintenance/enter').json
    old.close()
    new = Client(make_app(connections=nodes, state_dir=state))
    assert maintenance(new) == entered
    assert new.post('/libvirt/a/nodes/idle/start').json['code'] == 'in_maintenance'
    assert maintenance(new, 'b')['Maintenance'] is False
    new.post('/libvirt/a/maintenance/lift')
    assert maintenance(Client(make_app(connections=nodes, state_dir=state)))['Maintenance'] is False


def test_a_host_in_maintenance_receives_no_migration(hosts):
    hosts.post('/libvirt/b/maintenance/enter')
    response = hosts.post('/libvirt/a/nodes/web/migrate', query='to=b')
    assert response.status == 409 and response.json['code'] == 'in_maintenance'


def test_an_evacuation_tries_every_running_guest_and_reports_each(hosts):
    response = hosts.post('/libvirt/a/evacuate', query='to=b')
    assert response.status == 202
    assert response.json['Kind'] == 'evacuate' and response.json['Target']['Name'] == 'a'
    assert maintenance(hosts)['Maintenance'] is True  # before any guest moves
    done = hosts.get(response.headers['Location'], query='wait=20').json
    assert done['State'] == 'failed' and done['Error']['code'] == 'evacuation_incomplete'
    guests = done['Guests']
    assert sorted(guest['Name'] for guest in guests) == RUNNING  # dom0 never
    for guest in guests:  # one guest's failure did not stop the others
        assert (guest['State'], guest['To'], guest['Error']['code']) == (
            'failed', 'b', 'not_supported')
    states = {dom.name(): dom.isActive() for dom in
              hosts.app.hypervisors['a'].connection.get().listAllDomains()}
    assert all(states[name] for name in RUNNING)  # nothing moved, nothing stopped


def test_an_evacuation_refuses_the_same_hypervisor_and_unknown_connections(hosts):
    for query, status, code in (('to=a2', 400, 'same_hypervisor'), ('to=a', 400, 'same_hypervisor'),
                                ('to=c', 404, 'no_such_connection'), ('to=', 400, 'bad_parameter')):
        response = hosts.post('/libvirt/a/evacuate', query=query)
        assert (response.status, response.json['code']) == (status, code), query
    assert maintenance(hosts)['Maintenance'] is False  # refused before maintenance


def test_without_to_it_picks_among_other_hosts_of_the_driver_out_of_maintenance(hosts):
    response = hosts.post('/libvirt/a/evacuate')
    done = hosts.get(response.headers['Location'], query='wait=20').json
    assert {guest['To'] for guest in done['Guests']} == {'b'}  # a2 is a itself
    hosts.post('/libvirt/a/maintenance/lift')
    hosts.post('/libvirt/b/maintenance/enter')
    response = hosts.post('/libvirt/a/evacuate')
    assert response.status == 409 and response.json['code'] == 'no_destination'
    assert maintenance(hosts)['Maintenance'] is False


def test_a_second_evacuation_of_the_host_while_one_runs_is_409(hosts):
    import threading
    release = threading.Event()
    app = hosts.app
    running = app.operations.start('evacuate', app.hypervisors['a'], None,
                                   lambda: release.wait(20), target={'Name': 'a', 'Uuid': None})
    response = hosts.post('/libvirt/a/evacuate', query='to=b')
    assert response.status == 409 and response.json['operation'] == running.id
    assert maintenance(hosts)['Maintenance'] is False  # a refusal leaves it as it was
    release.set()


def test_a_node_without_guests_evacuates_at_once(tmp_path):
    path = tmp_path / 'empty.xml'
    path.write_text(node_xml([]))
    other = tmp_path / 'other.xml'
    other.write_text(node_xml([]))
    client = Client(make_app(connections={'a': f'test://{path}', 'b': f'test://{other}'}))
    response = client.post('/libvirt/a/evacuate', query='to=b')
    done = client.get(response.headers['Location'], query='wait=10').json
    assert (done['State'], done['Guests']) == ('succeeded', [])


# The test driver cannot migrate: these tests put in its place the one libvirt call it lacks
# (virDomainMigrateToURI3, migration.migrate), which records the flags and, while `hold` is
# clear, waits as a long migration would. Everything else is the daemon's own.
@pytest.fixture
def migrating(monkeypatch):
    import threading
    from xend_rest.hypervisor.moves import migration
    calls, hold = [], threading.Event()
    hold.set()

    def migrate(source, uuid, destination, params, bits, downtime=None):
        calls.append((uuid, bits))
        assert hold.wait(20)
    monkeypatch.setattr(migration, 'migrates', lambda conn: True)
    monkeypatch.setattr(migration, 'migrate', migrate)
    return calls, hold


def test_persistent_guests_move_for_good_on_one_operation_thread(nodes, tmp_path, migrating):  # noqa: F811
    """An evacuation migrates its guests on its own thread: with one operation thread it still
    ends (it once waited for a second thread for ever). Persistent guests are defined on the
    destination and undefined here, so that a reboot of this host starts no second copy."""
    import libvirt
    calls, _hold = migrating
    client = Client(make_app(connections=nodes, operation_threads=1))
    response = client.post('/libvirt/a/evacuate', query='to=b')
    assert response.status == 202
    done = client.get(response.headers['Location'], query='wait=20').json
    assert done['State'] == 'succeeded', done
    assert [guest['State'] for guest in done['Guests']] == ['succeeded'] * len(RUNNING)
    for guest in done['Guests']:  # each guest's migration is an operation of its own
        child = client.get(f"/libvirt/a/operations/{guest['Operation']}/json").json
        assert (child['Kind'], child['State']) == ('migrate', 'succeeded')
    live = libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_LIVE
    moved = live | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    source = client.app.hypervisors['a'].connection.get()
    persistent = {uuid: source.lookupByUUIDString(uuid).isPersistent() for uuid, _ in calls}
    assert sorted(persistent.values()) == [0, 1, 1, 1]  # scratch is transient
    assert [bits for _uuid, bits in calls] == [moved if persistent[uuid] else live
                                               for uuid, _bits in calls]  # transient as it is


def test_an_evacuation_is_cancelled_and_its_maintenance_not_lifted_meanwhile(hosts, migrating):
    """Cancel: no further guest starts, the running migration is aborted where the driver can
    (the test driver cannot: it ends as it would). Lifting the maintenance of a host being
    evacuated is 409 until the evacuation ended."""
    calls, hold = migrating
    hold.clear()
    response = hosts.post('/libvirt/a/evacuate', query='to=b')
    location = response.headers['Location']
    until(lambda: calls)
    assert len(calls) == 1
    lift = hosts.post('/libvirt/a/maintenance/lift')
    assert lift.status == 409 and lift.json['code'] == 'operation_in_progress'
    assert 'host a' in lift.json['message'] and 'domain' not in lift.json['message']
    assert hosts.post(location.replace('/json', '/cancel')).status == 202
    hold.set()
    done = hosts.get(location, query='wait=20').json
    assert done['State'] == 'cancelled' and len(calls) == 1
    states = [guest['State'] for guest in done['Guests']]
    assert states == ['succeeded'] + ['cancelled'] * (len(RUNNING) - 1)
    assert maintenance(hosts)['Maintenance'] is True
    assert hosts.post('/libvirt/a/maintenance/lift').status == 204


def test_two_evacuations_at_once_leave_the_host_in_maintenance(hosts):
    """The refused one undoes only what it did: it entered no maintenance, it lifts none."""
    import threading
    for _round in range(20):
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(
            hosts.post('/libvirt/a/evacuate', query='to=b'))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert maintenance(hosts)['Maintenance'] is True, [a.status for a in answers]
        for answer in answers:
            if answer.status == 202:
                hosts.get(answer.headers['Location'], query='wait=20')
        assert hosts.post('/libvirt/a/maintenance/lift').status == 204


def test_every_connection_to_a_host_sees_its_operations_and_maintenance(hosts, migrating):
    """a2 is a second connection to a's hypervisor (same_hypervisor, as the daemon says): a
    migration in flight through a is in flight through a2, and a's maintenance is a2's host's."""
    calls, hold = migrating
    hold.clear()
    started = hosts.post('/libvirt/a/nodes/web/migrate', query='to=b')
    assert started.status == 202
    until(lambda: calls)
    for path, query in (('/libvirt/a2/nodes/web/suspend', ''),
                        ('/libvirt/a2/nodes/web/migrate', 'to=b')):
        response = hosts.post(path, query=query)
        assert response.status == 409 and response.json['operation'] == started.json['Id'], path
    hold.set()
    hosts.get(started.headers['Location'], query='wait=20')
    assert hosts.post('/libvirt/a/maintenance/enter').status == 200
    response = hosts.post('/libvirt/a2/nodes/idle/start')
    assert response.status == 409 and response.json['code'] == 'in_maintenance'
    response = hosts.post('/libvirt/b/nodes/web/migrate', query='to=a2')
    assert response.status == 409 and response.json['code'] == 'in_maintenance'
    assert len(calls) == 1
    # shown alike through both, listed alike, and lifted through either
    assert maintenance(hosts, 'a2') == maintenance(hosts, 'a') != maintenance(hosts, 'b')
    listed = {c['Name']: c['Maintenance'] for c in hosts.get('/libvirt/json').json}
    assert listed == {'a': True, 'a2': True, 'b': False}, listed
    assert hosts.post('/libvirt/a2/maintenance/lift').status == 204
    assert maintenance(hosts, 'a')['Maintenance'] is False
    assert hosts.post('/libvirt/a/nodes/idle/start').status == 204


def test_an_evacuations_events_carry_it_as_it_stood_and_name_the_host_as_host(hosts, migrating):
    import json
    response = hosts.post('/libvirt/a/evacuate', query='to=b')
    hosts.get(response.headers['Location'], query='wait=20')

    def stream(query):
        body = hosts.get('/libvirt/a/events', query='type=operation&since=0&timeout=0.2'
                         + query).body
        return [json.loads(line) for line in body.splitlines() if line.strip()]
    created, = [r for r in stream('') if r['Operation']['Kind'] == 'evacuate'
                and r['Event'] == 'created']
    assert created['Host'] == {'Name': 'a', 'Uuid': None} and 'Domain' not in created
    assert {guest['State'] for guest in created['Operation']['Guests']} == {'waiting'}
    # a domain= filter passes only what names that domain: never a host named like it
    assert stream('&domain=a') == []


@pytest.mark.parametrize('content', ['{}', '[]', '"x"', '1', '{"Since": 5}', 'null',
                                     '{"Maintenance": false, "Since": null, "Caller": null}',
                                     '{"Since": "x", "Caller": ["y"]}', '{'])
def test_a_maintenance_file_of_another_shape_is_maintenance_never_a_500(nodes, tmp_path,  # noqa: F811
                                                                       content):
    """The file is read as untrusted: unreadable or of a shape the daemon never writes, the
    host is in maintenance (fail safe), as GET and Start both say."""
    state = tmp_path / 'state'
    (state / 'maintenance').mkdir(parents=True)
    (state / 'maintenance' / 'a.json').write_text(content)
    client = Client(make_app(connections=nodes, state_dir=str(state)))
    assert maintenance(client) == {'Maintenance': True, 'Since': None, 'Caller': None}
    response = client.post('/libvirt/a/nodes/idle/start')
    assert response.status == 409 and response.json['code'] == 'in_maintenance'
    assert client.post('/libvirt/a/maintenance/lift').status == 204
    assert client.post('/libvirt/a/nodes/idle/start').status == 204


def test_the_connections_listing_says_which_are_in_maintenance(hosts):
    def listed():
        return {item['Name']: item['Maintenance'] for item in hosts.get('/libvirt/json').json}
    assert listed() == {'a': False, 'b': False, 'a2': False}
    hosts.post('/libvirt/a/maintenance/enter')
    # the host's, as each maintenance route shows it: a2 is a second connection to a's node
    assert listed() == {'a': True, 'b': False, 'a2': True}
    assert maintenance(hosts, 'a2')['Maintenance'] is True
    hosts.post('/libvirt/a/maintenance/lift')
    assert listed() == {'a': False, 'b': False, 'a2': False}


def test_a_migrating_domain_is_busy_on_its_destination_too(hosts, migrating):
    """Its copy on the destination (there before, or defined by the move) is the operation's
    as much as its source: no Start, Delete, Autostart or move of it there meanwhile, so that
    the move never ends with the domain on neither host or running twice; and Autostart on the
    source, whose mark the move carries, waits for it too."""
    import libvirt
    calls, hold = migrating
    source = hosts.app.hypervisors['a'].connection.get().lookupByName('web')
    hosts.app.hypervisors['b'].connection.get().defineXML(
        source.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    hold.clear()
    started = hosts.post('/libvirt/a/nodes/web/migrate', query='to=b')
    assert started.status == 202
    until(lambda: calls)
    for method, path, query in (('POST', '/libvirt/b/nodes/web/start', ''),
                                ('POST', '/libvirt/b/nodes/web/delete', ''),
                                ('POST', '/libvirt/b/nodes/web/autostart', 'enable=1'),
                                ('POST', '/libvirt/b/nodes/web/migrate', 'to=a'),
                                ('POST', '/libvirt/a/nodes/web/autostart', 'enable=1')):
        response = hosts.request(method, path, query=query)
        assert response.status == 409, (path, response.status, response.body)
        assert response.json['operation'] == started.json['Id'], path
    hold.set()
    assert hosts.get(started.headers['Location'], query='wait=20').json['State'] == 'succeeded'
    assert hosts.post('/libvirt/b/nodes/web/autostart', query='enable=1').status == 204


def test_a_host_in_maintenance_that_does_not_answer_holds_no_other_host(nodes, tmp_path,  # noqa: F811
                                                                      silent_libvirtd):  # noqa: F811
    """Another connection in maintenance is compared by its host as last known, or asked for
    a second at most: its libvirtd accepting and never answering (a host in maintenance is
    often down) does not hold a Start elsewhere for its open timeout."""
    import threading
    from xend_rest.hypervisor.libvirt_connection import SharedConnection
    state = tmp_path / 'state'
    (state / 'maintenance').mkdir(parents=True)
    (state / 'maintenance' / 'silent.json').write_text('{"Since": "2026-12-06T00:00:00Z", '
                                                        '"Caller": "token:ops"}')
    silent = SharedConnection(silent_libvirtd, open_timeout=60)
    app = make_app(connections={'a': nodes['a'], 'silent': silent}, state_dir=str(state))
    answers = []
    asking = threading.Thread(target=lambda: answers.append(
        Client(app).post('/libvirt/a/nodes/idle/start')), daemon=True)
    asking.start()
    asking.join(30)  # bounds a hang only: half the silent host's open timeout
    assert answers and answers[0].status == 204, answers
    assert app.hypervisors['silent'].maintenance.on  # as it was


def test_live_0_migrates_a_running_guest_paused_while_copied(hosts, migrating):
    """live=0: libvirt's migration without VIR_MIGRATE_LIVE (virsh migrate without --live),
    still peer to peer; by default live; another value is 400 and nothing is asked."""
    import libvirt
    calls, _hold = migrating
    for query in ('to=b&live=0', 'to=b'):
        started = hosts.post('/libvirt/a/nodes/web/migrate', query=query)
        assert started.status == 202, started.body
        hosts.get(started.headers['Location'], query='wait=20')
    (_, paused), (_, live) = calls
    assert not paused & libvirt.VIR_MIGRATE_LIVE and paused & libvirt.VIR_MIGRATE_PEER2PEER
    assert live & libvirt.VIR_MIGRATE_LIVE
    response = hosts.post('/libvirt/a/nodes/web/migrate', query='to=b&live=maybe')
    assert response.status == 400 and response.json['code'] == 'bad_parameter'
    assert len(calls) == 2


def test_a_new_domain_cannot_take_the_uuid_of_one_migrating_to_its_host(hosts, migrating):
    """Before the move's define reaches the destination, a Create there of a domain with the
    migrating UUID is 409 too (it would be overwritten by the move, or clash with it)."""
    import libvirt
    from xend_rest.hypervisor import convert
    calls, hold = migrating
    source = hosts.app.hypervisors['a'].connection.get().lookupByName('web')
    there = hosts.app.hypervisors['b'].connection.get().lookupByName('web')
    there.destroy()
    there.undefine()
    definition = convert.xml_to_dict(source.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    hold.clear()
    started = hosts.post('/libvirt/a/nodes/web/migrate', query='to=b')
    assert started.status == 202
    until(lambda: calls)
    response = hosts.post('/libvirt/b/nodes/create', definition)
    assert response.status == 409 and response.json['operation'] == started.json['Id'], response.body
    hold.set()
    hosts.get(started.headers['Location'], query='wait=20')
    assert hosts.post('/libvirt/b/nodes/create', definition).status == 201


def test_lifting_the_maintenance_of_a_host_that_does_not_answer_asks_it_nothing(tmp_path,
                                                                               silent_libvirtd):  # noqa: F811
    """A lift needs no libvirt: a host in maintenance is often down, and its libvirtd not
    answering holds the lift no longer than the others' hosts are asked (a second)."""
    import threading
    from xend_rest.hypervisor.libvirt_connection import SharedConnection
    state = tmp_path / 'state'
    (state / 'maintenance').mkdir(parents=True)
    (state / 'maintenance' / 'silent.json').write_text('{"Since": "2026-12-06T00:00:00Z", '
                                                        '"Caller": "token:ops"}')
    app = make_app(connections={'silent': SharedConnection(silent_libvirtd, open_timeout=60)},
                   state_dir=str(state))
    answers = []
    lifting = threading.Thread(target=lambda: answers.append(
        Client(app).post('/libvirt/silent/maintenance/lift')), daemon=True)
    lifting.start()
    lifting.join(30)  # bounds a hang only: half the silent host's open timeout
    assert answers and answers[0].status == 204, answers
    assert not app.hypervisors['silent'].maintenance.on


def test_live_0_evacuates_every_guest_paused_while_copied(hosts, migrating):
    """live=0 reaches every guest's migration (a Xen without shadow paging moves its PV guests
    only so); another value is 400 before anything changes: no maintenance, nothing asked."""
    import libvirt
    calls, _hold = migrating
    response = hosts.post('/libvirt/a/evacuate', query='to=b&live=maybe')
    assert response.status == 400 and response.json['code'] == 'bad_parameter'
    assert maintenance(hosts)['Maintenance'] is False and calls == []
    response = hosts.post('/libvirt/a/evacuate', query='to=b&live=0')
    assert response.status == 202, response.body
    done = hosts.get(response.headers['Location'], query='wait=20').json
    assert done['State'] == 'succeeded', done
    assert len(calls) == len(RUNNING)
    assert all(not bits & libvirt.VIR_MIGRATE_LIVE and bits & libvirt.VIR_MIGRATE_PEER2PEER
               for _uuid, bits in calls), calls


def test_refusals_through_a_second_connection_name_that_connection_only(hosts, migrating):
    """A credential may cover a2 and not a (docs/security.md: what it cannot act on, it cannot
    see, not even by name): a refusal through a2 because of a's maintenance, or of an
    evacuation entered through a, names a2."""
    calls, hold = migrating
    assert hosts.post('/libvirt/a/maintenance/enter').status == 200
    for path, query in (('/libvirt/a2/nodes/idle/start', ''), ('/libvirt/b/nodes/web/migrate', 'to=a2')):
        response = hosts.post(path, query=query)
        assert response.status == 409 and response.json['code'] == 'in_maintenance', response.body
        assert 'a2' in response.json['message'] and 'connection a ' not in response.json['message'], path
    assert hosts.post('/libvirt/a/maintenance/lift').status == 204
    hold.clear()
    evacuation = hosts.post('/libvirt/a/evacuate', query='to=b')
    assert evacuation.status == 202
    until(lambda: calls)
    response = hosts.post('/libvirt/a2/maintenance/lift')
    assert response.status == 409 and response.json['code'] == 'operation_in_progress'
    assert 'a2' in response.json['message'] and 'host a ' not in response.json['message'], response.body
    hold.set()
    hosts.get(evacuation.headers['Location'], query='wait=20')


def test_a_guest_shut_off_before_its_turn_stays_and_its_definition_too(hosts, migrating):
    """The guests are listed when the evacuation is asked for; one shut off before its turn
    stays here, defined, as shut-off guests do (it was once moved offline: defined on the
    destination, undefined here). Its outcome is `stayed`; the evacuation still succeeds."""
    calls, hold = migrating
    for name in ('db', 'web'):  # b has them too: made room for them there
        hosts.post(f'/libvirt/b/nodes/{name}/destroy')
        assert hosts.post(f'/libvirt/b/nodes/{name}/delete').status == 204
    hold.clear()
    response = hosts.post('/libvirt/a/evacuate', query='to=b')
    assert response.status == 202
    until(lambda: calls)
    first = {guest['Name'] for guest in hosts.get(response.headers['Location']).json['Guests']
             if guest['State'] == 'running'}
    later = next(name for name in ('db', 'web') if name not in first)  # persistent, not yet moved
    assert hosts.post(f'/libvirt/a/nodes/{later}/destroy').status == 204
    hold.set()
    done = hosts.get(response.headers['Location'], query='wait=20').json
    outcome = next(guest for guest in done['Guests'] if guest['Name'] == later)
    assert (outcome['State'], outcome['To'], outcome['Operation']) == ('stayed', None, None), outcome
    assert done['State'] == 'succeeded', done
    assert hosts.get(f'/libvirt/a/nodes/{later}/json').status == 200
    assert hosts.get(f'/libvirt/b/nodes/{later}/json').status == 404
