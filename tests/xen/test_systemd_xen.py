"""The daemon under systemd on a Debian dom0: readiness, failures, restarts and stops as the unit
and Debian's libvirtd make them, each seen through `systemctl show` and the daemon's answers."""

import http.client
import json
import re
import time

import pytest
from libvirt import VIR_ERR_INTERNAL_ERROR, VIR_FROM_LIBXL
from websockets.exceptions import ConnectionClosed

from realhv.guest import typed, wait_until

from .conftest import NODES
from .rig import CHECKOUT, TOKEN

UNIT = "xend-rest.service"
LIBVIRTD_DROP_IN = "/lib/systemd/system/libvirtd.service.d/xend-rest-after-xen.conf"
BROKEN_DROP_IN = "/etc/systemd/system/xend-rest.service.d/zz-broken.conf"


def main_pid(rig, unit=UNIT):
    return int(rig.unit(unit, "MainPID")["MainPID"])


def test_libvirtd_is_ordered_after_xen_by_the_package_and_was_not_before(rig):
    """On the rig's first boot, before the package was there, libvirtd started before Xen's
    init script had finished: its libxl driver stayed inactive and the daemon, installed then,
    answered 503 with libvirt's reason. The package's drop-in orders libvirtd after xen.service
    (the reboot test sees it hold at boot)."""
    first = rig.first_boot
    assert (int(first["libvirtd"]["ExecMainStartTimestampMonotonic"])
            < int(first["xen"]["ActiveEnterTimestampMonotonic"])), first
    assert first["virsh"].rc != 0, first["virsh"]
    assert first["api"].status == 503, first["api"]
    assert "libxenlight state driver is not active" in first["api"].json["message"], first["api"]
    # what libvirt returned for it, which the daemon's answer is decided from
    assert first["error"].out.split() == [str(VIR_ERR_INTERNAL_ERROR), str(VIR_FROM_LIBXL)], first["error"]
    print(f"xen tier: libvirt's error for the inactive Xen driver: code and domain {first['error'].out.strip()}")
    assert "systemctl restart libvirtd" in first["api"].json["message"], first["api"]
    assert int(first["api"].headers["Retry-After"]) > 0
    journal = rig.dom0(f"journalctl -b -u {UNIT} --no-pager -o cat").out
    assert journal.count("libvirtd's Xen driver is not active") == 1, journal  # one line, not per request
    libvirtd = rig.unit("libvirtd.service", "After", "DropInPaths")
    assert "xen.service" in libvirtd["After"].split()
    # /lib is /usr/lib on Debian 12 (merged /usr): systemd names the file by the latter
    assert any(path.endswith(LIBVIRTD_DROP_IN) for path in libvirtd["DropInPaths"].split()), libvirtd


def test_active_only_once_it_listens(rig):
    """Type=notify: `systemctl restart` returns once the daemon has said READY=1, which it says
    once its sockets listen; the very next request is answered, no retry."""
    result = rig.dom0(f"systemctl restart {UNIT} && curl -sS -o /dev/null -w '%{{http_code}}' "
                      "--unix-socket /run/xend-rest/api.sock http://localhost/_ping", timeout=120)
    assert result.rc == 0 and result.out == "200", result
    journal = rig.dom0(f"journalctl -u {UNIT} -n 30 --no-pager -o cat").out
    listening = journal.rindex("listening on unix:/run/xend-rest/api.sock")
    assert journal.rindex("Started xend-rest.service") > listening, journal
    wait_until(rig.daemon_answers, 60, "the daemon answering over TLS again")


