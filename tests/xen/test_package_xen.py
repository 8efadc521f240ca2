"""The package's life on a dom0, under systemd and in an image being built: its maintainer scripts
behave as dh_installsystemd's (deb-systemd-helper, deb-systemd-invoke) do.

Each test leaves the package installed and the daemon answering, as it found them.
"""

import shlex

import pytest

from realhv.guest import wait_until

from .conftest import NODES
from .rig import DEB_IN_DOM0, DROP_IN

UNIT = "xend-rest.service"
WANTS = "/etc/systemd/system/multi-user.target.wants/xend-rest.service"
IMAGE = "/mnt/image"  # a throwaway copy-on-write view of dom0's root, an image being built


def version(rig):
    return rig.dom0("dpkg-query -W -f '${Version}' xend-rest").out


def newer_deb(rig, suffix):
    """The installed .deb again as a newer version (VERSION+SUFFIX), as an upgrade brings it."""
    path = f"/root/xend-rest_{suffix}_all.deb"
    result = rig.dom0(f"rm -rf /tmp/deb && dpkg-deb -R {DEB_IN_DOM0} /tmp/deb "
                      f"&& sed -i 's/^Version: .*/&+{suffix}/' /tmp/deb/DEBIAN/control "
                      f"&& dpkg-deb -b /tmp/deb {path} >/dev/null && rm -rf /tmp/deb")
    assert result.rc == 0, result
    return path


def apt_install(rig, path):
    return rig.dom0(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades {path}",
                    timeout=300)


def test_upgrade_keeps_an_administrator_s_disable(rig):
    """`systemctl disable --now`, then an upgrade: the unit stays disabled and stopped
    (deb-systemd-helper's was-enabled; deb-systemd-invoke starts only enabled units)."""
    assert rig.dom0(f"systemctl disable --now {UNIT}").rc == 0
    try:
        upgraded = apt_install(rig, newer_deb(rig, "disabled"))
        assert upgraded.rc == 0, upgraded
        assert version(rig).endswith("+disabled")
        assert rig.dom0(f"systemctl is-enabled {UNIT}").out.strip() == "disabled"
        assert rig.dom0(f"systemctl is-active {UNIT}").out.strip() == "inactive"
    finally:
        assert rig.dom0(f"systemctl enable --now {UNIT}", timeout=120).rc == 0
    wait_until(rig.daemon_answers, 90, "the daemon answering once enabled again")


def test_upgrade_whose_configuration_fails_keeps_the_running_daemon(rig):
    """The chosen behaviour: the postinst has the new version check the configuration with the
    unit's command line (`--check-config`, the drop-in's flags included) before it restarts;
    with a problem, the daemon running keeps serving (same PID, not restarted), the problem is
    printed, and the package is configured all the same (never half-configured under `set -e`)."""
    conf = "/etc/xend-rest/xend-rest.conf"
    before = rig.unit(UNIT, "MainPID", "NRestarts")
    assert rig.dom0(f"cp {conf} /root/conf.saved && echo 'no-such-key = 1' >> {conf}").rc == 0
    try:
        upgraded = apt_install(rig, newer_deb(rig, "badconf"))
        assert upgraded.rc == 0, upgraded
        # (apt shows a maintainer script's stderr among its output)
        said = upgraded.out + upgraded.err
        assert "the running daemon was not restarted" in said, said
        assert "unknown key(s) in [xend-rest]: no-such-key" in said, said
        status = rig.dom0("dpkg-query -W -f '${Status}' xend-rest").out
        assert status == "install ok installed", status
        assert rig.unit(UNIT, "MainPID", "NRestarts") == before
        assert rig.unit(UNIT, "ActiveState")["ActiveState"] == "active"
        assert rig.api.get(f"{NODES}/json").status == 200
    finally:
        assert rig.dom0(f"cp /root/conf.saved {conf} && systemctl restart {UNIT}", timeout=120).rc == 0
    wait_until(rig.daemon_answers, 90, "the daemon answering with its configuration repaired")


def test_upgrade_checks_the_unit_s_command_line_word_for_word(rig):
    """The postinst's `--check-config` runs the unit's ExecStart= as systemd holds it (its words,
    not `systemctl show`'s unquoted join split again by a shell): a quoted argument with a space,
    as an administrator's drop-in writes it, checks fine and the daemon is restarted."""
    drop_in = "/etc/systemd/system/xend-rest.service.d/zz-words.conf"
    exec_start = DROP_IN.split("ExecStart=\n", 1)[1].rstrip()  # the rig's TLS listener, as before
    words = exec_start + ' \\\n    "--allowed-paths=/var/lib/xend-rest-pool /var/lib/xen"\n'
    rig.put(drop_in, f"[Service]\nExecStart=\n{words}")
    assert rig.dom0(f"systemctl daemon-reload && systemctl restart {UNIT}", timeout=120).rc == 0
    try:
        wait_until(rig.daemon_answers, 90, "the daemon answering with the drop-in's words")
        before = rig.unit(UNIT, "MainPID")
        upgraded = apt_install(rig, newer_deb(rig, "words"))
        assert upgraded.rc == 0, upgraded
        said = upgraded.out + upgraded.err
        assert "not restarted" not in said and "unrecognized arguments" not in said, said
        wait_until(lambda: rig.unit(UNIT, "ActiveState")["ActiveState"] == "active", 90, "active again")
        assert rig.unit(UNIT, "MainPID") != before  # checked, then restarted as the new version
        shown = rig.dom0(f"tr '\\0' '\\n' < /proc/$(systemctl show -P MainPID {UNIT})/cmdline")
        assert "--allowed-paths=/var/lib/xend-rest-pool /var/lib/xen" in shown.out.splitlines(), shown
    finally:
        assert rig.dom0(f"rm -f {drop_in} && systemctl daemon-reload && systemctl restart {UNIT}",
                        timeout=120).rc == 0
    wait_until(rig.daemon_answers, 90, "the daemon answering without the drop-in")


