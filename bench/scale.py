"""Costs as the domains grow, side by side with libvirt's own costs at the same sizes, in one run.

    ./dev bench scale                 (1,000, 5,000 and 10,000 domains)
    SCALE_SIZES=1000,2000 ./dev bench scale

For each size, a test node of that many domains (every third shut off) is written, and:
1. libvirt's own costs, in-process: the XMLDesc of every domain (listAllDomains + XMLDesc), and
   getAllDomainStats with the groups the daemon asks for; and, since the test driver's bulk call
   has only the state group, the per-domain calls the statistics then need from any client (info,
   memoryStats, XMLDesc for the device names, blockStats and interfaceStats): "bulk + fallback";
   and, in-process, what our statistics cost around the bulk call where it has every group (the
   test driver's records completed as qemu's would be): the /nodes/stats body and the /metrics
   domain samples built from them;
2. the daemon over HTTP, warm (after one call of each): List (all=1), /metrics and /nodes/stats
   (all=1).
Each figure is the best of SCALE_REPEAT (5) calls, the measures taken in turn, round by round, so
that a neighbour's load on a shared machine hits them alike.
Then, in-process, the memory the List's memo holds at the largest size (tracemalloc).
Ratios: List against linear in the smallest size's figure, and against libvirt's XMLDesc growth;
the statistics against getAllDomainStats (and against bulk + fallback).
"""
import concurrent.futures
import gc
import os
import tempfile
import time
import tracemalloc
import urllib.request

import libvirt

from bench.common import rss_kib, start_daemon, stop, write_node
from xend_rest.hypervisor.stats import STATS_GROUPS

NODES = '/libvirt/xen/nodes'
CALLS = (('List', NODES + '/json?all=1'), ('/metrics', '/metrics'),
         ('/nodes/stats', NODES + '/stats?all=1'))


def timed_ms(function):
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1e3


def costs_at(uri, repeat):
    """{measure: best ms of `repeat` warm calls}, the measures interleaved round by round so that
    a neighbour's burst of load hits them alike; and the daemon's RSS after them (KiB)."""
    # The test driver takes a while to load a large node (about 30 s for 10,000 domains here):
    # the daemon and this process load theirs at the same time.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        opening = pool.submit(libvirt.open, uri)
        daemon, base = start_daemon(uri, timeout=600)
        conn = opening.result()
    try:
        measures = dict(_libvirt_measures(conn))
        for name, path in CALLS:
            measures[name] = lambda url=base + path: urllib.request.urlopen(url).read()
        for measure in measures.values():
            measure()  # warm
        best = {}
        for _ in range(repeat):
            for name, measure in measures.items():
                best[name] = min(best.get(name, float('inf')), timed_ms(measure))
        best['rss'] = rss_kib(daemon.pid)
    finally:
        stop(daemon)
        conn.close()
    return best


def _libvirt_measures(conn):
    def describe_all():
        for dom in conn.listAllDomains(0):
            dom.XMLDesc(0)

    def fallback():
        for dom, raw in conn.getAllDomainStats(STATS_GROUPS, 0):
            dom.name(), dom.UUIDString(), dom.ID(), dom.info()
            _skipped(dom.memoryStats)
            if raw.get('state.state') != libvirt.VIR_DOMAIN_SHUTOFF:
                dom.XMLDesc(0)  # for the device names; parsing it is our cost, not libvirt's
                for disk in ('hda', 'hdc'):
                    _skipped(lambda: dom.blockStats(disk))
                _skipped(lambda: dom.interfaceStats('testnet0'))
    yield 'XMLDesc', describe_all
    yield 'bulk', lambda: conn.getAllDomainStats(STATS_GROUPS, 0)
    yield 'fallback', fallback
    yield 'full stats', lambda: _from_full_records(conn, stats=True)
    yield 'full metrics', lambda: _from_full_records(conn, stats=False)


# What a driver whose bulk call has every group (qemu) gives for a running domain with two disks
# and a NIC; the test driver's records have only the state.
FULL_RECORD = {'cpu.time': 123456789012, 'vcpu.current': 2, 'balloon.current': 1048576,
               'balloon.maximum': 1048576, 'block.count': 2, 'net.count': 1,
               'net.0.name': 'testnet0'}
for index, disk in enumerate(('hda', 'hdc')):
    FULL_RECORD['block.%d.name' % index] = disk
    FULL_RECORD.update(('block.%d.%s' % (index, key), 1234567)
                       for key in ('rd.reqs', 'rd.bytes', 'wr.reqs', 'wr.bytes', 'errs'))
