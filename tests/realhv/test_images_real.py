"""Images on a real libvirtd, through the real threaded server over HTTP: bytes really move.

Each module run gets two directory pools of its own under a tmp dir (xrt-<session>-images and
-spare), removed at the end with whatever they hold.
"""
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from xend_rest.app import make_app
from xend_rest.security import Guard
from xend_rest.server import Server

from .conftest import SESSION_PREFIX
from .guest import wait_until

IMAGES = '/libvirt/qemu/images'
NODES = '/libvirt/qemu/nodes'
ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
GiB = 1 << 30
BIG = 300 * MiB + 12345  # several hundred MiB, and not a whole number of chunks


def _define_pool(conn, name, path):
    os.makedirs(path, exist_ok=True)
    pool = conn.storagePoolDefineXML(
        "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (name, path))
    pool.build(0)
    pool.create(0)
    return pool


def _remove_pool(pool):
    if pool.isActive():
        for vol in pool.listAllVolumes():
            vol.delete(0)
        pool.destroy()
    pool.undefine()


@pytest.fixture(scope='module')
def pools(libvirt_conn, tmp_path_factory):
    """(main pool name, spare pool name): two dir pools of this module's own."""
    root = tmp_path_factory.mktemp('pools')
    made = [_define_pool(libvirt_conn, SESSION_PREFIX + stem, str(root / stem))
            for stem in ('images', 'spare')]
    yield tuple(pool.name() for pool in made)
    for pool in made:
        _remove_pool(pool)


@pytest.fixture
def pool(pools, libvirt_conn):
    """The main pool's name; each test starts with it empty."""
    yield pools[0]
    for name in pools:
        for vol in libvirt_conn.storagePoolLookupByName(name).listAllVolumes():
            vol.delete(0)


@pytest.fixture(scope='module')
def server(libvirtd):
    """The app on the real threaded server, on 127.0.0.1 and a free port: (host, port)."""
    app = make_app(connections={'qemu': libvirtd.uri})
    running = Server(app, ['127.0.0.1:0'], workers=4, timeout=10)
    running.start()
    yield running.addresses[0]
    running.shutdown(grace=5)
    app.close()


def chunks(seed, length, size=MiB):
    """`length` pseudo-random bytes in chunks: the same for the same seed, never all in memory."""
    rng = random.Random(seed)
    while length:
        chunk = rng.randbytes(min(size, length))
        length -= len(chunk)
        yield chunk


def digest(parts):
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part)
    return sha.hexdigest()


