"""The rig itself: Xen runs, dom0 is in control, libvirt's libxl driver and xend-rest answer."""

from .artefacts import BOOT_MARKER
from .conftest import NODES


def test_dom0_runs_xen_with_libvirt(rig):
    caps = rig.dom0("cat /proc/xen/capabilities; virsh -c xen:///system list --all")
    assert caps.rc == 0, caps
    assert "control_d" in caps.out
    assert "Domain-0" in caps.out


def test_daemon_installed_from_the_deb_and_started_by_its_unit(rig):
    result = rig.dom0("dpkg-query -W -f '${Status} ${Version}' xend-rest; pgrep -a -f /usr/bin/xend-rest")
    assert result.out.startswith("install ok installed"), result
    assert "--tokens-file /etc/xend-rest/tokens" in result.out


def test_token_required_over_tls(rig):
    assert rig.api.get(f"{NODES}/json", headers={"Authorization": "Bearer wrong"}).status == 401


def test_unix_socket_inside_dom0(rig):
    response = rig.unix_api.get(f"{NODES}/json")
    assert response.status == 200, response
    assert isinstance(response.json, list)  # dom0 is never listed
    assert rig.unix_api.get("/_ping").status == 200


def test_pv_guest_boots(rig, guests):
    name = guests.define("boot")
    guests.boot(name)
    assert guests.count(name, BOOT_MARKER) == 1
