"""Image files as the host sees them: which names are one file (imagefiles.file_keys), and the
files an image's header names (imagefiles.references, chain), on images qemu-img really made."""
import json
import os
import subprocess

import pytest

from xend_rest import imagefiles
from xend_rest.imagefiles import Unjudged, bytes_reader, chain, file_keys, references, resolve


def same_file(a, b, local=True):
    return bool(file_keys(str(a), local) & file_keys(str(b), local))


@pytest.mark.parametrize('a, b', [
    ('/var/lib/xen/images/a.raw', '//var/lib/xen/images/a.raw'),
    ('/var/lib/xen/images/a.raw', '/var/lib/xen/images//a.raw'),
    ('/var/lib/xen/images/a.raw', '/var/lib/xen/./images/a.raw/'),
    ('/var/lib/xen/images/a.raw', '/var/lib/xen/iso/../images/a.raw'),
])
@pytest.mark.parametrize('local', [True, False])
def test_spellings_of_one_name(a, b, local):
    assert same_file(a, b, local)


def test_different_names_are_different_files():
    assert not same_file('/var/lib/xen/images/a.raw', '/var/lib/xen/images/b.raw')
    assert not same_file('/var/lib/xen/images/a.raw', '/var/lib/xen/images/b.raw', local=False)


def test_links_count_on_this_host_only(tmp_path):
    (tmp_path / 'real').mkdir()
    (tmp_path / 'real' / 'a.raw').write_bytes(b'x')
    (tmp_path / 'link').symlink_to(tmp_path / 'real')
    os.link(tmp_path / 'real' / 'a.raw', tmp_path / 'hard.raw')
    for other in (tmp_path / 'link' / 'a.raw', tmp_path / 'hard.raw'):
        assert same_file(tmp_path / 'real' / 'a.raw', other)
        # through a remote connection the links here say nothing about the host's files
        assert not same_file(tmp_path / 'real' / 'a.raw', other, local=False)


@pytest.mark.parametrize('uri, local', [
    ('xen:///system', True), ('qemu:///system', True), ('test:///tmp/node.xml', True),
    ('qemu+ssh://localhost/system', True), ('xen+tls://dom0.example/system', False),
    ('qemu+ssh://root@10.0.0.2/system', False),
])
def test_is_local(uri, local):
    assert imagefiles.is_local(uri) is local


def refs(path, form=None):
    with imagefiles.opened(str(path)) as read:
        return references(read, form)


SIZES = ('1M',)


@pytest.fixture
def made(tmp_path):
    """make(name, qemu-img create options..., [size]): an image qemu-img made in tmp_path."""
    def make(name, *args):
        size = [args[-1]] if args and args[-1] in SIZES else []
        options = list(args[:-1] if size else args)
        subprocess.run(['qemu-img', 'create', '-q', *options, name, *size], check=True,
                       cwd=tmp_path)
        return tmp_path / name
    return make


