"""Under systemd (stderr is the journal: $JOURNAL_STREAM names it), each log line starts with its
priority as sd-daemon(3) spells it: <3> errors, <4> warnings, <6> the access log and other
information; anywhere else the lines are as before, with a timestamp."""
import http.client
import os
import re
import signal
import socket
import subprocess
import sys

from conftest import until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_daemon(tmp_path, journal):
    """The demo daemon, with stderr a file; JOURNAL_STREAM names that file when `journal`.
    Returns its log after a request, a 404 and SIGTERM."""
    log = tmp_path / 'daemon.log'
    with socket.create_server(('127.0.0.1', 0)) as sock:
        port = sock.getsockname()[1]
    env = dict(os.environ)
    env.pop('XEND_REST_URI', None)
    env.pop('JOURNAL_STREAM', None)
    with open(log, 'w') as stderr:
        if journal:
            info = os.fstat(stderr.fileno())
            env['JOURNAL_STREAM'] = f'{info.st_dev}:{info.st_ino}'
        daemon = subprocess.Popen([sys.executable, 'xend_rest.py', '--demo', '--listen',
                                   f'127.0.0.1:{port}', '--tls-key', 'x'], cwd=REPO, env=env,
                                  stderr=stderr)
        assert daemon.wait(20) == 2  # a configuration error: an error line
        daemon = subprocess.Popen([sys.executable, 'xend_rest.py', '--demo', '--listen',
                                   f'127.0.0.1:{port}'], cwd=REPO, env=env, stderr=stderr)
    try:
        until(lambda: 'listening on' in log.read_text())
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
        conn.request('GET', '/libvirt/xen/nodes/json')
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
    return log.read_text().splitlines()


def line(lines, text):
    return next(line for line in lines if text in line)


def test_with_journal_stream_each_line_carries_its_priority(tmp_path):
    lines = run_daemon(tmp_path, journal=True)
    assert all(re.match(r'<[2-7]>', each) for each in lines), lines
    assert line(lines, 'refusing to start').startswith('<3>ERROR ')
    assert line(lines, 'DEMO MODE').startswith('<4>WARNING ')
    assert line(lines, 'GET /libvirt/xen/nodes/json 200').startswith('<6>INFO xend_rest.access')
    assert line(lines, 'listening on').startswith('<6>INFO ')


def test_without_it_lines_are_unchanged(tmp_path):
    lines = run_daemon(tmp_path, journal=False)
    assert not any(each.startswith('<') for each in lines), lines
    assert re.match(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ERROR xend_rest.cli: refusing to start',
                    line(lines, 'refusing to start'))


def test_a_journal_stream_that_is_not_stderr_is_not_believed(monkeypatch):
    """A child of the unit, say, that inherited JOURNAL_STREAM but whose stderr goes elsewhere."""
    from xend_rest.cli import stderr_is_the_journal
    monkeypatch.setenv('JOURNAL_STREAM', '1:1')
    assert not stderr_is_the_journal()
