"""What the Xen tier boots, built from Debian packages at test time and cached by their versions.

    xen.elf        Xen (gunzipped /boot/xen-*.gz of xen-hypervisor-*: a multiboot ELF for -kernel)
    vmlinuz        the Debian kernel, dom0's and the guests' (CONFIG_XEN_DOM0, Xen backends as modules)
    dom0.cpio.zst  dom0's root file system (mmdebstrap), with the guest's kernel and initramfs in it

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

XEN_PACKAGE = "xen-hypervisor-4.17-amd64"
KERNEL_METAPACKAGE = "linux-image-amd64"
SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
DOM0_PACKAGES = (
    "xen-utils-4.17", "xenstore-utils", "libvirt-daemon", "libvirt-daemon-driver-xen",
    "libvirt-clients", "python3", "python3-libvirt", "python3-xmltodict",
    "kmod", "mount", "iproute2", "curl", "qemu-utils", "procps",
)
# Their versions make the cache key (the rest of the root follows from them and the day's mirror).
KEY_PACKAGES = (XEN_PACKAGE, "xen-utils-4.17", "libvirt-daemon-driver-xen", "python3-libvirt")
# dom0's modules, loaded by its init in this order after their dependencies.
DOM0_MODULES = (
    "xen_evtchn", "xen_gntdev", "xen_gntalloc", "xen_privcmd", "xenfs",
    "xen_blkback", "xen_netback", "loop", "bridge", "virtio_pci", "virtio_net",
)
GUEST_MODULES = ("xen_blkfront", "xen_netfront")
# Not needed in a test dom0 living in RAM: documentation, translations, udev's hardware database.
SHRINK = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
          "usr/lib/udev/hwdb.bin", "usr/lib/udev/hwdb.d", "var/cache/apt", "var/lib/apt/lists",
          "usr/share/lintian", "usr/share/bash-completion",
          # libvirt-daemon pulls in the QEMU driver, whose start fails in this dom0 (no
          # libvirt-qemu user) and takes libvirtd down with it; only libxl is under test.
          "usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so")

# Bump when the recipe changes in a way the strings digested by cache_key() do not show.
RECIPE = 1

# Guest console markers (realhv's names, so its Console helper reads them).
BOOT_MARKER = realhv_guest.BOOT_MARKER
READY_MARKER = realhv_guest.READY_MARKER
POWEROFF_MARKER = realhv_guest.POWEROFF_MARKER
STATE_MARKER = "XEND-GUEST-STATE"
REBOOT_MARKER = "XEND-GUEST-REBOOT"
PROMPT = realhv_guest.PROMPT

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
trap 'echo "{POWEROFF_MARKER}" > /dev/console; poweroff -f' USR2
trap 'echo "{REBOOT_MARKER}" > /dev/console; reboot -f' TERM
uevent /sbin/uevent-hook &
for m in $(cat /etc/modules); do
    insmod /lib/modules/$m.ko || echo "XEND-GUEST-ERROR insmod $m" > /dev/console
done
echo "{READY_MARKER} cpus=$(grep -c ^processor /proc/cpuinfo)" > /dev/console
# A shell on the PV console, for the console tests; respawned when it exits.
(export PS1='{PROMPT} ' HOME=/ TERM=vt100
 while true; do setsid sh -c 'exec sh -i <>/dev/hvc0 >&0 2>&1'; done) &
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
    def dom0_root(self):
        return self.directory / "dom0.cpio.zst"


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
    for part in (GUEST_INIT, GUEST_UEVENT_HOOK, " ".join(DOM0_PACKAGES + DOM0_MODULES + GUEST_MODULES),
                 " ".join(SHRINK), str(RECIPE)):
        digest.update(part.encode())
    return f"{kernel[len('linux-image-'):]}-{digest.hexdigest()[:12]}"


def build(root=None, log=print):
    """The artefacts for today's package versions, built into the cache unless already there."""
    root = Path(root) if root else cache_root()
    root.mkdir(parents=True, exist_ok=True)
    kernel = kernel_package()
    target = root / cache_key(kernel)
    if (target / "dom0.cpio.zst").exists():
        return Artefacts(target)
    with realhv_guest._locked(root / ".lock"):
        if not (target / "dom0.cpio.zst").exists():
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

    log("xen tier: building dom0's root with mmdebstrap (about a minute)")
    rootfs = tmp / "root"
    _run(["mmdebstrap", "--quiet", "--variant=essential", "--mode=root",
          "--include=" + ",".join(DOM0_PACKAGES), SUITE, str(rootfs), *MIRRORS])
    for path in map(rootfs.joinpath, SHRINK):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    _drop_vme(rootfs)
    modules = rootfs / "lib" / "modules" / "xen-rig"
    modules.mkdir(parents=True)
    ordered = realhv_guest._modules_in_load_order(moddir, DOM0_MODULES)
    for name, data in ordered:
        (modules / f"{name}.ko").write_bytes(data)
    (rootfs / "etc" / "xen-rig-modules").write_text("".join(f"{n}\n" for n, _ in ordered))
    guest_boot = rootfs / GUEST_KERNEL.lstrip("/")
    guest_boot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "vmlinuz", guest_boot)
    (rootfs / GUEST_INITRD.lstrip("/")).write_bytes(_guest_initramfs(moddir))

    log("xen tier: packing dom0's root")
    subprocess.run(f"cd {rootfs} && find . | cpio --quiet -o -H newc | zstd -q -T0 -9 > {out / 'dom0.cpio.zst'}",
                   shell=True, check=True)
    out.rename(target)


def _run(command, **options):
    """Run a build step; on failure, say which and why (its stderr), not just its exit code."""
    done = subprocess.run(command, capture_output=True, text=True, **options)
    if done.returncode != 0:
        raise RuntimeError(f"xen tier: {' '.join(command[:3])}... failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")


def _drop_vme(rootfs):
    """TEST-RIG WORKAROUND, not advice for real hosts: QEMU's software CPU lacks VME, and every x86
    model in libvirt's CPU map requires it (all descend from 486), so libvirtd's Xen driver exits
    at start ("Cannot find suitable CPU model for given data"). Real hardware has VME."""
    cpu_486 = rootfs / "usr" / "share" / "libvirt" / "cpu_map" / "x86_486.xml"
    text = cpu_486.read_text()
    cpu_486.write_text(text.replace("    <feature name='vme'/>\n", ""))


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
    cpio.add("etc/modules", 0o100644, "".join(f"{n}\n" for n, _ in modules).encode())
    for name, data in modules:
        cpio.add(f"lib/modules/{name}.ko", 0o100644, data)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


if __name__ == "__main__":
    print(build().directory)
