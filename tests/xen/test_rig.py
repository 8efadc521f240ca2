"""The rig itself: Xen runs; dom0 boots as Debian boots it (systemd, Debian's own units for Xen's
daemons and libvirtd); the package came in through apt; its unit runs the daemon."""

from .artefacts import BOOT_MARKER, REPO_DIR
from .conftest import NODES
from .rig import DROP_IN_PATH


def test_dom0_runs_xen_with_libvirt(rig):
    caps = rig.dom0("cat /proc/xen/capabilities; virsh -c xen:///system list --all")
    assert caps.rc == 0, caps
    assert "control_d" in caps.out
    assert "Domain-0" in caps.out


def test_dom0_boots_debian_s_way(rig):
    """systemd is PID 1; Xen's daemons run under xen.service, made by systemd's sysv generator
    from xen-utils-common's /etc/init.d/xen; libvirtd is libvirt-daemon-system's unit, with its
    sockets; the network is systemd-networkd's; no unit failed."""
    assert rig.dom0("cat /proc/1/comm").out.strip() == "systemd"
    xen = rig.unit("xen.service", "ActiveState", "SourcePath", "ControlGroup")
    assert xen["ActiveState"] == "active" and xen["SourcePath"] == "/etc/init.d/xen", xen
    daemons = rig.dom0(f"for p in $(cat /sys/fs/cgroup{xen['ControlGroup']}/cgroup.procs); "
                       "do cat /proc/$p/comm; done").out.split()
    assert "oxenstored" in daemons and "xenconsoled" in daemons, daemons
    libvirtd = rig.unit("libvirtd.service", "ActiveState", "FragmentPath", "TriggeredBy")
    assert libvirtd["ActiveState"] == "active", libvirtd
    assert libvirtd["FragmentPath"] == "/lib/systemd/system/libvirtd.service"
    assert "libvirtd-tls.socket" in libvirtd["TriggeredBy"].split()
    links = rig.dom0("networkctl list --no-legend --no-pager").out
    assert any(line.split()[1] == "xenbr0" and "configured" in line for line in links.splitlines()), links
    failed = rig.dom0("systemctl list-units --failed --no-legend --plain").out
    assert failed.strip() == "", failed


def test_the_package_came_through_apt_from_the_local_repository(rig):
    status = rig.dom0("dpkg-query -W -f '${Status} ${Version}\\n' xend-rest python3-libvirt python3-xmltodict")
    assert status.out.count("install ok installed") == 3, status
    policy = rig.dom0("apt-cache policy python3-libvirt").out
    assert f"file:{REPO_DIR}" in policy, policy


def test_daemon_started_by_its_unit_with_the_admin_s_drop_in(rig):
    unit = rig.unit("xend-rest.service", "ActiveState", "FragmentPath", "DropInPaths", "MainPID", "Type")
    assert unit["ActiveState"] == "active" and unit["Type"] == "notify", unit
    assert unit["FragmentPath"] == "/lib/systemd/system/xend-rest.service"
    assert DROP_IN_PATH in unit["DropInPaths"].split()
    command = rig.dom0(f"tr '\\0' ' ' < /proc/{unit['MainPID']}/cmdline").out
    assert "/usr/bin/xend-rest" in command and "--tokens-file /etc/xend-rest/tokens" in command


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
