"""What the Xen tier boots, built from Debian packages at test time and cached by their versions.

    xen.elf      Xen (gunzipped /boot/xen-*.gz of xen-hypervisor-*: a multiboot ELF for -kernel)
    vmlinuz      the Debian kernel, dom0's and the guests' (CONFIG_XEN_DOM0, Xen backends as modules)
    initrd.img   a busybox initramfs: loads virtio_blk and ext4, mounts /dev/vda, switch_root to systemd
    dom0.raw     dom0's root file system, ext4 (mke2fs -d from an mmdebstrap root, no loop mount):
                 Debian's systemd, Xen tools and libvirt as their packages install them, the kernel
                 modules dom0 loads, a PV guest's kernel + busybox initramfs, and a local apt
                 repository of the packages xend-rest's .deb depends on (not installed)

Each run boots a copy-on-write overlay of dom0.raw (rig.py), so the cache stays pristine.
Everything lands in ${XDG_CACHE_HOME:-~/.cache}/xend-rest-xen/<key>/, where the key digests the
candidate versions of the packages below and this recipe; nothing is installed on this machine.
"""

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from realhv import guest as realhv_guest

HERE = Path(__file__).parent
XEN_PACKAGE = "xen-hypervisor-4.17-amd64"
KERNEL_METAPACKAGE = "linux-image-amd64"
SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
DOM0_PACKAGES = (
    # PID 1 and what a Debian system runs under it
    "systemd", "systemd-sysv", "udev", "dbus", "apt", "kmod", "iproute2", "procps",
    # Xen's tools, with Debian's init scripts xen and xendomains (xen-utils-common)
    "xen-utils-4.17", "xenstore-utils",
    # an HVM guest's device model (/usr/libexec/xen-qemu-system-i386)
    "qemu-system-xen",
    # libvirt as Debian runs it (libvirtd socket-activated, libvirt-guests) with the libxl driver
    "libvirt-daemon-system", "libvirt-daemon-driver-xen", "libvirt-clients",
    # DHCP and DNS of libvirt's NAT networks (libvirt-daemon-system only recommends it; the
    # network driver itself is in libvirt-daemon, iptables, which it drives, a Depends of -system)
    "dnsmasq-base",
    # the test agent's interpreter, and tools the tests use
    "python3", "curl", "qemu-utils", "iputils-ping",
)
# In dom0's local apt repository, NOT installed: apt resolves the .deb's Depends from there.
REPO_PACKAGES = ("python3-libvirt", "python3-xmltodict")
REPO_DIR = "/var/local/debs"
# Their versions make the cache key (the rest of the root follows from them and the day's mirror).
KEY_PACKAGES = (XEN_PACKAGE, "xen-utils-4.17", "libvirt-daemon-system", "libvirt-daemon-driver-xen",
                "python3-libvirt", "python3-xmltodict", "systemd", "qemu-system-xen")
# Loaded by the initramfs to reach the root; dependencies come along.
BOOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
# In dom0's /lib/modules (with modules.dep: modprobe, udev and Xen's init script load them):
# the root's, Xen's backends (the init script loads xenfs, xen-evtchn, xen-gntdev), loop for
# file-backed disks, the guests' bridge, tun for an HVM guest's emulated NIC, QEMU's NIC,
# overlay for a throwaway root in the package tests, autofs4 and binfmt_misc for systemd's
# binfmt_misc automount.
DOM0_MODULES = BOOT_MODULES + (
    "xen_evtchn", "xen_gntdev", "xen_gntalloc", "xen_privcmd", "xenfs", "xen_acpi_processor",
    "xen_blkback", "xen_netback", "loop", "bridge", "tun", "virtio_net", "overlay", "autofs4", "binfmt_misc",
)
# Every module of these folders too: the rules of a libvirt network (iptables-nft) make the
# kernel load netfilter's tables, matches and targets by name, whichever libvirt's version asks.
DOM0_MODULE_DIRS = ("kernel/net/netfilter", "kernel/net/ipv4/netfilter", "kernel/net/ipv6/netfilter")
GUEST_MODULES = ("xen_blkfront", "xen_netfront")
# Not needed in a test dom0: documentation, translations, udev's hardware database.
SHRINK = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
          "usr/lib/udev/hwdb.bin", "usr/lib/udev/hwdb.d", "usr/share/lintian",
          "usr/share/bash-completion")
