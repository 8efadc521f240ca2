"""Create's Warnings name exactly what libvirt dropped, checked against what libvirt stored.

Definitions in tests/definitions/ are written as Xen and QEMU users write them; each test reads the
stored definition itself (with secrets, as only the daemon may) to show the Warning is true.
"""
import pathlib
import time

import libvirt
import pytest
from hypothesis import given, strategies as st

from xend_rest.hypervisor import convert

NODES = '/libvirt/xen/nodes'
DEFINITIONS = pathlib.Path(__file__).parent / 'definitions'
STORED = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE


def definition(name):
    return convert.xml_to_dict((DEFINITIONS / name).read_text())


def create(api, body):
    """POST the body; (its Warnings, the domain as libvirt stored it, the raw answer)."""
    response = api.post(NODES + '/create', body)
    assert response.status == 201, response.json
    stored = api.conn.lookupByUUIDString(response.json['Uuid']).XMLDesc(STORED)
    return response.json['Warnings'], convert.xml_to_dict(stored)['domain'], response.body


def test_a_vnc_password_libvirt_kept_is_no_warning_and_never_answered(api):
    warnings, stored, answer = create(api, definition('xen-hvm-vnc.xml'))
    assert warnings == []
    assert stored['devices']['graphics']['@passwd'] == 'Xen-s3cret'
    assert b'Xen-s3cret' not in answer
    public = api.get(NODES + '/win2k19/json', 'flag=2').json['domain']
    assert '@passwd' not in public['devices']['graphics']  # why it once looked dropped


def test_a_pty_path_copied_from_a_running_guest_is_reported_on_its_own_port(api):
    # A pty's path is chosen when the guest starts; libvirt keeps none in a definition.
    body = definition('xen-hvm-vnc.xml')
    serials = body['domain']['devices']['serial']
    serials.reverse()  # the posted order need not be libvirt's
    serials[1]['source'] = {'@path': '/dev/pts/3'}
    warnings, stored, _ = create(api, body)
    assert warnings == ['domain.devices.serial[1].source was dropped by libvirt']
    assert [serial['target']['@port'] for serial in stored['devices']['serial']] == ['1', '0']
    assert 'source' not in stored['devices']['serial'][1]
    assert stored['devices']['serial'][0]['source']['@service'] == '4555'


def test_a_whole_cachetune_libvirt_dropped_is_named(api):
    warnings, stored, _ = create(api, definition('qemu-tuned.xml'))
    assert warnings == ['domain.cputune.cachetune[1] was dropped by libvirt']
    assert stored['cputune']['cachetune']['@vcpus'] == '0-1'  # one left: no longer a list


def test_units_case_and_defaults_libvirt_rewrote_are_no_warnings(api):
    body = definition('xen-pv-kernel.xml')
    warnings, stored, _ = create(api, body)
    assert warnings == []
    assert stored['memory'] == {'@unit': 'KiB', '#text': '2097152'}
    assert stored['currentMemory'] == {'@unit': 'KiB', '#text': '1048576'}
    assert stored['uuid'] == body['domain']['uuid'].lower()
    assert [nic['mac']['@address'] for nic in stored['devices']['interface']] == [
        '00:16:3e:5a:0b:01', '00:16:3e:5a:0b:02']
    assert stored['devices']['disk'][1]['driver'] == {'@name': 'qemu', '@type': 'raw'}


def test_numatune_placement_and_cpusets_libvirt_rewrote_are_no_warnings(api):
    warnings, stored, _ = create(api, definition('qemu-tuned.xml'))
    assert warnings == ['domain.cputune.cachetune[1] was dropped by libvirt']  # and nothing else
    assert stored['numatune']['memory'] == {'@mode': 'strict', '@nodeset': '0'}
    assert stored['cputune']['emulatorpin'] == {'@cpuset': '0-1'}
    assert stored['cpu']['numa']['cell'] == {'@id': '0', '@cpus': '0-3', '@memory': '8388608',
                                             '@unit': 'KiB'}


def test_each_posted_item_is_matched_to_its_own_stored_one(api):
    body = definition('xen-pv-kernel.xml')
    disks = body['domain']['devices']['disk']
    disks[1]['driver']['@glitter'] = 'yes'  # libvirt knows no such attribute
    disks.reverse()
    warnings, _, _ = create(api, body)
    assert warnings == ['domain.devices.disk[0].driver.@glitter was dropped by libvirt']


