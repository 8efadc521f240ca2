"""Lifecycle endpoints on Xen (libxl), with 304/409 from state and the guest's own evidence; and
a PVH guest through the same lifecycle, in one sequence.

One guest serves the module (a boot costs 20-60 s under emulation): `running` boots it again
only when an earlier test left it shut off.
"""

import pytest

from .artefacts import BOOT_MARKER, POWEROFF_MARKER, READY_MARKER, REBOOT_MARKER
from .conftest import NODES


def domstate(rig, name):
    return rig.dom0(f"virsh -c xen:///system domstate {name}").out.strip()


@pytest.fixture(scope="module")
def guest(guests):
    return guests.define("life")


@pytest.fixture
def running(rig, guests, guest):
    if domstate(rig, guest) == "paused":
        assert rig.api.post(f"{NODES}/{guest}/resume").status == 204
    if domstate(rig, guest) != "running":
        guests.boot(guest)
    return guest


def test_start_twice_is_304(rig, running):
    assert rig.api.post(f"{NODES}/{running}/start").status == 304


def test_suspend_resume_and_their_repeats(rig, guests, running):
    assert rig.api.post(f"{NODES}/{running}/suspend").status == 204
    assert domstate(rig, running) == "paused"
    # libxl pauses a paused domain again without complaint: the 304 comes from state
    assert rig.api.post(f"{NODES}/{running}/suspend").status == 304
    assert rig.api.post(f"{NODES}/{running}/resume").status == 204
    assert rig.api.post(f"{NODES}/{running}/resume").status == 304
    assert domstate(rig, running) == "running"


def test_stop_and_restart_of_paused_are_409_at_once(rig, running):
    """libxl's shutdown() and reboot() of a paused domain block 60 s, fail and stay pending:
    the daemon decides from state instead."""
    assert rig.api.post(f"{NODES}/{running}/suspend").status == 204
    for action in ("stop", "restart"):
        response = rig.api.post(f"{NODES}/{running}/{action}", timeout=20)
        assert response.status == 409, (action, response)
        assert response.json["code"] == "invalid_state"
    assert domstate(rig, running) == "paused"
    assert rig.api.post(f"{NODES}/{running}/resume").status == 204


@pytest.mark.parametrize("action, flag", [
    ("destroy", 1),  # VIR_DOMAIN_DESTROY_GRACEFUL
    ("stop", 2),     # VIR_DOMAIN_SHUTDOWN_GUEST_AGENT
    ("stop", 4),     # INITCTL
    ("restart", 8),  # VIR_DOMAIN_REBOOT_SIGNAL
])
def test_flags_libxl_lacks_are_501_and_change_nothing(rig, running, action, flag):
    response = rig.api.post(f"{NODES}/{running}/{action}", query=f"flag={flag}")
    assert response.status == 501, response
    assert domstate(rig, running) == "running"


def test_restart_with_wait_boots_again(rig, guests, running):
    boots = guests.count(running, BOOT_MARKER)
    response = rig.api.post(f"{NODES}/{running}/restart", query="wait=120", timeout=150)
    assert response.status == 204, response
    # The guest's last line before its reboot reaches xenconsoled's log as its old domain dies,
    # after libvirt reported the restart: read on for it.
    guests.wait_for(running, REBOOT_MARKER, timeout=30)
    guests.wait_for(running, BOOT_MARKER, count=boots + 1)


def test_stop_with_wait(rig, guests, running):
    response = rig.api.post(f"{NODES}/{running}/stop", query="wait=120", timeout=150)
    assert response.status == 204, response
    assert domstate(rig, running) == "shut off"
    # The guest's last line reaches xenconsoled's log as the domain dies: read on for it.
    guests.wait_for(running, POWEROFF_MARKER, timeout=30)
    assert rig.api.post(f"{NODES}/{running}/stop").status == 304


def test_stop_without_wait(rig, guests, running):
    poweroffs = guests.count(running, POWEROFF_MARKER)
    assert rig.api.post(f"{NODES}/{running}/stop").status == 204
    guests.wait_for(running, POWEROFF_MARKER, count=poweroffs + 1)
    assert rig.api.post(f"{NODES}/{running}/wait", query="condition=shutoff&timeout=60").status == 200


def test_destroy_then_304(rig, running):
    assert rig.api.post(f"{NODES}/{running}/destroy").status == 204
    assert domstate(rig, running) == "shut off"
    assert rig.api.post(f"{NODES}/{running}/destroy").status == 304


def test_actions_on_a_shut_off_domain(rig, guest):
    assert domstate(rig, guest) == "shut off"
    assert rig.api.post(f"{NODES}/{guest}/suspend").status == 409
    assert rig.api.post(f"{NODES}/{guest}/resume").status == 409
    assert rig.api.post(f"{NODES}/{guest}/restart").status == 409
    assert rig.api.post(f"{NODES}/{guest}/stop").status == 304


def test_start_paused_then_resume_boots(rig, guests, guest):
    boots = guests.count(guest, BOOT_MARKER)
    assert rig.api.post(f"{NODES}/{guest}/start", query="flag=1").status == 204
    assert domstate(rig, guest) == "paused"
    assert guests.count(guest, BOOT_MARKER) == boots
    assert rig.api.post(f"{NODES}/{guest}/resume").status == 204
    guests.wait_for(guest, READY_MARKER, count=boots + 1)


def test_delete_a_shut_off_domain(rig, guests):
    name = guests.define("gone")
    assert rig.api.post(f"{NODES}/{name}/delete").status == 204
    assert rig.api.get(f"{NODES}/{name}/json").status == 404


def test_a_pvh_guest_through_its_whole_lifecycle(rig, guests):
    """PVH (xenpvh, the same kernel entered by Xen directly): every action, with the guest's own
    evidence. The answers decided from state (304, 409, 501) do not depend on the guest's type
    and are the PV tests' above."""
    name = guests.define("life-pvh", kind="pvh")
    guests.boot(name)
    assert rig.api.post(f"{NODES}/{name}/start").status == 304
    assert rig.api.post(f"{NODES}/{name}/suspend").status == 204
    assert domstate(rig, name) == "paused"
    assert rig.api.post(f"{NODES}/{name}/resume").status == 204
    assert domstate(rig, name) == "running"
    boots = guests.count(name, BOOT_MARKER)
    response = rig.api.post(f"{NODES}/{name}/restart", query="wait=120", timeout=150)
    assert response.status == 204, response
    guests.wait_for(name, REBOOT_MARKER, timeout=30)  # logged as the old domain dies
    guests.wait_for(name, READY_MARKER, count=boots + 1)
    response = rig.api.post(f"{NODES}/{name}/stop", query="wait=120", timeout=150)
    assert response.status == 204, response
    assert domstate(rig, name) == "shut off"
    guests.wait_for(name, POWEROFF_MARKER, timeout=30)  # its last line, logged as it dies
    assert rig.api.post(f"{NODES}/{name}/start", query="flag=1").status == 204  # paused
    assert domstate(rig, name) == "paused"
    assert rig.api.post(f"{NODES}/{name}/destroy").status == 204
    assert domstate(rig, name) == "shut off"
    assert rig.api.post(f"{NODES}/{name}/delete").status == 204
    assert rig.api.get(f"{NODES}/{name}/json").status == 404
