"""Image transfer benchmark: upload and download throughput, and the daemon's memory meanwhile.

Runs the daemon as a subprocess on a real libvirtd (qemu:///system), in a directory pool of its
own (xrt-bench-*, removed afterwards), and moves SIZE MiB each way over HTTP. Memory should stay
flat: the body is streamed in 1 MiB chunks, whatever the image's size.

    ./dev bench images          (512 MiB; starts a libvirtd as the test tier does, if none runs)
    .venv/bin/python -m bench.images [SIZE_MIB]
"""
import hashlib
import http.client
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import libvirt

from bench.common import ROOT

URI = 'qemu:///system'
MiB = 1 << 20


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def memory(pid):
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = {}
    with open('/proc/%d/status' % pid) as status:
        for line in status:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                fields[key] = int(value.split()[0]) / 1024
    return fields['VmRSS'], fields['VmHWM']


class PeakRSS(threading.Thread):
    """Samples a process's VmRSS every 10 ms until stopped; `peak` is the highest seen."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, memory(self.pid)[0])
            time.sleep(0.01)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.join()


def start_daemon(port, state_dir):
    process = subprocess.Popen(
        [sys.executable, '-m', 'xend_rest', '--uri', URI, '--listen', '127.0.0.1:%d' % port,
         '--log-level', 'WARNING', '--state-dir', state_dir], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
            conn.request('GET', '/libvirt/xen/pools/json')
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit('the daemon did not answer within 30 s')


def upload(port, path, size, seed):
    rng, sha = random.Random(seed), hashlib.sha256()
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=120)
    conn.putrequest('PUT', path)
    conn.putheader('Content-Length', str(size))
    conn.putheader('Content-Type', 'application/octet-stream')
    conn.endheaders()
    for _ in range(size // MiB):
        chunk = rng.randbytes(MiB)
        sha.update(chunk)
        conn.send(chunk)
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 201:
        raise SystemExit('upload answered %d' % response.status)
    return sha.hexdigest()


def download(port, path):
    sha = hashlib.sha256()
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=120)
    conn.request('GET', path)
    response = conn.getresponse()
    while True:
        data = response.read(MiB)
        if not data:
            break
        sha.update(data)
    conn.close()
    return sha.hexdigest()


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main(size_mib=512):
    sys.path.insert(0, os.path.join(ROOT, 'tests'))
    from realhv.libvirtd import ensure_libvirtd  # the test tier's: reuse one, else start one
    libvirtd = ensure_libvirtd(tempfile.mkdtemp(prefix='xrt-bench-libvirtd-'))
    try:
        _run(size_mib)
    finally:
        libvirtd.stop()  # only if this run started it


def _run(size_mib):
    size = size_mib * MiB
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(URI)
    workdir = tempfile.mkdtemp(prefix='xrt-bench-')
    name = 'xrt-bench-%s' % secrets.token_hex(3)
    pool = conn.storagePoolDefineXML("<pool type='dir'><name>%s</name><target><path>%s</path>"
                                     "</target></pool>" % (name, workdir))
    pool.build(0)
    pool.create(0)
    port = free_port()
    state = tempfile.mkdtemp(prefix='xrt-bench-state-')  # not in the pool: it would be listed
    daemon = start_daemon(port, state)
    try:
        path = '/libvirt/xen/images/%s/bench.raw' % name
        idle = memory(daemon.pid)[0]
        with PeakRSS(daemon.pid) as during_upload:
            sent, upload_s = timed(upload, port, path + '/upload', size, 1)
        with PeakRSS(daemon.pid) as during_download:
            received, download_s = timed(download, port, path + '/download')
        rss, hwm = memory(daemon.pid)
        print('image size        %d MiB' % size_mib)
        print('upload            %.0f MiB/s (%.1f s)' % (size_mib / upload_s, upload_s))
        print('download          %.0f MiB/s (%.1f s)' % (size_mib / download_s, download_s))
        print('sha256 match      %s' % (sent == received))
        print('daemon RSS        idle %.1f MiB, peak during upload %.1f MiB, during download '
              '%.1f MiB, now %.1f MiB; VmHWM %.1f MiB'
              % (idle, during_upload.peak, during_download.peak, rss, hwm))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        for vol in pool.listAllVolumes():
            vol.delete(0)
        pool.destroy()
        pool.undefine()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        conn.close()


if __name__ == '__main__':
    main(*(int(arg) for arg in sys.argv[1:2]))
