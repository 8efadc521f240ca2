"""Boot Xen and its dom0 in QEMU (software emulation), with xend-rest installed from its .deb.

    rig = Rig(artefacts, workdir); rig.start()   # ~30-40 s to a dom0 whose daemon answers
    rig.dom0("virsh -c xen:///system list")      # a shell command in dom0 -> Result(rc, out, err)
    rig.api.get("/libvirt/xen/nodes/json")       # HTTPS + bearer token through QEMU's port forward
    rig.unix_api.get(...)                        # the same over the unix socket, from inside dom0
    libvirt.open(rig.libvirt_uri)                # dom0's libvirtd over TLS (xen+tls://), from outside

Per boot, a small cpio rides along after the cached root (the kernel unpacks both, the later one
winning): dom0's init, the test agent, the .deb from this checkout, a TLS certificate and key made
with openssl (one test CA, realhv.libvirtd.make_pki), a tokens file and the administrator's
drop-in for xend-rest.service. The same server certificate serves xend-rest's TLS and libvirtd's
TLS listener (at libvirt's default paths in dom0); the client half stays outside.
"""

import gzip
import http.client
import json
import shlex
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from realhv import guest as realhv_guest
from realhv.libvirtd import make_pki

HERE = Path(__file__).parent
CHECKOUT = HERE.parent.parent
TOKEN = "xen-tier-admin-token-0123456789abcdef"
TLS_PORT = 8443
DROP_IN = """[Service]
# What this host adds to the shipped unit: a TLS listener for the management host, with bearer
# tokens, next to the unix socket; and the storage pool directory, writable in the sandbox.
ExecStart=
ExecStart=/usr/bin/xend-rest --config /etc/xend-rest/xend-rest.conf \\
    --listen unix:/run/xend-rest/api.sock --listen 0.0.0.0:8443 \\
    --tls-cert /etc/xend-rest/tls/server.pem --tls-key /etc/xend-rest/tls/server.key \\
    --tokens-file /etc/xend-rest/tokens
ReadWritePaths=/var/lib/xend-rest-pool
"""
POOL_DIR = "/var/lib/xend-rest-pool"
UNIX_SOCKET = "/run/xend-rest/api.sock"
LIBVIRTD_TLS_PORT = 16514
# How dom0's init starts libvirtd, and how a test starts it again: with its TLS listener.
LIBVIRTD = "libvirtd --daemon --listen --pid-file /run/libvirtd.pid"
# libvirtd's default certificate paths (libvirtd.conf's ca_file, cert_file, key_file).
LIBVIRTD_PKI = {"etc/pki/CA/cacert.pem": "cacert.pem", "etc/pki/libvirt/servercert.pem": "servercert.pem",
                "etc/pki/libvirt/private/serverkey.pem": "serverkey.pem"}


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

    def websocket(self, path, query=""):
        """A WebSocket (websockets' own client) to `path`, over TLS with the token."""
        from websockets.sync.client import connect
        return connect(f"wss://localhost:{self.port}{path}" + ("?" + query if query else ""),
                       ssl=self.context, additional_headers={"Authorization": f"Bearer {self.token}"},
                       open_timeout=60, close_timeout=10)


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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rig:
    def __init__(self, artefacts, workdir):
        self.artefacts = artefacts
        self.workdir = Path(workdir)
        self.console = self.workdir / "xen-console.log"
        self.process = None
        self.tls_port = free_port()
        self.agent_port = free_port()
        self.libvirt_port = free_port()
        self.pki = self.workdir / "pki"
        # A management host's URI for dom0: libvirt's remote protocol over TLS, through the forward.
        self.libvirt_uri = f"xen+tls://127.0.0.1:{self.libvirt_port}/system?pkipath={self.pki}"
        self.api = None
        self.unix_api = UnixClient(self)

    def start(self, timeout=180):
        started = time.monotonic()
        deb = self._build_deb()
        make_pki(self.pki)  # one CA: xend-rest's TLS and libvirtd's (both for 127.0.0.1/localhost)
        overlay = self._overlay(deb)
        initrd = self.workdir / "dom0.img"
        with open(initrd, "wb") as out:
            out.write(self.artefacts.dom0_root.read_bytes())
            out.write(b"\0" * (-out.tell() % 4))
            out.write(overlay)
        forwards = (f"hostfwd=tcp:127.0.0.1:{self.tls_port}-:{TLS_PORT},"
                    f"hostfwd=tcp:127.0.0.1:{self.agent_port}-:9000,"
                    f"hostfwd=tcp:127.0.0.1:{self.libvirt_port}-:{LIBVIRTD_TLS_PORT}")
        command = [
            "qemu-system-x86_64", "-machine", "q35", "-cpu", "qemu64,+svm", "-m", "3072",
            "-smp", "2", "-display", "none", "-no-reboot", "-monitor", "none",
            "-serial", f"file:{self.console}",
            # Xen takes a fixed share for dom0; the rest is for guests.
            "-kernel", str(self.artefacts.xen),
            "-append", "dom0_mem=1536M,max:1536M console=com1 com1=115200,8n1 loglvl=warning",
            "-initrd", f"{self.artefacts.kernel} console=hvc0 earlyprintk=xen quiet,{initrd}",
            "-netdev", f"user,id=net0,{forwards}", "-device", "virtio-net-pci,netdev=net0",
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=open(self.workdir / "qemu.out", "wb"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.api = HTTPSClient(self.tls_port, self.pki / "cacert.pem")
        self.wait(self._daemon_answers, timeout, "xend-rest answering over TLS in dom0")
        self.boot_seconds = time.monotonic() - started

    def wait(self, predicate, timeout, what):
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.process.returncode}) waiting for {what}\n"
                                     f"{self.diagnostics()}")
            return predicate()
        realhv_guest.wait_until(ready, timeout, what, self.diagnostics)

    def _daemon_answers(self):
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

    def guest_console(self, name):
        return self.dom0(f"cat /var/log/xen/console/guest-{shlex.quote(name)}.log 2>/dev/null").out

    def diagnostics(self):
        parts = [f"--- Xen/dom0 console ---\n{_tail(self.console)}"]
        try:
            logs = self.dom0("tail -n 15 /var/log/xend-rest.log /var/log/libvirt/libxl/libxl-driver.log "
                             "/var/log/libvirt/libvirtd.log 2>&1", timeout=10)
            parts.append(f"--- dom0 logs ---\n{logs.out}")
        except OSError as err:
            parts.append(f"(dom0 agent unreachable: {err})")
        return "\n".join(parts)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _build_deb(self):
        out = subprocess.run([str(CHECKOUT / "packaging" / "build-deb"), str(self.workdir / "deb")],
                             check=True, capture_output=True, text=True).stdout
        return Path(out.strip().splitlines()[-1])

    def _overlay(self, deb):
        cpio = realhv_guest._Cpio()
        for directory in ("rig", "etc", "etc/xend-rest", "etc/xend-rest/tls", "etc/systemd",
                          "etc/systemd/system", "etc/systemd/system/xend-rest.service.d", "var", "var/lib",
                          POOL_DIR.lstrip("/"), "etc/pki", "etc/pki/CA", "etc/pki/libvirt",
                          "etc/pki/libvirt/private"):
            cpio.add(directory, 0o40755)
        cpio.add("init", 0o100755, (HERE / "dom0-init.sh").read_bytes())
        cpio.add("rig/agent.py", 0o100755, (HERE / "agent.py").read_bytes())
        cpio.add("rig/xend-rest.deb", 0o100644, deb.read_bytes())
        cpio.add("etc/xend-rest/tls/server.pem", 0o100644, (self.pki / "servercert.pem").read_bytes())
        cpio.add("etc/xend-rest/tls/server.key", 0o100600, (self.pki / "serverkey.pem").read_bytes())
        cpio.add("etc/xend-rest/tokens", 0o100600, f"{TOKEN} admin xen-tier\n".encode())
        cpio.add("etc/systemd/system/xend-rest.service.d/tls.conf", 0o100644, DROP_IN.encode())
        for path, name in LIBVIRTD_PKI.items():
            cpio.add(path, 0o100600 if "private" in path else 0o100644, (self.pki / name).read_bytes())
        return gzip.compress(cpio.finish(), compresslevel=1, mtime=0)


def _tail(path, lines=60):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(cannot read {path}: {err})"
