"""Boot Xen and a Debian dom0 (systemd) in QEMU (software emulation), and install xend-rest there
as an administrator does: `apt-get install ./xend-rest_*.deb` from dom0's local repository.

    rig = Rig(artefacts, workdir); rig.start()   # boot, provision, install: a daemon that answers
    rig.dom0("virsh -c xen:///system list")      # a shell command in dom0 -> Result(rc, out, err)
    rig.api.get("/libvirt/xen/nodes/json")       # HTTPS + bearer token through QEMU's port forward
    rig.unix_api.get(...)                        # the same over the unix socket, from inside dom0
    libvirt.open(rig.libvirt_uri)                # dom0's libvirtd over TLS (xen+tls://), from outside
    rig.reboot()                                 # systemctl reboot; QEMU starts again on the same disk

    a, b = link_pair()                           # a second Xen host, linked to the first:
    host_b = Rig(artefacts, workdir_b, name="dom0-b", link=b, ca=rig.pki, install=False)

dom0 boots a copy-on-write overlay of the cached root image, so what a run changes survives a
reboot of dom0 and is gone with the run. Once dom0's test agent answers, the rig hands it what an
administrator would bring (one test CA, realhv.libvirtd.make_pki: the server certificate serves
xend-rest's TLS and libvirtd's TLS socket at libvirt's default paths; a tokens file; the drop-in
for xend-rest.service that adds the TLS listener; the .deb built from this checkout), enables
libvirtd's TLS socket, and installs the package.

Two rigs make two Xen hosts for migrations: each QEMU has a second NIC whose frames travel as UDP
datagrams on this machine's loopback to the other's (a point-to-point link, `Link`), each dom0
has a host name and an SMBIOS system UUID of its own, and certificates from one CA (a server
certificate also for its link address, a client certificate for its libvirtd to dial the other's).
"""

import http.client
import json
import re
import shlex
import socket
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from realhv import guest as realhv_guest
from realhv.libvirtd import make_pki

from .artefacts import UPLINK_MAC

HERE = Path(__file__).parent
CHECKOUT = HERE.parent.parent
TOKEN = "xen-tier-admin-token-0123456789abcdef"
TLS_PORT = 8443
DROP_IN_PATH = "/etc/systemd/system/xend-rest.service.d/tls.conf"
DROP_IN = """[Service]
# What this host adds to the shipped unit: a TLS listener for the management host, with bearer
# tokens, next to the unix socket.
ExecStart=
ExecStart=/usr/bin/xend-rest --config /etc/xend-rest/xend-rest.conf \\
    --listen unix:/run/xend-rest/api.sock --listen 0.0.0.0:8443 \\
    --tls-cert /etc/xend-rest/tls/server.pem --tls-key /etc/xend-rest/tls/server.key \\
    --tokens-file /etc/xend-rest/tokens
"""
# What docs/xen.md tells a dom0's administrator to add: on Debian 12, libvirt-guests is ordered
# after libvirtd's socket only, so at shutdown libvirtd (socket-activated) stops beside it and its
# guests are never shut down ("Can't connect to default. Skipping."), just ended with dom0.
LIBVIRT_GUESTS_DROP_IN_PATH = "/etc/systemd/system/libvirt-guests.service.d/after-libvirtd.conf"
LIBVIRT_GUESTS_DROP_IN = """[Unit]
# Stop after libvirtd has been asked nothing more: shut the guests down while it still runs.
After=libvirtd.service
"""
POOL_DIR = "/var/lib/xend-rest-pool"
UNIX_SOCKET = "/run/xend-rest/api.sock"
LIBVIRTD_TLS_PORT = 16514
# libvirtd's default certificate paths (libvirtd.conf's ca_file, cert_file, key_file).
LIBVIRTD_PKI = {"/etc/pki/CA/cacert.pem": "cacert.pem", "/etc/pki/libvirt/servercert.pem": "servercert.pem",
                "/etc/pki/libvirt/private/serverkey.pem": "serverkey.pem",
                # the client certificate libvirtd presents to another host's libvirtd (migrations)
                "/etc/pki/libvirt/clientcert.pem": "clientcert.pem",
                "/etc/pki/libvirt/private/clientkey.pem": "clientkey.pem"}
