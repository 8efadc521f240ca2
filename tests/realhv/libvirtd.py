"""A libvirtd answering qemu:///system for the real-hypervisor tier: reuse one, or start our own.

libvirtd is a shared resource on a machine: a running one is reused as it is, and only the one
started here is ever stopped.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import warnings
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
# Where the libvirtd started here logs: kept after the session, for a post-mortem.
OUR_LOG = Path("/var/log/libvirt/libvirtd-xend-rest-tests.log")


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
    log = OUR_LOG
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


# What a private libvirtd must not share with the system one: its drivers' state, runtime files
# and definitions (else it would adopt the shared daemon's QEMU processes and autostart its
# networks). tmpfs over each, inside a mount namespace of its own.
PRIVATE_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/etc/libvirt")
HOLDER_SCRIPT = """set -e
for d in {dirs}; do mkdir -p "$d"; mount -t tmpfs -o mode=0755 xend-rest-tests "$d"; done
mkdir -p /etc/libvirt
cp {qemu_conf} /etc/libvirt/qemu.conf
{network}
echo ready
exec sleep infinity
"""


class PrivateLibvirtd:
    """A libvirtd (QEMU driver) of the caller's own, to kill, stop and restart without disturbing
    anyone: its socket in `workdir`, its state on tmpfs in a private mount namespace.

    A holder process keeps the namespace (and so the state and the QEMU processes) alive while
    libvirtd itself is killed and started again, as systemd would restart it.

    With `tcp_port`, it also listens on 127.0.0.1 for `tcp_uri` (qemu+tcp://): unencrypted and
    without authentication, which only a test on loopback may do. With `tls_port`, for
    `tls_uri` (qemu+tls://), with certificates made for the occasion (`make_pki`): both sides
    verify the other's.

    With `network`, it runs in a network namespace of its own too (its QEMU processes with it;
    only `lo` at first): the networks it starts (bridges, dnsmasq, NAT rules) never touch the
    machine's network. `run_in_network(*command)` runs a command there (`ip neigh`),
    `python_in_network(code)` a Python program (a daemon that reads that namespace's neighbour
    table). `address` is its one address once `join` links it to another's: two of them are then
    two hosts, each listening on its own address, with distinct `host_uuid`s (as libvirt tells
    hosts apart). Its socket stays reachable from here: a unix socket is a file.
    """

    def __init__(self, workdir, tcp_port=None, tls_port=None, network=False, address="127.0.0.1",
                 host_uuid=None):
        self.workdir = Path(workdir)
        self.socket = self.workdir / "sock" / "libvirt-sock"
        self.uri = f"qemu+unix:///system?socket={self.socket}"
        self.tcp_port, self.tls_port = tcp_port, tls_port
        self.network, self.address, self.host_uuid = network, address, host_uuid
        self.tcp_uri = f"qemu+tcp://{address}:{tcp_port}/system" if tcp_port else None
        self.pki = self.workdir / "pki"
        self.tls_uri = (f"qemu+tls://127.0.0.1:{tls_port}/system?pkipath={self.pki}"
                        if tls_port else None)
        self.log = self.workdir / "libvirtd.log"
        self.holder = None
        self.process = None

    def start_namespaces(self):
        """The namespaces (and their holder) without libvirtd: to `join` before it listens."""
        if self.holder is None:
            self._start_holder()

    def start(self, timeout=30):
        self.start_namespaces()
        conf = self.workdir / "libvirtd.conf"
        settings = f'unix_sock_dir = "{self.socket.parent}"\nlog_outputs = "3:file:{self.log}"\n'
        if self.host_uuid:
            settings += f'host_uuid = "{self.host_uuid}"\n'
        listen = []
        if self.tcp_port or self.tls_port:
            settings += (f'listen_addr = "{self.address}"\n'
                         f'listen_tcp = {int(bool(self.tcp_port))}\n'
                         f'listen_tls = {int(bool(self.tls_port))}\n')
            listen = ["--listen"]
        if self.tcp_port:
            settings += f'tcp_port = "{self.tcp_port}"\nauth_tcp = "none"\n'
        if self.tls_port:
            if not (self.pki / "cacert.pem").exists():
                make_pki(self.pki)
            settings += (f'tls_port = "{self.tls_port}"\nauth_tls = "none"\n'
                         f'ca_file = "{self.pki}/cacert.pem"\n'
                         f'cert_file = "{self.pki}/servercert.pem"\n'
                         f'key_file = "{self.pki}/serverkey.pem"\n')
        conf.write_text(settings)
        with open(self.workdir / "libvirtd.stderr", "ab") as stderr:
            self.process = subprocess.Popen(
                ["nsenter", "-t", str(self.holder.pid), "-m", *self._network_flag(),
                 shutil.which("libvirtd", path=_sbin_path()), "-f", str(conf),
                 "-p", str(self.workdir / "libvirtd.pid"), *listen],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + timeout
        # (in a network namespace of its own, its TCP listener is for the other hosts only)
        listeners = (self.uri,) if self.network else (self.uri, self.tcp_uri, self.tls_uri)
        while not all(answers(uri) for uri in listeners if uri):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private libvirtd did not answer {self.uri}\n"
                                   f"{tail(self.workdir / 'libvirtd.stderr')}\n{tail(self.log)}")
            time.sleep(0.1)

    def signal(self, signum):
        self.process.send_signal(signum)

    def _network_flag(self):
        return ["-n"] if self.network else []

    def run_in_network(self, *command, **options):
        """subprocess.run(command) in the daemon's network namespace (its own, see network)."""
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), *self._network_flag(),
                               *command], **options)

    def python_in_network(self, code, *args, timeout=120):
        """Run Python `code` (this interpreter, this checkout) in the daemon's network namespace;
        its standard output."""
        root = Path(__file__).resolve().parents[2]
        result = self.run_in_network(
            sys.executable, "-c", code, *args, capture_output=True, text=True, timeout=timeout,
            cwd=root, env=dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{root / 'tests'}"))
        assert result.returncode == 0, result.stderr
        return result.stdout

    def resume(self, settle=2):
        """SIGCONT; if libvirtd dies of it within `settle` s, start it again, as systemd's
        Restart=on-failure does for libvirtd.service, and return how it died (else None).

        libvirt 9.0's libvirtd now and then segfaults in its event loop
        (virEventGLibTimeoutRemoveIdle) when it wakes to find that a client gave up on it while
        it was stopped: libvirt's bug, seen in CI and in dmesg here, not the client's."""
        self.signal(signal.SIGCONT)
        try:
            code = self.process.wait(settle)
        except subprocess.TimeoutExpired:
            return None
        warnings.warn(f"libvirtd died on SIGCONT (exit {code}), a libvirt bug; started it again")
        self.start()
        return code

    def kill(self):
        self.signal(signal.SIGKILL)
        self.process.wait()

    def remove_domains(self, names):
        """Destroy and undefine a test's domains, starting libvirtd again if the test left it dead
        (the daemon may also have been restarted meanwhile: a connection of its own)."""
        if self.process.poll() is not None:
            self.start()
        conn = libvirt.open(self.uri)
        for name in names:
            domain = conn.lookupByName(name)
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        conn.close()

    def close(self):
        """Stop libvirtd, then every process left in the namespace (QEMU), then the holder."""
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGCONT)
            self.kill()
        if self.holder is not None:
            # QEMU may have a mount namespace of its own (qemu.conf's namespaces): in a network
            # namespace of ours, it shares that one
            kinds = ("mnt", "net") if self.network else ("mnt",)
            for kind in kinds:
                namespace = os.readlink(f"/proc/{self.holder.pid}/ns/{kind}")
                for pid in _pids_in_namespace(namespace, kind):
                    if pid != self.holder.pid:
                        _kill_quietly(pid)
            self.holder.kill()
            self.holder.wait()
            self.holder = None

    def _start_holder(self):
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        qemu_conf = self.workdir / "qemu.conf"
        qemu_conf.write_text(qemu_conf_with_settings(
            QEMU_CONF.read_text() if QEMU_CONF.exists() else ""))
        script = HOLDER_SCRIPT.format(dirs=" ".join(PRIVATE_DIRS), qemu_conf=qemu_conf,
                                      network="ip link set lo up" if self.network else "")
        self.holder = subprocess.Popen(
            ["unshare", "--mount", *(["--net"] if self.network else []), "--propagation",
             "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        if self.holder.stdout.readline() != b"ready\n":
            error = self.holder.stderr.read().decode(errors="replace")
            self.holder.wait()
            self.holder = None
            raise RuntimeError(f"cannot set up a private mount namespace: {error}")


def join(first, second, prefix=24):
    """A veth pair between two PrivateLibvirtds started with network=True, each end up with its
    daemon's address (and its loopback up): one link between two hosts."""
    ends = [f"xrt{secrets.token_hex(3)}{side}" for side in "ab"]
    subprocess.run(["ip", "link", "add", ends[0], "type", "veth", "peer", "name", ends[1]],
                   check=True, capture_output=True)
    for daemon, end in zip((first, second), ends):
        pid = str(daemon.holder.pid)
        subprocess.run(["ip", "link", "set", end, "netns", pid], check=True, capture_output=True)
        for command in (["ip", "link", "set", "lo", "up"],
                        ["ip", "addr", "add", f"{daemon.address}/{prefix}", "dev", end],
                        ["ip", "link", "set", end, "up"]):
            subprocess.run(["nsenter", "-t", pid, "-n", *command], check=True,
                           capture_output=True)


def make_pki(directory, sans=(), ca=None):
    """A throwaway CA, a server certificate for 127.0.0.1 and a client one, named as libvirt
    looks for them in a `pkipath` directory. Made at test time: no key is ever committed.
    `sans`: more subjectAltNames of the server certificate (`IP:10.0.0.2`, `DNS:host`); `ca`:
    the directory of an earlier make_pki whose CA signs these (copied here) instead of a new one."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    if ca:
        for name in ("ca.key", "cacert.pem"):
            shutil.copy(Path(ca) / name, directory / name)
    else:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/O=xend-rest tests/CN=libvirt test CA", "-keyout", "ca.key",
                "-out", "cacert.pem")
    (directory / "server.ext").write_text(
        f"subjectAltName={','.join(('IP:127.0.0.1', 'DNS:localhost', *sans))}\n"
        "extendedKeyUsage=serverAuth\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, common_name in (("server", "localhost"), ("client", "xend-rest")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj",
                f"/O=xend-rest tests/CN={common_name}", "-keyout", f"{name}key.pem",
                "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "cacert.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
                "-out", f"{name}cert.pem")


def _pids_in_namespace(namespace, kind="mnt"):
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/{kind}") == namespace:
                    yield int(entry)
            except OSError:
                pass  # gone meanwhile


def _kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
