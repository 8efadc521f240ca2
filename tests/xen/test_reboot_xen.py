"""dom0 rebooted as its administrator reboots it (`systemctl reboot`), with two PV guests running:
one marked autostart, one not. The last module of the session (conftest orders it so).

Who acts on guests at shutdown and boot on this Debian 12 dom0 (docs/xen.md, "dom0 reboots"):
- libvirt-guests.service (libvirt-daemon-system, enabled): ON_SHUTDOWN=shutdown, so at shutdown it
  asks every running guest libvirt knows to shut down, and waits for them; ON_BOOT=ignore, so at
  boot it starts nothing itself. As Debian ships it, it is ordered after libvirtd's socket but
  not after libvirtd.service, which systemd then stops beside it: it finds no libvirtd ("Can't
  connect to default. Skipping.") and the guests end with dom0, never shut down. The rig, as
  docs/xen.md tells administrators, adds After=libvirtd.service (rig.LIBVIRT_GUESTS_DROP_IN).
- libvirtd starts the guests marked autostart when it starts.
- xendomains (xen-utils-common, an enabled init script) would save running guests with `xl save`
  at shutdown and restore them at boot behind libvirt's back, but libvirtd.service conflicts with
  it (Conflicts=xendomains.service): systemd drops its start at boot, so it is never active and
  neither its stop nor its start runs.

Expected, then: both guests are shut down cleanly by libvirt-guests at shutdown (their own
power-off marker); after boot the autostart guest runs again, booted afresh, with its UUID; the
other is defined and shut off; no domain runs that libvirt does not know; libvirtd started after
Xen's init script; the daemon is up without anyone starting it.
"""

import pytest

from realhv.guest import wait_until

from .artefacts import BOOT_MARKER, POWEROFF_MARKER, READY_MARKER
from .conftest import NODES

VIRSH = "virsh -c xen:///system"


def xl_domains(rig):
    """Names of the guests Xen runs (xl list, dom0 left out)."""
    out = rig.dom0("xl list").out.splitlines()[1:]
    return {line.split()[0] for line in out if line.split() and line.split()[0] != "Domain-0"}


@pytest.fixture(scope="module")
def rebooted(rig, guests):
    """Two guests running, one of them marked autostart through the API, then a reboot."""
    auto, plain = guests.define("auto"), guests.define("plain")
    for name in (auto, plain):
        guests.boot(name)
    assert rig.api.post(f"{NODES}/{auto}/autostart", query="enable=1").status == 204
    assert rig.dom0(f"{VIRSH} dominfo {auto} | grep -E '^Autostart: +enable'").rc == 0
    assert rig.api.get(f"{NODES}/{plain}/stats").json["Autostart"] is False
    before = {name: {"uuid": rig.api.get(f"{NODES}/{name}/json").json["domain"]["uuid"],
                     "boots": guests.count(name, BOOT_MARKER),
                     "poweroffs": guests.count(name, POWEROFF_MARKER)} for name in (auto, plain)}
    rig.reboot()
    print(f"xen tier: dom0 reboot: shutdown {rig.timings['shutdown'][-1]:.0f} s, "
          f"boot to the agent {rig.timings['boot'][-1]:.0f} s")
    wait_until(rig.daemon_answers, 300, "the daemon answering after dom0's reboot")
    return auto, plain, before


def test_the_daemon_is_up_after_the_reboot_without_anyone_starting_it(rig, rebooted):
    unit = rig.unit("xend-rest.service", "ActiveState", "NRestarts", "UnitFileState")
    assert unit == {"ActiveState": "active", "NRestarts": "0", "UnitFileState": "enabled"}, unit
    boots = rig.dom0("journalctl --list-boots --no-pager").out.strip().splitlines()
    assert len(boots) >= 2, boots  # the journal is persistent: the boot before is there


def test_libvirtd_started_after_xen_s_init_script(rig, rebooted):
    libvirtd = int(rig.unit("libvirtd.service", "ExecMainStartTimestampMonotonic")["ExecMainStartTimestampMonotonic"])
    xen = int(rig.unit("xen.service", "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"])
    assert 0 < xen <= libvirtd, (xen, libvirtd)
    assert rig.unit("xendomains.service", "ActiveState")["ActiveState"] == "inactive"


def test_both_guests_were_shut_down_by_libvirt_guests(rig, guests, rebooted):
    auto, plain, before = rebooted
    for name in (auto, plain):
        assert guests.count(name, POWEROFF_MARKER) == before[name]["poweroffs"] + 1, guests.console(name)
    journal = rig.dom0("journalctl -b -1 -u libvirt-guests --no-pager -o cat").out
    for name in (auto, plain):
        assert f"Shutdown of guest {name} complete." in journal, journal


def test_the_autostart_guest_runs_again_with_its_uuid_and_the_other_is_shut_off(rig, guests, rebooted):
    auto, plain, before = rebooted
    guests.wait_for(auto, READY_MARKER, count=before[auto]["boots"] + 1, timeout=180)
    domain = rig.api.get(f"{NODES}/{auto}/json").json["domain"]
    assert domain["uuid"] == before[auto]["uuid"]
    assert rig.api.get(f"{NODES}/{auto}/stats").json["State"] == "running"
    assert rig.api.get(f"{NODES}/{plain}/stats").json["State"] == "shutoff"
    assert guests.count(plain, BOOT_MARKER) == before[plain]["boots"]


def test_every_domain_xen_runs_is_known_to_the_api(rig, rebooted):
    """Guests restored by `xl` behind libvirt's back would be running in Xen and missing here."""
    running = {item["domain"]["name"] for item in rig.api.get(f"{NODES}/json").json}
    assert xl_domains(rig) == running, (xl_domains(rig), running)
