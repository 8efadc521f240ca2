"""Host endpoints, events, wait and a libvirtd outage on Xen."""

import json
import time


from .artefacts import READY_MARKER
from .conftest import NODES
from .rig import LIBVIRTD_UNITS


def test_info_reports_libxl_as_it_is(rig):
    info = rig.api.get("/info").json
    assert info["Driver"] == "Xen" and info["Uri"] == "xen:///system"
    # libxl has no getAllDomainStats: statistics come from the per-call fallback
    assert info["Supports"]["BulkStats"] is False
    assert info["Supports"]["DeviceAttach"] is True and info["Supports"]["DeviceDetach"] is True


def test_events_wait_stats_and_metrics(rig, guests):
    name = guests.define("ev")
    assert rig.api.post(f"{NODES}/{name}/start").status == 204
    response = rig.api.post(f"{NODES}/{name}/wait", query="condition=running&timeout=60")
    assert response.status == 200, response
    guests.wait_for(name, READY_MARKER)

    stats = rig.api.get(f"{NODES}/{name}/stats").json
    assert stats["State"] == "running" and stats["CpuTimeNs"] > 0
    assert stats["Memory"]["CurrentKiB"] == 256 * 1024 and stats["Vcpus"] == 1
    assert name in {s["Name"] for s in rig.api.get(f"{NODES}/stats").json}
    metrics = rig.api.get("/metrics").body.decode()
    assert any(line.startswith('xend_domain_state{') and f'domain="{name}"' in line
               for line in metrics.splitlines())
    assert 'xend_libvirt_up{connection="xen"} 1' in metrics

    # libxl lacks the bulk call: asked once per connection (above), never again, so that two
    # more scrapes and a listing's statistics make libvirtd log no error.
    cursor = rig.dom0("journalctl -u libvirtd -n 0 --show-cursor --no-pager").out.split("cursor: ")[-1].strip()
    for path in ("/metrics", "/metrics", f"{NODES}/stats"):
        assert rig.api.get(path).status == 200
    errors = rig.dom0(f"journalctl -u libvirtd --after-cursor='{cursor}' -p err --no-pager -o cat").out
    assert errors.strip() == "", errors

    assert rig.api.post(f"{NODES}/{name}/suspend").status == 204
    assert rig.api.post(f"{NODES}/{name}/resume").status == 204
    assert rig.api.post(f"{NODES}/{name}/destroy").status == 204
    assert rig.api.post(f"{NODES}/{name}/wait", query="condition=shutoff&timeout=30").status == 200
    response = rig.api.get("/libvirt/xen/events", query=f"since=0&domain={name}&timeout=3")
    assert response.status == 200
    events = [json.loads(line) for line in response.body.decode().splitlines() if line.strip()]
    seen = [(e["Event"], e["Detail"]) for e in events if "Event" in e]
    assert seen == [("defined", "added"), ("started", "booted"), ("suspended", "paused"),
                    ("resumed", "unpaused"), ("stopped", "destroyed")], seen


def test_libvirtd_gone_is_503_with_retry_after_then_recovers(rig):
    """libvirtd and its sockets stopped (a kill alone is undone by systemd at once: Restart= and
    socket activation) is an outage: 503 with Retry-After, then 200 once they are back."""
    assert rig.dom0(f"systemctl stop {LIBVIRTD_UNITS}").rc == 0
    deadline = time.monotonic() + 60
    while True:
        response = rig.api.get(f"{NODES}/json", timeout=60)
        if response.status == 503 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert response.status == 503, response
    assert response.json["code"] == "hypervisor_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert rig.dom0(f"systemctl start {LIBVIRTD_UNITS}", timeout=120).rc == 0
    deadline = time.monotonic() + 90
    while rig.api.get(f"{NODES}/json", timeout=60).status != 200:
        assert time.monotonic() < deadline, rig.diagnostics()
        time.sleep(1)
