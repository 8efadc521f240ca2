"""Autostart (`virsh autostart`): POST /nodes/{ident}/autostart?enable=1|0, decided from the
domain's state, and shown in its statistics."""
import pytest

NODES = '/libvirt/xen/nodes'


def autostart(api, name):
    return bool(api.conn.lookupByName(name).autostart())


@pytest.mark.parametrize('name', ['web', 'idle'])  # running, and shut off: both persistent
def test_enable_then_disable(api, name):
    assert not autostart(api, name)
    assert api.post(f'{NODES}/{name}/autostart', query='enable=1').status == 204
    assert autostart(api, name)
    assert api.get(f'{NODES}/{name}/stats').json['Autostart'] is True
    assert api.post(f'{NODES}/{name}/autostart', query='enable=true').status == 304
    assert api.post(f'{NODES}/{name}/autostart', query='enable=0').status == 204
    assert not autostart(api, name)
    assert api.get(f'{NODES}/{name}/stats').json['Autostart'] is False
    assert api.post(f'{NODES}/{name}/autostart', query='enable=false').status == 304


def test_a_transient_domain_is_409_and_unchanged(api):
    response = api.post(f'{NODES}/scratch/autostart', query='enable=1')
    assert response.status == 409 and response.json['code'] == 'invalid_state', response.json
    assert 'transient' in response.json['message']
    assert not autostart(api, 'scratch')


@pytest.mark.parametrize('query', ['', 'enable=', 'enable=yes', 'enable=2'])
def test_enable_is_required_and_a_boolean(api, query):
    response = api.post(f'{NODES}/web/autostart', query=query)
    assert response.status == 400, response.json
    assert not autostart(api, 'web')


def test_unknown_domain_and_dom0(api):
    assert api.post(f'{NODES}/nosuch/autostart', query='enable=1').status == 404
    assert api.post(f'{NODES}/Domain-0/autostart', query='enable=1').status == 403