FULL_RECORD.update(('net.0.%s' % key, 7654321) for key in (
    'rx.bytes', 'rx.pkts', 'rx.errs', 'rx.drop', 'tx.bytes', 'tx.pkts', 'tx.errs', 'tx.drop'))


def _from_full_records(conn, stats):
    """Our work around the bulk call on a driver that has every group: the bulk call, each
    record completed as qemu's would be, then the /nodes/stats body (stats) or the /metrics
    domain samples."""
    from xend_rest.errors import json_payload
    from xend_rest.api.handlers.system import _add_domains
    from xend_rest.api.metrics import Exposition
    from xend_rest.hypervisor.stats import describe
    described = [describe(dom, {**FULL_RECORD, **raw}) for dom, raw
                 in conn.getAllDomainStats(STATS_GROUPS, 0)]
    if stats:
        json_payload(described)
    else:
        exposition = Exposition()
        _add_domains(exposition, 'xen', described)
        exposition.text()


def _skipped(call):
    try:
        call()
    except libvirt.libvirtError:
        pass


def memo_bytes(uri):
    """Bytes the app keeps after a List of every domain, less what it keeps once its memo is
    emptied: the memo's own footprint."""
    from wsgiref.util import setup_testing_defaults
    from xend_rest.api.app import make_app
    app = make_app(uri=uri)
    environ = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD='GET', PATH_INFO=NODES + '/json', QUERY_STRING='all=1')
    b''.join(app(dict(environ), lambda status, headers: None))  # the connection, imports
    app.hypervisor.memo.clear()
    gc.collect()
    tracemalloc.start()
    b''.join(app(dict(environ), lambda status, headers: None))
    gc.collect()
    filled = tracemalloc.get_traced_memory()[0]
    app.hypervisor.memo.clear()
    gc.collect()
    emptied = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    app.close()
    return filled - emptied


def main():
    sizes = [int(size) for size in os.environ.get('SCALE_SIZES', '1000,5000,10000').split(',')]
    repeat = int(os.environ.get('SCALE_REPEAT', '5'))
    libvirt.registerErrorHandler(lambda *args: None, None)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            uri = write_node(os.path.join(tmp, 'node%d.xml' % size), size, shutoff_every=3)
            rows[size] = costs_at(uri, repeat)
        memo = memo_bytes(uri)

    first = sizes[0]
    base = rows[first]
    print('Scale benchmark (test driver, every third domain shut off; warm; best of %d calls;'
          ' ms)' % repeat)
    print('  %7s %9s %9s %9s %9s %9s %9s %9s' % (
        'domains', 'XMLDesc', 'List', 'bulk', 'bulk+fb', '/metrics', 'stats', 'RSS MiB'))
    for size in sizes:
        row = rows[size]
        print('  %7d %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f' % (
            size, row['XMLDesc'], row['List'], row['bulk'], row['fallback'], row['/metrics'],
            row['/nodes/stats'], row['rss'] / 1024))
    print('  growth against linear in the %d figure (1.00 = linear):' % first)
    for size in sizes[1:]:
        row, scale = rows[size], size / first
        print('  %7d  List %.2fx, libvirt XMLDesc %.2fx: List/XMLDesc growth %.2f'
              % (size, row['List'] / base['List'] / scale, row['XMLDesc'] / base['XMLDesc'] / scale,
                 (row['List'] / base['List']) / (row['XMLDesc'] / base['XMLDesc'])))
    print('  statistics against libvirt (x getAllDomainStats; x bulk + fallback):')
    for size in sizes:
        row = rows[size]
        print('  %7d  /metrics %5.1fx, %4.1fx; /nodes/stats %5.1fx, %4.1fx' % (
            size, row['/metrics'] / row['bulk'], row['/metrics'] / row['fallback'],
            row['/nodes/stats'] / row['bulk'], row['/nodes/stats'] / row['fallback']))
    print('  with complete bulk records (as qemu gives), in-process: the bulk call and then the'
          ' body (x getAllDomainStats):')
    for size in sizes:
        row = rows[size]
        print('  %7d  /nodes/stats %6.1f ms, %4.1fx; /metrics %6.1f ms, %4.1fx' % (
            size, row['full stats'], row['full stats'] / row['bulk'], row['full metrics'],
            row['full metrics'] / row['bulk']))
    print('  List memo at %d domains: %.1f MiB, %.0f bytes per domain'
          % (sizes[-1], memo / 2**20, memo / sizes[-1]))


if __name__ == '__main__':
    main()
