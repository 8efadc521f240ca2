"""What each further idle hypervisor connection costs the daemon, in RSS.

    ./dev bench connections
    XEND_BENCH_REMOTE_URI=qemu+tcp://127.0.0.1/system ./dev bench connections

The daemon is started with 1, then MANY connections to the same URI (each under its own name,
so each has its own libvirt connection, event hub, uploads and caches); each connection is
opened by one request, the daemon is left idle for a moment, and its RSS is read. The cost of
one more connection is the difference divided by MANY - 1. URIs measured: test:///default (the
daemon's own cost: libvirt's test driver keeps one shared host in the process), qemu:///system
when a libvirtd answers it, and $XEND_BENCH_REMOTE_URI (a remote libvirtd: what each managed
dom0 costs; tests/realhv/libvirtd.py's PrivateLibvirtd(tcp_port=, tls_port=) makes one that
listens on loopback). The issue's bound: 1 MiB per idle connection.
"""
import json
import os
import sys
import time
import urllib.request

import libvirt

from bench.common import ROOT, free_port, rss_kib, stop, wait_until_up

MANY = 17
SETTLE = 2.0  # seconds idle before reading RSS: keepalive pings and timers have run
BOUND_KIB = 1024


def start(uri, count):
    """The daemon with `count` connections c1..cN to uri; every one opened."""
    import subprocess
    port = free_port()
    connects = []
    for number in range(1, count + 1):
        connects += ['--connect', 'c%d=%s' % (number, uri)]
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'xend_rest.py'), '--listen', '127.0.0.1:%d' % port,
         '--log-level', 'WARNING', *connects], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = 'http://127.0.0.1:%d' % port
    wait_until_up(base + '/_ping', process)
    for number in range(1, count + 1):
        urllib.request.urlopen(base + '/libvirt/c%d/nodes/json' % number, timeout=30).read()
    listed = json.loads(urllib.request.urlopen(base + '/libvirt/json', timeout=30).read())
    assert all(item['Connected'] for item in listed), listed
    return process


def idle_rss(uri, count):
    process = start(uri, count)
    try:
        time.sleep(SETTLE)
        return rss_kib(process.pid)
    finally:
        stop(process)


def measure(uri, rounds=3):
    """(RSS with one connection, RSS with MANY, KiB per further connection): medians of rounds."""
    ones = sorted(idle_rss(uri, 1) for _ in range(rounds))
    manys = sorted(idle_rss(uri, MANY) for _ in range(rounds))
    one, many = ones[rounds // 2], manys[rounds // 2]
    return one, many, (many - one) / (MANY - 1)


def answers(uri):
    libvirt.registerErrorHandler(lambda *args: None, None)
    try:
        libvirt.open(uri).close()
        return True
    except libvirt.libvirtError:
        return False


def main():
    uris = ['test:///default']
    if answers('qemu:///system'):
        uris.append('qemu:///system')
    if os.environ.get('XEND_BENCH_REMOTE_URI'):
        uris.append(os.environ['XEND_BENCH_REMOTE_URI'])
    print('connections: idle RSS with 1 and %d connections, and per further connection '
          '(bound %d KiB)' % (MANY, BOUND_KIB))
    for uri in uris:
        one, many, each = measure(uri)
        print('  %-40s 1: %6.1f MiB  %d: %6.1f MiB  each further: %5.0f KiB  %s'
              % (uri, one / 1024, MANY, many / 1024, each, 'ok' if each <= BOUND_KIB else 'OVER'))


if __name__ == '__main__':
    main()
