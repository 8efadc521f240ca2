"""An HVM guest (xenfv) booted once: hvmloader and SeaBIOS, Debian's qemu-system-xen in dom0 as its
device model (from the rig's root, like every other package there), the PV guest's kernel booted
directly. Its boot began with the session (conftest's hvm_boot) and ran beside the other tests:
here its screen is read through /vnc and a PV disk is hot-plugged into it.
"""

import pytest

from realhv.rfb import RFBClient
from xend_rest.hypervisor import convert

from .conftest import NODES

LIVE = 1
PV_DISK_IMAGE = "/var/lib/xend-rest-pool/hvm-pv.img"


def disk(target, bus, image=PV_DISK_IMAGE):
    return convert.xml_to_dict(f"""<disk type='file' device='disk'><driver name='phy'/>
  <source file='{image}'/><target dev='{target}' bus='{bus}'/></disk>""")


@pytest.fixture(scope="module")
def hvm(rig, hvm_boot):
    """The HVM guest's name once its init is up (the boot is joined here), removed at the end."""
    if hvm_boot.ident is not None:
        hvm_boot.join(timeout=900)
    steps = {step: f"{seconds:.0f} s: {answer!r}"[:300] for step, (seconds, answer) in hvm_boot.steps.items()}
    print(f"xen tier: the HVM guest's boot beside the other tests: {steps}")
    assert hvm_boot.steps["create"][1].status == 201, steps
    assert hvm_boot.steps["start"][1].status == 204, steps
    ready = hvm_boot.steps["ready"][1]
    assert getattr(ready, "rc", None) == 0, (steps, hvm_boot.guests.console(hvm_boot.name)[-2000:], rig.diagnostics())
    yield hvm_boot.name
    hvm_boot.guests.remove(hvm_boot.name)


def test_the_hvm_guest_runs_its_device_model_in_dom0(rig, hvm):
    stats = rig.api.get(f"{NODES}/{hvm}/stats").json
    assert stats["State"] == "running", stats
    domid = rig.dom0(f"xl domid {hvm}").out.strip()
    models = rig.dom0("for p in $(pgrep -x xen-qemu-system); do tr '\\0' ' ' < /proc/$p/cmdline; echo; done").out
    assert f"/usr/libexec/xen-qemu-system-i386 -xen-domid {domid} " in models, models


def test_the_screen_through_vnc_is_a_real_rfb_session_with_pixels(rig, hvm):
    with rig.api.websocket(f"{NODES}/{hvm}/vnc", subprotocols=["binary"], max_size=None) as ws:
        assert ws.subprotocol == "binary"
        rfb = RFBClient(ws)
        width, height, bpp, desktop = rfb.handshake()
        assert width >= 320 and height >= 200 and bpp in (8, 16, 32), (width, height, bpp)
        pixels = rfb.full_update(width, height, bpp)
    size = bpp // 8
    colours = {pixels[i:i + size] for i in range(0, len(pixels), size)}
    print(f"xen tier: the HVM guest's screen: {width}x{height}, {bpp} bpp, {desktop!r}, {len(colours)} colours")
    assert len(colours) > 1  # text on the screen: the firmware's, the kernel's


def test_a_pv_disk_hot_plugged_is_seen_by_the_guest_s_pv_drivers(rig, guests, hvm):
    """libxl hot-plugs PV (xen bus) disks into an HVM guest; its PV-on-HVM blkfront shows it."""
    assert rig.dom0(f"truncate -s 32M {PV_DISK_IMAGE}").rc == 0
    response = rig.api.post(f"{NODES}/{hvm}/devices/attach", query=f"flag={LIVE}", body=disk("xvdb", "xen"),
                            timeout=180)
    assert response.status == 201, response
    guests.wait_state(hvm, timeout=180, disks=lambda disks: "xvdb" in disks)
    response = rig.api.post(f"{NODES}/{hvm}/devices/detach", query=f"flag={LIVE}", body=disk("xvdb", "xen"),
                            timeout=180)
    assert response.status in (202, 204), response
    guests.wait_state(hvm, timeout=180, disks="")


def test_an_emulated_disk_hot_plug_is_refused_and_changes_nothing(rig, hvm):
    """libxl cannot hot-plug an emulated (IDE) disk: libvirt refuses the device as such
    (CONFIG_UNSUPPORTED, "disk bus 'ide' cannot be hotplugged"), the contract's 400."""
    before = rig.dom0(f"virsh -c xen:///system domblklist {hvm}").out
    response = rig.api.post(f"{NODES}/{hvm}/devices/attach", query=f"flag={LIVE}", body=disk("hdb", "ide"),
                            timeout=180)
    print(f"xen tier: an IDE disk hot-plugged into an HVM guest: {response.status} {response.body[:300]!r}")
    assert response.status == 400 and response.json["code"] == "bad_definition", response
    assert "cannot be hotplugged" in response.json["message"]
    assert rig.dom0(f"virsh -c xen:///system domblklist {hvm}").out == before