# The packages the .deb will need, fetched as apt resolves them against dom0's root and kept out
# of it (mmdebstrap empties apt's cache afterwards): dom0's local repository.
HOOKS = (
    'chroot "$1" apt-get clean',
    'chroot "$1" apt-get install --download-only -y -q ' + " ".join(REPO_PACKAGES),
    f'mkdir -p "$1"{REPO_DIR} && mv "$1"/var/cache/apt/archives/*.deb "$1"{REPO_DIR}/',
)
# dom0.raw's size; the file is sparse and each run writes to an overlay.
IMAGE_SIZE = "6G"

# Bump when the recipe changes in a way the strings digested by cache_key() do not show.
RECIPE = 2

# Guest console markers (realhv's names, so its Console helper reads them).
BOOT_MARKER = realhv_guest.BOOT_MARKER
READY_MARKER = realhv_guest.READY_MARKER
POWEROFF_MARKER = realhv_guest.POWEROFF_MARKER
ADDRESS_MARKER = realhv_guest.ADDRESS_MARKER  # the DHCP script's: then the interface, its address
STATE_MARKER = "XEND-GUEST-STATE"
REBOOT_MARKER = "XEND-GUEST-REBOOT"
COUNT_MARKER = "XEND-COUNT"  # the counter of a guest booted with xend.count
PROMPT = realhv_guest.PROMPT
# QEMU's MAC for a first NIC (dom0's uplink); the rig gives it explicitly.
UPLINK_MAC = "52:54:00:12:34:56"

# PID 1 of the initramfs: what Debian's initramfs-tools does for this root, in busybox.
BOOT_INIT = """#!/bin/sh
export PATH=/bin:/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko || echo "XEN-RIG insmod $m failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /root
if ! mount -t ext4 /dev/vda /root; then
    echo "XEN-RIG cannot mount dom0's root /dev/vda"
    exec sh
fi
umount /proc /sys /dev
exec switch_root /root /sbin/init "$@"
"""

# PID 1 of the PV guest. Xen asks a PV guest to power off or reboot through xenstore; its kernel
# then runs /sbin/poweroff or /sbin/reboot, which busybox turns into USR2 or TERM to PID 1.
# Every second the guest prints what tests look at (CPUs online, memory, disks, NICs) when it changes.
GUEST_INIT = f"""#!/bin/sh
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /run /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{BOOT_MARKER} $(cat /proc/sys/kernel/random/boot_id)" > /dev/console
# On an HVM guest's screen (VGA text), something to see through VNC; nowhere on a PV one.
echo "xend-rest test guest $(cat /proc/sys/kernel/random/boot_id)" > /dev/tty1 2>/dev/null
trap 'echo "{POWEROFF_MARKER}" > /dev/console; poweroff -f' USR2
trap 'echo "{REBOOT_MARKER}" > /dev/console; reboot -f' TERM
uevent /sbin/uevent-hook &
for m in $(cat /etc/modules); do
    insmod /lib/modules/$m.ko || echo "XEND-GUEST-ERROR insmod $m" > /dev/console
done
# With xend.dhcp on its command line, eth0 asks for a DHCP lease (in the background, renewing);
# the script says on the console what the guest was given (realhv's, as the QEMU guest's).
if grep -qw xend.dhcp /proc/cmdline; then
    ip link set lo up
    i=0  # netfront's eth0 appears once xenbus has connected it to its backend
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    udhcpc -i eth0 -s /etc/udhcpc.script -b -t 120 -T 1 >/dev/null 2>&1
fi
echo "{READY_MARKER} cpus=$(grep -c ^processor /proc/cpuinfo)" > /dev/console
# With xend.count on its command line, a counter five times a second: a migrated guest's own
# evidence that it runs on (the numbers go on, never from 1 again).
if grep -qw xend.count /proc/cmdline; then
    (i=0; while true; do i=$((i + 1)); echo "{COUNT_MARKER} $i" > /dev/console; sleep 0.2; done) &
fi
# A shell on the PV console, for the console tests; respawned when it exits (an HVM guest may
# have no hvc0: then it is tried again each second, not in a busy loop).
(export PS1='{PROMPT} ' HOME=/ TERM=vt100
 while true; do setsid sh -c 'exec sh -i <>/dev/hvc0 >&0 2>&1'; sleep 1; done) &
last=""
while true; do
    now="cpus=$(grep -c ^processor /proc/cpuinfo) mem_kib=$(sed -n 's/^MemTotal: *\\([0-9]*\\).*/\\1/p' /proc/meminfo) disks=$(ls /sys/block | grep xvd | tr '\\n' ,) nics=$(ls /sys/class/net | grep -v lo | tr '\\n' ,)"
    [ "$now" != "$last" ] && echo "{STATE_MARKER} $now" > /dev/console
    last="$now"
    sleep 1 & wait $!
done
"""

