"""Images and pools on the test driver: listing, inspecting, creating, cloning, deleting, and
every refusal. (The test driver cannot upload, download, resize or wipe: those answer 501 here
once our own checks pass; tests/realhv/test_images_real.py moves real bytes.)"""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from conftest import Client, node_xml
from test_create import TEST0
from xend_rest.app import make_app
from xend_rest.handlers.images import _byte_range
from xend_rest.errors import HTTPError
from xend_rest.security import Guard

IMAGES = '/libvirt/xen/images'
POOLS = '/libvirt/xen/pools'
NODES = '/libvirt/xen/nodes'
ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30

# Every domain of the conftest node has one disk, /var/lib/xen/images/<domain>.raw.
POOLS_XML = """
  <pool type='dir'>
    <name>default</name>
    <uuid>6a2c8d6e-1b7f-4c4e-9f90-6d0b2e5c7fb4</uuid>
    <capacity unit='GiB'>200</capacity><allocation unit='GiB'>40</allocation>
    <available unit='GiB'>160</available>
    <target><path>/var/lib/xen/images</path></target>
    %s
  </pool>
  <pool type='dir'>
    <name>iso</name>
    <uuid>7b3d9e7f-2c80-4d5f-8a01-7e1c3f6d80c5</uuid>
    <capacity unit='GiB'>50</capacity><allocation unit='GiB'>1</allocation>
    <available unit='GiB'>49</available>
    <target><path>/var/lib/xen/iso</path></target>
    %s
  </pool>
"""
VOLUME_XML = """<volume type='file'><name>%s</name>
      <capacity unit='GiB'>%d</capacity><allocation unit='GiB'>1</allocation>
      <target><format type='%s'/></target></volume>"""
DEFAULT_VOLUMES = [('web.raw', 10, 'raw'), ('idle.raw', 8, 'raw'), ('scratch.raw', 4, 'raw'),
                   ('spare.qcow2', 20, 'qcow2')]
ISO_VOLUMES = [('installer.iso', 1, 'raw')]


@pytest.fixture
def node_uri(tmp_path):
    """The conftest node plus two dir pools: default (domains' disks, one spare) and iso."""
    pools = POOLS_XML % (''.join(VOLUME_XML % vol for vol in DEFAULT_VOLUMES),
                         ''.join(VOLUME_XML % vol for vol in ISO_VOLUMES))
    path = tmp_path / 'node.xml'
    path.write_text(node_xml().replace('</node>', pools + '</node>'))
    return 'test://%s' % path


def volumes(api, pool='default'):
    return sorted(vol.name() for vol in api.conn.storagePoolLookupByName(pool).listAllVolumes())


def volume_info(api, name, pool='default'):
    return api.conn.storagePoolLookupByName(pool).storageVolLookupByName(name).info()


def listed(api, query=''):
    response = api.get(IMAGES + '/json', query)
    assert response.status == 200
    return {(image['Pool'], image['Name']): image for image in response.json}


# -- list and inspect ---------------------------------------------------------------------------

def test_list_fields_and_users(api):
    images = listed(api)
    assert sorted(images) == [('default', 'idle.raw'), ('default', 'scratch.raw'),
                              ('default', 'spare.qcow2'), ('default', 'web.raw'),
                              ('iso', 'installer.iso')]
    assert images['default', 'web.raw'] == {
        'Name': 'web.raw', 'Pool': 'default', 'Path': '/var/lib/xen/images/web.raw',
        'Type': 'file', 'Format': 'raw', 'Capacity': 10 * GiB, 'Allocation': GiB,
        'UsedBy': ['web'], 'Uploading': False, 'Incomplete': False}
    assert images['default', 'idle.raw']['UsedBy'] == ['idle']        # shut off, still defined
    assert images['default', 'scratch.raw']['UsedBy'] == ['scratch']  # transient: live only
    assert images['default', 'spare.qcow2']['UsedBy'] == []
    assert images['default', 'spare.qcow2']['Format'] == 'qcow2'


def test_list_one_pool(api):
    assert sorted(listed(api, 'pool=iso')) == [('iso', 'installer.iso')]


def test_list_skips_inactive_pools_unless_asked(api):
    api.conn.storagePoolLookupByName('iso').destroy()
    assert ('iso', 'installer.iso') not in listed(api)
    response = api.get(IMAGES + '/json', 'pool=iso')
    assert response.status == 409
    assert response.json['code'] == 'invalid_state'


@pytest.mark.parametrize('query, status, code', [
    ('pool=nope', 404, 'no_such_pool'),
    ('pool=..', 400, 'bad_parameter'),
    ('pool=a/b', 400, 'bad_parameter'),
    ('pool=', 400, 'bad_parameter'),
    ('pool=default&pool=iso', 400, 'bad_parameter'),
])
def test_list_bad_pool(api, query, status, code):
    response = api.get(IMAGES + '/json', query)
    assert (response.status, response.json['code']) == (status, code)


def redefine(api, name, old, new):
    """Give a domain a new persistent definition (its live one stays as it is if running)."""
    xml = api.conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert old in xml
    api.conn.defineXML(xml.replace(old, new))


def test_users_come_from_live_and_persistent_definitions(api):
    # web runs on web.raw; its next boot will use spare.qcow2: both are in use.
    redefine(api, 'web', "file='/var/lib/xen/images/web.raw'",
             "file='/var/lib/xen/images/spare.qcow2'")
    images = listed(api)
    assert images['default', 'web.raw']['UsedBy'] == ['web']
    assert images['default', 'spare.qcow2']['UsedBy'] == ['web']


def test_users_by_pool_and_volume(api):
    api.conn.defineXML(
        "<domain type='xen'><name>installer</name><memory>65536</memory>"
        "<os><type>xen</type></os><devices>"
        "<disk type='volume' device='cdrom'><source pool='iso' volume='installer.iso'/>"
        "<target dev='xvdc' bus='xen'/><readonly/></disk></devices></domain>")
    assert listed(api)['iso', 'installer.iso']['UsedBy'] == ['installer']


def test_users_list_each_domain_once(api):
    redefine(api, 'db', "</disk>", "</disk><disk type='file' device='disk'>"
             "<source file='/var/lib/xen/images/web.raw'/><target dev='xvdb' bus='xen'/></disk>")
    assert listed(api)['default', 'web.raw']['UsedBy'] == ['db', 'web']


def test_inspect(api):
    response = api.get(IMAGES + '/default/spare.qcow2/json')
    assert response.status == 200
    volume = response.json['volume']
    assert volume['name'] == 'spare.qcow2'
    assert volume['capacity'] == {'@unit': 'bytes', '#text': str(20 * GiB)}
    assert volume['target']['format'] == {'@type': 'qcow2'}
    assert volume['target']['path'] == '/var/lib/xen/images/spare.qcow2'
    assert (response.json['Uploading'], response.json['Incomplete']) == (False, False)


@pytest.mark.parametrize('path, status, code', [
    ('/default/nope.raw/json', 404, 'no_such_image'),
    ('/nope/web.raw/json', 404, 'no_such_pool'),
    ('/iso/web.raw/json', 404, 'no_such_image'),  # images never cross pools
])
def test_inspect_missing(api, path, status, code):
    response = api.get(IMAGES + path)
    assert (response.status, response.json['code']) == (status, code)


