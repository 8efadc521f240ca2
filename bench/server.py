"""The server's speed side by side in one run (issue 13): against gunicorn on the same app, and
against the stdlib's ceiling.

    ./dev bench server
    BENCH_SECONDS=8 BENCH_BASELINE=/tmp/old-checkout ./dev bench server   # and an older server

1. xend-rest, Inspect of one domain (test driver, a node of 16 domains) at c=1, 16, 64 and 256,
   wrk -t2 over keep-alive connections: req/s, mean and p99 latency, errors (socket errors and
   non-2xx answers); and `/_ping` at c=16;
2. gunicorn gthread, 2 workers x 8 threads, serving the same make_app(): Inspect at c=16; and
   gunicorn gthread 1 x 16, one process like the daemon (one GIL, one libvirt connection: the
   design fixes one process), so the comparison of the servers themselves;
3. the stdlib's ceiling: ThreadingHTTPServer (request_queue_size 1,024), HTTP/1.1 keep-alive,
   TCP_NODELAY, a constant body, at c=16;
4. with BENCH_BASELINE, the daemon of that checkout too (Inspect at c=1 and 16, /_ping at c=16);
5. the same node served through a private libvirtd (test+unix://, the remote protocol every
   production URI such as xen:///system speaks): Inspect at c=1 and c=16 for xend-rest (its
   default there, concurrency 4, and concurrency 1), gunicorn 2x8 and the baseline. Each request
   then waits on libvirtd with the GIL free, where more workers serving at once help: the reason
   the default differs, measured. Skipped without libvirtd or root.

Every server is up for the whole run and the runs interleave, BENCH_ROUNDS times (default 3):
each figure is the median run.

Each line also gives the server's CPU time per request (its processes' user + system time over
the run, divided by the requests answered): steadier than req/s on a noisy machine, and what a
dom0 with few cores pays.

Goals: Inspect at c=16 at least 1.3x gunicorn; /_ping at c=16 at least 0.8x the ceiling; c=64 and
c=256 at least 0.9x c=16, with no errors. Ratios within one run: the machine is shared and noisy.
"""
import os
import subprocess
import sys
import tempfile

from bench.api import INSPECT, wrk
from bench.common import ROOT, cpu_seconds, free_port, start_daemon, stop, wait_until_up, write_node

PING = '/_ping'
CEILING = """
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', '2')
        self.end_headers()
        self.wfile.write(b'OK')

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    request_queue_size = 1024

Server(('127.0.0.1', %(port)d), Handler).serve_forever()
"""


