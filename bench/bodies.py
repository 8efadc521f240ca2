"""What request bodies on their way cost the daemon in memory, and what it keeps afterwards.

    ./dev bench bodies
    BODIES_CLIENTS=300 ./dev bench bodies

A daemon with a token configured; BODIES_CLIENTS (600) connections each send the head of a
1 MiB JSON body (max-body) and all of it but one byte, then wait: first without the token,
then with it. RSS is read before, while they wait (3 s after the last one sent), and 3 s after
they closed. Goals: without the token nothing is kept (less than 16 MiB more, which the
sockets' own objects cost); with it, at most MAX_BUFFERED (64 MiB) of bodies and what the
buffers' growth costs (less than MAX_BUFFERED + 32 MiB more); after they closed, less than
8 MiB more than before (glibc gives the freed heap back: the server asks it to).
"""
import os
import socket
import sys
import tempfile
import time

from bench.common import free_port, rss_kib, stop, write_node
from xend_rest import defaults

TOKEN = 'b' * 32
BODY = 1 << 20


def start(workdir):
    import subprocess
    tokens = os.path.join(workdir, 'tokens')
    with open(tokens, 'w') as f:
        f.write(TOKEN + ' admin bench\n')
    os.chmod(tokens, 0o600)
    port = free_port()
    uri = write_node(os.path.join(workdir, 'node.xml'), 4)
    process = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'xend_rest.py'),
         '--uri', uri, '--listen', '127.0.0.1:%d' % port, '--tokens-file', tokens,
         '--log-level', 'ERROR', '--state-dir', os.path.join(workdir, 'state')],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return process, port
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                stop(process)
                raise RuntimeError('the daemon did not listen')
            time.sleep(0.05)


def hold_bodies(port, clients, token):
    """`clients` connections, each with all but a byte of a body of max-body on its way."""
    authorization = b'Authorization: Bearer %s\r\n' % token.encode() if token else b''
    head = (b'POST /libvirt/xen/nodes/create HTTP/1.1\r\nHost: localhost\r\n%s'
            b'Content-Type: application/json\r\nContent-Length: %d\r\n\r\n' % (authorization, BODY))
    body = b'{"domain": "' + b'x' * (BODY - 13)
    socks = []
    for _ in range(clients):
        sock = socket.create_connection(('127.0.0.1', port))
        sock.settimeout(5)
        try:
            sock.sendall(head + body)
        except OSError:  # answered (401, 503) and closed before it all went
            pass
        socks.append(sock)
    return socks


def measure(process, port, clients, token):
    before = rss_kib(process.pid)
    socks = hold_bodies(port, clients, token)
    time.sleep(3)
    during = rss_kib(process.pid)
    for sock in socks:
        sock.close()
    time.sleep(3)
    return before, during, rss_kib(process.pid)


def main():
    clients = int(os.environ.get('BODIES_CLIENTS', '600'))
    print('Request bodies on their way: %d clients, each all but a byte of 1 MiB' % clients)
    print('%-18s %10s %10s %10s   %s' % ('', 'before', 'waiting', 'closed', 'goals'))
    with tempfile.TemporaryDirectory() as workdir:
        process, port = start(workdir)
        try:
            bound = defaults.MAX_BUFFERED >> 10
            for label, token, during_goal in (('without a token', None, 16 << 10),
                                              ('with the token', TOKEN, bound + (32 << 10))):
                before, during, after = measure(process, port, clients, token)
                ok = during - before < during_goal and after - before < 8 << 10
                print('%-18s %7d MiB %7d MiB %7d MiB   %s (%+d MiB waiting, %+d MiB after)' % (
                    label, before >> 10, during >> 10, after >> 10, 'ok' if ok else 'MISSED',
                    (during - before) >> 10, (after - before) >> 10))
        finally:
            stop(process)


if __name__ == '__main__':
    main()
