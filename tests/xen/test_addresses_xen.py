"""Addresses on Xen, from the daemon dom0's systemd runs under the shipped unit (its sandbox
must let it read the neighbour table over netlink and ask xenstored over its socket): a PV guest
on dom0's plain bridge xenbr0 is found through dom0's neighbour table once it talked to an
address of dom0's on that bridge, and through xenstore once it publishes its addresses there as
the Xen guest agents do (the guest writes the keys itself, through its own /dev/xen/xenbus);
wait= answers once they appear. libxl has neither an agent nor an ARP source: the answer leaves
them out. The guest's own `ip addr` on its console is the evidence."""

import re
import secrets
import struct
import threading
import time

import pytest

from .conftest import NODES

MAC = "00:16:3e:22:00:01"
NIC = f"""
    <interface type='bridge'><source bridge='xenbr0'/><mac address='{MAC}'/></interface>"""
GUEST_ADDRESS, DOM0_ADDRESS = "10.99.0.5", "10.99.0.1"
XS_WRITE = 11  # xen/include/public/io/xs_wire.h


@pytest.fixture(scope="module")
def guest(guests):
    name = guests.define("addresses", extra=NIC)
    guests.boot(name)
    yield name
    guests.remove(name)


@pytest.fixture(scope="module")
def console(rig, guest):
    """The guest's shell, through the daemon's console WebSocket: run(command) -> (rc, output)."""
    with rig.api.websocket(f"{NODES}/{guest}/console") as ws:
        def run(command, timeout=60):
            token = secrets.token_hex(4)
            ws.send(f"{command}; echo XEND-DONE-{token}-$?\n".encode())
            seen, done = b"", re.compile(rf"XEND-DONE-{token}-(\d+)\r?\n".encode())
            deadline = time.monotonic() + timeout
            while not done.search(seen):
                assert time.monotonic() < deadline, f"{command!r} did not end: {seen[-500:]!r}"
                seen += ws.recv(timeout=timeout)
            output = seen.split(f"$?\r\n".encode(), 1)[-1]
            return int(done.search(seen).group(1)), output.decode(errors="replace")
        yield run


def xenstore_write(path, value):
    """A shell command for the guest's busybox: one XS_WRITE of `value` at `path` (relative: the
    guest's own home) through /dev/xen/xenbus, as an agent's xenstore client sends it."""
    payload = path.encode() + b"\0" + value.encode()
    head = struct.pack("=IIII", XS_WRITE, 1, 0, len(payload))
    octal = "".join(f"\\{byte:03o}" for byte in head + path.encode() + b"\0")
    return f"printf '{octal}{value}' > /dev/xen/xenbus"


def addresses(rig, guest, query=""):
    response = rig.api.get(f"{NODES}/{guest}/addresses", query=query)
    assert response.status == 200, response
    [interface] = response.json
    return interface


def found(interface):
    return [(item["Address"], item["Prefix"], item["Family"], item["Sources"])
            for item in interface["Addresses"]]


def test_a_guest_on_a_plain_bridge_is_found_only_after_it_talked_to_dom0(rig, guest, console):
    domid = rig.api.get(f"{NODES}/{guest}/json").json["domain"]["@id"]
    interface = addresses(rig, guest)
    assert (interface["Name"], interface["Mac"], interface["Bridge"], interface["Network"]) == (
        f"vif{domid}.0", MAC, "xenbr0", None)
    assert interface["Addresses"] == []  # no address yet: no source knows one; agent/arp left out
    # libxl's own answer for the sources it lacks (what the daemon leaves out)
    for source in ("agent", "arp"):
        result = rig.dom0(f"virsh -c xen:///system domifaddr {guest} --source {source}")
        print(f"libxl, domifaddr --source {source}: rc={result.rc} {result.err.strip()}")
        assert result.rc != 0
    rc, output = console(f"ip link set eth0 up && ip addr add {GUEST_ADDRESS}/24 dev eth0 "
                         "&& ip -o addr show dev eth0")
    assert rc == 0 and f"inet {GUEST_ADDRESS}/24" in output, output
    print(f"the guest's own view: {output.strip()}")
    # dom0 has no address on xenbr0: the guest's ARP requests are nobody's, dom0 learns nothing
    console(f"ping -c 2 -W 1 {DOM0_ADDRESS}")
    assert addresses(rig, guest, "source=neighbour")["Addresses"] == []
    assert rig.dom0(f"ip addr add {DOM0_ADDRESS}/24 dev xenbr0").rc == 0
    try:
        rc, output = console(f"ping -c 2 -W 2 {DOM0_ADDRESS}")
        assert rc == 0, output
        interface = addresses(rig, guest, "source=neighbour&wait=60")
        assert found(interface) == [(GUEST_ADDRESS, None, "ipv4", ["neighbour"])]
        print(f"API: {interface}; dom0: {rig.dom0('ip neigh show dev xenbr0').out.strip()}")
    finally:
        rig.dom0(f"ip addr del {DOM0_ADDRESS}/24 dev xenbr0")


def test_what_the_guest_publishes_in_xenstore_is_reported_and_waited_for(rig, guest, console):
    domid = rig.api.get(f"{NODES}/{guest}/json").json["domain"]["@id"]
    assert addresses(rig, guest, "source=xenstore")["Addresses"] == []
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(
        (rig.api.get(f"{NODES}/{guest}/addresses", query="source=xenstore&wait=120"),
         time.monotonic())))
    waiting.start()
    time.sleep(3)  # the wait is under way (nothing to find yet)
    for path, value in (("attr/vif/0/ipv4/0", GUEST_ADDRESS), ("attr/vif/0/ipv6/0", "2001:db8::5"),
                        ("attr/vif/0/ipv4/1", "not-an-address")):
        rc, output = console(xenstore_write(path, value))
        assert rc == 0, output
    written = time.monotonic()
    waiting.join(150)
    response, answered = answers[0]
    assert response.status == 200, response
    [interface] = response.json
    # the wait answered once the first address was there (perhaps before the others were written)
    assert found(interface)[0] == (GUEST_ADDRESS, None, "ipv4", ["xenstore"])
    interface = addresses(rig, guest, "source=xenstore")
    assert found(interface) == [(GUEST_ADDRESS, None, "ipv4", ["xenstore"]),
                                ("2001:db8::5", None, "ipv6", ["xenstore"])]
    listing = rig.dom0(f"xenstore-ls /local/domain/{domid}/attr/vif").out
    assert "not-an-address" in listing  # the guest wrote it; the daemon did not take it
    print(f"xenstore in dom0: {listing.strip()}; the wait answered "
          f"{answered - written:+.1f} s after the last write; API: {interface}")
    # every source that applies: one entry per address, naming each source that saw it (the
    # neighbour entry of the test before stays while dom0's kernel keeps it in a usable state)
    table = rig.dom0("ip neigh show dev xenbr0").out
    usable = re.search(rf"^{re.escape(GUEST_ADDRESS)} lladdr {MAC} (REACHABLE|STALE|DELAY|PROBE"
                       "|PERMANENT)", table, re.M)
    interface = addresses(rig, guest)
    assert [(address, sources) for address, _prefix, _family, sources in found(interface)] == [
        (GUEST_ADDRESS, ["xenstore", "neighbour"] if usable else ["xenstore"]),
        ("2001:db8::5", ["xenstore"])], table