# A vCPU Xen makes available is registered by the kernel but left offline: online it.
GUEST_UEVENT_HOOK = """#!/bin/sh
case "$SUBSYSTEM:$ACTION" in
    cpu:add|cpu:online) echo 1 > /sys$DEVPATH/online 2>/dev/null ;;
esac
"""

# dom0's own configuration, as its administrator writes it (path: text). Each is Debian's way.
DOM0_FILES = {
    "etc/hostname": "dom0\n",
    "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 dom0\n::1 localhost ip6-localhost ip6-loopback\n",
    # The initramfs mounts the root read-write; nothing to check on a fresh overlay.
    "etc/fstab": "/dev/vda / ext4 defaults 0 0\n",
    # No network inside the rig (QEMU's user network is restricted): apt reads the local repository.
    "etc/apt/sources.list": f"deb [trusted=yes] file:{REPO_DIR} ./\n",
    # QEMU's user network: fixed addresses; the interface is the one with QEMU's first MAC (the
    # rig's second NIC, the link between two dom0s, is configured by the rig: UPLINK_MAC).
    "etc/systemd/network/10-uplink.network": f"""[Match]
MACAddress={UPLINK_MAC}

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
""",
    # The guests' bridge: their vifs are added by Xen's vif-bridge script. No carrier until then.
    "etc/systemd/network/20-xenbr0.netdev": "[NetDev]\nName=xenbr0\nKind=bridge\n",
    "etc/systemd/network/20-xenbr0.network": """[Match]
Name=xenbr0

[Network]
ConfigureWithoutCarrier=yes
LinkLocalAddressing=no

[Link]
RequiredForOnline=no
""",
    "var/log/xen/console/.keep": "",
    # TEST RIG ONLY, on the first boot of each run (the rig removes it): Xen's start waits until
    # libvirtd is up, so that libvirtd surely starts before Xen, as it may on any Debian dom0 where
    # nothing orders it after xen.service (docs/xen.md). Bounded, should libvirtd never come.
    "etc/systemd/system/xen.service.d/rig-first-boot.conf": """[Service]
ExecStartPre=/bin/sh -c 'for i in $$(seq 120); do systemctl -q is-active libvirtd.service && exit 0; sleep 1; done'
""",
    "usr/local/lib/xen-rig/agent.py": (HERE / "agent.py").read_text(),
    # TEST RIG ONLY: the tests' shell in dom0 (agent.py), a unit of its own.
    "etc/systemd/system/xen-rig-agent.service": """[Unit]
Description=xend-rest's Xen test rig: runs the tests' commands in dom0 (TEST RIG ONLY)
After=network.target

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/xen-rig/agent.py
# The commands it runs (apt-get, systemctl, virsh) are the tests'; a stop leaves them be.
KillMode=process

[Install]
WantedBy=multi-user.target
""",
}
# Lines added at the end of the packages' own files (path: text).
DOM0_APPENDED = {
    # Debian's /etc/init.d/xen passes these to xenconsoled (the XENCONSOLED_TRACE this file
    # documents is passed on by nothing): guests' consoles logged to
    # /var/log/xen/console/guest-NAME.log, which the tests read.
    "etc/default/xen": 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"\n',
}
# Enabled in the image besides what the packages enabled.
DOM0_UNITS = ("systemd-networkd.service", "xen-rig-agent.service")


@dataclass(frozen=True)
class Artefacts:
    directory: Path

    @property
    def xen(self):
        return self.directory / "xen.elf"

    @property
    def kernel(self):
        return self.directory / "vmlinuz"

    @property
    def initrd(self):
        return self.directory / "initrd.img"

    @property
    def dom0_root(self):
        return self.directory / "dom0.raw"


# Where the guest's files are inside dom0.
GUEST_KERNEL = "/var/lib/xen/boot/vmlinuz"
GUEST_INITRD = "/var/lib/xen/boot/initrd.img"


def cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "xend-rest-xen"


