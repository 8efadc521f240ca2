"""Resize and hot-plug on Xen, for a PV guest and a PVH one: the guest's own view (its STATE
lines) follows each change.

One guest of each kind serves the whole module: each boot costs 20-30 s under emulation.
"""

import pytest

from xend_rest.hypervisor import convert

from .conftest import NODES, redone_after_a_rig_triple_fault

LIVE, CONFIG = 1, 2
DISK_IMAGE = "/var/lib/xend-rest-pool/hotplug.img"
DISK = convert.xml_to_dict(f"""<disk type='file' device='disk'><driver name='phy'/>
  <source file='{DISK_IMAGE}'/><target dev='xvdb' bus='xen'/></disk>""")
NIC = convert.xml_to_dict("""<interface type='bridge'><source bridge='xenbr0'/>
  <mac address='00:16:3e:00:00:42'/></interface>""")


@pytest.fixture(scope="module", params=["pv", "pvh"])
def guest(request, rig, guests):
    """A PV guest, then a PVH one: every test of the module runs for each."""
    name = guests.define(f"dev-{request.param}", memory_mib=256, vcpus=2, current_vcpus=1, kind=request.param)
    guests.boot(name)
    yield name
    guests.remove(name)  # before the next kind's guest boots: memory for both is not there


def vcpus(rig, name, flags):
    return int(rig.dom0(f"virsh -c xen:///system vcpucount {name} {flags}").out.strip())


@redone_after_a_rig_triple_fault
def test_vcpu_resize_default_is_live_on_a_running_guest(rig, guests, guest):
    """libxl refuses flag 0; the daemon decides live from state, and the guest onlines the CPU."""
    response = rig.api.post(f"{NODES}/{guest}/vcpu/resize", query="size=2")
    assert response.status == 204, response
    guests.wait_state(guest, cpus=2)
    assert vcpus(rig, guest, "--config --current") == 1
    assert rig.api.post(f"{NODES}/{guest}/vcpu/resize", query=f"size=1&flag={LIVE}").status == 204
    guests.wait_state(guest, cpus=1)


@redone_after_a_rig_triple_fault
def test_vcpu_resize_config(rig, guest):
    assert rig.api.post(f"{NODES}/{guest}/vcpu/resize", query=f"size=2&flag={CONFIG}").status == 204
    assert vcpus(rig, guest, "--config --current") == 2
    assert rig.api.post(f"{NODES}/{guest}/vcpu/resize", query=f"size=1&flag={CONFIG}").status == 204


@redone_after_a_rig_triple_fault
def test_memory_balloon_live_then_back(rig, guests, guest):
    full = int(guests.last_state(guest)["mem_kib"])
    assert rig.api.post(f"{NODES}/{guest}/memory/resize", query="size=200000").status == 204
    guests.wait_state(guest, mem_kib=lambda kib: int(kib) < full - 40000)
    assert rig.api.post(f"{NODES}/{guest}/memory/resize", query=f"size={256 * 1024}&flag={LIVE}").status == 204
    guests.wait_state(guest, mem_kib=lambda kib: int(kib) >= full - 1024)


@redone_after_a_rig_triple_fault
def test_memory_config(rig, guest):
    response = rig.api.post(f"{NODES}/{guest}/memory/resize", query=f"size=220000&flag={CONFIG}")
    assert response.status == 204, response
    assert "220000" in rig.dom0(f"virsh -c xen:///system dumpxml --inactive {guest}").out


@redone_after_a_rig_triple_fault
def test_disk_attach_update_detach(rig, guests, guest):
    rig.dom0(f"mkdir -p {DISK_IMAGE.rsplit('/', 1)[0]}; truncate -s 64M {DISK_IMAGE}")
    response = rig.api.post(f"{NODES}/{guest}/devices/attach", query=f"flag={LIVE}", body=DISK, timeout=120)
    assert response.status == 201, response
    guests.wait_state(guest, disks=lambda disks: "xvdb" in disks)
    # libxl cannot update a xen-bus disk in place: a documented 400 from libvirt's own check
    response = rig.api.post(f"{NODES}/{guest}/devices/update", query=f"flag={LIVE}", body=DISK)
    assert response.status == 400, response
    response = rig.api.post(f"{NODES}/{guest}/devices/detach", query=f"flag={LIVE}", body=DISK, timeout=120)
    assert response.status in (202, 204), response
    guests.wait_state(guest, disks="")


@redone_after_a_rig_triple_fault
def test_nic_attach_detach(rig, guests, guest):
    response = rig.api.post(f"{NODES}/{guest}/devices/attach", query=f"flag={LIVE}", body=NIC, timeout=120)
    assert response.status == 201, response
    guests.wait_state(guest, nics=lambda nics: "eth0" in nics)
    response = rig.api.post(f"{NODES}/{guest}/devices/detach", query=f"flag={LIVE}", body=NIC, timeout=120)
    assert response.status in (202, 204), response
    guests.wait_state(guest, nics="")
