"""`systemctl reload` (SIGHUP, and `xend-rest --reload PID` as ExecReload= waits for it): a real
daemon re-reads its tokens file, TLS certificate and key, while a client stays connected; a
stream opened with a token the reload removed is ended; a malformed new file is refused and the
old credentials stay in force."""
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys

import pytest

from conftest import node_xml, until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENTS = '/libvirt/xen/events'
OLD, KEPT, NEW = 'o' * 32, 'k' * 32, 'n' * 32


def openssl(*args, cwd):
    subprocess.run(['openssl', *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    """A CA and two server certificates for 127.0.0.1 ('one', 'two'): the rotation. Made at
    test time: no key is ever committed."""
    d = tmp_path_factory.mktemp('pki')
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=ca',
            '-keyout', 'ca.key', '-out', 'ca.pem', cwd=d)
    (d / 'san.ext').write_text('subjectAltName=IP:127.0.0.1\n')
    for name in ('one', 'two'):
        openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', f'/CN={name}', '-keyout',
                name + '.key', '-out', name + '.csr', cwd=d)
        openssl('x509', '-req', '-in', name + '.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
                '-CAcreateserial', '-days', '1', '-out', name + '.pem', '-extfile', 'san.ext',
                cwd=d)
    return d


class Daemon:
    """The daemon as systemd runs it: a process of its own, $RUNTIME_DIRECTORY, its log read."""

    def __init__(self, tmp_path, pki, *flags, tokens_flag=True):
        self.tmp_path, self.pki = tmp_path, pki
        self.tokens = tmp_path / 'tokens'
        self.write_tokens(f'{OLD} admin old\n{KEPT} admin kept\n')
        for suffix in ('pem', 'key'):  # the files the configuration names: rotated in place
            (tmp_path / f'server.{suffix}').write_bytes((pki / f'one.{suffix}').read_bytes())
        node = tmp_path / 'node.xml'
        node.write_text(node_xml())
        with socket.create_server(('127.0.0.1', 0)) as sock:
            self.port = sock.getsockname()[1]
        (tmp_path / 'run').mkdir()
        self.env = dict(os.environ, RUNTIME_DIRECTORY=str(tmp_path / 'run'))
        self.env.pop('XEND_REST_URI', None)
        self.log = tmp_path / 'daemon.log'
        with open(self.log, 'w') as stderr:
            self.process = subprocess.Popen(
                [sys.executable, 'xend_rest.py', '--uri', f'test://{node}', '--listen',
                 f'127.0.0.1:{self.port}', '--tls-cert', str(tmp_path / 'server.pem'),
                 '--tls-key', str(tmp_path / 'server.key'),
                 *(['--tokens-file', str(self.tokens)] if tokens_flag else []),
                 '--state-dir', str(tmp_path / 'state'), *flags],
                cwd=REPO, env=self.env, stderr=stderr)
        until(lambda: 'listening on' in self.log.read_text())

    def write_tokens(self, text, mode=0o600):
        self.tokens.write_text(text)
        self.tokens.chmod(mode)

    def reload(self):
        """`xend-rest --reload PID`, as the unit's ExecReload= runs it."""
        return subprocess.run([sys.executable, 'xend_rest.py', '--reload', str(self.process.pid)],
                              cwd=REPO, env=self.env, capture_output=True, text=True, timeout=30)

    def connect(self):
        context = ssl.create_default_context(cafile=str(self.pki / 'ca.pem'))
        return http.client.HTTPSConnection('127.0.0.1', self.port, context=context, timeout=10)

    def call(self, method, path, token):
        conn = self.connect()
        try:
            conn.request(method, path, headers={'Authorization': f'Bearer {token}'})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def stream(self, token):
        """An open event stream: (its connection, its response), read line by line."""
        conn = self.connect()
        conn.request('GET', EVENTS, headers={'Authorization': f'Bearer {token}'})
        response = conn.getresponse()
        assert response.status == 200
        return conn, response

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def daemon(tmp_path, pki):
    daemon = Daemon(tmp_path, pki)
    yield daemon
    daemon.stop()


def records(response):
    """The stream's next record (skipping heartbeats)."""
    while True:
        line = response.readline()
        if not line:
            return None
        if line.strip():
            return json.loads(line)


def served_certificate(daemon):
    conn = daemon.connect()
    try:
        conn.connect()
        return ssl.DER_cert_to_PEM_cert(conn.sock.getpeercert(binary_form=True))
    finally:
        conn.close()


def test_reload_takes_new_tokens_and_certificate_and_keeps_a_stream_open(daemon, pki):
    kept_conn, kept = daemon.stream(KEPT)
    old_conn, old = daemon.stream(OLD)
    daemon.write_tokens(f'{KEPT} admin kept\n{NEW} admin new\n')
    for suffix in ('pem', 'key'):
        (daemon.tmp_path / f'server.{suffix}').write_bytes((pki / f'two.{suffix}').read_bytes())

    result = daemon.reload()
    assert result.returncode == 0, result.stderr

    assert daemon.call('GET', '/libvirt/xen/nodes/json', NEW) == 200
    assert daemon.call('GET', '/libvirt/xen/nodes/json', OLD) == 401
    assert served_certificate(daemon) == (pki / 'two.pem').read_text()
    # The stream opened with the removed token ends with its notice...
    notice = records(old)
    assert notice['Notice'] == 'revoked' and 'reload' in notice['Message'], notice
    assert records(old) is None  # the chunked body's end
    # ...the other, on its connection made with the old certificate, reads on.
    assert daemon.call('POST', '/libvirt/xen/nodes/idle/start', NEW) in (200, 204)
    event = records(kept)
    assert (event['Domain']['Name'], event['Event']) == ('idle', 'started'), event
    log = daemon.log.read_text()
    assert 'reloaded the tokens file' in log and '1 event streams and console sessions' in log
    for conn in (kept_conn, old_conn):
        conn.close()