# Names that would leave the pool's directory, or hide in it; as a path segment they all
# reach the handler (an image name takes the rest of the path) and are refused before libvirt.
ESCAPES = ['..', '.', '.hidden', '../web.raw', '/etc/passwd', 'a/b', 'a\\b', 'a\x00b', 'a\nb',
           'x' * 256]


@pytest.mark.parametrize('name', ESCAPES)
@pytest.mark.parametrize('method, action', [
    ('GET', 'json'), ('POST', 'clone'), ('POST', 'resize'), ('POST', 'wipe'), ('POST', 'delete'),
    ('PUT', 'upload'), ('GET', 'download'),
])
def test_image_names_never_escape_their_pool(api, name, method, action):
    path = '%s/default/%s/%s' % (IMAGES, name, action)
    response = api.request(method, path.encode().decode('latin-1'), body=b'x',
                           query='name=copy&capacity=1G',
                           headers=OCTETS if method == 'PUT' else None)
    assert response.status == 400, response.json
    assert response.json['code'] == 'bad_parameter'
    assert volumes(api) == sorted(name for name, _, _ in DEFAULT_VOLUMES)


@pytest.mark.parametrize('pool', ['..', '.default', 'a\\b', 'a\x00b'])
def test_pool_names_are_checked_too(api, pool):
    response = api.get('%s/%s/web.raw/json' % (IMAGES, pool))
    assert (response.status, response.json['code']) == (400, 'bad_parameter')


def test_dot_segments_in_the_path_do_not_reach_another_pool(api):
    # "iso/../default" is three segments: pool "iso", and an image name with a "/" in it.
    response = api.get(IMAGES + '/iso/../default/web.raw/json')
    assert response.status == 400


# -- create -------------------------------------------------------------------------------------

@pytest.mark.parametrize('capacity, size', [
    ('1073741824', GiB), ('10G', 10 * GiB), ('10GiB', 10 * GiB), ('512M', 512 << 20),
    ('512m', 512 << 20), ('1GB', 10**9), ('64K', 65536), ('2T', 2 << 40), ('100b', 100),
])
def test_create_capacity_units(api, capacity, size):
    response = api.post(IMAGES + '/default/create', query='name=new.raw&capacity=' + capacity)
    assert response.status == 201
    assert response.json['Capacity'] == size
    assert volume_info(api, 'new.raw')[1] == size


def test_create_qcow2(api):
    response = api.post(IMAGES + '/iso/create', query='name=disk.qcow2&capacity=10G&format=qcow2')
    assert response.status == 201
    assert response.json == {
        'Name': 'disk.qcow2', 'Pool': 'iso', 'Path': '/var/lib/xen/iso/disk.qcow2',
        'Type': 'file', 'Format': 'qcow2', 'Capacity': 10 * GiB, 'Allocation': 0,
        'UsedBy': [], 'Uploading': False, 'Incomplete': False}
    vol = api.conn.storagePoolLookupByName('iso').storageVolLookupByName('disk.qcow2')
    assert "<format type='qcow2'/>" in vol.XMLDesc()
    assert ('iso', 'disk.qcow2') in listed(api)


def test_create_reports_domains_already_pointing_at_the_name(api):
    # db's disk is /var/lib/xen/images/db.raw, which did not exist until now.
    response = api.post(IMAGES + '/default/create', query='name=db.raw&capacity=1G')
    assert response.status == 201
    assert response.json['UsedBy'] == ['db']


@pytest.mark.parametrize('query', [
    'capacity=1G',                                   # no name
    'name=&capacity=1G',
    'name=new.raw',                                  # no capacity
    'name=new.raw&capacity=',
    'name=new.raw&capacity=ten',
    'name=new.raw&capacity=10X',
    'name=new.raw&capacity=-1',
    'name=new.raw&capacity=1.5G',
    'name=new.raw&capacity=16E',                     # beyond 2**63 - 1
    'name=new.raw&capacity=1G&format=vmdk',
    'name=new.raw&capacity=1G&allocation=lots',
    'name=new.raw&capacity=1G&allocation=2G',        # more than the image holds
    'name=new.raw&capacity=1G&format=',              # empty is no format (clone alike)
    'name=new.raw&capacity=1G&flag=4',
    'name=new.raw&capacity=1G&capacity=2G',
    'name=../new.raw&capacity=1G',
    'name=/tmp/new.raw&capacity=1G',
    'name=a/b&capacity=1G',
    'name=.new.raw&capacity=1G',
    'name=a%00b&capacity=1G',
    'name=a%5Cb&capacity=1G',
    'name=%s&capacity=1G' % ('x' * 256),
])
def test_create_bad_parameters_change_nothing(api, query):
    response = api.post(IMAGES + '/default/create', query=query)
    assert response.status == 400, response.json
    assert response.json['code'] == 'bad_parameter'
    assert volumes(api) == sorted(name for name, _, _ in DEFAULT_VOLUMES)


def test_create_existing_is_409(api):
    response = api.post(IMAGES + '/default/create', query='name=web.raw&capacity=1G')
    assert (response.status, response.json['code']) == (409, 'already_exists')
    assert volume_info(api, 'web.raw')[1] == 10 * GiB


def test_create_in_missing_pool_is_404(api):
    response = api.post(IMAGES + '/nope/create', query='name=new.raw&capacity=1G')
    assert (response.status, response.json['code']) == (404, 'no_such_pool')


def test_create_is_post_only(api):
    response = api.get(IMAGES + '/default/create')
    assert response.status == 405
    assert response.headers['Allow'] == 'POST'


# -- clone --------------------------------------------------------------------------------------

def test_clone_in_the_same_pool(api):
    response = api.post(IMAGES + '/default/spare.qcow2/clone', query='name=copy.qcow2')
    assert response.status == 201
    assert response.json['Name'] == 'copy.qcow2'
    assert response.json['Pool'] == 'default'
    assert response.json['Format'] == 'qcow2'
    assert volume_info(api, 'copy.qcow2')[1] == 20 * GiB
    assert 'spare.qcow2' in volumes(api)


def test_clone_to_another_format(api):
    # (Into another pool: the test driver looks for the source in the target pool, so that
    # is proved in the real tier.)
    response = api.post(IMAGES + '/default/spare.qcow2/clone', query='name=spare.raw&format=raw')
    assert response.status == 201
    assert (response.json['Pool'], response.json['Format']) == ('default', 'raw')
    vol = api.conn.storagePoolLookupByName('default').storageVolLookupByName('spare.raw')
    assert "<format type='raw'/>" in vol.XMLDesc()


