"""Image files as the host sees them: which names are one file (imagefiles.file_keys), and the
files an image's header names (imagefiles.references, chain), on images qemu-img really made."""
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
        ('parent', 'base.vmdk', None)]


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
