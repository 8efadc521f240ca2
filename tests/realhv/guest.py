"""A tiny real guest for the real-hypervisor tier: Debian's cloud kernel plus a busybox initramfs.

The initramfs is the root file system: it loads a handful of modules, runs busybox ``acpid`` so the
ACPI power button powers the guest off, onlines hot-plugged CPUs, and writes markers to the serial
console so tests can see what the guest did (``XEND-GUEST-BOOT``, ``-POWEROFF``, ``-UEVENT``, ...).
"""

import contextlib
import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")  # from busybox-static: no loader needed inside the initramfs

# Loaded in this order, after their dependencies (read from each module's own .modinfo).
GUEST_MODULES = (
    "button",          # ACPI power button -> input event
    "evdev",           # /dev/input/event* for acpid
    "virtio_pci",
    "virtio_balloon",  # so memory targets really move
    "virtio_blk",      # hot-plugged disks show up as /dev/vdX
    "virtio_net",      # hot-plugged NICs show up as ethX
)

# Console markers (one per line); tests match on these.
BOOT_MARKER = "XEND-GUEST-BOOT"
READY_MARKER = "XEND-GUEST-READY"
POWEROFF_MARKER = "XEND-GUEST-POWEROFF"
UEVENT_MARKER = "XEND-GUEST-UEVENT"
ADDRESS_MARKER = "XEND-GUEST-ADDRESS"  # then the interface and its address as `ip addr` shows it
PROMPT = "xend-guest#"  # the serial console's shell prompt

INIT = f"""#!/bin/sh
# PID 1 of the xend-rest test guest.
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /run /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "{BOOT_MARKER} $(cat /proc/sys/kernel/random/boot_id)" > /dev/console
# The Debian kernel has no uevent helper: listen on netlink instead, before anything is hot-plugged.
uevent /sbin/uevent-hook &
for m in $(cat /etc/modules); do
    insmod /lib/modules/$m.ko || echo "XEND-GUEST-ERROR insmod $m" > /dev/console
done
# CPUs present at boot but offline (none normally); hot-plugged ones go through uevent-hook.
for c in /sys/devices/system/cpu/cpu[1-9]*/online; do
    [ -e "$c" ] && echo 1 > "$c" 2>/dev/null
done
# With xend.dhcp on its command line, eth0 asks for a DHCP lease (in the background, renewing).
if grep -qw xend.dhcp /proc/cmdline; then
    ip link set lo up
    udhcpc -i eth0 -s /etc/udhcpc.script -b -t 120 -T 1 >/dev/null 2>&1
fi
# Without a writable log acpid exits silently and the power button does nothing.
acpid -c /etc/acpi -l /tmp/acpid.log
echo "{READY_MARKER} cpus=$(nproc) mem_kib=$(sed -n 's/^MemTotal: *\\([0-9]*\\).*/\\1/p' /proc/meminfo)" > /dev/console
# A shell on the serial console, for the console tests; respawned when it exits.
export PS1='{PROMPT} ' HOME=/ TERM=vt100
while true; do setsid sh -c 'exec sh -i <>/dev/ttyS0 >&0 2>&1'; done
"""

# Markers written while the console's shell waits for input: on a line of their own, since the
# shell leaves its prompt and a cursor-position query (ESC [6n) without a newline. One write.
MARKER_FUNCTION = """marker() { printf '\\n%s\\n' "$1" > /dev/console; }"""

# busybox `uevent` runs this for every kernel uevent; report the ones tests care about, online new CPUs.
UEVENT_HOOK = f"""#!/bin/sh
{MARKER_FUNCTION}
case "$SUBSYSTEM:$ACTION" in
    cpu:add)
        echo 1 > /sys$DEVPATH/online 2>/dev/null
        marker "{UEVENT_MARKER} $ACTION cpu ${{DEVPATH##*/}} online=$(cat /sys$DEVPATH/online 2>/dev/null)" ;;
    cpu:remove|block:add|block:remove|net:add|net:remove)
        marker "{UEVENT_MARKER} $ACTION $SUBSYSTEM ${{DEVPATH##*/}}" ;;
esac
"""

# udhcpc runs this with what the DHCP server said: configure eth0, say so on the console (the
# guest's own `ip addr`), then talk to the router once so that the host learns the guest's MAC.
DHCP_SCRIPT = f"""#!/bin/sh
{MARKER_FUNCTION}
case "$1" in
    bound|renew)
        ifconfig "$interface" "$ip" netmask "${{subnet:-255.255.255.0}}" up
        router="${{router%% *}}"
        [ -n "$router" ] && route add default gw "$router" dev "$interface" 2>/dev/null
        set -- $(ip -o -4 addr show dev "$interface")
        marker "{ADDRESS_MARKER} $interface $4"
        [ -n "$router" ] && ping -c 3 -W 1 "$router" >/dev/null 2>&1 &
        ;;
    deconfig)
        ifconfig "$interface" 0.0.0.0 up ;;
esac
"""