@pytest.fixture
def broken(rig):
    """A drop-in that points the unit at a configuration with an unknown key; removed after."""
    rig.put("/etc/xend-rest/broken.conf", b"[xend-rest]\nno-such-key = 1\n")
    rig.put(BROKEN_DROP_IN, b"[Service]\nExecStart=\n"
                            b"ExecStart=/usr/bin/xend-rest --config /etc/xend-rest/broken.conf\n")
    assert rig.dom0("systemctl daemon-reload").rc == 0
    yield
    result = rig.dom0(f"rm -f {BROKEN_DROP_IN} /etc/xend-rest/broken.conf && systemctl daemon-reload "
                      f"&& systemctl reset-failed {UNIT}; systemctl restart {UNIT}", timeout=120)
    assert result.rc == 0, result
    wait_until(rig.daemon_answers, 60, "the daemon answering again")


def test_a_configuration_error_leaves_the_unit_failed_not_restarting(rig, broken):
    """Exit status 2 (a configuration error) is in RestartPreventExitStatus=: one start, one
    error in the journal, and the unit failed; not a restart every few seconds."""
    since = rig.dom0("date '+%Y-%m-%d %H:%M:%S'").out.strip()
    assert rig.dom0(f"systemctl restart {UNIT}", timeout=120).rc != 0
    time.sleep(10)  # past RestartSec=2 several times over
    unit = rig.unit(UNIT, "ActiveState", "Result", "NRestarts", "ExecMainStatus")
    assert unit == {"ActiveState": "failed", "Result": "exit-code", "NRestarts": "0",
                    "ExecMainStatus": "2"}, unit
    journal = rig.dom0(f"journalctl -u {UNIT} --since '{since}' --no-pager -o cat").out
    assert journal.count("unknown key(s) in [xend-rest]: no-such-key") == 1, journal
    assert "usage:" not in journal, journal  # one line, not argparse's usage text
    # ... at the journal's priority of an error (sd-daemon's <3> prefix, read by journald)
    records = [json.loads(line) for line in rig.dom0(
        f"journalctl -u {UNIT} --since '{since}' --no-pager -o json").out.splitlines()]
    error = [r for r in records if "no-such-key" in r.get("MESSAGE", "")]
    assert [r["PRIORITY"] for r in error] == ["3"], error
    assert error[0]["MESSAGE"].startswith("ERROR xend_rest.cli: refusing to start: "), error
    print(f"xen tier: the journal of a configuration error:\n{journal}")


def test_journal_priorities_follow_the_log_levels(rig):
    """`journalctl -o json`: the access log at PRIORITY 6 (errors at 3: the tests of a
    configuration error and of a reload refused read theirs)."""
    since = rig.dom0("date '+%Y-%m-%d %H:%M:%S'").out.strip()
    assert rig.api.get(f"{NODES}/json").status == 200
    records = [json.loads(line) for line in rig.dom0(
        f"journalctl -u {UNIT} --since '{since}' --no-pager -o json").out.splitlines()]
    access = [r for r in records if "xend_rest.access" in r.get("MESSAGE", "")]
    assert access and {r["PRIORITY"] for r in access} == {"6"}, access


def test_restart_of_libvirtd_is_survived_without_a_restart_of_the_daemon(rig):
    before = rig.unit(UNIT, "MainPID", "NRestarts")
    assert rig.dom0("systemctl restart libvirtd.service", timeout=120).rc == 0
    wait_until(rig.daemon_answers, 90, "the daemon answering after libvirtd's restart")
    assert rig.api.get(f"{NODES}/json").status == 200
    assert rig.unit(UNIT, "MainPID", "NRestarts") == before


def test_libvirtd_killed_is_survived_without_a_restart_of_the_daemon(rig):
    """SIGKILL to libvirtd: systemd starts it again (its Restart=on-failure, or a connection to
    its socket); the daemon reconnects by itself."""
    before = rig.unit(UNIT, "MainPID", "NRestarts")
    killed = main_pid(rig, "libvirtd.service")
    assert rig.dom0(f"kill -KILL {killed}").rc == 0
    wait_until(lambda: main_pid(rig, "libvirtd.service") not in (0, killed), 90, "libvirtd started again")
    wait_until(rig.daemon_answers, 90, "the daemon answering after libvirtd's SIGKILL")
    assert rig.unit(UNIT, "MainPID", "NRestarts") == before