@pytest.mark.parametrize('args, expected', [
    (('x.qcow2', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/passwd'),
     [('backing file', '/etc/passwd', 'raw')]),
    (('x.qcow2', '-f', 'qcow2', '-o', 'cluster_size=2M', '-F', 'raw', '-b', '/dev/sda', '-u',
      '1M'), [('backing file', '/dev/sda', 'raw')]),
    (('x.qcow2', '-f', 'qcow2', '-o', 'compat=0.10', '-F', 'raw', '-b', '/etc/passwd'),
     [('backing file', '/etc/passwd', 'raw')]),
    (('x.qcow2', '-f', 'qcow2', '-o', 'data_file=data.raw', '1M'),
     [('data file', 'data.raw', 'raw')]),
    (('x.qcow', '-f', 'qcow', '-F', 'raw', '-b', '/etc/passwd'),
     [('backing file', '/etc/passwd', None)]),
    (('x.qed', '-f', 'qed', '-F', 'raw', '-b', '/etc/passwd'),
     [('backing file', '/etc/passwd', None)]),
    (('x.vmdk', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', '1M'),
     [('extent', 'x-flat.vmdk', 'raw')]),
    (('x.qcow2', '-f', 'qcow2', '1M'), []),
    (('x.vmdk', '-f', 'vmdk', '1M'), []),  # monolithic sparse: its data is its own
    (('x.raw', '-f', 'raw', '1M'), []),
])
def test_references_of_real_images(made, args, expected):
    assert refs(made(*args)) == expected


def test_a_vmdk_parent(made, tmp_path):
    made('base.vmdk', '-f', 'vmdk', '1M')
    assert refs(made('x.vmdk', '-f', 'vmdk', '-F', 'vmdk', '-b', 'base.vmdk')) == [
        ('parent', 'base.vmdk', 'vmdk')]  # QEMU opens a VMDK's parent as a VMDK, whatever it is


# VMDK descriptors, spelt as QEMU reads them (block/vmdk.c: extent lines through sscanf, the
# parent through strstr): what we find must be what qemu-img itself opens, no more, no less.
VMDK_HEAD = (b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
             b'createType="monolithicFlat"\n')
EXTENT = b'RW 4 FLAT "ext.raw" 0\n'
VMDK_SPELLINGS = {
    'plain': EXTENT,
    'sectors +4': b'RW +4 FLAT "ext.raw" 0\n',
    'no blank before the type': b'RW 4FLAT "ext.raw" 0\n',
    'tabs, CRLF': b'RW\t4\tFLAT\t"ext.raw"\t0\r\n',
    'leading blanks': b'   RW 4 FLAT "ext.raw" 0\n',
    'over three lines': b'RW\n4 FLAT\n"ext.raw" 0\n',
    'after a blank line (read twice)': b'\n' + EXTENT,
    'trailing words': b'RW 4 FLAT "ext.raw" 0 and more\n',
    'a name with a space and ..': b'RW 4 FLAT "sub dir/../ext.raw" 0\n',
    'VMFS': b'RW 4 VMFS "ext.raw"\n',
    'read-only extents are not opened': b'RDONLY 4 FLAT "other.raw" 0\nNOACCESS 4 FLAT "o.raw" 0\n' + EXTENT,
    'no sectors': b'RW 0 FLAT "other.raw" 0\nRW -4 FLAT "other.raw" 0\n' + EXTENT,
    'an unknown type': b'RW 4 ZERO "other.raw"\n' + EXTENT,
    'a NUL ends the descriptor': EXTENT + b'\0RW 4 FLAT "other.raw" 0\n',
    'parent': b'parentFileNameHint="base.vmdk"\n' + EXTENT,
    'parent in a comment': b'# parentFileNameHint="base.vmdk"\n' + EXTENT,
    'parent after another separator': b'parentFileNameHint:"base.vmdk"\n' + EXTENT,
    'parent inside a word': b'xparentFileNameHint="base.vmdk"x\n' + EXTENT,
    'the first parent counts': b'# parentFileNameHint="base.vmdk"\nparentFileNameHint="o.vmdk"\n' + EXTENT,
    'an empty parent': b'parentFileNameHint=""\n' + EXTENT,
}


def qemu_opens(path, probed=False):
    """The files QEMU opens along with an image (besides itself), as qemu-img info says."""
    info = subprocess.run(['qemu-img', 'info', '--output=json'] + ([] if probed else ['-f', 'vmdk'])
                          + [str(path)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    names = [extent['filename'] for extent in data['format-specific']['data']['extents']]
    names += [data['full-backing-filename']] if data.get('backing-filename') else []
    return sorted(os.path.realpath(name) for name in names if name != str(path))


def we_find(path, form):
    return sorted(os.path.realpath(target) for *_, targets in chain(str(path), form, follow=False)
                  for target in targets)


@pytest.mark.parametrize('lines', VMDK_SPELLINGS.values(), ids=list(VMDK_SPELLINGS))
@pytest.mark.parametrize('probed', [False, True], ids=['declared vmdk', 'probed'])
def test_a_vmdk_descriptor_names_what_qemu_opens(made, tmp_path, lines, probed):
    for name in ('ext.raw', 'other.raw', 'o.raw'):
        made(name, '-f', 'raw', '1M')
    (tmp_path / 'sub dir').mkdir()
    made('base.vmdk', '-f', 'vmdk', '1M')
    path = tmp_path / 'd.vmdk'
    # QEMU probes a descriptor in its first 512 bytes, past comments
    path.write_bytes((b'# padding\n' * 20 if probed else b'') + VMDK_HEAD + lines)
    assert we_find(path, None if probed else 'vmdk') == qemu_opens(path, probed)
    assert we_find(path, None if probed else 'vmdk')  # (each names something)


def test_an_invalid_extent_line_ends_the_descriptor(made, tmp_path):
    # (QEMU then refuses the image, after opening the extents before the line)
    made('ext.raw', '-f', 'raw', '1M')
    path = tmp_path / 'd.vmdk'
    path.write_bytes(VMDK_HEAD + EXTENT + b'RW 4 FLAT "other.raw"\nRW 4 FLAT "o.raw" 0\n')
    assert [name for *_, name, _ in chain(str(path), 'vmdk')] == ['ext.raw']
    info = subprocess.run(['qemu-img', 'info', '-f', 'vmdk', str(path)], capture_output=True, text=True)
    assert 'Invalid extent line: RW 4 FLAT "other.raw"' in info.stderr


def test_a_sparse_extent_s_own_descriptor_is_read_too(made, tmp_path):
    """A SPARSE extent of no capacity is a descriptor itself, whose extents QEMU opens as the
    top descriptor's, from the top's directory."""
    made('ext.raw', '-f', 'raw', '1M')
    (tmp_path / 'sub').mkdir()
    inner = bytearray(512 * 3)
    inner[0:4] = b'KDMV'
    inner[4:8] = (1).to_bytes(4, 'little')  # version 1, capacity 0, descriptor at sector 1
    inner[28:36] = (1).to_bytes(8, 'little')
    text = VMDK_HEAD + b'RW +4 FLAT "ext.raw" 0\n'
    inner[512:512 + len(text)] = text
    (tmp_path / 'sub' / 'inner.vmdk').write_bytes(bytes(inner))
    path = tmp_path / 'd.vmdk'
    path.write_bytes(VMDK_HEAD + b'RW 4 SPARSE "sub/inner.vmdk"\n')
    found = [name for *_, name, _ in chain(str(path), 'vmdk')]
    assert found == ['sub/inner.vmdk', 'ext.raw']
    assert qemu_opens(path) == [str(tmp_path / 'ext.raw')]  # (the sparse extent opened, not listed)
    assert we_find(path, 'vmdk') == [str(tmp_path / 'sub' / 'inner.vmdk')]
    assert [targets for *_, targets in chain(str(path), 'vmdk')][1] == [str(tmp_path / 'ext.raw')]


def test_a_vmdk_descriptor_without_its_version_line_is_read_when_declared_vmdk(tmp_path):
    # QEMU reads any file declared vmdk as a descriptor; probing needs the version line.
    path = tmp_path / 'x.vmdk'
    path.write_bytes(b'createType="monolithicFlat"\nRW 2048 FLAT "/etc/shadow" 0\n')
    assert refs(path) == []
    assert refs(path, 'vmdk') == [('extent', '/etc/shadow', 'raw')]


def test_a_declared_raw_image_names_nothing(made):
    assert refs(made('x.qcow2', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/passwd'), 'raw') == []


def test_chain_follows_backing_files(made, tmp_path):
    made('base.qcow2', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/passwd')
    top = made('top.qcow2', '-f', 'qcow2', '-F', 'qcow2', '-b', 'base.qcow2')
    assert list(chain(str(top))) == [
        (str(top), 'backing file', 'base.qcow2', [str(tmp_path / 'base.qcow2')]),
        (str(tmp_path / 'base.qcow2'), 'backing file', '/etc/passwd', ['/etc/passwd'])]
    assert len(list(chain(str(top), follow=False))) == 1


def test_a_chain_that_loops_ends(made, tmp_path):
    made('a.qcow2', '-f', 'qcow2', '1M')
    made('b.qcow2', '-f', 'qcow2', '-F', 'qcow2', '-b', 'a.qcow2', '-u', '1M')
    subprocess.run(['qemu-img', 'rebase', '-u', '-F', 'qcow2', '-b', 'b.qcow2', 'a.qcow2'],
                   check=True, cwd=tmp_path)
    assert len(list(chain(str(tmp_path / 'a.qcow2')))) == imagefiles.MAX_CHAIN + 1


def test_names_beyond_the_head_at_hand_are_unjudged(made):
    data = made('x.qcow2', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/passwd').read_bytes()
    offset = int.from_bytes(data[8:16], 'big')
    with pytest.raises(Unjudged):
        references(bytes_reader(data[:offset + 4], complete=False))
    assert references(bytes_reader(data[:offset + 11], complete=False)) == [
        ('backing file', '/etc/passwd', 'raw')]
    assert references(bytes_reader(data[:offset + 4], complete=True)) == [
        ('backing file', '/etc', 'raw')]  # the whole image: what it names is what it has


@pytest.mark.parametrize('what, name, paths', [
    ('backing file', '/etc/passwd', ['/etc/passwd']),
    ('backing file', 'base.raw', ['/pool/dir/base.raw']),
    ('backing file', '../../etc/passwd', ['/pool/dir/../../etc/passwd']),
    ('data file', 'data.raw', ['/pool/dir/data.raw', '/data.raw']),
    ('backing file', 'json:{"file": {"filename": "/etc/passwd"}}', None),
    ('backing file', 'file:/etc/passwd', None),
    ('backing file', 'nbd://evil/export', None),
    ('backing file', 'nbd:unix:/run/x.sock', None),
    ('backing file', '', None),
])
def test_resolve(what, name, paths):
    assert resolve(what, name, '/pool/dir/image.qcow2') == paths


def test_a_fifo_is_not_read(tmp_path):
    os.mkfifo(tmp_path / 'fifo')
    with imagefiles.opened(str(tmp_path / 'fifo')) as read:
        assert read is None
    assert list(chain(str(tmp_path / 'fifo'))) == []


def test_offsets_past_any_file_are_read_as_nothing(made):
    # a header's offsets are any 64-bit numbers; the name there is empty: no backing file
    path = made('x.qcow2', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/passwd')
    data = bytearray(path.read_bytes())
    data[8:16] = (1 << 63).to_bytes(8, 'big')
    path.write_bytes(bytes(data))
    assert refs(path) == []