# busybox acpid maps the power button to the event "PWRF/00000080" and runs ./PWRF/00000080.
POWER_BUTTON = f"""#!/bin/sh
{MARKER_FUNCTION}
marker "{POWEROFF_MARKER}"
poweroff -f
"""


@dataclass(frozen=True)
class GuestFiles:
    """A built guest: what a domain's <kernel> and <initrd> point at."""

    kernel: Path
    initrd: Path
    kernel_version: str  # e.g. 6.1.0-56-cloud-amd64


def cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "xend-rest-guest"


def current_kernel_package():
    """The concrete kernel package the metapackage points at, e.g. linux-image-6.1.0-56-cloud-amd64."""
    for attempt in range(2):
        out = subprocess.run(["apt-cache", "depends", KERNEL_METAPACKAGE],
                             capture_output=True, text=True).stdout
        match = re.search(r"Depends: (linux-image-\S+-cloud-amd64)\b", out)
        if match:
            return match.group(1)
        if attempt == 0:  # a fresh machine may not have package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise RuntimeError(f"apt-cache cannot resolve {KERNEL_METAPACKAGE}: {out!r}")


def build_guest(root=None):
    """Return the guest for the current Debian cloud kernel, building it into the cache if needed."""
    root = Path(root) if root else cache_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        package = current_kernel_package()
    except RuntimeError:
        cached = sorted(root.glob("*/initrd.img"), key=lambda p: p.stat().st_mtime)
        if not cached:
            raise
        return _load(cached[-1].parent)  # offline: the newest guest already built
    version = package[len("linux-image-"):]
    target = root / f"{version}-{_recipe_digest()}"
    if (target / "initrd.img").exists():
        return _load(target)
    with _locked(root / ".lock"):  # one builder at a time; others then find it built
        if not (target / "initrd.img").exists():
            _build(package, target)
    return _load(target)


def _load(directory):
    kernel = next(directory.glob("vmlinuz-*"))
    return GuestFiles(kernel, directory / "initrd.img", kernel.name[len("vmlinuz-"):])


def _recipe_digest():
    """Changing the init scripts, the module list or busybox gives a new cache entry."""
    digest = hashlib.sha256()
    for part in (INIT, UEVENT_HOOK, POWER_BUTTON, DHCP_SCRIPT, " ".join(GUEST_MODULES)):
        digest.update(part.encode())
    digest.update(BUSYBOX.read_bytes())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def _locked(path):
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(package, target):
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        tmp = Path(tmp)
        subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
                       cwd=tmp, check=True, capture_output=True)
        deb = next(tmp.glob("*.deb"))
        tree = tmp / "tree"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        version = package[len("linux-image-"):]
        out = tmp / "out"
        out.mkdir()
        shutil.copy(tree / "boot" / f"vmlinuz-{version}", out / f"vmlinuz-{version}")
        modules = _modules_in_load_order(tree / "lib" / "modules" / version, GUEST_MODULES)
        (out / "initrd.img").write_bytes(_initramfs(modules))
        out.rename(target)


def _modules_in_load_order(moddir, wanted):
    """[(name, uncompressed .ko bytes)], dependencies first."""
    return [(name, data) for name, _, data in _module_files_in_load_order(moddir, wanted)]


def _module_files_in_load_order(moddir, wanted):
    """[(name, path, uncompressed .ko bytes)], dependencies first."""
    files = {}
    for path in moddir.rglob("*.ko*"):
        files[re.sub(r"\.ko(\.xz|\.gz|\.zst)?$", "", path.name).replace("-", "_")] = path
    ordered, seen = [], set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        if name not in files:
            raise RuntimeError(f"kernel module {name} is not in {moddir}")
        data = _read_module(files[name])
        for dep in _modinfo(data, "depends").split(","):
            if dep:
                visit(dep.replace("-", "_"))
        ordered.append((name, files[name], data))

    for name in wanted:
        visit(name)
    return ordered


def _read_module(path):
    # busybox insmod cannot read compressed modules: decompress here.
    if path.name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".zst"):
        raise RuntimeError(f"{path}: zstd-compressed modules are not supported by this builder")
    return path.read_bytes()


