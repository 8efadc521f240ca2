"""A management host's daemon managing dom0 remotely: xend-rest on the outer machine, started by
its launcher with `--connect dom0=xen+tls://...` (libvirt's remote protocol to dom0's libvirtd,
TLS with certificates made at test time, through QEMU's port forward) and a test node beside
it, asked with curl. What it does, the daemon inside dom0 sees; dom0's libvirtd stopped costs the
dom0 connection a 503 until it is back, and the test node nothing."""

import json
import subprocess
import sys

import pytest

from conftest import node_xml
from realhv.guest import wait_until
from xend_rest.hypervisor import convert

from .artefacts import READY_MARKER
from .conftest import NODES
from .rig import CHECKOUT, LIBVIRTD_UNITS, free_port, from_curl

REMOTE = "/libvirt/dom0/nodes"


class Curl:
    def __init__(self, base):
        self.base = base

    def __call__(self, method, path, body=None):
        """The Response to one request made by curl."""
        data = ["--data-binary", json.dumps(body), "-H", "Content-Type: application/json"] if body else []
        out = subprocess.run(["curl", "-sS", "-i", "--max-time", "90", "-X", method, *data, self.base + path],
                             capture_output=True, check=True).stdout.decode()  # keeps the CRLFs
        return from_curl(out)


@pytest.fixture(scope="module")
def outer(rig, tmp_path_factory):
    """The launcher on the management host, with dom0 over xen+tls:// and a test node."""
    workdir = tmp_path_factory.mktemp("outer")
    (workdir / "node.xml").write_text(node_xml())
    port = free_port()
    log = open(workdir / "xend-rest.log", "wb")
    daemon = subprocess.Popen(
        [sys.executable, str(CHECKOUT / "xend_rest.py"), "--listen", f"127.0.0.1:{port}",
         "--connect", f"dom0={rig.libvirt_uri}", "--connect", f"local=test://{workdir / 'node.xml'}",
         # The default keepalive (5 s x 3): dom0's libvirtd, starting a guest under emulation
         # beside the HVM guest's boot, was seen not to answer a probe within 2 x 2 s (a 504).
         "--open-timeout", "10"],
        stdout=log, stderr=subprocess.STDOUT)
    curl = Curl(f"http://127.0.0.1:{port}")

    def answers():
        try:
            return curl("GET", "/_ping").status == 200
        except subprocess.CalledProcessError:
            return False
    wait_until(answers, 30, "the outer daemon answering")
    yield curl
    daemon.terminate()
    daemon.wait(30)
    log.close()


def names(listing):
    return {item["domain"]["name"]: item["domain"]["uuid"] for item in listing}


def test_the_remote_connection_sees_what_dom0_s_own_daemon_sees(rig, outer, guests):
    name = guests.define("remote-seen")
    remote = outer("GET", f"{REMOTE}/json?all=1")
    assert remote.status == 200, remote
    local = rig.api.get(f"{NODES}/json", query="all=1").json
    assert names(remote.json) == names(local) and name in names(remote.json)  # dom0 in neither

    connections = outer("GET", "/libvirt/json").json
    by_name = {item["Name"]: item for item in connections}
    assert by_name["dom0"]["Connected"] and by_name["dom0"]["Driver"] == "Xen", by_name
    assert by_name["dom0"]["Uri"].startswith("xen+tls://127.0.0.1:")
    assert by_name["dom0"]["Hostname"] == "dom0"
    assert by_name["local"]["Driver"] == "TEST"


def test_a_guest_defined_started_and_destroyed_from_the_management_host(rig, outer, guests):
    name = guests.name("remote-life")
    created = outer("POST", f"{REMOTE}/create", convert.xml_to_dict(guests.xml(name)))
    assert created.status == 201, created
    ready = guests.count(name, READY_MARKER)
    assert outer("POST", f"{REMOTE}/{name}/start").status == 204
    guests.wait_for(name, READY_MARKER, count=ready + 1)  # the guest's own word that it runs
    assert rig.api.get(f"{NODES}/{name}/stats").json["State"] == "running"
    stats = outer("GET", f"{REMOTE}/{name}/stats")
    assert stats.status == 200 and stats.json["State"] == "running" and stats.json["CpuTimeNs"] > 0

    assert outer("POST", f"{REMOTE}/{name}/destroy").status == 204
    assert rig.api.get(f"{NODES}/{name}/stats").json["State"] == "shutoff"
    # libxl's lifecycle events, carried by libvirt's remote protocol to the management host
    events = outer("GET", f"/libvirt/dom0/events?since=0&domain={name}&timeout=2").body.decode()
    seen = [json.loads(line)["Event"] for line in events.splitlines() if line.strip()]
    assert seen == ["defined", "started", "stopped"], seen
    assert outer("POST", f"{REMOTE}/{name}/delete").status == 204
    assert rig.api.get(f"{NODES}/{name}/json").status == 404


def test_dom0_s_libvirtd_gone_costs_its_connection_a_503_and_the_test_node_nothing(rig, outer):
    assert rig.dom0(f"systemctl stop {LIBVIRTD_UNITS}").rc == 0
    wait_until(lambda: outer("GET", f"{REMOTE}/json").status == 503, 60, "a 503 from the dead connection")
    error = outer("GET", f"{REMOTE}/json")
    assert error.status == 503 and error.json["code"] == "hypervisor_unavailable", error
    assert int(error.headers["Retry-After"]) > 0
    assert outer("GET", "/libvirt/local/nodes/json").status == 200
    metrics = outer("GET", "/metrics").body.decode()
    assert 'xend_libvirt_up{connection="dom0"} 0' in metrics
    assert 'xend_libvirt_up{connection="local"} 1' in metrics

    assert rig.dom0(f"systemctl start {LIBVIRTD_UNITS}", timeout=120).rc == 0
    # no restart of the management host's daemon: its connection reopens by itself
    wait_until(lambda: outer("GET", f"{REMOTE}/json").status == 200, 90, "the dom0 connection back")