def candidate_versions(packages):
    """{package: candidate version} from apt's lists (updated once if a package is unknown)."""
    for attempt in range(2):
        out = subprocess.run(["apt-cache", "policy", *packages], capture_output=True, text=True).stdout
        versions = dict(re.findall(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)", out, re.M))
        if all(versions.get(p, "(none)") != "(none)" for p in packages):
            return versions
        if attempt == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise RuntimeError(f"apt cannot find candidates for {packages}: {out!r}")


def kernel_package():
    """linux-image-6.1.0-N-amd64, the package the metapackage points at today."""
    candidate_versions([KERNEL_METAPACKAGE])  # updates the lists if needed
    out = subprocess.run(["apt-cache", "depends", KERNEL_METAPACKAGE], capture_output=True, text=True).stdout
    match = re.search(r"Depends: (linux-image-\S+-amd64)\b", out)
    if not match:
        raise RuntimeError(f"apt-cache cannot resolve {KERNEL_METAPACKAGE}: {out!r}")
    return match.group(1)


def cache_key(kernel):
    digest = hashlib.sha256()
    for package, version in sorted(candidate_versions([*KEY_PACKAGES, kernel]).items()):
        digest.update(f"{package}={version}\n".encode())
    parts = (BOOT_INIT, GUEST_INIT, GUEST_UEVENT_HOOK, " ".join(DOM0_PACKAGES + REPO_PACKAGES),
             " ".join(BOOT_MODULES + DOM0_MODULES + DOM0_MODULE_DIRS + GUEST_MODULES + DOM0_UNITS),
             " ".join(SHRINK), realhv_guest.DHCP_SCRIPT,
             IMAGE_SIZE, str(RECIPE), *HOOKS,
             *(f"{path}\0{text}" for path, text in sorted(DOM0_FILES.items()) + sorted(DOM0_APPENDED.items())))
    for part in parts:
        digest.update(part.encode() + b"\0")
    return f"{kernel[len('linux-image-'):]}-{digest.hexdigest()[:12]}"


def build(root=None, log=print):
    """The artefacts for today's package versions, built into the cache unless already there."""
    root = Path(root) if root else cache_root()
    root.mkdir(parents=True, exist_ok=True)
    kernel = kernel_package()
    target = root / cache_key(kernel)
    if (target / "dom0.raw").exists():
        return Artefacts(target)
    with realhv_guest._locked(root / ".lock"):
        if not (target / "dom0.raw").exists():
            _build(kernel, target, log)
    return Artefacts(target)


def _build(kernel, target, log):
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    try:
        _build_in(kernel, tmp, target, log)
    finally:
        # An interrupted mmdebstrap may leave /proc and /sys mounted in the root: never
        # delete through them.
        _unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _unmount_under(path):
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{path}/")]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _build_in(kernel, tmp, target, log):
    out = tmp / "out"
    out.mkdir()
    log(f"xen tier: downloading {XEN_PACKAGE} and {kernel}")
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", XEN_PACKAGE, kernel], cwd=tmp)
    for deb in tmp.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "debs")], check=True)
    boot = tmp / "debs" / "boot"
    xen_gz = next(boot.glob("xen-*-amd64.gz"))
    subprocess.run(f"gunzip -c {xen_gz} > {out / 'xen.elf'}", shell=True, check=True)
    version = kernel[len("linux-image-"):]
    shutil.copy(boot / f"vmlinuz-{version}", out / "vmlinuz")
    moddir = tmp / "debs" / "lib" / "modules" / version
    (out / "initrd.img").write_bytes(_boot_initramfs(moddir))

    log("xen tier: building dom0's root with mmdebstrap (a minute or two)")
    rootfs = tmp / "root"
    repo = rootfs / REPO_DIR.lstrip("/")
    _run(["mmdebstrap", "--quiet", "--variant=essential", "--mode=root",
          "--include=" + ",".join(DOM0_PACKAGES), *(f"--customize-hook={hook}" for hook in HOOKS),
          SUITE, str(rootfs), *MIRRORS])
    for path in map(rootfs.joinpath, SHRINK):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    # The local repository's index, made here by dpkg-dev's dpkg-scanpackages.
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, check=True,
                              capture_output=True).stdout
    (repo / "Packages").write_bytes(packages)
    missing = [p for p in REPO_PACKAGES if f"Package: {p}\n".encode() not in packages]
    if missing:
        raise RuntimeError(f"xen tier: the local repository lacks {missing}")
    for path, text in DOM0_FILES.items():
        (rootfs / path).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / path).write_text(text)
    for path, text in DOM0_APPENDED.items():
        with open(rootfs / path, "a") as appended:
            appended.write(text)
    _run(["chroot", str(rootfs), "systemctl", "enable", *DOM0_UNITS])
    _run(["chroot", str(rootfs), "systemd-machine-id-setup"])
    _drop_vme(rootfs)
    _install_modules(moddir, rootfs, version)
    guest_boot = rootfs / GUEST_KERNEL.lstrip("/")
    guest_boot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "vmlinuz", guest_boot)
    (rootfs / GUEST_INITRD.lstrip("/")).write_bytes(_guest_initramfs(moddir))

    log("xen tier: making dom0's root file system (mke2fs -d)")
    _run(["mke2fs", "-q", "-t", "ext4", "-L", "dom0", "-d", str(rootfs), str(out / "dom0.raw"), IMAGE_SIZE])
    out.rename(target)


