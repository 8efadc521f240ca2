"""The command line: arguments, configuration file and their precedence."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from xend_rest.api.security import ConfigError
from xend_rest.cli import default_concurrency, main, parse_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def no_uri_in_environment(monkeypatch):
    monkeypatch.delenv("XEND_REST_URI", raising=False)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "xend-rest.conf"
    path.write_text("[xend-rest]\n"
                    "uri = xen+ssh://root@dom0.example/system\n"
                    "listen = 0.0.0.0:8080\n    unix:/run/xend-rest/api.sock\n"
                    "log-level = debug\n"
                    "workers = 8\n"
                    "concurrency = 2\n"
                    "timeout = 5\n"
                    "keepalive-interval = 2\n"
                    "open-timeout = 7.5\n")
    return str(path)


def test_defaults():
    args = parse_args([])
    assert args.uri == "xen:///system"
    assert args.listen == ["127.0.0.1:8000"]
    assert (args.log_level, args.workers, args.timeout, args.demo) == ("INFO", 32, 30.0, False)
    assert (args.keepalive_interval, args.keepalive_count, args.open_timeout) == (5, 3, 30.0)


@pytest.mark.parametrize("uris, concurrency", [
    (["test:///srv/node.xml"], 1),  # the test driver runs in our process: a request computes
    (["xen:///system"], 4),  # libvirtd answers: a request mostly waits
    (["test+unix:///srv/node.xml"], 4),
    (["test://dom0.example/default"], 4),
    (["test:///srv/node.xml", "xen+tls://dom0.example/system"], 4),
])
def test_concurrency_follows_where_requests_are_answered(uris, concurrency):
    assert parse_args([]).concurrency is None  # unless given: from the connections' URIs
    assert default_concurrency(uris) == concurrency


def test_uri_from_environment(monkeypatch):
    monkeypatch.setenv("XEND_REST_URI", "xen+ssh://root@dom0.example/system")
    assert parse_args([]).uri == "xen+ssh://root@dom0.example/system"
    assert parse_args(["--uri", "xen:///"]).uri == "xen:///"


def test_listen_is_repeatable():
    args = parse_args(["--listen", "[::1]:8000", "--listen", "unix:/tmp/x.sock"])
    assert args.listen == ["[::1]:8000", "unix:/tmp/x.sock"]


@pytest.mark.parametrize("flags", [["--listen", "8000"], ["--listen", "localhost"], ["--listen", "unix:"],
                                   ["--listen", "::1:80"], ["--workers", "0"], ["--log-level", "loud"],
                                   ["--keepalive-count", "0"], ["--open-timeout", "soon"],
                                   ["--concurrency", "0"], ["--operation-age", "nan"],
                                   ["--operation-age", "inf"], ["--timeout", "NaN"]])
def test_bad_values_refused_with_clear_message(flags):
    with pytest.raises(ConfigError) as exc:
        parse_args(flags)
    message = str(exc.value)
    assert f"argument {flags[0]}" in message
    if flags[0] == "--listen":
        assert "invalid listen address" in message


def test_config_file(config):
    args = parse_args(["--config", config])
    assert args.uri == "xen+ssh://root@dom0.example/system"
    assert args.listen == ["0.0.0.0:8080", "unix:/run/xend-rest/api.sock"]
    assert (args.log_level, args.workers, args.concurrency, args.timeout) == ("DEBUG", 8, 2, 5.0)
    assert (args.keepalive_interval, args.keepalive_count, args.open_timeout) == (2, 3, 7.5)


def test_command_line_overrides_config_file(config):
    args = parse_args(["--config", config, "--uri", "xen:///system", "--listen", "127.0.0.1:9000",
                       "--workers", "2", "--log-level", "warning", "--keepalive-count", "4",
                       "--concurrency", "1"])
    assert args.uri == "xen:///system"
    assert args.listen == ["127.0.0.1:9000"]
    assert (args.log_level, args.workers, args.concurrency, args.timeout) == ("WARNING", 2, 1, 5.0)
    assert (args.keepalive_interval, args.keepalive_count) == (2, 4)


@pytest.mark.parametrize("line, error", [
    ("listen = nonsense", "invalid listen address"),
    ("workers = many", "workers"),
    ("colour = blue", "unknown key"),
])
def test_bad_config_file_refused(tmp_path, line, error):
    path = tmp_path / "bad.conf"
    path.write_text(f"[xend-rest]\n{line}\n")
    with pytest.raises(ConfigError) as exc:
        parse_args(["--config", str(path)])
    assert str(path) in str(exc.value) and error in str(exc.value)


def test_missing_config_file_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        parse_args(["--config", str(tmp_path / "absent.conf")])


def free_port():
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def test_demo_daemon_serves_and_exits_cleanly_on_sigterm(tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(10)
    port = free_port()
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"))
    env.pop("XEND_REST_URI", None)
    daemon = subprocess.Popen([sys.executable, "xend_rest.py", "--demo", "--listen", f"127.0.0.1:{port}"],
                              cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert notify.recv(100) == b"READY=1"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/libvirt/xen/nodes/json")
        response = conn.getresponse()
        assert response.status == 200
        assert isinstance(json.loads(response.read()), list)
        conn.close()
        daemon.send_signal(signal.SIGTERM)
        assert notify.recv(100) == b"STOPPING=1"
        assert daemon.wait(10) == 0
    finally:
        notify.close()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    log = daemon.stderr.read()
    assert "WARNING" in log and "DEMO" in log and "NOT Xen" in log
    assert f"listening on 127.0.0.1:{port}" in log
    assert "GET /libvirt/xen/nodes/json 200" in log


def test_listen_failure_is_reported():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        daemon = subprocess.run([sys.executable, "xend_rest.py", "--demo", "--listen", f"127.0.0.1:{port}"],
                                cwd=REPO, stderr=subprocess.PIPE, text=True, timeout=10)
    assert daemon.returncode == 1
    assert "cannot listen" in daemon.stderr


def test_max_head_from_flag_file_and_default(tmp_path):
    from xend_rest import defaults
    assert parse_args([]).max_head == defaults.MAX_HEAD
    assert parse_args(['--max-head', '8192']).max_head == 8192
    path = tmp_path / 'xend-rest.conf'
    path.write_text('[xend-rest]\nmax-head = 4096\n')
    assert parse_args(['--config', str(path)]).max_head == 4096


def test_per_caller_shares_from_flag_file_and_default(tmp_path):
    from xend_rest import defaults
    args = parse_args([])
    assert (args.watchers_per_caller, args.console_sessions_per_caller,
            args.console_tickets_per_caller) == (
        defaults.WATCHERS_PER_CALLER, defaults.CONSOLE_SESSIONS_PER_CALLER,
        defaults.CONSOLE_TICKETS_PER_CALLER)
    path = tmp_path / 'xend-rest.conf'
    path.write_text('[xend-rest]\nwatchers-per-caller = 3\nconsole-sessions-per-caller = 2\n'
                    'console-tickets-per-caller = 7\n')
    args = parse_args(['--config', str(path), '--watchers-per-caller', '5'])
    assert (args.watchers_per_caller, args.console_sessions_per_caller,
            args.console_tickets_per_caller) == (5, 2, 7)
    assert parse_args(['--console-tickets-per-caller', '9']).console_tickets_per_caller == 9


# -- several connections ------------------------------------------------------------------------

def connections(args):
    return {c["name"]: (c["uri"], c["keepalive_interval"], c["keepalive_count"], c["open_timeout"])
            for c in args.connections}


def test_without_connections_there_is_the_default_one():
    assert connections(parse_args([])) == {"xen": ("xen:///system", 5, 3, 30.0)}


def test_connect_adds_named_connections_and_uri_stays_xen():
    args = parse_args(["--uri", "xen:///", "--connect", "dom0-b=xen+tls://b.example/system",
                       "--keepalive-interval", "2"])
    assert connections(args) == {"xen": ("xen:///", 2, 3, 30.0),
                                 "dom0-b": ("xen+tls://b.example/system", 2, 3, 30.0)}
    assert args.uri == "xen:///"


def test_only_connect_means_no_local_xen():
    args = parse_args(["--connect", "a=xen+tls://a.example/system",
                       "--connect", "b=xen+tls://b.example/system"])
    assert list(connections(args)) == ["a", "b"]
    assert args.uri is None


def test_the_environment_still_names_xen(monkeypatch):
    monkeypatch.setenv("XEND_REST_URI", "xen+ssh://root@dom0.example/system")
    args = parse_args(["--connect", "kvm=qemu:///system"])
    assert list(connections(args)) == ["xen", "kvm"]
    assert args.connections[0]["uri"] == "xen+ssh://root@dom0.example/system"


@pytest.fixture
def connections_config(tmp_path):
    path = tmp_path / "xend-rest.conf"
    path.write_text("[xend-rest]\n"
                    "keepalive-interval = 4\n"
                    "open-timeout = 10\n"
                    "[connection dom0-a]\n"
                    "uri = xen+tls://a.example/system\n"
                    "[connection dom0-b]\n"
                    "uri = xen+tls://b.example/system\n"
                    "keepalive-interval = 10\n"
                    "keepalive-count = 6\n")
    return str(path)


def test_a_section_per_connection_with_its_own_libvirt_settings(connections_config):
    assert connections(parse_args(["--config", connections_config])) == {
        "dom0-a": ("xen+tls://a.example/system", 4, 3, 10.0),
        "dom0-b": ("xen+tls://b.example/system", 10, 6, 10.0)}


def test_the_command_line_overrides_a_sections_uri_and_global_settings(connections_config):
    args = parse_args(["--config", connections_config, "--connect", "dom0-b=xen+tls://b2/system",
                       "--open-timeout", "3", "--keepalive-interval", "1"])
    assert connections(args) == {"dom0-a": ("xen+tls://a.example/system", 1, 3, 3.0),
                                 "dom0-b": ("xen+tls://b2/system", 10, 6, 3.0)}


def test_a_section_may_tune_the_default_connection(tmp_path):
    path = tmp_path / "xend-rest.conf"
    path.write_text("[xend-rest]\nuri = xen:///\n[connection xen]\nopen-timeout = 5\n")
    assert connections(parse_args(["--config", str(path)])) == {"xen": ("xen:///", 5, 3, 5.0)}


@pytest.mark.parametrize("flags, error", [
    (["--connect", "a"], "expected NAME=URI"),
    (["--connect", "Dom0=xen:///"], "lowercase letters"),
    (["--connect", "a/b=xen:///"], "lowercase letters"),
    (["--connect", "a=xen:///", "--connect", "a=qemu:///system"], "the connection a is given twice"),
    (["--uri", "xen:///", "--connect", "xen=qemu:///system"], "the connection xen is given twice"),
])
def test_bad_connections_refused(flags, error):
    with pytest.raises(ConfigError) as exc:
        parse_args(flags)
    assert error in str(exc.value)


@pytest.mark.parametrize("text, error", [
    ("[connection Dom0]\nuri = xen:///\n", "lowercase letters"),
    ("[connection a]\nuri = xen:///\ncolour = blue\n", "unknown key(s) in [connection a]: colour"),
    ("[connection a]\nkeepalive-count = 2\n", "[connection a] has no uri"),
    ("[connection a]\nuri = xen:///\nopen-timeout = soon\n", "[connection a] open-timeout"),
    ("[xend-rest]\nuri = xen:///\n[connection xen]\nuri = xen:///system\n", "both set"),
])
def test_bad_connection_sections_refused(tmp_path, text, error):
    path = tmp_path / "bad.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        parse_args(["--config", str(path)])
    assert error in str(exc.value)


def test_a_daemon_serves_each_connection_under_its_name(tmp_path):
    port = free_port()
    env = dict(os.environ)
    env.pop("XEND_REST_URI", None)
    daemon = subprocess.Popen(
        [sys.executable, "xend_rest.py", "--listen", f"127.0.0.1:{port}", "--open-timeout", "5",
         "--connect", "demo=test:///default", "--connect", f"gone=test://{tmp_path}/absent.xml"],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        def get(path):
            for _ in range(100):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", path)
                    response = conn.getresponse()
                    return response.status, json.loads(response.read())
                except ConnectionRefusedError:
                    time.sleep(0.1)
            raise AssertionError("the daemon did not listen")

        assert get("/libvirt/demo/nodes/json")[0] == 200
        assert get("/libvirt/gone/nodes/json")[0] == 503
        assert get("/libvirt/xen/nodes/json")[0] == 404
        status, listed = get("/libvirt/json")
        assert [(c["Name"], c["Connected"]) for c in listed] == [("demo", True), ("gone", False)]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
    log = daemon.stderr.read()
    assert "connection demo: libvirt URI test:///default" in log


def test_a_token_limited_to_an_unknown_connection_stops_the_daemon(tmp_path, caplog):
    tokens = tmp_path / "tokens"
    tokens.write_text("%s read@dom0-c\n" % ("t" * 32))
    tokens.chmod(0o600)
    assert main(["--connect", "dom0-a=test:///default", "--tokens-file", str(tokens),
                 "--listen", "127.0.0.1:0"]) == 2
    assert "limited to dom0-c, which is not a configured connection" in caplog.text


def test_the_daemon_starts_without_the_console_machinery():
    """Most daemons never open a console: the session code is imported by the first one."""
    code = ('import sys, xend_rest.cli, xend_rest.api.app; '
            'print(*sorted(name for name in sys.modules if name in sys.argv[1:]))')
    lazy = ['xend_rest.consoles.bridge', 'xend_rest.consoles.console_stream',
            'xend_rest.consoles.framing', 'xend_rest.consoles.vnc', 'xend_rest.consoles.websocket']
    found = subprocess.run([sys.executable, '-c', code, *lazy], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout
    assert found.split() == []


def test_state_dir(tmp_path):
    assert parse_args([]).state_dir == "/var/lib/xend-rest"
    config = tmp_path / "xend-rest.conf"
    config.write_text("[xend-rest]\nstate-dir = /srv/xend-rest\n")
    assert parse_args(["--config", str(config)]).state_dir == "/srv/xend-rest"
    assert parse_args(["--config", str(config), "--state-dir", str(tmp_path)]).state_dir == str(tmp_path)