# Equal forms, one row each: (posted, stored) that libvirt holds as the same value. A changed
# value is not reported (only what libvirt left out is), so each row is also checked where it
# matters: as the identity (here an address) that tells two similar list items apart.
EQUAL_FORMS = [
    ({'@unit': 'MiB', '#text': '1024'}, {'@unit': 'KiB', '#text': '1048576'}),
    ({'@unit': 'GiB', '#text': '8'}, {'@unit': 'KiB', '#text': '8388608'}),
    ({'@size': '3', '@unit': 'MiB'}, {'@size': '3072', '@unit': 'KiB'}),
    ('1024', {'@unit': 'KiB', '#text': '1024'}),
    ('02', '2'),
    (' text\n', 'text'),  # how xml_to_dict reads text back
    ({'@slot': '5'}, {'@slot': '0x05'}),
    ({'@bus': '010'}, {'@bus': '0x08'}),  # libvirt reads addresses with C's rules: 010 is octal
    ({'@slot': '0X1f'}, {'@slot': '0x1f'}),
    ({'@cpuset': '0,1,2,3'}, {'@cpuset': '0-3'}),
    ({'@nodeset': '0-3,^2'}, {'@nodeset': '0-1,3'}),
    ({'@address': '52:54:00:AB:CD:EF'}, {'@address': '52:54:00:ab:cd:ef'}),
    ('2B5F3E8C6A714C1E9D0A5B7F0E2C9A14', '2b5f3e8c-6a71-4c1e-9d0a-5b7f0e2c9a14'),
]
# Values that look alike but that libvirt reads as different ones.
UNEQUAL_FORMS = [
    ({'@unit': 'MB', '#text': '1024'}, {'@unit': 'KiB', '#text': '1048576'}),
    ({'@slot': '010'}, {'@slot': '0x0a'}),
    ({'@autoport': 'on'}, {'@autoport': 'no'}),  # libvirt 9 reads anything but yes as no
    ({'@cpuset': '0-3'}, {'@cpuset': '0-2'}),
]


def pair(posted, stored):
    """Two posted items told apart by their address, the first in `posted`'s form, and their
    stored forms in another order; the first lost its child's @a."""
    other = {'@zz': 'other'}
    return ({'x': [{'address': posted, 'child': {'@a': '1'}}, {'address': other}]},
            {'x': [{'address': other}, {'address': stored, 'child': {}}]})


@pytest.mark.parametrize('posted, stored', EQUAL_FORMS)
def test_an_equal_form_is_kept_and_identifies_its_item(posted, stored):
    assert convert.dropped({'v': posted}, {'v': stored}, 'd') == []
    assert convert.dropped(*pair(posted, stored), 'd') == ['d.x[0].child.@a']


@pytest.mark.parametrize('posted, stored', UNEQUAL_FORMS)
def test_an_unequal_form_does_not_identify_its_item(posted, stored):
    assert convert.dropped(*pair(posted, stored), 'd') == ['d.x[0]']