@pytest.mark.parametrize('path, query, status, code', [
    ('/default/spare.qcow2/clone', 'name=web.raw', 409, 'already_exists'),
    ('/default/spare.qcow2/clone', '', 400, 'bad_parameter'),
    ('/default/spare.qcow2/clone', 'name=../x', 400, 'bad_parameter'),
    ('/default/spare.qcow2/clone', 'name=x&pool=..', 400, 'bad_parameter'),
    ('/default/spare.qcow2/clone', 'name=x&pool=nope', 404, 'no_such_pool'),
    ('/default/spare.qcow2/clone', 'name=x&format=vmdk', 400, 'bad_parameter'),
    ('/default/spare.qcow2/clone', 'name=x&format=', 400, 'bad_parameter'),
    ('/default/spare.qcow2/clone', 'name=x&flag=8', 400, 'bad_parameter'),
    ('/default/nope.raw/clone', 'name=x', 404, 'no_such_image'),
])
def test_clone_refusals_change_nothing(api, path, query, status, code):
    response = api.post(IMAGES + path, query=query)
    assert (response.status, response.json['code']) == (status, code)
    assert volumes(api) == sorted(name for name, _, _ in DEFAULT_VOLUMES)
    assert volumes(api, 'iso') == ['installer.iso']


# -- space: what a new image allocates must fit the pool's free space ---------------------------

def pool_info(api, pool='default'):
    return api.conn.storagePoolLookupByName(pool).info()


def fill(api, leave):
    """Allocate the default pool's free space but `leave` bytes, in an image named filler.raw."""
    taken = pool_info(api)[3] - leave
    response = api.post(IMAGES + '/default/create',
                        query='name=filler.raw&capacity=%d&allocation=%d' % (taken, taken))
    assert response.status == 201
    assert pool_info(api)[3] == leave


def test_create_allocating_more_than_the_free_space_is_507(api):
    before = pool_info(api)
    response = api.post(IMAGES + '/default/create', query='name=big.raw&capacity=200G&allocation=%d'
                        % (before[3] + 1))
    assert (response.status, response.json['code']) == (507, 'insufficient_space')
    assert str(before[3]) in response.json['message']
    assert volumes(api) == sorted(name for name, _, _ in DEFAULT_VOLUMES)
    assert pool_info(api) == before


def test_create_allocating_exactly_the_free_space_is_created(api):
    free = pool_info(api)[3]
    response = api.post(IMAGES + '/default/create',
                        query='name=big.raw&capacity=%d&allocation=%d' % (free, free))
    assert response.status == 201
    assert pool_info(api)[3] == 0


def test_a_sparse_image_larger_than_the_free_space_is_created(api):
    fill(api, leave=GiB)
    response = api.post(IMAGES + '/default/create', query='name=thin.raw&capacity=1T')
    assert response.status == 201
    assert (response.json['Capacity'], response.json['Allocation']) == (1 << 40, 0)