def _run(command, **options):
    """Run a build step; on failure, say which and why (its stderr), not just its exit code."""
    done = subprocess.run(command, capture_output=True, text=True, **options)
    if done.returncode != 0:
        raise RuntimeError(f"xen tier: {' '.join(command[:3])}... failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return done.stdout


def _drop_vme(rootfs):
    """TEST-RIG WORKAROUND, not advice for real hosts: QEMU's software CPU lacks VME (TCG cannot
    emulate it: `-cpu qemu64,+vme` is refused), and every x86 model in libvirt's CPU map requires
    it (all descend from 486), so libvirtd's Xen driver exits at start ("Cannot find suitable CPU
    model for given data"). Real hardware has VME. Done as an administrator replaces a packaged
    file, with a local diversion (dpkg-divert), so the package's own copy stays as shipped."""
    cpu_486 = "/usr/share/libvirt/cpu_map/x86_486.xml"
    _run(["chroot", str(rootfs), "dpkg-divert", "--local", "--rename", "--divert",
          f"{cpu_486}.distrib", "--add", cpu_486])
    text = (rootfs / f"{cpu_486}.distrib".lstrip("/")).read_text()
    (rootfs / cpu_486.lstrip("/")).write_text(text.replace("    <feature name='vme'/>\n", ""))


def _install_modules(moddir, rootfs, version):
    """DOM0_MODULES, those of DOM0_MODULE_DIRS, and their dependencies at their places in dom0's
    /lib/modules, indexed by the root's own depmod, so that modprobe (udev, Xen's init script,
    the kernel asking for a netfilter module) finds them."""
    target = rootfs / "lib" / "modules" / version
    in_dirs = [re.sub(r"\.ko(\.xz|\.gz|\.zst)?$", "", path.name).replace("-", "_")
               for folder in DOM0_MODULE_DIRS for path in (moddir / folder).rglob("*.ko*")]
    for _, path, _ in realhv_guest._module_files_in_load_order(moddir, DOM0_MODULES + tuple(in_dirs)):
        destination = target / path.relative_to(moddir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, destination)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy(moddir / name, target / name)
    _run(["chroot", str(rootfs), "depmod", version])


def _boot_initramfs(moddir):
    modules = realhv_guest._modules_in_load_order(moddir, BOOT_MODULES)
    cpio = realhv_guest._Cpio()
    for directory in ("bin", "sbin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "usr",
                      "usr/bin", "usr/sbin"):
        cpio.add(directory, 0o40755)
    cpio.add("dev/console", 0o20600, rdev=(5, 1))
    cpio.add("bin/busybox", 0o100755, realhv_guest.BUSYBOX.read_bytes())
    cpio.add("bin/sh", 0o120777, b"busybox")
    cpio.add("init", 0o100755, BOOT_INIT.encode())
    cpio.add("etc/modules", 0o100644, "".join(f"{n}\n" for n, _ in modules).encode())
    for name, data in modules:
        cpio.add(f"lib/modules/{name}.ko", 0o100644, data)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def _guest_initramfs(moddir):
    modules = realhv_guest._modules_in_load_order(moddir, GUEST_MODULES)
    cpio = realhv_guest._Cpio()
    for directory in ("bin", "sbin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "run"):
        cpio.add(directory, 0o40755)
    cpio.add("dev/console", 0o20600, rdev=(5, 1))
    cpio.add("bin/busybox", 0o100755, realhv_guest.BUSYBOX.read_bytes())
    cpio.add("bin/sh", 0o120777, b"busybox")
    cpio.add("init", 0o100755, GUEST_INIT.encode())
    cpio.add("sbin/uevent-hook", 0o100755, GUEST_UEVENT_HOOK.encode())
    cpio.add("etc/udhcpc.script", 0o100755, realhv_guest.DHCP_SCRIPT.encode())
    cpio.add("etc/modules", 0o100644, "".join(f"{n}\n" for n, _ in modules).encode())
    for name, data in modules:
        cpio.add(f"lib/modules/{name}.ko", 0o100644, data)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


if __name__ == "__main__":
    print(build().directory)