def request(server, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(*server, timeout=60)
    if method == 'PUT':  # uploads are the only PUTs, and carry octets
        headers = {'Content-Type': 'application/octet-stream', **(headers or {})}
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def upload(server, pool, name, seed, length, query=''):
    """PUT `length` seeded bytes as a streamed body; (status, JSON answer)."""
    conn = http.client.HTTPConnection(*server, timeout=60)
    try:
        conn.putrequest('PUT', '%s/%s/%s/upload%s' % (IMAGES, pool, name, query))
        conn.putheader('Content-Length', str(length))
        conn.putheader('Content-Type', 'application/octet-stream')
        conn.endheaders()
        for chunk in chunks(seed, length):
            conn.send(chunk)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def download(server, pool, name, headers=None):
    """(status, headers, sha256 of the body, body length), reading the body in chunks."""
    conn = http.client.HTTPConnection(*server, timeout=60)
    try:
        conn.request('GET', '%s/%s/%s/download' % (IMAGES, pool, name), headers=headers or {})
        response = conn.getresponse()
        sha, length = hashlib.sha256(), 0
        while True:
            data = response.read(MiB)
            if not data:
                break
            sha.update(data)
            length += len(data)
        return response.status, dict(response.getheaders()), sha.hexdigest(), length
    finally:
        conn.close()


def volume(conn, pool, name):
    """The volume, or None once it is gone."""
    try:
        return conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def holders(path):
    """Processes (libvirtd, its helpers) that hold `path` open."""
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            fds = os.listdir('/proc/%s/fd' % pid)
            if any(os.readlink('/proc/%s/fd/%s' % (pid, fd)) == path for fd in fds):
                found.append(pid)
        except OSError:
            continue  # gone meanwhile, or a kernel thread
    return found


# -- upload and download ------------------------------------------------------------------------

def test_big_upload_and_download_round_trip(server, pool, libvirt_conn):
    status, image = upload(server, pool, 'big.raw', seed=1, length=BIG)
    assert status == 201, image
    assert (image['Name'], image['Pool'], image['Capacity']) == ('big.raw', pool, BIG)
    assert image['Uploading'] is False
    vol = volume(libvirt_conn, pool, 'big.raw')
    assert vol.info()[1] == BIG
    assert os.path.getsize(vol.path()) == BIG

    status, headers, sha, length = download(server, pool, 'big.raw')
    assert status == 200
    assert headers['Content-Type'] == 'application/octet-stream'
    assert int(headers['Content-Length']) == length == BIG
    assert headers['Accept-Ranges'] == 'bytes'
    assert sha == digest(chunks(1, BIG))


def test_upload_with_a_larger_capacity(server, pool, libvirt_conn):
    status, image = upload(server, pool, 'disk.raw', seed=2, length=3 * MiB, query='?capacity=16M')
    assert (status, image['Capacity']) == (201, 16 * MiB)
    status, _, sha, length = download(server, pool, 'disk.raw')
    assert length == 16 * MiB  # the rest reads as zeros
    first = b''.join(chunks(2, 3 * MiB))
    assert sha == digest([first, bytes(13 * MiB)])


def test_uploaded_qcow2_is_seen_as_qcow2(server, pool, tmp_path):
    source = tmp_path / 'disk.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(source), '64M'], check=True)
    status, _, body = request(server, 'PUT', '%s/%s/disk.qcow2/upload' % (IMAGES, pool),
                              body=source.read_bytes())
    assert status == 201

    def described():
        _, _, body = request(server, 'GET', '%s/json?pool=%s' % (IMAGES, pool))
        return [(image['Format'], image['Capacity']) for image in json.loads(body)]

    # libvirtd re-reads the pool in a thread of its own once the upload stream has finished
    wait_until(lambda: described() == [('qcow2', 64 * MiB)], 10, 'the upload read as qcow2')
    assert download(server, pool, 'disk.qcow2')[2] == digest([source.read_bytes()])


def test_range_downloads(server, pool):
    data = b''.join(chunks(3, 2 * MiB + 17))
    assert upload(server, pool, 'small.raw', seed=3, length=len(data))[0] == 201
    path = '%s/%s/small.raw/download' % (IMAGES, pool)
    for header, first, last in [('bytes=100-199', 100, 199), ('bytes=-17', len(data) - 17,
                                                               len(data) - 1),
                                ('bytes=%d-' % MiB, MiB, len(data) - 1)]:
        status, headers, body = request(server, 'GET', path, headers={'Range': header})
        assert status == 206
        assert headers['Content-Range'] == 'bytes %d-%d/%d' % (first, last, len(data))
        assert body == data[first:last + 1]
    status, headers, body = request(server, 'GET', path, headers={'Range': 'bytes=%d-' % len(data)})
    assert status == 416
    assert headers['Content-Range'] == 'bytes */%d' % len(data)
    assert json.loads(body)['code'] == 'range_not_satisfiable'


def test_head_download_sends_no_body_and_holds_nothing_open(server, pool, libvirt_conn):
    assert upload(server, pool, 'head.raw', seed=4, length=MiB)[0] == 201
    status, headers, body = request(server, 'HEAD', '%s/%s/head.raw/download' % (IMAGES, pool))
    assert (status, body, headers['Content-Length']) == (200, b'', str(MiB))
    path = volume(libvirt_conn, pool, 'head.raw').path()
    wait_until(lambda: not holders(path), 10, 'nothing holds %s open' % path)


def test_download_aborted_by_the_client_releases_the_stream(server, pool, libvirt_conn):
    assert upload(server, pool, 'gone.raw', seed=5, length=64 * MiB)[0] == 201
    path = volume(libvirt_conn, pool, 'gone.raw').path()
    sock = socket.create_connection(server, timeout=30)
    sock.sendall(('GET %s/%s/gone.raw/download HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'
                  % (IMAGES, pool)).encode())
    received = 0
    while received < 2 * MiB:
        received += len(sock.recv(MiB))
    # libvirtd is reading it for us while the client has stopped reading; on a loaded machine it
    # may already have read all 64 MiB into the socket buffers and let go (seen once in a full
    # run), so what counts is that nothing holds it after the reset, and the server still serves.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')
    sock.close()  # a reset: the server's next send fails and it must abort the libvirt stream
    wait_until(lambda: not holders(path), 30, 'nothing holds %s open' % path)
    status, _, sha, _ = download(server, pool, 'gone.raw')  # and the server still serves
    assert (status, sha) == (200, digest(chunks(5, 64 * MiB)))


def partial_upload(server, pool, name, length, parts):
    """A raw socket that announced an upload of `length` bytes and sent only `parts`."""
    sock = socket.create_connection(server, timeout=30)
    sock.sendall(('PUT %s/%s/%s/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                  'Content-Type: application/octet-stream\r\n'
                  'Content-Length: %d\r\n\r\n' % (IMAGES, pool, name, length)).encode())
    for part in parts:
        sock.sendall(part)
    return sock


def test_short_upload_body_leaves_no_image(server, pool, libvirt_conn):
    sock = partial_upload(server, pool, 'short.raw', 32 * MiB, chunks(6, 5 * MiB))
    sock.shutdown(socket.SHUT_WR)  # the body ends 27 MiB early
    answer = b''
    while True:
        data = sock.recv(65536)
        if not data:
            break
        answer += data
    sock.close()
    assert answer.startswith(b'HTTP/1.1 400 ')
    assert json.loads(answer.split(b'\r\n\r\n', 1)[1])['code'] == 'incomplete_body'
    assert volume(libvirt_conn, pool, 'short.raw') is None
    status, _, body = request(server, 'GET', '%s/json?pool=%s' % (IMAGES, pool))
    assert [image['Name'] for image in json.loads(body)] == []


def test_upload_cut_off_midway_is_marked_then_removed(server, pool, libvirt_conn):
    sock = partial_upload(server, pool, 'cut.raw', 64 * MiB, chunks(7, 8 * MiB))

    def listed():
        status, _, body = request(server, 'GET', '%s/json?pool=%s' % (IMAGES, pool))
        return {image['Name']: image for image in json.loads(body)}

    wait_until(lambda: 'cut.raw' in listed(), 10, 'cut.raw listed')
    assert listed()['cut.raw']['Uploading'] is True
    for method, action in [('POST', 'delete?force=1'), ('GET', 'download'), ('POST', 'wipe'),
                           ('POST', 'resize?capacity=1G'), ('POST', 'clone?name=copy.raw')]:
        status, _, body = request(server, method, '%s/%s/cut.raw/%s' % (IMAGES, pool, action))
        assert (status, json.loads(body)['code']) == (409, 'upload_in_progress'), action
    status, _, body = request(server, 'PUT', '%s/%s/cut.raw/upload' % (IMAGES, pool), body=b'x')
    assert status == 409
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')
    sock.close()
    wait_until(lambda: volume(libvirt_conn, pool, 'cut.raw') is None, 30, 'cut.raw removed')
    assert 'cut.raw' not in listed()


def test_upload_larger_than_capacity_is_refused_before_reading(server, pool, libvirt_conn):
    status, headers, body = request(server, 'PUT', '%s/%s/x.raw/upload?capacity=1K' % (IMAGES, pool),
                                    body=b'x' * 2048)
    assert (status, json.loads(body)['code']) == (413, 'too_large')
    assert volume(libvirt_conn, pool, 'x.raw') is None


def test_upload_without_length_is_411(server, pool, libvirt_conn):
    sock = socket.create_connection(server, timeout=30)
    sock.sendall(('PUT %s/%s/x.raw/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'
                  % (IMAGES, pool)).encode())
    answer = sock.makefile('rb').read()
    sock.close()
    assert answer.startswith(b'HTTP/1.1 411 ')
    assert volume(libvirt_conn, pool, 'x.raw') is None


# -- resize, wipe, clone ------------------------------------------------------------------------

def test_resize_grow_and_shrink_rules(server, pool, libvirt_conn, guest_name):
    base = '%s/%s/grow.raw' % (IMAGES, pool)
    assert request(server, 'POST', '%s/%s/create?name=grow.raw&capacity=64M' % (IMAGES, pool))[0] \
        == 201
    vol = volume(libvirt_conn, pool, 'grow.raw')
    assert request(server, 'POST', base + '/resize?capacity=128M')[0] == 204
    assert vol.info()[1] == os.path.getsize(vol.path()) == 128 * MiB
    assert request(server, 'POST', base + '/resize?capacity=16M&flag=2')[0] == 204  # +16M
    assert vol.info()[1] == 144 * MiB

    status, _, body = request(server, 'POST', base + '/resize?capacity=32M')
    assert (status, json.loads(body)['code']) == (400, 'bad_parameter')
    assert vol.info()[1] == 144 * MiB
    assert request(server, 'POST', base + '/resize?capacity=32M&flag=4')[0] == 204
    assert vol.info()[1] == os.path.getsize(vol.path()) == 32 * MiB

    # A defined (not even running) domain's disk: shrinking it needs force=1.
    name = guest_name('disk-user')
    libvirt_conn.defineXML(
        "<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
        "<source file='%s'/><target dev='vda' bus='virtio'/></disk></devices></domain>"
        % (name, vol.path()))
    status, _, body = request(server, 'POST', base + '/resize?capacity=16M&flag=4')
    assert (status, json.loads(body)['code']) == (409, 'image_in_use')
    assert name in json.loads(body)['message']
    assert request(server, 'POST', base + '/resize?capacity=16M&flag=4&force=1')[0] == 204
    assert vol.info()[1] == 16 * MiB
    status, _, body = request(server, 'POST', base + '/delete')
    assert (status, json.loads(body)['code']) == (409, 'image_in_use')
    assert request(server, 'POST', base + '/delete?force=1')[0] == 204
    assert volume(libvirt_conn, pool, 'grow.raw') is None


def test_wipe_zeroes_the_content(server, pool):
    assert upload(server, pool, 'secret.raw', seed=8, length=4 * MiB)[0] == 201
    assert request(server, 'POST', '%s/%s/secret.raw/wipe' % (IMAGES, pool))[0] == 204
    status, _, sha, length = download(server, pool, 'secret.raw')
    assert (status, length, sha) == (200, 4 * MiB, digest([bytes(4 * MiB)]))


def test_clone_into_another_pool(server, pools, pool, libvirt_conn):
    assert upload(server, pool, 'gold.raw', seed=9, length=6 * MiB)[0] == 201
    status, _, body = request(server, 'POST', '%s/%s/gold.raw/clone?name=copy.qcow2&pool=%s'
                              '&format=qcow2' % (IMAGES, pool, pools[1]))
    assert status == 201, body
    assert (json.loads(body)['Pool'], json.loads(body)['Format']) == (pools[1], 'qcow2')
    status, _, body = request(server, 'POST', '%s/%s/copy.qcow2/clone?name=back.raw&pool=%s'
                              '&format=raw' % (IMAGES, pools[1], pool))
    assert status == 201, body
    assert download(server, pool, 'back.raw')[2] == digest(chunks(9, 6 * MiB))


# -- the pool's free space (507, never libvirt's 500) ------------------------------------------

def test_what_does_not_fit_the_pool_is_507_and_a_sparse_image_is_not_held_to_it(
        server, pool, libvirt_conn):
    free = libvirt_conn.storagePoolLookupByName(pool).info()[3]
    base = '%s/%s' % (IMAGES, pool)
    status, _, body = request(server, 'POST', '%s/create?name=big.raw&capacity=%d&allocation=%d'
                              % (base, free + GiB, free + GiB))
    assert (status, json.loads(body)['code']) == (507, 'insufficient_space')
    assert volume(libvirt_conn, pool, 'big.raw') is None
    # sparse: a capacity beyond the free space takes no space until written
    status, _, body = request(server, 'POST', '%s/create?name=thin.raw&capacity=%d'
                              % (base, free + GiB))
    assert status == 201, body
    thin = volume(libvirt_conn, pool, 'thin.raw')
    assert thin.info()[1] == free + GiB and thin.info()[2] < MiB
    # growing it with flag=1 (allocate) past the free space: 507 (libvirt: OPERATION_FAILED)
    status, _, body = request(server, 'POST', '%s/thin.raw/resize?capacity=%d&flag=1'
                              % (base, free + 2 * GiB))
    assert (status, json.loads(body)['code']) == (507, 'insufficient_space')
    assert thin.info()[1] == free + GiB
    # a clone allocates what its source does (here nothing), not its capacity (libvirt's
    # default); a small source, as libvirt reads every byte of it
    assert request(server, 'POST', '%s/create?name=small.raw&capacity=1G' % base)[0] == 201
    status, _, body = request(server, 'POST', '%s/small.raw/clone?name=copy.raw' % base)
    assert status == 201, body
    copy = volume(libvirt_conn, pool, 'copy.raw')
    assert copy.info()[1] == GiB and copy.info()[2] < MiB


# -- the daemon killed mid-upload: the partial image is marked Incomplete (issue 19, 9) ----------

def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def start_daemon(uri, state_dir, log_path):
    """The daemon as its own process (python -m xend_rest) on a free port: (process, address)."""
    address = ('127.0.0.1', free_port())
    with open(log_path, 'ab') as log:
        process = subprocess.Popen(
            [sys.executable, '-m', 'xend_rest', '--connect', 'qemu=' + uri, '--listen',
             '%s:%d' % address, '--state-dir', str(state_dir)],
            cwd=ROOT, stdout=log, stderr=log)

    def answers():
        try:
            return request(address, 'GET', '/_ping')[0] == 200
        except OSError:
            return process.poll() is not None  # (then the assertion below says so)
    wait_until(answers, 30, 'the daemon answers /_ping')
    assert process.poll() is None, open(log_path).read()
    return process, address


def test_an_upload_cut_off_by_the_daemon_s_death_is_incomplete_after_a_restart(
        libvirtd, pool, libvirt_conn, tmp_path):
    state = tmp_path / 'state'
    first, address = start_daemon(libvirtd.uri, state, tmp_path / 'daemon.log')
    try:
        sock = partial_upload(address, pool, 'cut.raw', 64 * MiB, chunks(10, 8 * MiB))
        wait_until(lambda: volume(libvirt_conn, pool, 'cut.raw') is not None, 30, 'cut.raw made')
        first.send_signal(signal.SIGKILL)  # the daemon dies mid-upload
        first.wait(10)
        sock.close()
    finally:
        if first.poll() is None:
            first.kill()
    # libvirt keeps what it got; nothing in libvirt tells it from a whole image
    assert volume(libvirt_conn, pool, 'cut.raw') is not None
    assert len(list(state.rglob('cut.raw'))) == 1  # the marker
    second, address = start_daemon(libvirtd.uri, state, tmp_path / 'daemon.log')
    try:
        _, _, body = request(address, 'GET', '%s/json?pool=%s' % (IMAGES, pool))
        image = {image['Name']: image for image in json.loads(body)}['cut.raw']
        assert (image['Uploading'], image['Incomplete']) == (False, True)
        _, _, body = request(address, 'GET', '%s/%s/cut.raw/json' % (IMAGES, pool))
        assert json.loads(body)['Incomplete'] is True
        status, _, body = request(address, 'POST', '%s/%s/cut.raw/clone?name=copy.raw'
                                  % (IMAGES, pool))
        assert (status, json.loads(body)['code']) == (409, 'image_incomplete')
        assert request(address, 'POST', '%s/%s/cut.raw/delete' % (IMAGES, pool))[0] == 204
        assert volume(libvirt_conn, pool, 'cut.raw') is None
        assert list(state.rglob('cut.raw')) == []
    finally:
        second.terminate()
        second.wait(20)


# -- what a qcow2 header names (issue 19, 9): libvirt and QEMU follow it ------------------------

def qcow2_naming(tmp_path, backing):
    path = tmp_path / 'evil.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', backing, '-u',
                    str(path), '1M'], check=True)
    return path.read_bytes()