# The link between two dom0s: its network, and systemd-networkd's file for it in dom0.
LINK_NETWORK = "10.98.0"
LINK_NETWORK_FILE = "/etc/systemd/network/05-link.network"
DEB_IN_DOM0 = "/root/xend-rest_all.deb"
# In the image, for the first boot only (artefacts.DOM0_FILES): Xen's start waits for libvirtd.
XEN_FIRST_BOOT_DROP_IN = "/etc/systemd/system/xen.service.d/rig-first-boot.conf"
# libvirtd and all its sockets: stopping them all makes an outage (no socket to activate it).
LIBVIRTD_UNITS = "libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket libvirtd-tls.socket libvirtd.service"
# Xen's share of the machine for dom0; the rest is for guests.
XEN_COMMAND_LINE = "dom0_mem=1536M,max:1536M console=com1 com1=115200,8n1 loglvl=warning"
DOM0_COMMAND_LINE = "console=hvc0 earlyprintk=xen quiet"


@dataclass(frozen=True)
class Link:
    """One end of the point-to-point link between two dom0s: a second virtio NIC whose Ethernet
    frames QEMU sends as UDP datagrams from `port` to `peer_port` on 127.0.0.1 (QEMU's socket
    netdev), dom0's `address` on it (/24), found in dom0 by its MAC."""
    address: str
    mac: str
    port: int
    peer_port: int


def link_pair():
    """Both ends of a link: (host A's, host B's), on two free UDP ports of this machine."""
    ports = [free_port(socket.SOCK_DGRAM) for _ in range(2)]
    return tuple(Link(f"{LINK_NETWORK}.{n}", f"52:54:00:98:00:{n:02x}", ports[n - 1], ports[2 - n])
                 for n in (1, 2))


@dataclass
class Result:
    rc: int
    out: str
    err: str


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        is_json = headers.get("Content-Type", "").startswith("application/json")
        self.json = json.loads(body) if body and is_json else None

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


class HTTPSClient:
    """The management host: HTTPS to the forwarded port, checking the test CA, with a token."""

    def __init__(self, port, ca_file, token=TOKEN, timeout=120):
        self.port = port
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.token = token
        self.timeout = timeout

    def request(self, method, path, body=None, query="", headers=None, timeout=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        conn = http.client.HTTPSConnection("localhost", self.port, context=self.context,
                                           timeout=timeout or self.timeout)
        all_headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                       "Content-Length": str(len(body or b""))}
        all_headers.update(headers or {})
        try:
            conn.request(method, path + ("?" + query if query else ""), body=body or b"", headers=all_headers)
            response = conn.getresponse()
            return Response(response.status, dict(response.getheaders()), response.read())
        finally:
            conn.close()

    def get(self, path, query="", **kw):
        return self.request("GET", path, query=query, **kw)

    def post(self, path, body=None, query="", **kw):
        return self.request("POST", path, body=body, query=query, **kw)

    def delete(self, path, query="", **kw):
        return self.request("DELETE", path, query=query, **kw)

    def websocket(self, path, query="", **options):
        """A WebSocket (websockets' own client) to `path`, over TLS with the token."""
        from websockets.sync.client import connect
        return connect(f"wss://localhost:{self.port}{path}" + ("?" + query if query else ""),
                       ssl=self.context, additional_headers={"Authorization": f"Bearer {self.token}"},
                       open_timeout=60, close_timeout=10, **options)


class UnixClient:
    """A dom0 administrator: curl on xend-rest's unix socket inside dom0."""

    def __init__(self, rig):
        self.rig = rig

    def request(self, method, path, body=None, query=""):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        data = f"--data-binary {shlex.quote(body)} -H 'Content-Type: application/json'" if body else ""
        url = shlex.quote(f"http://localhost{path}" + ("?" + query if query else ""))
        result = self.rig.dom0(f"curl -sS -i --unix-socket {UNIX_SOCKET} -X {method} {data} {url}")
        assert result.rc == 0, result
        return from_curl(result.out)

    def get(self, path, query=""):
        return self.request("GET", path, query=query)

    def post(self, path, body=None, query=""):
        return self.request("POST", path, body=body, query=query)


