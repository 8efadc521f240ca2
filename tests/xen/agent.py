#!/usr/bin/python3
"""TEST RIG ONLY, never on a real host: runs shell commands in dom0 for the tests, and writes the
files they hand it (certificates, tokens, drop-ins, the .deb).

POST / with a shell command as the body answers {"rc": N, "out": "...", "err": "..."}; the
header X-Timeout bounds the command (default 60 s). PUT /ABSOLUTE/PATH writes the body there
(parent directories made), with the octal mode in X-Mode (default 644), and answers 204.
QEMU forwards one loopback port of the outer machine to it, so only the tests' own machine can
reach it. It runs as a unit of its own (xen-rig-agent.service).
"""

import json
import os
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

PORT = 9000


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        command = self.rfile.read(int(self.headers["Content-Length"])).decode()
        try:
            done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, stdin=subprocess.DEVNULL,
                                  timeout=float(self.headers.get("X-Timeout", 60)))
            result = {"rc": done.returncode, "out": done.stdout.decode(errors="replace"),
                      "err": done.stderr.decode(errors="replace")}
        except subprocess.TimeoutExpired as err:
            result = {"rc": -1, "out": (err.stdout or b"").decode(errors="replace"),
                      "err": f"timed out after {err.timeout} s"}
        body = json.dumps(result).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):
        path = unquote(self.path)
        data = self.rfile.read(int(self.headers["Content-Length"]))
        mode = int(self.headers.get("X-Mode", "644"), 8)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