@pytest.mark.parametrize('tokens, mode, reason', [
    (f'{NEW} admin new\n', 0o644, 'chmod 600'),
    (f'{NEW} emperor new\n', 0o600, "unknown role 'emperor'"),
    ('short admin\n', 0o600, 'at least 16 characters'),
])
def test_a_malformed_file_is_refused_and_the_old_credentials_stay(daemon, tokens, mode, reason):
    kept_conn, kept = daemon.stream(OLD)
    daemon.write_tokens(tokens, mode)

    result = daemon.reload()

    assert result.returncode == 2, result
    assert reason in result.stderr and 'credentials in force stay' in result.stderr
    assert daemon.call('GET', '/libvirt/xen/nodes/json', OLD) == 200
    assert daemon.call('GET', '/libvirt/xen/nodes/json', NEW) == 401
    assert daemon.call('POST', '/libvirt/xen/nodes/idle/start', OLD) in (200, 204)
    assert records(kept)['Event'] == 'started'  # the stream was not touched
    log = daemon.log.read_text()
    assert log.count('reload refused, the credentials in force stay') == 1, log
    kept_conn.close()


def test_a_key_that_does_not_match_is_refused_and_the_old_certificate_serves(daemon, pki):
    (daemon.tmp_path / 'server.pem').write_bytes((pki / 'two.pem').read_bytes())  # key: one's
    result = daemon.reload()
    assert result.returncode == 2 and 'cannot load TLS certificate' in result.stderr, result
    assert served_certificate(daemon) == (pki / 'one.pem').read_text()
    assert daemon.call('GET', '/libvirt/xen/nodes/json', OLD) == 200


def test_sighup_alone_reloads_and_several_make_one_answer_each(daemon):
    """A plain `kill -HUP` reloads too; two waiters one after the other each get their own."""
    daemon.write_tokens(f'{NEW} admin new\n')
    daemon.process.send_signal(signal.SIGHUP)
    until(lambda: daemon.call('GET', '/libvirt/xen/nodes/json', NEW) == 200)
    assert daemon.reload().returncode == 0
    daemon.write_tokens(f'{KEPT} admin kept\n')
    assert daemon.reload().returncode == 0
    assert daemon.call('GET', '/libvirt/xen/nodes/json', KEPT) == 200
    assert daemon.call('GET', '/libvirt/xen/nodes/json', NEW) == 401


def test_reload_without_a_runtime_directory_says_so(tmp_path):
    env = dict(os.environ)
    env.pop('RUNTIME_DIRECTORY', None)
    result = subprocess.run([sys.executable, 'xend_rest.py', '--reload', str(os.getpid())],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and 'RUNTIME_DIRECTORY' in result.stderr


def test_settings_a_reload_does_not_read_are_named_and_left_for_a_restart(tmp_path, pki):
    config = tmp_path / 'xend-rest.conf'
    config.write_text('[xend-rest]\nworkers = 8\n')
    daemon = Daemon(tmp_path, pki, '--config', str(config))
    try:
        config.write_text('[xend-rest]\nworkers = 4\nmax-body = 4096\n')
        daemon.write_tokens(f'{NEW} admin new\n')
        assert daemon.reload().returncode == 0
        assert daemon.call('GET', '/libvirt/xen/nodes/json', NEW) == 200
        log = daemon.log.read_text()
        assert 'reload: workers, max-body changed, which takes a restart: not applied' in log, log
    finally:
        daemon.stop()


def test_a_reload_that_would_turn_authentication_off_is_refused(tmp_path, pki):
    """The configuration file no longer names a tokens file, and nothing else authenticates:
    every loopback client would be let in as anonymous. Refused, as switching TLS is."""
    config = tmp_path / 'xend-rest.conf'
    config.write_text(f'[xend-rest]\ntokens-file = {tmp_path / "tokens"}\n')
    daemon = Daemon(tmp_path, pki, '--config', str(config), tokens_flag=False)
    try:
        config.write_text('[xend-rest]\n')
        result = daemon.reload()
        assert result.returncode == 2, result
        assert 'neither tokens-file nor tls-ca is set any more' in result.stderr
        assert daemon.call('GET', '/libvirt/xen/nodes/json', OLD) == 200
        assert daemon.call('GET', '/libvirt/xen/nodes/json', 'x' * 32) == 401
        log = daemon.log.read_text()
        assert log.count('ERROR xend_rest.cli: reload refused, the credentials in force stay: '
                         'neither tokens-file') == 1, log
    finally:
        daemon.stop()


def test_a_daemon_that_started_without_authentication_reloads_without(tmp_path, pki):
    daemon = Daemon(tmp_path, pki, tokens_flag=False)
    try:
        assert daemon.reload().returncode == 0
        assert daemon.call('GET', '/libvirt/xen/nodes/json', 'x' * 32) == 200
    finally:
        daemon.stop()


def test_reload_signals_nothing_but_a_xend_rest_daemon(tmp_path):
    other = subprocess.Popen(['sleep', '60'])  # SIGHUP would end it
    try:
        env = dict(os.environ, RUNTIME_DIRECTORY=str(tmp_path))
        result = subprocess.run([sys.executable, 'xend_rest.py', '--reload', str(other.pid)],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and 'not a xend-rest daemon' in result.stderr
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
