"""The OpenAPI document is the contract, and a conformance tool agrees: schemathesis (pinned in
setup.cfg's test extra) against the demo daemon, every check, every phase (stateful included),
the seed and the few settings that cannot apply to the demo in schemathesis.toml: no failure.

By hand, against a demo on port 8000:
    schemathesis --config-file schemathesis.toml run http://127.0.0.1:8000/openapi.json \\
        --checks all --phases examples,coverage,fuzzing,stateful
"""
import http.client
import os
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), 'schemathesis')
BOUND = 600  # seconds; the run takes two or three minutes on two busy cores


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture
def demo():
    """The demo daemon, as `xend_rest.py --demo` runs it: its base URL."""
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'xend_rest.py'), '--demo', '--log-level', 'ERROR',
         '--listen', '127.0.0.1:%d' % port], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
                conn.request('GET', '/_ping')
                assert conn.getresponse().status == 200
                conn.close()
                break
            except OSError:
                assert daemon.poll() is None, daemon.stderr.read().decode()
                assert time.monotonic() < deadline, 'the demo did not answer within 30 s'
                time.sleep(0.1)
        yield 'http://127.0.0.1:%d' % port
    finally:
        daemon.terminate()
        daemon.wait(10)


def test_the_demo_conforms_to_its_openapi_document(demo):
    assert os.path.exists(SCHEMATHESIS), 'schemathesis is missing: pip install -e .[test]'
    run = subprocess.run(
        [SCHEMATHESIS, '--config-file', os.path.join(ROOT, 'schemathesis.toml'), 'run',
         demo + '/openapi.json', '--checks', 'all',
         '--phases', 'examples,coverage,fuzzing,stateful', '--no-color'],
        cwd=ROOT, capture_output=True, text=True, timeout=BOUND,
        env=dict(os.environ, PYTHONPATH=ROOT))
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, '%s\n\n%s' % (summary, run.stdout[-20000:] + run.stderr[-5000:])
    assert ' failure' not in summary, summary