@pytest.mark.parametrize('tag, posted, stored, expected', [
    # identity beats similarity: the posted disk is the stored vdb, which lost its cache
    ('disk', [{'target': {'@dev': 'vda'}, 'driver': {'@cache': 'none'}},
              {'target': {'@dev': 'vdb'}, 'driver': {'@cache': 'none'}}],
     [{'target': {'@dev': 'vda'}, 'driver': {'@cache': 'none'}},
      {'target': {'@dev': 'vdb'}, 'driver': {}}],
     ['d.disk[1].driver.@cache']),
    # two posted items never share one stored item: the second is gone
    ('channel', [{'@type': 'unix'}, {'@type': 'unix'}], [{'@type': 'unix'}], ['d.channel[1]']),
    # an identity only one side has (an address libvirt assigned) does not separate them
    ('disk', [{'target': {'@dev': 'vda'}}],
     [{'target': {'@dev': 'vda'}, 'address': {'@type': 'pci', '@slot': '0x04'}}], []),
    # nor does a part of one that libvirt dropped; that part is reported
    ('disk', [{'target': {'@dev': 'vda'}, 'address': {'@type': 'pci', '@slot': '5', '@x': '1'}},
              {'target': {'@dev': 'vdb'}}],
     [{'target': {'@dev': 'vdb'}}, {'target': {'@dev': 'vda'},
                                     'address': {'@type': 'pci', '@slot': '0x05'}}],
     ['d.disk[0].address.@x']),
    # a conflicting identity does: the posted vdb is gone though a vdc is there
    ('disk', [{'target': {'@dev': 'vdb'}}], [{'target': {'@dev': 'vdc'}}], ['d.disk']),
    # an address in decimal names the same device as libvirt's hex
    ('controller', [{'@type': 'pci', 'address': {'@bus': '1'}, 'x': '1'},
                    {'@type': 'pci', 'address': {'@bus': '2'}}],
     [{'@type': 'pci', 'address': {'@bus': '0x02'}}, {'@type': 'pci', 'address': {'@bus': '0x01'}}],
     ['d.controller[0].x']),
    # a default libvirt stores as unset is no loss; another value is
    ('driver', {'@cache': 'default', '@io': 'native'}, {}, ['d.driver.@io']),
    ('memory', {'@placement': 'static', '@nodeset': '0'}, {'@nodeset': '0'}, []),
    ('vcpu', {'@placement': 'auto'}, {}, ['d.vcpu.@placement']),
])
def test_list_items_are_matched_one_to_one(tag, posted, stored, expected):
    assert convert.dropped({tag: posted}, {tag: stored}, 'd') == expected


def test_a_list_too_long_to_pair_every_item_is_compared_in_order_in_bounded_time():
    count = 20000  # fits a 1 MiB body; pairing every item with every other would take hours
    posted = {'item': [{'@n': index, 'v': 'x'} for index in range(count)]}  # numbers, not text
    stored = {'item': [{'@n': str(index), 'v': 'x'} for index in range(count - 1)]}
    started = time.monotonic()
    assert convert.dropped(posted, stored, 'd') == ['d.item[%d]' % (count - 1)]
    assert time.monotonic() - started < 10


def test_items_libvirt_stored_exactly_pair_first():
    posted = {'x': [{'@a': '1'}, {'@a': '1', '@b': '2'}]}
    stored = {'x': [{'@a': '1', '@b': '2'}]}  # the first posted item is what libvirt dropped
    assert convert.dropped(posted, stored, 'd') == ['d.x[0]']


@pytest.mark.parametrize('posted, stored', [
    ('09', '0x09'), ('9' * 5000, '1'), ('0-99999999999', '5'), ('0x' + 'f' * 5000, '0x1'),
    ({'@unit': 'KiB', '#text': '9' * 5000}, {'@unit': 'KiB', '#text': '1'}),
])
def test_values_no_number_libvirt_reads_are_compared_as_text(posted, stored):
    assert convert.dropped(*pair(posted, stored), 'd') == ['d.x[0]']


def documents(scalars):
    """Elements in the xmltodict shape, from a few colliding names and number-like values."""
    def element(children):
        child = children | st.lists(children, min_size=1, max_size=3)
        return st.builds(lambda attributes, kids: {**attributes, **kids},
                         st.dictionaries(st.sampled_from(['@a', '@unit', '@size', '#text']),
                                         scalars, max_size=3),
                         st.dictionaries(st.sampled_from(['address', 'target', 'x']), child,
                                         max_size=3))
    return st.recursive(st.none() | scalars, element, max_leaves=15)


texts = st.sampled_from(['0x1f', '010', '09', '0-3', '1', 'KiB', 'MiB', 'default', '']) | st.text(
    max_size=4).filter(lambda text: not convert.XML_INVALID_CHARS.search(text))
posted_documents = documents(texts | st.integers(-2 ** 63, 2 ** 63))
stored_documents = documents(texts)  # libvirt's XML holds text only


@given(posted_documents, stored_documents)
def test_any_pair_of_documents_is_compared_without_error(posted, stored):
    assert isinstance(convert.dropped(posted, stored, 'd'), list)


@given(posted_documents)
def test_a_document_stored_as_posted_lost_nothing(doc):
    stored = convert.xml_to_dict(convert.dict_to_xml({'d': doc}, 'd'))['d']
    assert convert.dropped(doc, stored, 'd') == []
