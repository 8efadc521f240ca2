"""The VM API's speed and memory, side by side with the floor and with a naive server, in one run.

    ./dev bench api

1. floor: raw libvirt-python doing an Inspect's work in a loop (lookup + XMLDesc + xmltodict.parse
   + json.dumps), in-process, on the same kind of test node;
2. the WSGI app called in-process (no socket);
3. the daemon over HTTP/1.1 keep-alive, measured with wrk at concurrency 1 and 16;
4. the same app behind a naive threaded wsgiref server (a thread per connection), same wrk runs;
5. List of 1,000 domains;
6. idle RSS of the daemon (after its first request, and again after the wrk runs) against a bare
   Python that imported libvirt and xmltodict and opened the same URI.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import libvirt
import xmltodict

from bench.common import ROOT, free_port, rss_kib, start_daemon, stop, wait_until_up, write_node

INSPECT = '/libvirt/xen/nodes/vm0007/json'
NAIVE_SERVER = """
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
sys.path.insert(0, %(root)r)
from xend_rest.api.app import make_app
class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass
class Threaded(ThreadingMixIn, WSGIServer):
    daemon_threads = True
make_server('127.0.0.1', %(port)d, make_app(uri=%(uri)r), Threaded, Quiet).serve_forever()
"""
BARE_PYTHON = """
import sys, libvirt, xmltodict
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open(%(uri)r)
conn.listAllDomains()
print('ready', flush=True)
sys.stdin.readline()
"""


def per_call_us(function, count):
    function()
    start = time.perf_counter()
    for _ in range(count):
        function()
    return (time.perf_counter() - start) / count * 1e6


def floor_us(uri, count=5000):
    conn = libvirt.open(uri)

    def inspect():
        json.dumps(xmltodict.parse(conn.lookupByName('vm0007').XMLDesc(0)), sort_keys=True)
    result = per_call_us(inspect, count)
    conn.close()
    return result


def in_process_us(uri, count=5000, cold=False):
    """One Inspect through the WSGI app; cold: with the XML->JSON memo emptied every time."""
    from wsgiref.util import setup_testing_defaults
    from xend_rest.api.app import make_app
    app = make_app(uri=uri)
    environ = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD='GET', PATH_INFO=INSPECT)

    def call():
        if cold:
            app.hypervisor.memo.clear()
        b''.join(app(dict(environ), lambda status, headers: None))
    result = per_call_us(call, count)
    app.close()
    return result


def wrk(url, connections, seconds):
    """Requests/s, mean latency (ms) and errors, as wrk reports them."""
    threads = min(connections, 2)
    out = subprocess.run(['wrk', '-t%d' % threads, '-c%d' % connections, '-d%ds' % seconds,
                          '--latency', url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
    latency = re.search(r'Latency\s+([\d.]+)(us|ms|s)', out)
    scale = {'us': 1e-3, 'ms': 1, 's': 1e3}[latency.group(2)]
    p99 = re.search(r'99%\s+([\d.]+)(us|ms|s)', out)
    errors = sum(int(n) for n in re.findall(r'(?:connect|read|write|timeout) (\d+)', out))
    non2xx = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return {'rps': rate, 'mean_ms': float(latency.group(1)) * scale,
            'p99_ms': float(p99.group(1)) * {'us': 1e-3, 'ms': 1, 's': 1e3}[p99.group(2)],
            'errors': errors}


def load(base, seconds):
    url = base + INSPECT
    wrk(url, 16, 1)  # warm up
    return {'c1': wrk(url, 1, seconds), 'c16': wrk(url, 16, seconds)}


def naive_server(uri):
    port = free_port()
    process = subprocess.Popen([sys.executable, '-c', NAIVE_SERVER % {
        'root': ROOT, 'port': port, 'uri': uri}], stderr=subprocess.DEVNULL)
    base = 'http://127.0.0.1:%d' % port
    wait_until_up(base + INSPECT, process)
    return process, base


def list_ms(base, count=10):
    """The first List (nothing memoised yet) and the median of `count` more, in ms."""
    times = []
    for _ in range(count + 1):
        start = time.perf_counter()
        body = urllib.request.urlopen(base + '/libvirt/xen/nodes/json?all=1').read()
        times.append((time.perf_counter() - start) * 1e3)
    return times[0], statistics.median(times[1:]), len(json.loads(body))


def bare_python_rss(uri):
    process = subprocess.Popen([sys.executable, '-c', BARE_PYTHON % {'uri': uri}],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    process.stdout.readline()
    rss = rss_kib(process.pid)
    process.communicate('\n')
    return rss


def main():
    seconds = int(os.environ.get('BENCH_SECONDS', '5'))
    libvirt.registerErrorHandler(lambda *args: None, None)
    with tempfile.TemporaryDirectory() as tmp:
        uri = write_node(os.path.join(tmp, 'node16.xml'), 16)
        big = write_node(os.path.join(tmp, 'node1000.xml'), 1000, shutoff_every=3)
        floor = floor_us(uri)
        app = in_process_us(uri)
        app_cold = in_process_us(uri, cold=True)
        daemon, base = start_daemon(uri)
        urllib.request.urlopen(base + INSPECT).read()
        fresh_rss = rss_kib(daemon.pid)
        ours = load(base, seconds)
        for _ in range(20):
            urllib.request.urlopen(base + INSPECT).read()
        idle_rss = rss_kib(daemon.pid)
        stop(daemon)
        naive, naive_base = naive_server(uri)
        theirs = load(naive_base, seconds)
        stop(naive)
        bare_rss = bare_python_rss(uri)
        daemon, base = start_daemon(big)
        first_list, listing, listed = list_ms(base)
        stop(daemon)

    print('VM API benchmark (test driver, Inspect of one domain; wrk %ds per run)' % seconds)
    print('  floor, raw libvirt-python + xmltodict + json, in-process: %7.1f us/op' % floor)
    print('  xend-rest WSGI app, in-process (no socket):              %7.1f us/op' % app)
    print('  the same, XML->JSON memo emptied before every call:      %7.1f us/op' % app_cold)
    for name, result in (('xend-rest server', ours), ('naive threaded wsgiref', theirs)):
        c1, c16 = result['c1'], result['c16']
        print('  %-23s c=1: %7.0f req/s, mean %.3f ms (%.3f ms over the floor), errors %d'
              % (name, c1['rps'], c1['mean_ms'], c1['mean_ms'] - floor / 1e3, c1['errors']))
        print('  %-23s c=16: %6.0f req/s, mean %.2f ms, p99 %.2f ms, errors %d'
              % ('', c16['rps'], c16['mean_ms'], c16['p99_ms'], c16['errors']))
    print('  ratio c=16 xend-rest / naive: %.2fx' % (ours['c16']['rps'] / theirs['c16']['rps']))
    print('  List of %d domains (all=1): first call %.1f ms, then median %.1f ms over 10 calls'
          % (listed, first_list, listing))
    print('  idle RSS: bare python+libvirt+xmltodict %.1f MiB; daemon after one request %.1f MiB'
          ' (+%.1f), after the wrk runs %.1f MiB (+%.1f)'
          % (bare_rss / 1024, fresh_rss / 1024, (fresh_rss - bare_rss) / 1024,
             idle_rss / 1024, (idle_rss - bare_rss) / 1024))


if __name__ == '__main__':
    main()