def test_libvirt_and_qemu_open_the_backing_file_an_uploaded_qcow2_names(
        server, pool, libvirt_conn, guest_name, guest_xml, tmp_path):
    # Without allowed-paths: shown to happen, so that the refusal below refuses something real.
    body = qcow2_naming(tmp_path, '/etc/passwd')
    status, _, _ = request(server, 'PUT', '%s/%s/evil.qcow2/upload' % (IMAGES, pool), body=body)
    assert status == 201
    vol = volume(libvirt_conn, pool, 'evil.qcow2')
    # libvirtd re-reads the pool after the upload: it reads the header as any qcow2's
    wait_until(lambda: '<path>/etc/passwd</path>' in vol.XMLDesc(0), 10,
               'libvirt reports the backing file')
    name = guest_name('backing')
    assert not holders('/etc/passwd')
    xml = guest_xml(name).replace('</devices>', "<disk type='file' device='disk'>"
                                  "<driver name='qemu' type='qcow2'/><source file='%s'/>"
                                  "<target dev='vdb' bus='virtio'/></disk></devices>" % vol.path())
    libvirt_conn.createXML(xml, 0)
    assert holders('/etc/passwd'), 'QEMU holds the backing file open: its guest reads it'


@pytest.fixture
def confined_server(libvirtd, libvirt_conn, pools):
    """The app with allowed-paths = the main pool's directory, on the real threaded server."""
    directory = libvirt_conn.storagePoolLookupByName(pools[0]).XMLDesc(0)
    directory = directory.split('<path>')[1].split('</path>')[0]
    app = make_app(connections={'qemu': libvirtd.uri}, guard=Guard(allowed_paths=[directory]))
    running = Server(app, ['127.0.0.1:0'], workers=4, timeout=10)
    running.start()
    yield running.addresses[0], directory
    running.shutdown(grace=5)
    app.close()