def serve(args, url_path, cwd=ROOT):
    """A server in a subprocess on a free port: (process, base URL) once it answers url_path."""
    port = free_port()
    process = subprocess.Popen([arg % {'port': port} for arg in args], cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = 'http://127.0.0.1:%d' % port
    wait_until_up(base + url_path, process)
    return process, base


def gunicorn(uri, workers=2, threads=8):
    app = 'xend_rest:make_app(uri=%r)' % uri
    return serve([sys.executable, '-m', 'gunicorn', '-k', 'gthread', '-w', str(workers),
                  '--threads', str(threads), '-b', '127.0.0.1:%(port)d', '--backlog', '1024', app],
                 INSPECT)


def ceiling():
    return serve([sys.executable, '-c', CEILING], PING)


OURS = [('inspect c=1', INSPECT, 1), ('inspect c=16', INSPECT, 16), ('inspect c=64', INSPECT, 64),
        ('inspect c=256', INSPECT, 256), ('ping c=16', PING, 16)]
BASELINE = [('inspect c=1', INSPECT, 1), ('inspect c=16', INSPECT, 16), ('ping c=16', PING, 16)]


def in_process(uri, baseline):
    """The servers (name, how to start it, its runs) on the test driver, in-process libvirt."""
    servers = [('xend-rest', lambda: start_daemon(uri), OURS),
               ('gunicorn gthread 2x8', lambda: gunicorn(uri), [('inspect c=16', INSPECT, 16)]),
               ('gunicorn gthread 1x16', lambda: gunicorn(uri, 1, 16),
                [('inspect c=16', INSPECT, 16)]),
               ('stdlib ceiling', ceiling, [('ping c=16', PING, 16)])]
    if baseline:
        servers.append(('baseline', lambda: start_daemon(uri, root=baseline), BASELINE))
    return servers


OVER_RPC = [('inspect c=1', INSPECT, 1), ('inspect c=16', INSPECT, 16)]


def over_libvirtd(uri, baseline):
    """The same servers' Inspect with every libvirt call a round trip to libvirtd."""
    servers = [('xend-rest', lambda: start_daemon(uri), OVER_RPC),
               ('xend-rest --concurrency 1', lambda: start_daemon(uri, '--concurrency', '1'),
                OVER_RPC),
               ('gunicorn gthread 2x8', lambda: gunicorn(uri), OVER_RPC[1:])]
    if baseline:
        servers.append(('baseline', lambda: start_daemon(uri, root=baseline), OVER_RPC))
    return servers


def run(seconds, rounds, servers):
    """{server: {run: wrk result}}, each the median (by rate) of `rounds` runs: every server is
    up at once and the rounds interleave them, so a noisy moment hits them all alike."""
    samples, started = {}, []
    try:
        for server, start, runs in servers:
            started.append((server, start(), runs))  # each stopped below, even if one fails
        for _, (_, base), runs in started:
            wrk(base + runs[0][1], 16, 1)  # warm up
        for _ in range(rounds):
            for server, (process, base), runs in started:
                for name, path, connections in runs:
                    cpu = cpu_seconds(process.pid)
                    result = wrk(base + path, connections, seconds)
                    result['cpu_us'] = ((cpu_seconds(process.pid) - cpu) * 1e6
                                        / max(result['rps'] * seconds, 1))
                    samples.setdefault(server, {}).setdefault(name, []).append(result)
    finally:
        for _, (process, _), _ in started:
            stop(process)
    return {server: {name: sorted(results, key=lambda r: r['rps'])[len(results) // 2]
                     for name, results in runs.items()} for server, runs in samples.items()}


def table(results):
    for server, runs in results.items():
        for name, r in runs.items():
            print('  %-28s %-14s %7.0f req/s  mean %7.2f ms  p99 %7.2f ms  errors %d  CPU %4.0f us/req'
                  % (server, name, r['rps'], r['mean_ms'], r['p99_ms'], r['errors'], r['cpu_us']))


def report(results, seconds, rounds):
    print('Server benchmark (test driver, keep-alive, wrk -t2 -d%ds per run, median of %d rounds)'
          % (seconds, rounds))
    table(results)
    ours = results['xend-rest']
    rate = {name: r['rps'] for name, r in ours.items()}
    print('  Inspect c=16, xend-rest / gunicorn:        %.2fx (goal >= 1.3)'
          % (rate['inspect c=16'] / results['gunicorn gthread 2x8']['inspect c=16']['rps']))
    print('  Inspect c=16, xend-rest / gunicorn 1x16:   %.2fx (one process each)'
          % (rate['inspect c=16'] / results['gunicorn gthread 1x16']['inspect c=16']['rps']))
    print('  /_ping c=16, xend-rest / stdlib ceiling:   %.2fx (goal >= 0.8)'
          % (rate['ping c=16'] / results['stdlib ceiling']['ping c=16']['rps']))
    for many in ('inspect c=64', 'inspect c=256'):
        print('  %-13s / c=16:                     %.2fx (goal >= 0.9), errors %d'
              % (many, rate[many] / rate['inspect c=16'], ours[many]['errors']))
    for server, runs in results.items():
        if server == 'baseline':
            for name, r in runs.items():
                print('  %-13s xend-rest / baseline:       %.2fx' % (name, rate[name] / r['rps']))


def report_rpc(results):
    print('Over libvirtd (the same node through test+unix://, the remote protocol)')
    table(results)
    rate = {server: {name: r['rps'] for name, r in runs.items()} for server, runs in results.items()}
    print('  Inspect c=16, xend-rest / gunicorn:        %.2fx'
          % (rate['xend-rest']['inspect c=16'] / rate['gunicorn gthread 2x8']['inspect c=16']))
    for name in rate.get('baseline', {}):
        print('  %-13s xend-rest / baseline:       %.2fx'
              % (name, rate['xend-rest'][name] / rate['baseline'][name]))


def private_libvirtd(workdir):
    """A libvirtd of our own (the test tier's), or None where none can run."""
    sys.path.insert(0, os.path.join(ROOT, 'tests'))
    from realhv.libvirtd import PrivateLibvirtd, missing_binaries
    if os.geteuid() != 0 or missing_binaries():
        print('Over libvirtd: skipped (needs root and libvirtd)')
        return None
    libvirtd = PrivateLibvirtd(workdir)
    libvirtd.start()
    return libvirtd


def main():
    seconds = int(os.environ.get('BENCH_SECONDS', '5'))
    rounds = int(os.environ.get('BENCH_ROUNDS', '3'))
    baseline = os.environ.get('BENCH_BASELINE')
    with tempfile.TemporaryDirectory() as tmp:
        node = os.path.join(tmp, 'node16.xml')
        uri = write_node(node, 16)
        report(run(seconds, rounds, in_process(uri, baseline)), seconds, rounds)
        libvirtd = private_libvirtd(os.path.join(tmp, 'libvirtd'))
        if libvirtd is not None:
            try:
                rpc_uri = 'test+unix://%s?socket=%s' % (node, libvirtd.socket)
                report_rpc(run(seconds, rounds, over_libvirtd(rpc_uri, baseline)))
            finally:
                libvirtd.close()


if __name__ == '__main__':
    main()
