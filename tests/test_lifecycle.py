"""Start, Stop, Destroy, Restart, Delete, Suspend, Resume: status codes and the state afterwards."""
import threading

import libvirt
import pytest

NODES = '/libvirt/xen/nodes'
RUNNING, PAUSED, SHUTOFF = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_SHUTOFF


def state(api, name):
    return api.conn.lookupByName(name).state()[0]


@pytest.mark.parametrize('action, name, before, status, after', [
    ('start', 'idle', SHUTOFF, 204, RUNNING),
    ('start', 'web', RUNNING, 304, RUNNING),
    ('start', 'frozen', PAUSED, 304, PAUSED),
    ('stop', 'web', RUNNING, 204, SHUTOFF),
    ('stop', 'idle', SHUTOFF, 304, SHUTOFF),
    ('stop', 'frozen', PAUSED, 409, PAUSED),
    ('destroy', 'web', RUNNING, 204, SHUTOFF),
    ('destroy', 'frozen', PAUSED, 204, SHUTOFF),
    ('destroy', 'idle', SHUTOFF, 304, SHUTOFF),
    ('restart', 'web', RUNNING, 204, RUNNING),
    ('restart', 'idle', SHUTOFF, 409, SHUTOFF),
    ('restart', 'frozen', PAUSED, 409, PAUSED),
    ('suspend', 'web', RUNNING, 204, PAUSED),
    ('suspend', 'frozen', PAUSED, 304, PAUSED),
    ('suspend', 'idle', SHUTOFF, 409, SHUTOFF),
    ('resume', 'frozen', PAUSED, 204, RUNNING),
    ('resume', 'web', RUNNING, 304, RUNNING),
    ('resume', 'idle', SHUTOFF, 409, SHUTOFF),
])
def test_action_status_and_state(api, action, name, before, status, after):
    assert state(api, name) == before
    response = api.post(NODES + '/%s/%s' % (name, action))
    assert response.status == status, response.json
    assert state(api, name) == after
    if status in (204, 304):
        assert response.body == b''
    else:
        assert response.json['code'] == 'invalid_state'
        assert name in response.json['message']


def test_start_then_start_again(api):
    assert api.post(NODES + '/idle/start').status == 204
    assert api.post(NODES + '/idle/start').status == 304


def test_flag_the_driver_lacks_is_501_and_changes_nothing(api):
    # libvirt's test driver implements no start flags; Xen's and QEMU's do
    response = api.post(NODES + '/idle/start', query='flag=1')
    assert response.status == 501
    assert response.json['code'] == 'not_supported'
    assert 'unsupported flags' in response.json['message']
    assert state(api, 'idle') == SHUTOFF


def test_stop_by_uuid(api):
    uuid = api.conn.lookupByName('db').UUIDString()
    assert api.post(NODES + '/%s/stop' % uuid).status == 204
    assert state(api, 'db') == SHUTOFF


def test_stopping_a_transient_domain_makes_it_vanish(api):
    assert api.post(NODES + '/scratch/destroy').status == 204
    assert api.get(NODES + '/scratch/json').status == 404


def test_delete_a_defined_domain_removes_it(api):
    assert api.post(NODES + '/idle/delete').status == 204
    assert 'idle' not in api.conn.listDefinedDomains()
    assert api.get(NODES + '/idle/json').status == 404


def test_delete_a_running_domain_makes_it_transient(api):
    assert api.post(NODES + '/web/delete').status == 204
    dom = api.conn.lookupByName('web')
    assert dom.isActive() and not dom.isPersistent()
    assert api.post(NODES + '/web/destroy').status == 204
    assert api.get(NODES + '/web/json').status == 404


def test_delete_a_transient_domain_is_409_and_keeps_it_running(api):
    response = api.post(NODES + '/scratch/delete')
    assert response.status == 409
    assert response.json['code'] == 'invalid_state'
    assert state(api, 'scratch') == RUNNING


def test_delete_with_snapshots_needs_the_metadata_flag(api):
    dom = api.conn.lookupByName('idle')
    dom.snapshotCreateXML('<domainsnapshot><name>s1</name></domainsnapshot>')
    response = api.post(NODES + '/idle/delete')
    assert response.status == 409
    assert 'idle' in api.conn.listDefinedDomains()
    assert api.post(NODES + '/idle/delete', query='flag=2').status == 204
    assert 'idle' not in api.conn.listDefinedDomains()


@pytest.mark.parametrize('action, bad', [
    ('start', '32'), ('stop', '32'), ('destroy', '2'), ('restart', '32'), ('delete', '8'),
    ('suspend', '1'), ('resume', '1'), ('start', 'x'), ('stop', ''), ('delete', '1.0'),
])
def test_undocumented_flags_are_400_before_libvirt_is_called(api, action, bad):
    before = {d.name(): d.state()[0] for d in api.conn.listAllDomains()}
    response = api.post(NODES + '/idle/' + action, query='flag=' + bad)
    assert response.status == 400
    assert response.json['code'] == 'bad_parameter'
    assert {d.name(): d.state()[0] for d in api.conn.listAllDomains()} == before


@pytest.mark.parametrize('action', ['start', 'stop', 'destroy', 'restart', 'delete', 'suspend',
                                    'resume'])
def test_actions_on_unknown_domains_are_404(api, action):
    response = api.post(NODES + '/nosuch/' + action)
    assert response.status == 404
    assert response.json['code'] == 'no_such_domain'


@pytest.mark.parametrize('action', ['start', 'stop', 'destroy', 'restart', 'delete', 'suspend',
                                    'resume', 'devices/attach', 'memory/resize', 'vcpu/resize'])
def test_dom0_is_refused_for_every_action(api, action):
    response = api.post(NODES + '/Domain-0/' + action, body={'disk': {}}, query='size=1')
    assert response.status == 403
    assert response.json['code'] == 'dom0_refused'
    assert state(api, 'Domain-0') == RUNNING


@pytest.mark.parametrize('action', ['start', 'json'])
def test_wrong_method_is_405_with_allow(api, action):
    method = 'GET' if action == 'start' else 'POST'
    response = api.request(method, NODES + '/web/' + action)
    assert response.status == 405
    assert response.headers['Allow'] == ('POST' if action == 'start' else 'GET, HEAD')
    assert response.json['code'] == 'method_not_allowed'


@pytest.mark.parametrize('path', ['/', '/libvirt/xen/nodes', NODES + '/web/explode',
                                  NODES + '/web/json/extra'])
def test_unknown_paths_are_404_json(api, path):
    response = api.get(path)
    assert response.status == 404
    assert response.json['code'] == 'no_such_endpoint'


@pytest.mark.parametrize('action, name, undo', [
    ('start', 'idle', 'destroy'), ('destroy', 'web', 'start'), ('stop', 'db', 'start'),
    ('suspend', 'web', 'resume'), ('resume', 'frozen', 'suspend'),
])
def test_concurrent_repeats_answer_204_once_then_304(api, action, name, undo):
    """Twelve clients ask at once: one does it, the others are told it was already done."""
    for _ in range(5):  # a few rounds give the race between reading the state and acting a chance
        barrier, statuses = threading.Barrier(12), []

        def one():
            barrier.wait()
            statuses.append(api.post('%s/%s/%s' % (NODES, name, action)).status)
        threads = [threading.Thread(target=one) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(statuses) == [204] + [304] * 11
        assert api.post('%s/%s/%s' % (NODES, name, undo)).status == 204


def test_a_name_with_a_nul_is_just_not_found(api):
    response = api.get(NODES + '/a\x00b/json')
    assert response.status == 404
    assert response.json['code'] == 'no_such_domain'