def _modinfo(module, key):
    match = re.search(rb"(?:^|\0)" + key.encode() + rb"=([^\0]*)\0", module)
    return match.group(1).decode() if match else ""


def _initramfs(modules):
    cpio = _Cpio()
    for directory in ("bin", "sbin", "dev", "etc", "etc/acpi", "etc/acpi/PWRF", "lib",
                      "lib/modules", "proc", "sys", "tmp", "run"):
        cpio.add(directory, 0o40755)
    cpio.add("dev/console", 0o20600, rdev=(5, 1))  # init's stdio before devtmpfs is mounted
    cpio.add("bin/busybox", 0o100755, BUSYBOX.read_bytes())
    cpio.add("bin/sh", 0o120777, b"busybox")
    cpio.add("init", 0o100755, INIT.encode())
    cpio.add("sbin/uevent-hook", 0o100755, UEVENT_HOOK.encode())
    cpio.add("etc/acpi/PWRF/00000080", 0o100755, POWER_BUTTON.encode())
    cpio.add("etc/udhcpc.script", 0o100755, DHCP_SCRIPT.encode())
    cpio.add("etc/modules", 0o100644, "".join(f"{n}\n" for n, _ in modules).encode())
    for name, data in modules:
        cpio.add(f"lib/modules/{name}.ko", 0o100644, data)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


class _Cpio:
    """A 'newc' cpio archive, the format the kernel unpacks as initramfs (no root needed for nodes)."""

    def __init__(self):
        self._out = io.BytesIO()
        self._ino = 0

    def add(self, name, mode, data=b"", rdev=(0, 0)):
        self._ino += 1
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        self._out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self._out.write(name.encode() + b"\0")
        self._pad()
        self._out.write(data)
        self._pad()

    def finish(self):
        self.add("TRAILER!!!", 0)
        return self._out.getvalue()

    def _pad(self):
        self._out.write(b"\0" * (-self._out.tell() % 4))


def domain_xml(name, files, console, *, memory_mib=256, current_memory_mib=None,
               vcpus=2, current_vcpus=1, cmdline="", vnc=False, devices=""):
    """Domain XML for a TCG guest booting `files` directly: a shell on its serial console (a pty,
    for virDomainOpenConsole), everything it prints appended to `console`; vnc=True adds a VNC
    screen on 127.0.0.1 (a free port chosen by libvirt); `devices` is more device XML (a NIC)."""
    current_memory_mib = current_memory_mib or memory_mib
    graphics = ("\n    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"
                "\n    <video><model type='vga'/></video>") if vnc else ""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <currentMemory unit='MiB'>{current_memory_mib}</currentMemory>
  <vcpu placement='static' current='{current_vcpus}'>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(files.kernel))}</kernel>
    <initrd>{escape(str(files.initrd))}</initrd>
    <cmdline>{escape(f"console=ttyS0 quiet panic=-1 {cmdline}".strip())}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='pty'>
      <log file={quoteattr(str(console))} append='on'/>
      <target port='0'/>
    </serial>{graphics}
    <memballoon model='virtio'><stats period='1'/></memballoon>{devices}
  </devices>
</domain>
"""


class Console:
    """A guest's serial console as the file QEMU appends to; waits explain themselves on timeout."""

    def __init__(self, path, diagnostics=lambda: ""):
        self.path = Path(path)
        self.diagnostics = diagnostics

    def text(self):
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def count(self, marker):
        return sum(line.startswith(marker) for line in self.text().splitlines())

    def boots(self):
        return self.count(BOOT_MARKER)

    def wait_for(self, marker, count=1, timeout=30):
        """Wait until `marker` starts `count` console lines; return the seconds it took."""
        return wait_until(lambda: self.count(marker) >= count, timeout,
                          f"{count} x {marker!r} on the console", self.diagnostics)


def wait_until(predicate, timeout, what, diagnostics=lambda: ""):
    """Poll `predicate` every 0.1 s until true; return the seconds it took or fail saying why."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{diagnostics()}")
        time.sleep(0.1)


def typed(send, receive, timeout=30):
    """Type a command whose output differs from its echo; its output then the next prompt prove
    the guest's shell ran it."""
    token = secrets.token_hex(6)
    send(f'echo XEND-CONSOLE-$((6*7))-{token}\n'.encode())
    wanted = f'XEND-CONSOLE-42-{token}\r\n'.encode()
    seen = b''
    deadline = time.monotonic() + timeout
    while wanted not in seen or PROMPT.encode() not in seen.split(wanted, 1)[1]:
        assert time.monotonic() < deadline, f'no {wanted!r} then a prompt in {seen[-500:]!r}'
        seen += receive()
    return seen
