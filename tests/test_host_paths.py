"""allowed-paths: disks, kernels, loaders and bootloaders may only point into configured directories."""
import copy
import json

import pytest

from conftest import Client
from test_create import TEST0
from xend_rest.app import make_app
from xend_rest.security import Guard, host_paths

NODES = '/libvirt/xen/nodes'


@pytest.fixture
def images(tmp_path):
    path = tmp_path / 'images'
    path.mkdir()
    (path / 'link-out').symlink_to('/etc')
    (path / 'link-in').symlink_to(path)
    return path


@pytest.fixture
def confined(node_uri, images):
    app = make_app(uri=node_uri, guard=Guard(allowed_paths=[str(images)]))
    yield Client(app)
    app.pool.close()


def definition(**changes):
    """TEST0 with its disks inside `images`, then the given changes to its domain."""
    doc = copy.deepcopy(TEST0)
    doc['domain'].update(changes)
    return doc


def with_disk(images, source, attribute='@file'):
    doc = definition()
    doc['domain']['devices']['disk'] = {'@type': 'file', '@device': 'disk',
                                        'source': {attribute: source},
                                        'target': {'@dev': 'xvda', '@bus': 'xen'}}
    return doc


def defined_names(api):
    return sorted(dom.name() for dom in api.conn.listAllDomains())


def test_a_disk_inside_is_accepted(confined, images):
    response = confined.post(NODES + '/create', with_disk(images, str(images / 'a.raw')))
    assert response.status == 201
    assert 'test0' in defined_names(confined)


def test_a_link_that_stays_inside_is_accepted(confined, images):
    response = confined.post(NODES + '/create', with_disk(images, str(images / 'link-in' / 'a.raw')))
    assert response.status == 201


@pytest.mark.parametrize('source', [
    '/etc/shadow', '/dev/sda', 'relative.raw', '', '{images}/../escape.raw',
    '{images}/link-out/shadow', '{images}-sibling/a.raw', '/{images}/../../etc/passwd',
])
def test_a_disk_outside_is_403_before_libvirt(confined, images, source):
    response = confined.post(NODES + '/create', with_disk(images, source.format(images=images)))
    assert response.status == 403
    assert response.json['code'] == 'path_not_allowed'
    assert 'domain.devices.disk.source.@file' in response.json['message']
    assert 'test0' not in defined_names(confined)


@pytest.mark.parametrize('changes', [
    {'os': {'type': 'xen', 'kernel': '/boot/vmlinuz'}},
    {'os': {'type': 'xen', 'initrd': '/tmp/evil.img'}},
    {'os': {'type': 'hvm', 'loader': {'@readonly': 'yes', '#text': '/usr/share/evil.fd'}}},
    {'os': {'type': 'hvm', 'nvram': {'@template': '/etc/shadow'}}},
    {'bootloader': '/usr/bin/python3'},
    {'devices': {'emulator': '/bin/sh'}},
    {'devices': {'interface': {'@type': 'ethernet', 'script': {'@path': '/bin/sh'}}}},
    {'devices': {'serial': {'@type': 'file', 'source': {'@path': '/etc/cron.d/x'}}}},
    {'devices': {'filesystem': {'@type': 'mount', 'source': {'@dir': '/'}}}},
    {'devices': {'disk': [{'@type': 'file', 'source': {'@file': '{images}/ok.raw'}},
                          {'@type': 'block', 'source': {'@dev': '/dev/sda'}}]}},
    {'devices': {'disk': {'@type': 'file', 'source': {'@file': 5}}}},
])
def test_other_host_files_outside_are_403(confined, images, changes):
    doc = definition()
    for key, value in changes.items():
        doc['domain'][key] = value
    text = json.dumps(doc).replace('{images}', str(images))
    response = confined.request('POST', NODES + '/create', text.encode())
    assert response.status == 403
    assert response.json['code'] == 'path_not_allowed'
    assert 'test0' not in defined_names(confined)


@pytest.mark.parametrize('action', ['attach', 'update'])
def test_devices_outside_are_403(confined, images, action):
    before = confined.conn.lookupByName('web').XMLDesc(0)
    response = confined.post(NODES + '/web/devices/' + action, {
        'disk': {'@type': 'block', 'source': {'@dev': '/dev/sda'}, 'target': {'@dev': 'xvdb'}}})
    assert response.status == 403
    assert response.json['code'] == 'path_not_allowed'
    assert confined.conn.lookupByName('web').XMLDesc(0) == before


def test_devices_inside_reach_libvirt(confined, images):
    response = confined.post(NODES + '/web/devices/attach', {
        'disk': {'@type': 'file', 'source': {'@file': str(images / 'b.raw')},
                 'target': {'@dev': 'xvdb'}}})
    assert response.status == 501  # the test driver cannot attach: but we let it try


def test_without_a_policy_any_path_is_passed_on(api):
    doc = definition(bootloader='/usr/lib/xen/bin/pygrub')
    assert api.post(NODES + '/create', doc).status == 201


def test_host_paths_finds_values_and_text():
    doc = {'domain': {'os': {'kernel': '/k', 'loader': {'#text': '/l', '@type': 'pflash'}},
                      'devices': {'disk': [{'source': {'@file': '/f'}, 'target': {'@dev': 'xvda'}}],
                                  'interface': {'source': {'@dev': 'eth0'}}}}}
    assert sorted(host_paths(doc)) == [
        ('domain.devices.disk.source.@file', '/f'), ('domain.os.kernel', '/k'),
        ('domain.os.loader.#text', '/l')]