def test_clone_allocating_more_than_the_free_space_is_507(api):
    fill(api, leave=GiB // 2)  # the source, spare.qcow2, allocates 1 GiB
    before = pool_info(api)
    response = api.post(IMAGES + '/default/spare.qcow2/clone', query='name=copy.qcow2')
    assert (response.status, response.json['code']) == (507, 'insufficient_space')
    assert 'copy.qcow2' not in volumes(api)
    assert pool_info(api) == before


def test_clone_of_a_sparse_image_larger_than_the_free_space_is_sparse_too(api):
    fill(api, leave=2 * GiB)  # spare.qcow2: 20 GiB, of which 1 GiB allocated
    response = api.post(IMAGES + '/default/spare.qcow2/clone', query='name=copy.qcow2')
    assert response.status == 201
    assert (response.json['Capacity'], response.json['Allocation']) == (20 * GiB, GiB)
    assert pool_info(api)[3] == GiB


def test_upload_larger_than_the_free_space_is_507(api):
    fill(api, leave=100)
    response = upload(api, 'new.raw', b'x' * 101)
    assert (response.status, response.json['code']) == (507, 'insufficient_space')
    assert 'new.raw' not in volumes(api)


@pytest.mark.parametrize('query, form', [('', 'raw'), ('&format=raw', 'raw'),
                                         ('&format=qcow2', 'qcow2')])
def test_create_format(api, query, form):
    response = api.post(IMAGES + '/default/create', query='name=new&capacity=1G' + query)
    assert (response.status, response.json['Format']) == (201, form)


@pytest.mark.parametrize('query, form', [('', 'qcow2'), ('&format=raw', 'raw'),
                                         ('&format=qcow2', 'qcow2')])
def test_clone_format_defaults_to_the_source_s(api, query, form):
    response = api.post(IMAGES + '/default/spare.qcow2/clone', query='name=copy' + query)
    assert (response.status, response.json['Format']) == (201, form)


# -- delete -------------------------------------------------------------------------------------

def test_delete_unused_image(api):
    response = api.post(IMAGES + '/default/spare.qcow2/delete')
    assert response.status == 204
    assert response.body == b''
    assert 'spare.qcow2' not in volumes(api)


@pytest.mark.parametrize('image, domain', [
    ('web.raw', 'web'),          # running
    ('idle.raw', 'idle'),        # shut off: defined, so it will want its disk back
    ('scratch.raw', 'scratch'),  # transient
])
def test_delete_refused_while_a_domain_uses_it(api, image, domain):
    response = api.post(IMAGES + '/default/%s/delete' % image)
    assert (response.status, response.json['code']) == (409, 'image_in_use')
    assert domain in response.json['message']
    assert image in volumes(api)


def test_delete_in_use_with_force(api):
    response = api.post(IMAGES + '/default/web.raw/delete', query='force=1')
    assert response.status == 204
    assert 'web.raw' not in volumes(api)
    assert api.conn.lookupByName('web').isActive()  # the domain is left alone


@pytest.mark.parametrize('path, query, status, code', [
    ('/default/nope.raw/delete', '', 404, 'no_such_image'),
    ('/nope/web.raw/delete', '', 404, 'no_such_pool'),
    ('/default/spare.qcow2/delete', 'force=maybe', 400, 'bad_parameter'),
    ('/default/spare.qcow2/delete', 'flag=4', 400, 'bad_parameter'),
])
def test_delete_refusals(api, path, query, status, code):
    response = api.post(IMAGES + path, query=query)
    assert (response.status, response.json['code']) == (status, code)
    assert volumes(api) == sorted(name for name, _, _ in DEFAULT_VOLUMES)


# -- resize and wipe (our checks first; then the test driver has no support) ---------------------

@pytest.mark.parametrize('query', ['capacity=8G', 'capacity=0', 'capacity=8G&force=1',
                                   'capacity=8G&flag=1'])
def test_shrinking_needs_the_shrink_flag(api, query):
    response = api.post(IMAGES + '/default/spare.qcow2/resize', query=query)
    assert (response.status, response.json['code']) == (400, 'bad_parameter')
    assert 'flag=4' in response.json['message']
    assert volume_info(api, 'spare.qcow2')[1] == 20 * GiB


def test_shrinking_an_image_in_use_needs_force(api):
    response = api.post(IMAGES + '/default/web.raw/resize', query='capacity=5G&flag=4')
    assert (response.status, response.json['code']) == (409, 'image_in_use')
    response = api.post(IMAGES + '/default/web.raw/resize', query='capacity=5G&flag=4&force=1')
    assert (response.status, response.json['code']) == (501, 'not_supported')


@pytest.mark.parametrize('query', ['capacity=30G', 'capacity=1G&flag=2', 'capacity=5G&flag=4',
                                   'capacity=1G&flag=6'])
def test_resize_that_passes_our_checks_reaches_libvirt(api, query):
    response = api.post(IMAGES + '/default/spare.qcow2/resize', query=query)
    assert (response.status, response.json['code']) == (501, 'not_supported')


@pytest.mark.parametrize('flag, grow', [(1, 'to'), (3, 'by')])
def test_resize_allocating_more_than_the_free_space_is_507(api, flag, grow):
    # spare.qcow2 (20 GiB) allocates 1 GiB: allocated up to its new size, it needs that less 1 GiB.
    free = pool_info(api)[3]
    wanted = GiB + free + 1
    capacity = wanted if grow == 'to' else wanted - 20 * GiB
    response = api.post(IMAGES + '/default/spare.qcow2/resize',
                        query='capacity=%d&flag=%d' % (capacity, flag))
    assert (response.status, response.json['code']) == (507, 'insufficient_space')
    response = api.post(IMAGES + '/default/spare.qcow2/resize',
                        query='capacity=%d&flag=%d' % (capacity - 1, flag))
    assert (response.status, response.json['code']) == (501, 'not_supported')  # it fits


def test_growing_a_sparse_image_past_the_free_space_reaches_libvirt(api):
    response = api.post(IMAGES + '/default/spare.qcow2/resize', query='capacity=1T')
    assert (response.status, response.json['code']) == (501, 'not_supported')


@pytest.mark.parametrize('query', ['', 'capacity=big', 'capacity=1G&flag=8', 'capacity=1G&force=2'])
def test_resize_bad_parameters(api, query):
    response = api.post(IMAGES + '/default/spare.qcow2/resize', query=query)
    assert (response.status, response.json['code']) == (400, 'bad_parameter')


def test_wipe(api):
    response = api.post(IMAGES + '/default/web.raw/wipe')
    assert (response.status, response.json['code']) == (409, 'image_in_use')
    for query in ('', 'algorithm=random', 'force=1'):
        response = api.post(IMAGES + '/default/spare.qcow2/wipe', query=query)
        assert (response.status, response.json['code']) == (501, 'not_supported')
    for query in ('algorithm=bogus', 'flag=1', 'force=yes'):
        response = api.post(IMAGES + '/default/spare.qcow2/wipe', query=query)
        assert (response.status, response.json['code']) == (400, 'bad_parameter')


# -- upload and download (the refusals; the bytes move in the real tier) -------------------------

OCTETS = {'CONTENT_TYPE': 'application/octet-stream'}


def upload(api, name, body, query='', headers=None, pool='default'):
    return api.request('PUT', '%s/%s/%s/upload' % (IMAGES, pool, name), body=body, query=query,
                       headers={**OCTETS, **(headers or {})})


def test_upload_needs_a_content_length(api):
    response = upload(api, 'new.raw', b'data', headers={'CONTENT_LENGTH': ''})
    assert (response.status, response.json['code']) == (411, 'length_required')
    assert 'new.raw' not in volumes(api)


@pytest.mark.parametrize('name, body, query, headers, status, code', [
    ('new.raw', b'', '', None, 400, 'bad_parameter'),
    ('new.raw', b'x' * 100, 'capacity=99', None, 413, 'too_large'),
    ('new.raw', b'x' * 100, 'capacity=lots', None, 400, 'bad_parameter'),
    ('new.raw', b'x', '', {'CONTENT_LENGTH': '999999999999999'}, 507, 'insufficient_space'),
    ('web.raw', b'x' * 100, '', None, 409, 'already_exists'),
])
def test_upload_refusals_change_nothing(api, name, body, query, headers, status, code):
    response = upload(api, name, body, query, headers)
    assert (response.status, response.json['code']) == (status, code)
    assert volumes(api) == sorted(name for name, _, _ in DEFAULT_VOLUMES)
    assert volume_info(api, 'web.raw')[1] == 10 * GiB


def test_upload_into_missing_pool(api):
    response = upload(api, 'new.raw', b'x', pool='nope')
    assert (response.status, response.json['code']) == (404, 'no_such_pool')


def test_failed_upload_leaves_no_image(api):
    # The test driver creates the image, then cannot stream into it: the image must go again.
    response = upload(api, 'new.raw', b'x' * 4096)
    assert (response.status, response.json['code']) == (501, 'not_supported')
    assert 'new.raw' not in volumes(api)


def test_upload_is_put_only(api):
    response = api.post(IMAGES + '/default/new.raw/upload', body=b'x')
    assert response.status == 405
    assert response.headers['Allow'] == 'PUT'


@pytest.mark.parametrize('range_header', ['bytes=%d-' % (20 * GiB), 'bytes=-0',
                                          'bytes=%d-%d' % (20 * GiB, 30 * GiB)])
def test_download_range_outside_the_image_is_416(api, range_header):
    response = api.request('GET', IMAGES + '/default/spare.qcow2/download',
                           headers={'HTTP_RANGE': range_header})
    assert (response.status, response.json['code']) == (416, 'range_not_satisfiable')
    assert response.headers['Content-Range'] == 'bytes */%d' % (20 * GiB)


@pytest.mark.parametrize('path, status, code', [
    ('/default/spare.qcow2/download', 501, 'not_supported'),
    ('/default/nope.raw/download', 404, 'no_such_image'),
    ('/nope/spare.qcow2/download', 404, 'no_such_pool'),
])
def test_download_statuses(api, path, status, code):
    response = api.get(IMAGES + path)
    assert (response.status, response.json['code']) == (status, code)


@pytest.mark.parametrize('header, expected', [
    (None, (200, 0, 1000, [])),
    ('bytes=0-99', (206, 0, 100, [('Content-Range', 'bytes 0-99/1000')])),
    ('bytes=900-', (206, 900, 100, [('Content-Range', 'bytes 900-999/1000')])),
    ('bytes=-10', (206, 990, 10, [('Content-Range', 'bytes 990-999/1000')])),
    ('bytes=-5000', (206, 0, 1000, [('Content-Range', 'bytes 0-999/1000')])),
    ('bytes=990-5000', (206, 990, 10, [('Content-Range', 'bytes 990-999/1000')])),
    ('bytes=0-0', (206, 0, 1, [('Content-Range', 'bytes 0-0/1000')])),
    # ignored, as RFC 9110 allows: several ranges, other units, nonsense, last before first
    ('bytes=0-1,5-6', (200, 0, 1000, [])),
    ('items=0-1', (200, 0, 1000, [])),
    ('bytes=-', (200, 0, 1000, [])),
    ('bytes=9-3', (200, 0, 1000, [])),
])
def test_byte_ranges(header, expected):
    assert _byte_range(header, 1000) == expected


@pytest.mark.parametrize('header, size', [('bytes=1000-', 1000), ('bytes=-0', 1000),
                                          ('bytes=0-', 0), ('bytes=-1', 0)])
def test_unsatisfiable_byte_ranges(header, size):
    with pytest.raises(HTTPError) as raised:
        _byte_range(header, size)
    assert raised.value.status == 416
    assert raised.value.headers == [('Content-Range', 'bytes */%d' % size)]


# -- pools --------------------------------------------------------------------------------------

def test_list_pools(api):
    api.conn.storagePoolLookupByName('iso').destroy()
    response = api.get(POOLS + '/json')
    assert response.status == 200
    pools = {pool['Name']: pool for pool in response.json}
    assert sorted(pools) == ['default', 'iso']
    default = pools['default']
    assert default['State'] == 'running'
    assert (default['Type'], default['Path']) == ('dir', '/var/lib/xen/images')
    assert default['Uuid'] == '6a2c8d6e-1b7f-4c4e-9f90-6d0b2e5c7fb4'
    assert default['Capacity'] == default['Allocation'] + default['Available'] > 0
    assert pools['iso']['State'] == 'inactive'


def test_inspect_pool(api):
    response = api.get(POOLS + '/iso/json')
    assert response.status == 200
    assert response.json['pool']['name'] == 'iso'
    assert response.json['pool']['target']['path'] == '/var/lib/xen/iso'


@pytest.mark.parametrize('pool, status', [('nope', 404), ('..', 400), ('.x', 400)])
def test_inspect_pool_refusals(api, pool, status):
    assert api.get('%s/%s/json' % (POOLS, pool)).status == status


def test_an_upload_in_progress_belongs_to_the_app_running_it(api, node_uri):
    # a second app on a copy of the same node: the same pool UUIDs, in the same process
    other_path = node_uri[len('test://'):].replace('node.xml', 'other.xml')
    shutil.copy(node_uri[len('test://'):], other_path)
    other = Client(make_app(uri='test://' + other_path))
    pool_uuid = api.conn.storagePoolLookupByName('default').UUIDString()
    with api.app.hypervisor.uploads.holding((pool_uuid, 'spare.qcow2')):  # as a running upload does
        assert listed(api)['default', 'spare.qcow2']['Uploading'] is True
        assert api.post(IMAGES + '/default/spare.qcow2/delete').json['code'] == 'upload_in_progress'
        assert listed(other)['default', 'spare.qcow2']['Uploading'] is False
        assert other.post(IMAGES + '/default/spare.qcow2/delete').status == 204
    assert 'spare.qcow2' in volumes(api)
    assert 'spare.qcow2' not in volumes(other)
    assert listed(api)['default', 'spare.qcow2']['Uploading'] is False
    other.app.close()


@pytest.mark.parametrize('method, path, query', [
    ('GET', '/libvirt/xen/images/default/\xff\xfe.raw/json', ''),  # PATH_INFO is latin-1
    ('PUT', '/libvirt/xen/images/default/\xed\xa0\x80.raw/upload', ''),  # a lone surrogate
    ('POST', '/libvirt/xen/images/default/create', 'name=%FF%FE.raw&capacity=1M'),
    ('POST', '/libvirt/xen/images/default/create', 'name=%ED%A0%80.raw&capacity=1M'),
    ('POST', '/libvirt/xen/images/default/web.raw/clone', 'name=%FF.raw'),
])
def test_a_name_that_is_not_utf8_is_400_never_another_name(api, method, path, query):
    before = volumes(api)
    response = api.request(method, path, b'\0' if method == 'PUT' else None, query,
                           headers=OCTETS if method == 'PUT' else None)
    assert response.status == 400
    assert response.json['code'] == 'bad_parameter' and 'UTF-8' in response.json['message']
    assert volumes(api) == before


# -- in use: the same file, however it is named ----------------------------------------------

def define_user(api, name, *disks):
    """Define a shut-off domain whose disks are these <disk> elements."""
    api.conn.defineXML("<domain type='xen'><name>%s</name><memory>65536</memory>"
                       "<os><type>xen</type></os><devices>%s</devices></domain>"
                       % (name, ''.join(disks)))


def file_disk(path, dev='xvdb', form=None, kind='file', attribute='file'):
    driver = "<driver name='qemu' type='%s'/>" % form if form else ''
    return ("<disk type='%s' device='disk'>%s<source %s='%s'/><target dev='%s' bus='xen'/></disk>"
            % (kind, driver, attribute, path, dev))


@pytest.mark.parametrize('spelling', [
    '//var/lib/xen/images/spare.qcow2',
    '/var/lib/xen/images//spare.qcow2',
    '/var/lib/xen/./images/spare.qcow2',
    '/var/lib/xen/iso/../images/spare.qcow2',
    '/var/lib/../lib/xen/images/spare.qcow2',
])
def test_another_spelling_of_the_path_is_in_use(api, spelling):
    define_user(api, 'other', file_disk(spelling))
    assert listed(api)['default', 'spare.qcow2']['UsedBy'] == ['other']
    for action in ('delete', 'wipe'):
        response = api.post(IMAGES + '/default/spare.qcow2/' + action)
        assert (response.status, response.json['code']) == (409, 'image_in_use')
    assert 'spare.qcow2' in volumes(api)


def make_local_pool(client, images):
    """A pool 'local' over a real directory, holding victim.raw (a real file)."""
    images.mkdir()
    (images / 'victim.raw').write_bytes(b'\0' * 4096)
    pool = client.conn.storagePoolCreateXML(
        "<pool type='dir'><name>local</name><target><path>%s</path></target></pool>" % images, 0)
    pool.createXML("<volume><name>victim.raw</name><capacity>4096</capacity>"
                   "<target><format type='raw'/></target></volume>", 0)
    return images


@pytest.fixture
def local_pool(api, tmp_path):
    """The pool 'local' over tmp/images."""
    return make_local_pool(api, tmp_path / 'images')


def assert_in_use(api, user, image='victim.raw', pool='local'):
    assert listed(api)[pool, image]['UsedBy'] == [user]
    response = api.post('%s/%s/%s/delete' % (IMAGES, pool, image))
    assert (response.status, response.json['code']) == (409, 'image_in_use'), response.json
    assert image in volumes(api, pool)


def test_a_disk_through_a_symlinked_directory_is_in_use(api, local_pool, tmp_path):
    (tmp_path / 'link').symlink_to(local_pool)
    define_user(api, 'other', file_disk(tmp_path / 'link' / 'victim.raw'))
    assert_in_use(api, 'other')


def test_dot_dot_after_a_symlink_is_resolved_as_the_kernel_does(api, local_pool, tmp_path):
    # tmp/jump -> tmp/images/inner, so tmp/jump/../victim.raw is tmp/images/victim.raw
    # (and not tmp/victim.raw, as a lexical normalisation would have it)
    (local_pool / 'inner').mkdir()
    (tmp_path / 'jump').symlink_to(local_pool / 'inner')
    define_user(api, 'other', file_disk('%s/jump/../victim.raw' % tmp_path))
    assert_in_use(api, 'other')


def test_a_hard_link_is_the_same_file(api, local_pool, tmp_path):
    # Wiping or shrinking the image changes what the domain reads through its own name.
    (tmp_path / 'elsewhere').mkdir()
    os.link(local_pool / 'victim.raw', tmp_path / 'elsewhere' / 'data.raw')
    define_user(api, 'other', file_disk(tmp_path / 'elsewhere' / 'data.raw'))
    assert_in_use(api, 'other')


def test_a_block_device_is_the_device_it_opens(api, tmp_path):
    # Two device nodes for one device: a block volume, and a disk naming the other node.
    nodes = tmp_path / 'dev'
    nodes.mkdir()
    try:
        for name in ('lv', 'alias'):
            os.mknod(nodes / name, 0o600 | stat.S_IFBLK, os.makedev(7, 250))
    except PermissionError:
        pytest.skip('creating device nodes needs CAP_MKNOD')
    pool = api.conn.storagePoolCreateXML(  # (the test driver puts a logical pool under /dev)
        "<pool type='dir'><name>devices</name><target><path>%s</path></target></pool>" % nodes, 0)
    pool.createXML("<volume><name>lv</name><capacity>4096</capacity></volume>", 0)
    define_user(api, 'other', file_disk(nodes / 'alias', kind='block', attribute='dev'))
    assert_in_use(api, 'other', 'lv', 'devices')


def test_a_volume_of_another_pool_over_the_same_directory_is_in_use(api, local_pool, tmp_path):
    (tmp_path / 'link').symlink_to(local_pool)
    alias = api.conn.storagePoolCreateXML(
        "<pool type='dir'><name>alias</name><target><path>%s/link</path></target></pool>"
        % tmp_path, 0)
    alias.createXML("<volume><name>victim.raw</name><capacity>4096</capacity></volume>", 0)
    define_user(api, 'other', "<disk type='volume' device='disk'><source pool='alias' "
                "volume='victim.raw'/><target dev='xvdb' bus='xen'/></disk>")
    assert_in_use(api, 'other')


def test_a_block_disk_naming_a_block_volume_is_in_use(api):
    pool = api.conn.storagePoolCreateXML(
        "<pool type='logical'><name>vg</name><target><path>/dev/vg</path></target></pool>", 0)
    pool.createXML("<volume><name>lv</name><capacity>4096</capacity></volume>", 0)
    assert pool.storageVolLookupByName('lv').path() == '/dev/vg/lv'
    define_user(api, 'other', file_disk('//dev/vg/lv', kind='block', attribute='dev'))
    assert_in_use(api, 'other', 'lv', 'vg')


def test_a_backing_chain_libvirt_reports_is_in_use(api):
    define_user(api, 'other', "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                "<source file='/var/lib/xen/images/overlay.qcow2'/>"
                "<backingStore type='file'><format type='qcow2'/>"
                "<source file='//var/lib/xen/images/spare.qcow2'/><backingStore/></backingStore>"
                "<target dev='xvdb' bus='xen'/></disk>")
    assert listed(api)['default', 'spare.qcow2']['UsedBy'] == ['other']
    response = api.post(IMAGES + '/default/spare.qcow2/delete')
    assert (response.status, response.json['code']) == (409, 'image_in_use')


def qemu_img(*args, cwd=None):
    subprocess.run(['qemu-img', 'create', '-q'] + [str(arg) for arg in args], check=True, cwd=cwd)


@pytest.mark.parametrize('backing', ['victim.raw', '{images}/victim.raw', '../images/victim.raw'])
def test_a_backing_file_the_image_header_names_is_in_use(api, local_pool, tmp_path, backing):
    # libvirt reports no chain for a domain that is not running (nor at all on Xen): the
    # overlay's own header says which file the hypervisor will read under it.
    qemu_img('-f', 'qcow2', '-F', 'raw', '-b', backing.format(images=local_pool),
             local_pool / 'overlay.qcow2', cwd=local_pool)
    define_user(api, 'other', file_disk(local_pool / 'overlay.qcow2', form='qcow2'))
    assert_in_use(api, 'other')


# VMDK descriptors as QEMU reads them (block/vmdk.c; tests/test_imagefiles.py checks each
# spelling against qemu-img): extents through sscanf, the parent anywhere (strstr).
VMDK_HEAD = ('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
             'createType="monolithicFlat"\n')
VMDK_NAMING = {
    'extent': 'RW 8 FLAT "{name}" 0\n',
    'extent, sectors +8': 'RW +8 FLAT "{name}" 0\n',
    'extent, 8FLAT': 'RW 8FLAT "{name}" 0\n',
    'extent over two lines': 'RW\n8 FLAT "{name}" 0\n',
    'parent in a comment': '# parentFileNameHint="{name}"\nRW 8 FLAT "other.raw" 0\n',
    'parent after a colon': 'parentFileNameHint:"{name}"\nRW 8 FLAT "other.raw" 0\n',
}


@pytest.mark.parametrize('lines', VMDK_NAMING.values(), ids=list(VMDK_NAMING))
def test_a_file_a_vmdk_descriptor_names_is_in_use(api, local_pool, lines):
    (local_pool / 'd.vmdk').write_text(VMDK_HEAD + lines.format(name='victim.raw'))
    define_user(api, 'other', file_disk(local_pool / 'd.vmdk', form='vmdk'))
    assert_in_use(api, 'other')


def test_a_raw_disk_s_bytes_name_nothing(api, local_pool):
    # A raw disk holding qcow2 bytes (a guest may write them) is read as raw: no backing file.
    qemu_img('-f', 'qcow2', '-F', 'raw', '-b', local_pool / 'victim.raw',
             local_pool / 'guest-written.raw')
    define_user(api, 'other', file_disk(local_pool / 'guest-written.raw', form='raw'))
    assert listed(api)['local', 'victim.raw']['UsedBy'] == []


def test_a_volume_disk_of_a_missing_or_inactive_pool_uses_nothing(api):
    api.conn.storagePoolDefineXML(
        "<pool type='dir'><name>off</name><target><path>/srv/off</path></target></pool>", 0)
    define_user(api, 'other', *("<disk type='volume' device='disk'><source pool='%s' volume='x'/>"
                                "<target dev='xvd%s' bus='xen'/></disk>" % (pool, dev)
                                for pool, dev in (('off', 'b'), ('gone', 'c'), ('default', 'd'))))
    images = listed(api)
    assert all(image['UsedBy'] != ['other'] for image in images.values())


# -- allowed-paths: the files an image's header names are host paths too ------------------------
# QEMU opens a qcow2 image's backing file (libvirt reads the header to build the chain and
# hands the file over; on Xen, QEMU reads it itself): a qcow2 naming /etc/shadow reads it.

@pytest.fixture
def confined(node_uri, tmp_path):
    """The app with allowed-paths = tmp/images, which the pool 'local' lies over."""
    app = make_app(uri=node_uri, guard=Guard(allowed_paths=[str(tmp_path / 'images')]))
    client = Client(app)
    make_local_pool(client, tmp_path / 'images')
    yield client
    app.close()


def refused(response, *words):
    assert (response.status, response.json['code']) == (403, 'path_not_allowed'), response.json
    for word in words:
        assert word in response.json['message']


# (qemu-img options, what the image names), made in tmp/images
OUTSIDE = [
    (['-f', 'qcow2', '-F', 'raw', '-b', '/etc/passwd'], '/etc/passwd'),
    (['-f', 'qcow2', '-F', 'raw', '-b', '../passwd', '-u', '1M'], 'passwd'),
    (['-f', 'qcow2', '-F', 'raw', '-b', 'json:{"driver": "raw", "file": {"driver": "file", '
      '"filename": "/etc/passwd"}}', '-u', '1M'], 'json:'),
    (['-f', 'qcow2', '-F', 'raw', '-b', 'file:/etc/passwd', '-u', '1M'], 'file:'),
    (['-f', 'qcow2', '-o', 'data_file=/tmp/xend-rest-outside.raw', '1M'], 'xend-rest-outside'),
    (['-f', 'qed', '-F', 'raw', '-b', '/etc/passwd'], '/etc/passwd'),
    (['-f', 'qcow', '-F', 'raw', '-b', '/etc/passwd'], '/etc/passwd'),
]


def made_image(directory, name, options):
    size = [options[-1]] if options[-1] == '1M' else []
    subprocess.run(['qemu-img', 'create', '-q'] + (options[:-1] if size else options)
                   + [name] + size, check=True, cwd=directory)
    if any('data_file=' in option for option in options):
        os.remove('/tmp/xend-rest-outside.raw')  # made alongside; only its name matters
    return directory / name


@pytest.mark.parametrize('options, named', OUTSIDE)
def test_uploading_an_image_that_names_a_file_outside_is_403(confined, tmp_path, options, named):
    body = made_image(tmp_path, 'evil.img', options).read_bytes()
    response = upload(confined, 'evil.qcow2', body, pool='local')
    refused(response, named)
    assert volumes(confined, 'local') == ['victim.raw']


def test_uploading_a_vmdk_descriptor_naming_a_device_is_403(confined):
    body = (b'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n'
            b'RW 8 FLAT "/dev/sda" 0\n')
    refused(upload(confined, 'evil.vmdk', body, pool='local'), '/dev/sda')
    assert volumes(confined, 'local') == ['victim.raw']


@pytest.mark.parametrize('lines', VMDK_NAMING.values(), ids=list(VMDK_NAMING))
def test_a_vmdk_descriptor_naming_a_file_outside_is_403(confined, tmp_path, lines):
    body = VMDK_HEAD + lines.format(name='/etc/hostname')
    refused(upload(confined, 'evil.vmdk', body.encode(), pool='local'), '/etc/hostname')
    assert volumes(confined, 'local') == ['victim.raw']
    (tmp_path / 'images' / 'evil.vmdk').write_text(body)
    response = confined.post(NODES + '/create', disk_doc({'@file': str(tmp_path / 'images' / 'evil.vmdk')},
                                                         form='vmdk'))
    refused(response, '/etc/hostname', 'evil.vmdk')
    assert 'test0' not in defined(confined)


def test_a_name_beyond_the_first_2_mib_is_403_unread(confined, tmp_path):
    # qcow (version 1) may put its backing file's name anywhere: here past the head we read.
    made = made_image(tmp_path, 'x.qcow', ['-f', 'qcow', '-F', 'raw', '-b', '/etc/passwd'])
    image = bytearray(made.read_bytes())
    image[8:16] = (3 << 20).to_bytes(8, 'big')
    body = bytes(image).ljust((3 << 20) + 64, b'\0')
    refused(upload(confined, 'far.qcow', body, pool='local'), 'beyond its first')


@pytest.mark.parametrize('backing', ['victim.raw', '{images}/victim.raw',
                                     '/{images}/../images/victim.raw'])
def test_uploading_an_image_whose_backing_file_is_inside_reaches_libvirt(confined, tmp_path,
                                                                         backing):
    backing = backing.format(images=tmp_path / 'images')
    body = made_image(tmp_path, 'ok.qcow2', ['-f', 'qcow2', '-F', 'raw', '-b', backing, '-u',
                                               '1M']).read_bytes()
    response = upload(confined, 'ok.qcow2', body, pool='local')
    assert (response.status, response.json['code']) == (501, 'not_supported')  # the test driver


def test_without_allowed_paths_any_backing_file_is_uploaded(api, tmp_path):
    body = made_image(tmp_path, 'any.qcow2', OUTSIDE[0][0]).read_bytes()
    response = upload(api, 'any.qcow2', body)
    assert (response.status, response.json['code']) == (501, 'not_supported')


def disk_doc(source, form='qcow2', kind='file'):
    doc = json.loads(json.dumps(TEST0))
    driver = {'@name': 'qemu', **({'@type': form} if form else {})}
    doc['domain']['devices']['disk'] = {
        '@type': kind, '@device': 'disk', 'driver': driver,
        'source': source, 'target': {'@dev': 'xvda', '@bus': 'xen'}}
    return doc


def defined(client):
    return sorted(dom.name() for dom in client.conn.listAllDomains())


@pytest.mark.parametrize('options, named', OUTSIDE)
def test_creating_a_domain_on_an_image_that_names_a_file_outside_is_403(confined, tmp_path,
                                                                        options, named):
    image = made_image(tmp_path / 'images', 'evil.img', options)
    before = defined(confined)
    response = confined.post(NODES + '/create', disk_doc({'@file': str(image)}, form=None))
    refused(response, named, 'evil.img')
    assert defined(confined) == before


def test_a_backing_chain_is_followed_to_its_end(confined, tmp_path):
    images = tmp_path / 'images'
    made_image(images, 'base.qcow2', ['-f', 'qcow2', '-F', 'raw', '-b', '/etc/passwd'])
    top = made_image(images, 'top.qcow2', ['-f', 'qcow2', '-F', 'qcow2', '-b', 'base.qcow2'])
    refused(confined.post(NODES + '/create', disk_doc({'@file': str(top)})), '/etc/passwd',
            'base.qcow2')
    assert 'test0' not in defined(confined)


def test_a_volume_disk_s_image_is_read_too(confined, tmp_path):
    made_image(tmp_path / 'images', 'evil.qcow2', OUTSIDE[0][0])
    confined.conn.storagePoolLookupByName('local').createXML(
        "<volume><name>evil.qcow2</name><capacity>4096</capacity></volume>", 0)
    doc = disk_doc({'@pool': 'local', '@volume': 'evil.qcow2'}, form=None, kind='volume')
    refused(confined.post(NODES + '/create', doc), '/etc/passwd')
    assert 'test0' not in defined(confined)


def test_an_attribute_in_another_namespace_is_400_before_anything_is_read(confined, tmp_path):
    # libvirt would read p:file as file: a spelling we refuse, policy or not (docs/security.md)
    image = made_image(tmp_path / 'images', 'evil.qcow2', OUTSIDE[0][0])
    doc = disk_doc({'@xmlns:p': 'urn:x', '@p:file': str(image)})
    response = confined.post(NODES + '/create', doc)
    assert (response.status, response.json['code']) == (400, 'bad_parameter')
    assert 'test0' not in defined(confined)


def test_attach_and_update_are_judged_too(confined, tmp_path):
    image = made_image(tmp_path / 'images', 'evil.qcow2', OUTSIDE[0][0])
    disk = {'disk': disk_doc({'@file': str(image)})['domain']['devices']['disk']}
    for action in ('attach', 'update'):
        refused(confined.post(NODES + '/web/devices/' + action, disk), '/etc/passwd')


def test_a_disk_declared_raw_is_not_read_as_qcow2(confined, tmp_path):
    # QEMU reads it as raw: its first bytes are the guest's, whatever they look like.
    image = made_image(tmp_path / 'images', 'guest.raw', OUTSIDE[0][0])
    response = confined.post(NODES + '/create', disk_doc({'@file': str(image)}, form='raw'))
    assert response.status == 201


def test_an_image_whose_chain_stays_inside_is_created(confined, tmp_path):
    images = tmp_path / 'images'
    made_image(images, 'base.qcow2', ['-f', 'qcow2', '1M'])
    top = made_image(images, 'top.qcow2', ['-f', 'qcow2', '-F', 'qcow2', '-b', 'base.qcow2'])
    assert confined.post(NODES + '/create', disk_doc({'@file': str(top)})).status == 201


def test_cloning_an_image_that_names_a_file_outside_is_403(confined, tmp_path):
    # libvirt clones a qcow2 with qemu-img convert, which reads the backing file into the copy.
    made_image(tmp_path / 'images', 'evil.qcow2', OUTSIDE[0][0])
    confined.conn.storagePoolLookupByName('local').createXML(
        "<volume><name>evil.qcow2</name><capacity>4096</capacity>"
        "<target><format type='qcow2'/></target></volume>", 0)
    refused(confined.post(IMAGES + '/local/evil.qcow2/clone', query='name=copy.raw&format=raw'),
            '/etc/passwd')
    assert volumes(confined, 'local') == ['evil.qcow2', 'victim.raw']


# -- an upload cut off by the daemon's death: incomplete after a restart ------------------------

DIES_MID_UPLOAD = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from conftest import Client
from xend_rest import streams
from xend_rest.app import make_app

def upload_then_die(conn, vol, chunks, length):
    next(iter(chunks))  # the first bytes arrived; then the daemon is killed
    os.kill(os.getpid(), signal.SIGKILL)

streams.upload = upload_then_die
api = Client(make_app(uri=sys.argv[2], state_dir=sys.argv[3]))
api.request('PUT', '/libvirt/xen/images/default/db.raw/upload', body=b'x' * 4096,
            headers={'CONTENT_TYPE': 'application/octet-stream'})
"""


@pytest.fixture
def restarted(node_uri, tmp_path):
    """An app on a state directory whose previous daemon was killed while uploading db.raw
    into the pool default (db's disk names that file): (its client, the marker's path)."""
    state = tmp_path / 'state'
    subprocess.run([sys.executable, '-c', DIES_MID_UPLOAD, os.path.dirname(__file__), node_uri,
                    str(state)], check=False, timeout=60, cwd=ROOT)
    # The test driver's state died with that process; libvirtd's would not: the image stays.
    node = node_uri[len('test://'):]
    after = node.replace('node.xml', 'after.xml')
    with open(node) as f, open(after, 'w') as out:
        out.write(f.read().replace('</pool>', VOLUME_XML % ('db.raw', 1, 'raw') + '</pool>', 1))
    app = make_app(uri='test://' + after, state_dir=str(state))
    yield Client(app), state
    app.close()


def markers(state):
    return sorted(str(path.relative_to(state)) for path in state.rglob('*') if path.is_file())


def test_an_image_whose_upload_the_daemon_s_death_cut_off_is_incomplete(restarted):
    api, state = restarted
    pool_uuid = api.conn.storagePoolLookupByName('default').UUIDString()
    assert markers(state) == ['uploads/xen/%s/db.raw' % pool_uuid]
    image = listed(api)['default', 'db.raw']
    assert (image['Uploading'], image['Incomplete'], image['UsedBy']) == (False, True, ['db'])
    assert listed(api)['default', 'web.raw']['Incomplete'] is False
    inspected = api.get(IMAGES + '/default/db.raw/json').json
    assert (inspected['Uploading'], inspected['Incomplete']) == (False, True)
    response = api.post(IMAGES + '/default/db.raw/clone', query='name=copy.raw')
    assert (response.status, response.json['code']) == (409, 'image_incomplete')
    # no force needed: half an image is of no use to the domain naming it
    assert api.post(IMAGES + '/default/db.raw/delete').status == 204
    assert 'db.raw' not in volumes(api)
    assert markers(state) == []


def test_a_marker_whose_image_is_gone_is_dropped(restarted):
    api, state = restarted
    api.conn.storagePoolLookupByName('default').storageVolLookupByName('db.raw').delete(0)
    assert ('default', 'db.raw') not in listed(api)
    assert markers(state) == []
    assert api.post(IMAGES + '/default/create', query='name=db.raw&capacity=1M').json[
        'Incomplete'] is False


def test_a_marker_for_another_image_of_the_name_is_dropped(restarted):
    # deleted and created again outside this API, before anything listed the pool
    api, state = restarted
    pool = api.conn.storagePoolLookupByName('default')
    pool.storageVolLookupByName('db.raw').delete(0)
    (marker,) = state.rglob('db.raw')
    marker.write_text(marker.read_text().replace('/var/lib/xen/images/db.raw', '/elsewhere'))
    pool.createXML("<volume><name>db.raw</name><capacity>4096</capacity></volume>", 0)
    assert listed(api)['default', 'db.raw']['Incomplete'] is False
    assert markers(state) == []


def test_creating_an_image_of_a_marked_name_drops_the_marker(restarted):
    api, state = restarted
    api.conn.storagePoolLookupByName('default').storageVolLookupByName('db.raw').delete(0)
    assert api.post(IMAGES + '/default/create', query='name=db.raw&capacity=1M').status == 201
    assert markers(state) == []


@pytest.fixture
def stateful(node_uri, tmp_path):
    app = make_app(uri=node_uri, state_dir=str(tmp_path / 'state'))
    yield Client(app), tmp_path / 'state'
    app.close()


def test_a_running_upload_is_marked_for_other_processes_too(stateful, node_uri):
    api, state = stateful
    other_path = node_uri[len('test://'):].replace('node.xml', 'other.xml')
    shutil.copy(node_uri[len('test://'):], other_path)
    other = Client(make_app(uri='test://' + other_path, state_dir=str(state)))  # same state dir
    pool = api.conn.storagePoolLookupByName('default')
    with api.app.hypervisor.uploads.holding((pool.UUIDString(), 'spare.qcow2')) as upload:
        upload.created(pool.storageVolLookupByName('spare.qcow2'))
        for client in (api, other):
            image = listed(client)['default', 'spare.qcow2']
            assert (image['Uploading'], image['Incomplete']) == (True, True)
            response = client.post(IMAGES + '/default/spare.qcow2/delete', query='force=1')
            assert (response.status, response.json['code']) == (409, 'upload_in_progress')
        upload.ended()
    assert markers(state) == []
    assert listed(other)['default', 'spare.qcow2']['Incomplete'] is False
    other.app.close()


def test_a_failed_upload_leaves_no_marker(stateful):
    api, state = stateful
    response = upload(api, 'new.raw', b'x' * 4096)
    assert (response.status, response.json['code']) == (501, 'not_supported')
    assert 'new.raw' not in volumes(api)
    assert markers(state) == []


def test_an_upload_that_cannot_be_marked_is_refused_before_anything_is_created(node_uri, tmp_path):
    (tmp_path / 'state').write_text('a file where the state directory should be')
    app = make_app(uri=node_uri, state_dir=str(tmp_path / 'state'))
    response = upload(Client(app), 'new.raw', b'x' * 4096)
    assert (response.status, response.json['code']) == (500, 'state_unwritable')
    assert 'new.raw' not in volumes(Client(app))
    app.close()
