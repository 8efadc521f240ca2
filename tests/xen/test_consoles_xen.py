"""Consoles on Xen: a shell on a PV guest's hvc0 (xenconsoled's pty, opened by libxl), reached
from the management host over TLS with a token, by a real WebSocket client and by the raw
attach; taken over with force=1; ended by the guest's own power-off, which a Stop races (libxl
then holds the domain 60 s: the Stop is bounded)."""

import re
import socket
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from realhv.guest import typed, wait_until
from xend_rest.defaults import GUEST_REQUEST_SECONDS

from .conftest import NODES


def receive(ws):
    return lambda: ws.recv(timeout=60)


def open_sessions(rig):
    metrics = rig.api.get("/metrics").body.decode()
    return int(float(re.search(r"^xend_console_sessions (\S+)$", metrics, re.M).group(1)))


@pytest.fixture(autouse=True)
def previous_sessions_ended(rig):
    """A session ends a moment after its client leaves: each test starts with none open."""
    wait_until(lambda: open_sessions(rig) == 0, 30, "the console sessions of the test before to end")


@pytest.fixture(scope="module")
def guest(guests):
    name = guests.define("console")
    guests.boot(name)
    return name


def test_a_command_typed_through_the_console_runs_in_the_xen_guest(rig, guest):
    with rig.api.websocket(f"{NODES}/{guest}/console") as ws:
        typed(ws.send, receive(ws), timeout=60)


def test_the_same_through_the_raw_attach_over_tls(rig, guest):
    raw = socket.create_connection(("127.0.0.1", rig.api.port), timeout=60)
    with rig.api.context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(f"POST {NODES}/{guest}/attach HTTP/1.1\r\nHost: localhost\r\n"
                     f"Authorization: Bearer {rig.api.token}\r\nConnection: Upgrade\r\n"
                     "Upgrade: tcp\r\nContent-Length: 0\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101 "), head
        typed(sock.sendall, lambda: sock.recv(65536), timeout=60)


def test_a_second_client_is_409_until_it_forces_the_takeover(rig, guest):
    path = f"{NODES}/{guest}/console"
    with rig.api.websocket(path) as first:
        typed(first.send, receive(first), timeout=60)
        with pytest.raises(InvalidStatus) as refused:
            rig.api.websocket(path)
        assert refused.value.response.status_code == 409
        assert b'"console_busy"' in refused.value.response.body
        with rig.api.websocket(path, "force=1") as second:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    first.recv(timeout=60)
            assert closed.value.rcvd.code == 4409
            typed(second.send, receive(second), timeout=60)


def power_off_racing_a_stop(rig, guest, query=""):
    """The guest powers itself off (typed into its console) while a Stop is sent: the console's
    close, and the Stop's (status, seconds, JSON body)."""
    answers = []

    def stop():
        began = time.monotonic()
        response = rig.api.post(f"{NODES}/{guest}/stop", query=query, timeout=150)
        answers.append((response.status, time.monotonic() - began, response.json))

    with rig.api.websocket(f"{NODES}/{guest}/console") as ws:
        typed(ws.send, receive(ws), timeout=60)
        ws.send(b"poweroff -f\n")
        stopper = threading.Thread(target=stop)
        stopper.start()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=90)
        stopper.join(150)
    [(status, seconds, body)] = answers
    print(f"xen tier: a Stop{'?' + query if query else ''} during the guest's own power-off "
          f"answered {status} in {seconds:.1f} s")
    return closed.value.rcvd, (status, seconds, body)


def test_the_guests_own_power_off_ends_the_session_and_a_stop_meanwhile_is_bounded(rig, guest):
    """A Stop sent while the guest powers itself off races it: libxl's shutdown() then holds the
    domain for 60 s (every call about it waits too). The Stop answers within its bound instead:
    204 or 304 when libvirt answered in time, 202 when it had not."""
    close, (status, seconds, body) = power_off_racing_a_stop(rig, guest)
    # the session ends cleanly; whether libvirt could say why within its 3 s depends on the race
    assert close.code == 1000
    assert close.reason in ("the domain stopped", "the console was closed")
    assert status in (202, 204, 304), (status, body)
    assert seconds < GUEST_REQUEST_SECONDS + 15, seconds  # not libxl's 60 s
    if status == 202:
        assert "/wait?condition=shutoff" in body["message"]
    response = rig.api.post(f"{NODES}/{guest}/wait", query="condition=shutoff&timeout=120", timeout=150)
    assert response.status == 200, response
    # and with the domain off, a console is refused like any action needing it running
    with pytest.raises(InvalidStatus) as refused:
        rig.api.websocket(f"{NODES}/{guest}/console")
    assert refused.value.response.status_code == 409


def test_a_stop_with_wait_racing_the_power_off_answers_once_the_domain_is_off(rig, guests, guest):
    """With wait, a Stop whose libvirt call outlives its bound waits on for the domain's event
    (up to the seconds given) rather than answering 202."""
    guests.boot(guest)
    _, (status, _, body) = power_off_racing_a_stop(rig, guest, "wait=120")
    assert status in (204, 304), (status, body)
    assert rig.api.get(f"{NODES}/{guest}/stats").json["State"] == "shutoff"