def test_socket_group_is_created_and_grants_the_unix_socket(rig):
    """The package creates the system group its configuration names (socket-group): a member
    may use the socket, another user may not."""
    assert rig.dom0("getent group xend-rest").rc == 0
    assert rig.dom0("ls -l /run/xend-rest/api.sock").out.split()[3] == "xend-rest"
    setup = rig.dom0("id alice >/dev/null 2>&1 || { useradd -M alice && useradd -M bob; } "
                     "&& adduser --quiet alice xend-rest")
    assert setup.rc == 0, setup
    curl = "curl -sS -o /dev/null -w %{http_code} --unix-socket /run/xend-rest/api.sock http://localhost/_ping"
    assert rig.dom0(f"runuser -u alice -- {curl}").out == "200"
    connect = "import socket; socket.socket(socket.AF_UNIX).connect('/run/xend-rest/api.sock')"
    refused = rig.dom0(f"runuser -u bob -- python3 -c \"{connect}\"")
    assert refused.rc != 0 and "PermissionError" in refused.err, refused


@pytest.fixture
def image(rig):
    """dom0's root seen through an overlay (changes in RAM), entered with chroot: no systemd runs
    there (/run/systemd/system is absent), as when mmdebstrap or a build script makes an image."""
    setup = rig.dom0(f"mkdir -p /tmp/overlay {IMAGE} && mount -t tmpfs tmpfs /tmp/overlay "
                     "&& mkdir /tmp/overlay/upper /tmp/overlay/work "
                     f"&& mount -t overlay overlay -o lowerdir=/,upperdir=/tmp/overlay/upper,workdir=/tmp/overlay/work {IMAGE} "
                     f"&& mount --bind /dev {IMAGE}/dev && mount -t proc proc {IMAGE}/proc "
                     f"&& test ! -e {IMAGE}/run/systemd/system")
    assert setup.rc == 0, setup
    yield lambda command: rig.dom0(f"chroot {IMAGE} sh -c {shlex.quote(command)}", timeout=300)
    rig.dom0(f"umount {IMAGE}/proc {IMAGE}/dev {IMAGE} /tmp/overlay")


def test_installed_into_an_image_with_dpkg_comes_out_enabled_and_purged_leaves_nothing(rig, image):
    """`dpkg -i` in a chroot: deb-systemd-helper enables the unit by its symlink, as Debian's own
    units come out of an image build; `dpkg --purge` removes that link (none left dangling), its
    record and the configuration."""
    assert image("dpkg --purge xend-rest").rc == 0  # the image starts without it
    assert image(f"test ! -e {WANTS} && test ! -L {WANTS}").rc == 0
    installed = image(f"dpkg -i {DEB_IN_DOM0}")
    assert installed.rc == 0, installed
    assert image(f"readlink {WANTS}").out.strip() == "/lib/systemd/system/xend-rest.service"
    assert image(f"systemctl is-enabled {UNIT}").out.strip() == "enabled"
    assert image("getent group xend-rest").rc == 0
    purged = image("dpkg --purge xend-rest")
    assert purged.rc == 0, purged
    dangling = image("find -L /etc/systemd/system -type l")  # -L: links whose target is missing
    assert dangling.out == "", dangling
    assert image(f"test ! -L {WANTS} && test ! -e /etc/xend-rest && test ! -e "
                 "/var/lib/systemd/deb-systemd-helper-enabled/xend-rest.service.dsh-also").rc == 0
    # dom0 itself is untouched
    assert rig.dom0(f"systemctl is-active {UNIT}").out.strip() == "active"


def test_remove_stops_install_again_starts_purge_removes_the_configuration(rig):
    """`apt-get remove` stops the daemon, keeps the configuration and masks the unit meanwhile;
    installing again unmasks and starts it; `apt-get purge` removes the configuration and leaves
    no enablement link behind; installing after that brings it all back."""
    removed = rig.dom0("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q xend-rest", timeout=300)
    assert removed.rc == 0, removed
    assert rig.dom0("pgrep -x xend-rest").rc == 1
    assert rig.dom0("test -S /run/xend-rest/api.sock").rc == 1
    assert rig.dom0("dpkg-query -W -f '${Status}' xend-rest").out == "deinstall ok config-files"
    assert rig.dom0("test -e /etc/xend-rest/xend-rest.conf").rc == 0
    assert rig.dom0(f"systemctl is-enabled {UNIT}").out.strip() == "masked"
    rig.install(DEB_IN_DOM0, rig.deb)  # the configuration kept: the daemon answers as before
    assert rig.dom0(f"systemctl is-enabled {UNIT}").out.strip() == "enabled"
    purged = rig.dom0("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q xend-rest", timeout=300)
    assert purged.rc == 0, purged
    assert rig.dom0("pgrep -x xend-rest").rc == 1
    assert rig.dom0("test -e /etc/xend-rest").rc == 1
    links = rig.dom0("find /etc/systemd/system -name 'xend-rest.service' -type l").out
    assert links == "", links
    assert rig.dom0(f"systemctl is-enabled {UNIT}").rc != 0
    # an administrator brings the certificates, tokens and drop-in back, then installs again
    rig.provision()
    rig.install(DEB_IN_DOM0, rig.deb)
    assert rig.dom0(f"systemctl is-enabled {UNIT}").out.strip() == "enabled"
    assert rig.api.get(f"{NODES}/json").status == 200