def from_curl(output):
    """The Response in what `curl -i` printed (its CRLFs kept)."""
    head, _, payload = output.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return Response(int(lines[0].split()[1]), headers, payload.encode())


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rig:
    def __init__(self, artefacts, workdir, name="dom0", link=None, ca=None, install=True, smp=2):
        """`name`: dom0's host name; `link`: its end of a link to another dom0 (or none); `ca`:
        the PKI directory of another rig whose CA signs this one's certificates (else a CA of
        its own); `install`: install xend-rest (a host that only hosts guests needs libvirtd)."""
        self.artefacts = artefacts
        self.workdir = Path(workdir)
        self.name = name
        self.link = link
        self.ca = ca
        self.installs = install
        self.smp = smp
        self.host_uuid = str(uuid.uuid4())  # QEMU's SMBIOS system UUID (-uuid)
        self.console = self.workdir / "xen-console.log"
        self.disk = self.workdir / "dom0.qcow2"
        self.process = None
        self.tls_port = free_port()
        self.agent_port = free_port()
        self.libvirt_port = free_port()
        self.pki = self.workdir / "pki"
        # A management host's URI for dom0: libvirt's remote protocol over TLS, through the forward.
        self.libvirt_uri = f"xen+tls://127.0.0.1:{self.libvirt_port}/system?pkipath={self.pki}"
        self.api = None  # once the PKI is made
        self.unix_api = UnixClient(self)
        self.timings = {}  # phase: seconds, for the session's summary

    def start(self):
        """Boot dom0 from a fresh overlay, provision it and install the package from its .deb.

        On this first boot libvirtd starts before Xen's init script has finished (the image's
        rig-only drop-in for xen.service waits for it), as it can on any Debian dom0 without the
        ordering xend-rest's package ships for libvirtd: the rig records what libvirt and the
        freshly installed daemon answer then (`first_boot`), before restarting libvirtd with its
        TLS socket, now ordered after xen.service by the package's drop-in."""
        started = time.monotonic()
        self.deb = self._build_deb() if self.installs else None
        # one CA: xend-rest's TLS and libvirtd's (both for 127.0.0.1/localhost, and for the link)
        make_pki(self.pki, ca=self.ca, sans=[f"DNS:{self.name}"] + ([f"IP:{self.link.address}"] if self.link else []))
        self.timings["deb+pki"] = time.monotonic() - started
        self.api = HTTPSClient(self.tls_port, self.pki / "cacert.pem")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.artefacts.dom0_root),
                        "-F", "raw", str(self.disk)], check=True)
        self.boot()
        started = time.monotonic()
        result = self.dom0(f"systemctl start xen.service && rm {XEN_FIRST_BOOT_DROP_IN} && systemctl daemon-reload "
                           "&& virsh -c xen:///system uri", timeout=300)
        self.first_boot = {"virsh": result}
        self.provision()
        self.timings["provision"] = time.monotonic() - started
        started = time.monotonic()
        if not self.installs:
            result = self.dom0("systemctl stop libvirtd.service && systemctl enable --now libvirtd-tls.socket "
                               "&& systemctl start libvirtd.service", timeout=120)
            assert result.rc == 0, result
            self.timings["libvirtd"] = time.monotonic() - started
            return
        self.install(DEB_IN_DOM0, self.deb, wait=False)
        self.first_boot["api"] = self.unix_api.get("/libvirt/xen/nodes/json")
        # libvirt's error code and domain for it, as the daemon sees them (python3-libvirt came
        # with the package): what the daemon's answer is decided from
        self.first_boot["error"] = self.dom0(
            "python3 -c 'import libvirt\ntry:\n libvirt.open(\"xen:///system\")\n"
            "except libvirt.libvirtError as e:\n print(e.get_error_code(), e.get_error_domain())' 2>/dev/null")
        self.first_boot["libvirtd"] = self.unit("libvirtd.service", "ExecMainStartTimestampMonotonic")
        self.first_boot["xen"] = self.unit("xen.service", "ActiveEnterTimestampMonotonic")
        # libvirtd takes its sockets from systemd when it starts, and systemd refuses to start a
        # socket whose service runs: stop it, enable the TLS socket, start it again (libvirtd(8)).
        result = self.dom0("systemctl stop libvirtd.service && systemctl enable --now libvirtd-tls.socket "
                           "&& systemctl start libvirtd.service", timeout=120)
        assert result.rc == 0, result
        self.wait(self.daemon_answers, 120, "xend-rest answering over TLS in dom0")
        self.timings["install"] = time.monotonic() - started

    def boot(self, timeout=300):
        """Start QEMU on dom0's disk and wait for the test agent: systemd has reached it."""
        forwards = (f"hostfwd=tcp:127.0.0.1:{self.tls_port}-:{TLS_PORT},"
                    f"hostfwd=tcp:127.0.0.1:{self.agent_port}-:9000,"
                    f"hostfwd=tcp:127.0.0.1:{self.libvirt_port}-:{LIBVIRTD_TLS_PORT}")
        command = [
            # +npt: Xen finds HAP (nested paging), which HVM and PVH guests need.
            "qemu-system-x86_64", "-machine", "q35", "-cpu", "qemu64,+svm,+npt", "-m", "3072",
            "-smp", str(self.smp), "-display", "none", "-no-reboot", "-monitor", "none",
            "-uuid", self.host_uuid,
            "-chardev", f"file,id=console,path={self.console},append=on", "-serial", "chardev:console",
            "-kernel", str(self.artefacts.xen), "-append", XEN_COMMAND_LINE,
            "-initrd", f"{self.artefacts.kernel} {DOM0_COMMAND_LINE},{self.artefacts.initrd}",
            "-drive", f"file={self.disk},if=virtio,format=qcow2,cache=unsafe",
            # No way out of the rig (restrict=on); the forwards still come in.
            "-netdev", f"user,id=net0,restrict=on,{forwards}", "-device", f"virtio-net-pci,netdev=net0,mac={UPLINK_MAC}",
        ]
        if self.link:
            command += ["-netdev", f"socket,id=link,udp=127.0.0.1:{self.link.peer_port},"
                                   f"localaddr=127.0.0.1:{self.link.port}",
                        "-device", f"virtio-net-pci,netdev=link,mac={self.link.mac}"]
        started = time.monotonic()
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=open(self.workdir / "qemu.out", "ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.wait(self._agent_answers, timeout, "dom0's test agent (systemd in dom0 reaching it)")
        self.timings.setdefault("boot", []).append(time.monotonic() - started)

    def reboot(self, timeout=600):
        """Reboot dom0 as its administrator does (systemctl reboot): Xen resets the machine, QEMU
        exits (-no-reboot) and starts again on the same disk, as the hardware would."""
        started = time.monotonic()
        assert self.dom0("systemctl reboot").rc == 0
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"dom0 did not shut down within {timeout} s\n{self.diagnostics()}")
        self.timings.setdefault("shutdown", []).append(time.monotonic() - started)
        self.boot()

    def provision(self):
        """What an administrator brings to dom0 for xend-rest and libvirtd's TLS socket:
        certificates, a tokens file, xend-rest's drop-in, the pool directory of the tests; its
        host name (known to itself only: the hosts resolve no other names), its link's address."""
        if self.name != "dom0":  # the image's name
            assert self.dom0(f"hostnamectl hostname {self.name} && "
                             f"sed -i 's/^127.0.1.1 .*/127.0.1.1 {self.name}/' /etc/hosts").rc == 0
        if self.link:
            self.put(LINK_NETWORK_FILE, (f"[Match]\nMACAddress={self.link.mac}\n\n[Network]\n"
                                         f"Address={self.link.address}/24\nLinkLocalAddressing=no\n\n"
                                         "[Link]\nRequiredForOnline=no\n").encode())
            assert self.dom0("networkctl reload").rc == 0
        for path, name in LIBVIRTD_PKI.items():
            self.put(path, (self.pki / name).read_bytes(), 0o600 if "private" in path else 0o644)
        self.put("/etc/xend-rest/tls/server.pem", (self.pki / "servercert.pem").read_bytes())
        self.put("/etc/xend-rest/tls/server.key", (self.pki / "serverkey.pem").read_bytes(), 0o600)
        self.put("/etc/xend-rest/tokens", f"{TOKEN} admin xen-tier\n".encode(), 0o600)
        self.put(DROP_IN_PATH, DROP_IN.encode())
        self.put(LIBVIRT_GUESTS_DROP_IN_PATH, LIBVIRT_GUESTS_DROP_IN.encode())
        assert self.dom0(f"systemctl daemon-reload && mkdir -p {POOL_DIR}").rc == 0

    def install(self, path, deb, wait=True, timeout=300):
        """The .deb copied to dom0 and installed with apt-get, its Depends from the local
        repository; the postinst starts the unit (wait: until it answers over TLS)."""
        self.put(path, deb.read_bytes())
        result = self.dom0(f"apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q {path}",
                           timeout=timeout)
        assert result.rc == 0, result
        if wait:
            self.wait(self.daemon_answers, 120, "xend-rest answering over TLS in dom0")
        return result

    def wait(self, predicate, timeout, what):
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.process.returncode}) waiting for {what}\n"
                                     f"{self.diagnostics()}")
            return predicate()
        return realhv_guest.wait_until(ready, timeout, what, self.diagnostics)

    def _agent_answers(self):
        try:
            return self.dom0("true", timeout=10).rc == 0
        except (OSError, http.client.HTTPException, ValueError):
            time.sleep(1)
            return False

    def daemon_answers(self):
        """True once xend-rest answers a List with 200 over TLS."""
        try:
            return self.api.get("/libvirt/xen/nodes/json", timeout=5).status == 200
        except (OSError, http.client.HTTPException):
            time.sleep(1)
            return False

    def dom0(self, command, timeout=60):
        """Run a shell command in dom0 through the test agent."""
        conn = http.client.HTTPConnection("127.0.0.1", self.agent_port, timeout=timeout + 10)
        try:
            conn.request("POST", "/", body=command.encode(), headers={"X-Timeout": str(timeout)})
            return Result(**json.loads(conn.getresponse().read()))
        finally:
            conn.close()

    def put(self, path, data, mode=0o644):
        """Write a file in dom0 (parents made) through the test agent."""
        conn = http.client.HTTPConnection("127.0.0.1", self.agent_port, timeout=120)
        try:
            conn.request("PUT", path, body=data, headers={"X-Mode": f"{mode:o}"})
            response = conn.getresponse()
            response.read()
            assert response.status == 204, (path, response.status)
        finally:
            conn.close()

    def unit(self, name, *properties):
        """{property: value} of a systemd unit in dom0 (systemctl show)."""
        out = self.dom0(f"systemctl show {shlex.quote(name)} " + " ".join(f"-p {p}" for p in properties)).out
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def guest_console(self, name):
        return self.dom0(f"cat /var/log/xen/console/guest-{shlex.quote(name)}.log 2>/dev/null").out

    def triple_faults(self, since):
        """How many triple faults Xen logged (`xl dmesg`) of domains whose id is `since` or
        later: a guest's domain then, and those libxl made when it restarted it."""
        logged = re.findall(r"\bd(\d+)v\d+ Triple fault", self.dom0("xl dmesg", timeout=20).out)
        return sum(int(domid) >= since for domid in logged)

    def diagnostics(self):
        parts = [f"--- Xen/dom0 console ---\n{_tail(self.console)}"]
        try:
            # A triple fault of a PVH or HVM guest is this rig's (QEMU's emulated nested paging),
            # not Xen's or libvirt's: say so when it happened.
            logs = self.dom0("systemctl --no-pager --failed; journalctl -b --no-pager -n 40 -u xend-rest "
                             "-u libvirtd -u xen -u xendomains; tail -n 15 /var/log/libvirt/libxl/libxl-driver.log; "
                             "xl dmesg | grep 'Triple fault'", timeout=20)
            parts.append(f"--- dom0 units and journal ---\n{logs.out}{logs.err}")
        except (OSError, http.client.HTTPException, ValueError) as err:
            parts.append(f"(dom0 agent unreachable: {err})")
        return "\n".join(parts)

    def link_interface(self):
        """The name dom0 gave the link's NIC (found by its MAC)."""
        out = self.dom0("ip -o link").out
        return next(line.split(": ")[1].split("@")[0] for line in out.splitlines() if self.link.mac in line)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _build_deb(self):
        out = subprocess.run([str(CHECKOUT / "packaging" / "build-deb"), str(self.workdir / "deb")],
                             check=True, capture_output=True, text=True).stdout
        return Path(out.strip().splitlines()[-1])


def _tail(path, lines=60):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(cannot read {path}: {err})"