@pytest.mark.parametrize('backing', ['/etc/passwd', '../../../../../../etc/passwd'])
def test_with_allowed_paths_such_an_upload_is_refused(confined_server, pool, libvirt_conn,
                                                      tmp_path, backing):
    address, _directory = confined_server
    status, _, body = request(address, 'PUT', '%s/%s/evil.qcow2/upload' % (IMAGES, pool),
                              body=qcow2_naming(tmp_path, backing))
    assert (status, json.loads(body)['code']) == (403, 'path_not_allowed')
    assert volume(libvirt_conn, pool, 'evil.qcow2') is None


def test_with_allowed_paths_a_domain_on_such_an_image_is_refused(
        confined_server, pool, libvirt_conn, guest_name, tmp_path):
    # The image got into the pool some other way (virsh, scp): Create reads its header.
    address, directory = confined_server
    path = Path(directory) / 'placed.qcow2'
    path.write_bytes(qcow2_naming(tmp_path, '/etc/passwd'))
    libvirt_conn.storagePoolLookupByName(pool).refresh(0)
    name = guest_name('confined')
    doc = {'domain': {'@type': 'qemu', 'name': name, 'memory': {'@unit': 'MiB', '#text': '64'},
                      'os': {'type': {'@arch': 'x86_64', '#text': 'hvm'}},
                      'devices': {'disk': {'@type': 'file', '@device': 'disk',
                                           'driver': {'@name': 'qemu', '@type': 'qcow2'},
                                           'source': {'@file': str(path)},
                                           'target': {'@dev': 'vda', '@bus': 'virtio'}}}}}
    status, _, body = request(address, 'POST', NODES + '/create', body=json.dumps(doc),
                              headers={'Content-Type': 'application/json'})
    assert (status, json.loads(body)['code']) == (403, 'path_not_allowed'), body
    assert '/etc/passwd' in json.loads(body)['message']
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(name)
    status, _, body = request(address, 'POST', '%s/%s/placed.qcow2/clone?name=copy.raw&format=raw'
                              % (IMAGES, pool))
    assert (status, json.loads(body)['code']) == (403, 'path_not_allowed')
