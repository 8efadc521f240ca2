"""A libvirtd answering qemu:///system for the real-hypervisor tier: reuse one, or start our own.

libvirtd is a shared resource on a machine: a running one is reused as it is, and only the one
started here is ever stopped.
"""

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt

URI = "qemu:///system"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
# Root QEMU without a security driver or virtlogd: all a machine without systemd can offer.
QEMU_SETTINGS = {
    "user": '"root"',
    "group": '"root"',
    "security_driver": '"none"',
    "stdio_handler": '"file"',
}
QEMU_USER = "libvirt-qemu"  # the QEMU driver refuses to initialise without it, even as root
RUNTIME_DIRS = ("/run/libvirt", "/var/log/libvirt", "/var/lib/libvirt", "/var/cache/libvirt")
REQUIRED_BINARIES = ("libvirtd", "qemu-system-x86_64", "qemu-img")
SYSTEM_LOG = Path("/var/log/libvirt/libvirtd.log")


@dataclass
class Libvirtd:
    """The daemon the tests talk to; `process` is set only when this session started it."""

    uri: str
    log: Path = None
    process: subprocess.Popen = None

    def log_tail(self, lines=40):
        log = self.log or SYSTEM_LOG
        return tail(log, lines) if log.exists() else f"(no libvirtd log at {log})"

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def missing_binaries():
    return [name for name in REQUIRED_BINARIES if not shutil.which(name, path=_sbin_path())]


def answers(uri=URI):
    """True when something answers `uri` (a probe, so libvirt's own error print is silenced)."""
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    try:
        libvirt.open(uri).close()
        return True
    except libvirt.libvirtError:
        return False


def ensure_libvirtd(workdir, timeout=30):
    """Reuse a libvirtd answering qemu:///system, or configure the host and start one."""
    if answers():
        return Libvirtd(URI)
    if os.geteuid() != 0:
        raise PermissionError("no libvirtd answers qemu:///system and only root can start one")
    configure_host()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "libvirtd.log"
    conf = workdir / "libvirtd.conf"
    # Our own daemon config (the system one may be absent): just a log file the tests can quote.
    conf.write_text(f'log_outputs = "3:file:{log}"\n')
    with open(workdir / "libvirtd.stderr", "wb") as stderr:
        process = subprocess.Popen(
            [shutil.which("libvirtd", path=_sbin_path()), "--config", str(conf)],
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
            start_new_session=True,  # a ^C to pytest must not kill it before teardown
        )
    daemon = Libvirtd(URI, log, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers():
            return daemon
        if process.poll() is not None:
            if answers():  # lost a race with another starter: theirs is as good
                return Libvirtd(URI)
            break
        time.sleep(0.1)
    daemon.stop()
    raise RuntimeError(
        f"libvirtd did not answer {URI} within {timeout} s (exit {process.poll()})\n"
        f"--- stderr ---\n{tail(workdir / 'libvirtd.stderr')}\n--- log ---\n{daemon.log_tail()}")


def configure_host():
    """What the Debian packages' maintainer scripts and systemd would otherwise have provided."""
    for directory in RUNTIME_DIRS:
        os.makedirs(directory, exist_ok=True)
    if subprocess.run(["getent", "passwd", QEMU_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/var/lib/libvirt",
                        "--shell", "/usr/sbin/nologin", QEMU_USER], check=True)
    QEMU_CONF.parent.mkdir(parents=True, exist_ok=True)
    original = QEMU_CONF.read_text() if QEMU_CONF.exists() else ""
    updated = qemu_conf_with_settings(original)
    if updated != original:
        QEMU_CONF.write_text(updated)


def qemu_conf_with_settings(text):
    """`text` with our settings in force: libvirt takes the first of duplicate keys, so comment
    out the others, keeping every other setting as it was."""
    current = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            current.setdefault(key.strip(), value.strip())
    if all(current.get(k) == v for k, v in QEMU_SETTINGS.items()):
        return text
    kept = []
    for line in text.splitlines():
        key = line.partition("=")[0].strip()
        kept.append(f"# (xend-rest tests) {line}" if key in QEMU_SETTINGS else line)
    block = ["", "# Added by xend-rest's real-hypervisor tests (tests/realhv/libvirtd.py)."]
    block += [f"{k} = {v}" for k, v in QEMU_SETTINGS.items()]
    return "\n".join(kept + block) + "\n"


def tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError as err:
        return f"(cannot read {path}: {err})"


def _sbin_path():
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
