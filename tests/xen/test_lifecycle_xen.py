"""Lifecycle endpoints on Xen (libxl), with 304/409 from state and the guest's own evidence."""

import json

import pytest

from .artefacts import BOOT_MARKER, POWEROFF_MARKER, READY_MARKER, REBOOT_MARKER
from .conftest import NODES


def state(rig, name):
    return rig.api.get(f"{NODES}/{name}/json").json["domain"]


def virsh(rig, command):
    return rig.dom0(f"virsh -c xen:///system {command}").out.strip()


@pytest.fixture
def running(rig, guests):
    """A booted PV guest (its init has reported READY)."""
    name = guests.define("life")
    assert rig.api.post(f"{NODES}/{name}/start").status == 204
    guests.wait_for(name, READY_MARKER)
    return name


def test_start_twice_is_304(rig, running):
    assert rig.api.post(f"{NODES}/{running}/start").status == 304


def test_stop_without_wait_then_304(rig, guests, running):
    assert rig.api.post(f"{NODES}/{running}/stop").status == 204
    guests.wait_for(running, POWEROFF_MARKER)
    assert rig.api.post(f"{NODES}/{running}/wait", query="condition=shutoff&timeout=60").status == 200
    assert rig.api.post(f"{NODES}/{running}/stop").status == 304


def test_stop_with_wait(rig, guests, running):
    response = rig.api.post(f"{NODES}/{running}/stop", query="wait=60")
    assert response.status == 204, response
    assert guests.count(running, POWEROFF_MARKER) == 1
    assert virsh(rig, f"domstate {running}") == "shut off"


def test_restart_with_wait_boots_again(rig, guests, running):
    response = rig.api.post(f"{NODES}/{running}/restart", query="wait=90")
    assert response.status == 204, response
    guests.wait_for(running, REBOOT_MARKER)
    guests.wait_for(running, BOOT_MARKER, count=2)


def test_destroy_then_304(rig, running):
    assert rig.api.post(f"{NODES}/{running}/destroy").status == 204
    assert virsh(rig, f"domstate {running}") == "shut off"
    assert rig.api.post(f"{NODES}/{running}/destroy").status == 304


def test_suspend_resume_and_their_repeats(rig, guests, running):
    assert rig.api.post(f"{NODES}/{running}/suspend").status == 204
    assert virsh(rig, f"domstate {running}") == "paused"
    # libxl pauses a paused domain again without complaint; the answer comes from state
    assert rig.api.post(f"{NODES}/{running}/suspend").status == 304
    assert rig.api.post(f"{NODES}/{running}/resume").status == 204
    assert rig.api.post(f"{NODES}/{running}/resume").status == 304
    before = len(guests.console(running))
    guests.wait_state(running, timeout=10)  # the guest ticks on after the resume
    assert len(guests.console(running)) >= before


def test_stop_of_paused_is_409_at_once(rig, running):
    """libxl's shutdown() of a paused domain hangs 60 s and then fails: decided from state."""
    assert rig.api.post(f"{NODES}/{running}/suspend").status == 204
    response = rig.api.post(f"{NODES}/{running}/stop", timeout=20)
    assert response.status == 409, response
    assert response.json["code"] == "invalid_state"
    assert virsh(rig, f"domstate {running}") == "paused"


def test_suspend_and_stop_of_shut_off_domain(rig, guests):
    name = guests.define("off")
    assert rig.api.post(f"{NODES}/{name}/suspend").status == 409
    assert rig.api.post(f"{NODES}/{name}/resume").status == 409
    assert rig.api.post(f"{NODES}/{name}/stop").status == 304


def test_start_paused(rig, guests):
    name = guests.define("paused")
    assert rig.api.post(f"{NODES}/{name}/start", query="flag=1").status == 204
    assert virsh(rig, f"domstate {name}") == "paused"
    assert guests.count(name, BOOT_MARKER) == 0
    assert rig.api.post(f"{NODES}/{name}/resume").status == 204
    guests.wait_for(name, BOOT_MARKER)


def test_delete(rig, guests):
    name = guests.define("gone")
    assert rig.api.post(f"{NODES}/{name}/delete").status == 204
    assert rig.api.get(f"{NODES}/{name}/json").status == 404


def test_flags_libxl_lacks_are_501(rig, running):
    for path, query in (("destroy", "flag=1"), ("stop", "flag=2"),
                        ("restart", "flag=8")):
        response = rig.api.post(f"{NODES}/{running}/{path}", query=query)
        assert response.status == 501, (path, response)
