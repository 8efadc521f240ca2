#!/usr/bin/python3
"""TEST RIG ONLY, never on a real host: runs shell commands in dom0 for the tests outside.

POST / with a shell command as the body answers {"rc": N, "out": "...", "err": "..."}; the
header X-Timeout bounds the command (default 60 s). QEMU forwards one loopback port of the
outer machine to it, so only the tests' own machine can reach it.
"""

import json
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = 9000


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        command = self.rfile.read(int(self.headers["Content-Length"])).decode()
        try:
            done = subprocess.run(["/bin/sh", "-c", command], capture_output=True,
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

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