def test_sigkill_brings_the_daemon_back_through_restart(rig):
    before = rig.unit(UNIT, "MainPID", "NRestarts")
    assert rig.dom0(f"systemctl kill -s SIGKILL {UNIT}").rc == 0
    wait_until(lambda: rig.unit(UNIT, "ActiveState", "MainPID")["MainPID"] not in ("0", before["MainPID"]),
               90, "the daemon started again by Restart=")
    wait_until(rig.daemon_answers, 90, "the daemon answering after its restart")
    assert int(rig.unit(UNIT, "NRestarts")["NRestarts"]) == int(before["NRestarts"]) + 1


@pytest.fixture(scope="module")
def guest(guests):
    name = guests.define("stop")
    guests.boot(name)
    return name


def test_stop_with_a_console_and_an_event_stream_open_ends_them_cleanly(rig, guest):
    """`systemctl stop` ends within TimeoutStopSec; a console's client gets the WebSocket close
    1001 (going away), an event stream its `closed` notice and the chunked body's last chunk."""
    timeout = rig.unit(UNIT, "TimeoutStopUSec")["TimeoutStopUSec"]
    conn = http.client.HTTPSConnection("localhost", rig.api.port, context=rig.api.context, timeout=60)
    conn.request("GET", "/libvirt/xen/events", headers={"Authorization": f"Bearer {rig.api.token}"})
    stream = conn.getresponse()
    assert stream.status == 200
    with rig.api.websocket(f"{NODES}/{guest}/console") as ws:
        typed(ws.send, lambda: ws.recv(timeout=60), timeout=60)
        stop = rig.dom0(f"s=$(date +%s%N); systemctl stop {UNIT}; echo $? $(( ($(date +%s%N) - s) / 1000000 ))",
                        timeout=120)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=30)
    rc, milliseconds = map(int, stop.out.split())
    print(f"xen tier: systemctl stop with a console and an event stream open: {milliseconds} ms "
          f"(TimeoutStopSec {timeout})")
    assert rc == 0 and rig.unit(UNIT, "ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001, closed.value
    body = stream.read()  # http.client raises IncompleteRead without the last chunk
    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    assert lines and lines[-1].get("Notice") == "closed", body
    conn.close()
    assert rig.dom0(f"systemctl start {UNIT}", timeout=120).rc == 0
    wait_until(rig.daemon_answers, 60, "the daemon answering after its start")


EXTRA = "xen-tier-reload-token-0123456789abcdef"


def events(rig, token):
    """An open event stream with `token`: (its connection, its response)."""
    conn = http.client.HTTPSConnection("localhost", rig.api.port, context=rig.api.context, timeout=60)
    conn.request("GET", "/libvirt/xen/events", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    assert response.status == 200, response.status
    return conn, response


def next_notice(response):
    """The stream's next notice (events of other guests may come first); None at its end."""
    while True:
        line = response.readline()
        if not line:
            return None
        if line.strip() and "Notice" in json.loads(line):
            return json.loads(line)


def test_reload_rotates_tokens_while_a_console_and_streams_stay_open(rig, guest):
    """`systemctl reload`: a token added is accepted by new connections; a token removed ends
    the stream opened with it (its `revoked` notice), while a console and a stream opened with
    the token kept go on; a malformed tokens file makes `systemctl reload` fail with the reason
    and the old tokens stay. Same PID throughout: nothing restarted."""
    before = rig.unit(UNIT, "MainPID", "NRestarts")
    tokens = "/etc/xend-rest/tokens"
    rig.put(tokens, f"{TOKEN} admin xen-tier\n{EXTRA} read extra\n".encode(), 0o600)
    assert rig.dom0(f"systemctl reload {UNIT}", timeout=120).rc == 0
    extra = http.client.HTTPSConnection("localhost", rig.api.port, context=rig.api.context, timeout=60)
    extra.request("GET", f"{NODES}/json", headers={"Authorization": f"Bearer {EXTRA}"})
    assert extra.getresponse().status == 200
    extra.close()
    extra_conn, extra_stream = events(rig, EXTRA)
    kept_conn, kept_stream = events(rig, TOKEN)
    with rig.api.websocket(f"{NODES}/{guest}/console") as ws:
        typed(ws.send, lambda: ws.recv(timeout=60), timeout=60)
        rig.put(tokens, f"{TOKEN} admin xen-tier\n".encode(), 0o600)
        reloaded = rig.dom0(f"s=$(date +%s%N); systemctl reload {UNIT}; echo $? $(( ($(date +%s%N) - s) / 1000000 ))",
                            timeout=120)
        rc, milliseconds = map(int, reloaded.out.split())
        print(f"xen tier: systemctl reload: {milliseconds} ms")
        assert rc == 0, reloaded
        notice = next_notice(extra_stream)
        assert notice["Notice"] == "revoked", notice
        assert next_notice(extra_stream) is None
        typed(ws.send, lambda: ws.recv(timeout=60), timeout=60)  # the console goes on
        # a malformed file: refused, the old tokens stay
        since = rig.dom0("date '+%Y-%m-%d %H:%M:%S'").out.strip()
        rig.put(tokens, f"{TOKEN} admin xen-tier\n{EXTRA} read extra\n".encode(), 0o644)
        refused = rig.dom0(f"systemctl reload {UNIT}", timeout=120)
        assert refused.rc != 0, refused
        journal = rig.dom0(f"journalctl -u {UNIT} --since '{since}' --no-pager -o json").out
        lines = [json.loads(line) for line in journal.splitlines()]
        refusals = [r for r in lines if "reload refused" in r.get("MESSAGE", "")
                    and r.get("_PID") == before["MainPID"]]
        assert refusals and "chmod 600" in refusals[0]["MESSAGE"], journal
        assert {r["PRIORITY"] for r in refusals} == {"3"}, refusals
        assert rig.api.get(f"{NODES}/json").status == 200
        typed(ws.send, lambda: ws.recv(timeout=60), timeout=60)
    rig.put(tokens, f"{TOKEN} admin xen-tier\n".encode(), 0o600)
    assert rig.dom0(f"systemctl reload {UNIT}", timeout=120).rc == 0
    assert rig.unit(UNIT, "MainPID", "NRestarts") == before
    assert rig.unit(UNIT, "ActiveState")["ActiveState"] == "active"
    for conn in (extra_conn, kept_conn):
        conn.close()


def test_systemd_analyze_security_rates_the_unit_as_documented(rig):
    """Measured on dom0 by its own systemd; docs/security.md states the figure."""
    out = rig.dom0(f"systemd-analyze security {UNIT} --no-pager").out
    measured = re.search(r"Overall exposure level for xend-rest.service: (\d+\.\d+) (\w+)", out)
    print(f"xen tier: systemd-analyze security on dom0: {measured.group(1)} {measured.group(2)}")
    documented = re.search(r"rates it\s+\*\*(\d+\.\d+) (\w+)\*\*", (CHECKOUT / "docs" / "security.md").read_text())
    assert measured.groups() == documented.groups(), (measured.groups(), documented.groups())


def test_the_sandbox_denied_nothing(rig):
    """Nothing the daemon did in this boot met the sandbox: no EPERM/EROFS/EACCES in its
    journal (SystemCallErrorNumber=EPERM makes a filtered call fail that way), no seccomp or
    audit record of it in the kernel's."""
    journal = rig.dom0(f"journalctl -b -u {UNIT} --no-pager -o cat").out
    denied = [line for line in journal.splitlines()
              if re.search(r"Operation not permitted|Read-only file system|Permission denied", line)]
    assert denied == [], denied
    kernel = rig.dom0("journalctl -b -k --no-pager -o cat | grep -E 'type=1326|comm=\"xend-rest\"'").out
    assert kernel == "", kernel
