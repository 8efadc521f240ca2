"""A small threaded HTTP/1.1 WSGI server (stdlib only) with systemd notification.

One selector thread accepts connections, watches idle keep-alive connections and
accumulates each request head without blocking; only a connection whose head is
complete is handed, through a bounded queue, to one of a bounded pool of workers
(started on demand, so an idle daemon stays small). So
slow, idle or half-open clients cost a file descriptor, never a worker thread.

Request bodies must carry a Content-Length: a chunked request body is refused with
411 Length Required (our API only takes small JSON bodies).
"""

import collections
import json
import logging
import os
import queue
import re
import selectors
import signal
import socket
import ssl
import stat
import threading
import time
from email.utils import formatdate
from urllib.parse import unquote

from . import defaults

log = logging.getLogger("xend_rest.server")
access_log = logging.getLogger("xend_rest.access")

LISTEN_HELP = "expected HOST:PORT, [IPV6]:PORT or unix:/path"
STATUSES_WITHOUT_BODY = ("204", "304")
MAX_DRAIN = 64 * 1024  # unread request body we still read to keep a connection alive
RECV_SIZE = 65536
# What the selector needs to know of a head to read its body too (the worker parses it fully).
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,18})[ \t]*\r\n", re.IGNORECASE)
EXPECT_CONTINUE = re.compile(rb"\r\nexpect:[ \t]*100-continue[ \t]*\r\n", re.IGNORECASE)


def parse_listen(spec):
    """Parse 'HOST:PORT', '[IPV6]:PORT' or 'unix:/path' into (family, address); ValueError if bad."""
    if spec.startswith("unix:"):
        path = spec[len("unix:"):]
        if not path:
            raise ValueError(f"invalid listen address {spec!r}: empty unix socket path")
        return socket.AF_UNIX, path
    host, sep, port = spec.rpartition(":")
    family = socket.AF_INET
    if host.startswith("[") and host.endswith("]"):
        host, family = host[1:-1], socket.AF_INET6
    if not sep or not host or ":" in host and family == socket.AF_INET:
        raise ValueError(f"invalid listen address {spec!r}: {LISTEN_HELP}")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid listen address {spec!r}: bad port {port!r}")
    return family, (host, int(port))


def format_address(address):
    """A bound address (from getsockname()) in --listen syntax."""
    if isinstance(address, str):
        return "unix:" + address
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sd_notify(state):
    """Send state (e.g. 'READY=1') to systemd if $NOTIFY_SOCKET is set; True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":  # an abstract socket: a leading NUL byte for the kernel
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as err:
        log.warning("cannot notify systemd at %s: %s", address, err)
        return False
    return True


def _bind(spec, backlog, socket_mode=0o660, socket_gid=-1):
    family, address = parse_listen(spec)
    if family != socket.AF_UNIX:
        return socket.create_server(address, family=family, backlog=backlog)
    try:
        if stat.S_ISSOCK(os.stat(address).st_mode):
            os.unlink(address)  # stale socket from a previous run; bind() would fail on it
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # nobody else may connect between bind() and chmod()
    try:
        sock.bind(address)
        os.chown(address, -1, socket_gid)
        os.chmod(address, socket_mode)  # connecting needs write access: mode says who may
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(umask)
    return sock


def _json_error(status, message, code):
    """A complete JSON error response that closes the connection, and its body's length."""
    body = json.dumps({"message": message, "code": code}).encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nDate: {_http_date()}\r\n\r\n")
    return head.encode() + body, len(body)


_date_cache = [0, ""]


def _http_date():
    now = int(time.time())
    if now != _date_cache[0]:  # formatting costs more than the whole header block
        _date_cache[:] = now, formatdate(now, usegmt=True)
    return _date_cache[1]


class BadRequest(Exception):
    """Malformed HTTP: answered with a JSON error and the connection closed."""

    def __init__(self, message, status="400 Bad Request", code="bad_request"):
        super().__init__(message)
        self.status, self.code = status, code


class _ErrorStream:
    """wsgi.errors: what the application writes goes to logging, not to stderr."""

    def write(self, text):
        if text.strip():
            log.error("%s", text.rstrip())

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass


ERROR_STREAM = _ErrorStream()


class _Connection:
    __slots__ = ("sock", "buf", "deadline", "client", "client_port", "server_name", "server_port",
                 "transport", "handshaking", "client_cn", "awaiting_body")

    def __init__(self, sock, client, client_port, server_name, server_port, transport="tcp"):
        self.sock, self.client, self.client_port = sock, client, client_port
        self.server_name, self.server_port = server_name, server_port
        self.buf = bytearray()
        self.deadline = 0.0
        self.transport = transport  # unix, tcp or tls: xend_rest.transport for the app
        self.handshaking = transport == "tls"
        self.client_cn = None  # the verified client certificate's CN
        self.awaiting_body = False  # the selector is reading a body after a complete head

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class _Input:
    """wsgi.input: at most Content-Length bytes, first from what the selector buffered."""

    def __init__(self, sock, buf, length, expect_continue, timeout=30.0, deadline=float("inf")):
        self._sock = sock
        self._buf = buf[:length]
        self.extra = buf[length:]  # pipelined bytes that belong to the next request
        self.remaining = length - len(self._buf)  # still on the socket
        self.expect_continue = expect_continue and self.remaining > 0
        self._timeout, self._deadline = timeout, deadline

    def _fill(self, size):
        if self.expect_continue:  # the client waits for this before sending the body
            self._sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.expect_continue = False
        # Each read may wait `timeout`, and all of them together only until the deadline (if
        # any): a small body trickled a byte at a time cannot hold a worker for long.
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request body did not arrive within the request timeout")
        self._sock.settimeout(min(self._timeout, left))
        try:
            data = self._sock.recv(min(max(size, 1), self.remaining, RECV_SIZE))
        finally:
            self._sock.settimeout(self._timeout)
        if not data:
            raise ConnectionError("client closed the connection before the end of the body")
        self.remaining -= len(data)
        self._buf += data

    def read(self, size=-1):
        if size is None or size < 0:
            size = len(self._buf) + self.remaining
        while len(self._buf) < size and self.remaining:
            self._fill(size - len(self._buf))
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readline(self, size=-1):
        while True:
            end = self._buf.find(b"\n")
            if end >= 0 or not self.remaining or 0 <= size <= len(self._buf):
                break
            self._fill(RECV_SIZE)
        size_to_line = end + 1 if end >= 0 else len(self._buf)
        return self.read(size_to_line if size is None or size < 0 else min(size, size_to_line))

    def readlines(self, hint=-1):
        return list(self)

    def __iter__(self):
        return iter(self.readline, b"")


class _Response:
    """start_response() and the writing of status, headers and body to the socket."""

    def __init__(self, sock, head_only, keep_alive, http10):
        self.sock, self.head_only, self.keep_alive, self.http10 = sock, head_only, keep_alive, http10
        self.status = self.headers = None
        self.sent = False
        self.nbytes = 0

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice")
        self.status, self.headers = status, headers
        return self.write

    def write(self, data, total=None):
        """Send data, preceded by the head on the first call; total is the whole body's length if known."""
        if self.sent:
            if not self.head_only:
                self.sock.sendall(data)
                self.nbytes += len(data)
            return
        if self.status is None:
            raise AssertionError("write() before start_response()")
        status = self.status
        no_body = status[:3] in STATUSES_WITHOUT_BODY or status[0] == "1"
        head = [f"HTTP/1.1 {status}\r\n"]
        has_length = False
        for name, value in self.headers:
            lower = name.lower()
            if lower == "connection":
                continue  # ours to decide
            has_length = has_length or lower == "content-length"
            head.append(f"{name}: {value}\r\n")
        if has_length or no_body:
            pass
        elif total is not None:
            head.append(f"Content-Length: {total}\r\n")
        else:
            self.keep_alive = False  # the body ends when the connection does
        if not self.keep_alive:
            head.append("Connection: close\r\n")
        elif self.http10:
            head.append("Connection: keep-alive\r\n")
        head.append(f"Date: {_http_date()}\r\n\r\n")
        if self.head_only or no_body:
            data = b""
        head = "".join(head).encode("latin-1")  # may fail: then nothing is sent yet, a 500 still can be
        self.sent = True
        self.sock.sendall(head + data)  # one send: no Nagle stall
        self.nbytes += len(data)


class Server:
    """Serve a WSGI app on listeners ('HOST:PORT', '[::1]:PORT', 'unix:/path')."""

    def __init__(self, app, listeners, workers=defaults.WORKERS, queue_size=defaults.QUEUE_SIZE,
                 timeout=defaults.TIMEOUT, keepalive_timeout=defaults.KEEPALIVE_TIMEOUT,
                 grace=defaults.GRACE, max_head=defaults.MAX_HEAD, backlog=defaults.BACKLOG,
                 request_timeout=defaults.REQUEST_TIMEOUT, tls=None, socket_mode=defaults.SOCKET_MODE,
                 socket_gid=-1, max_body=defaults.MAX_BODY, on_shutdown=None):
        """tls: an ssl.SSLContext for every TCP listener; request_timeout: the deadline of a
        body of up to max_body (larger ones are streamed, `timeout` per read); socket_mode, socket_gid: who may connect to unix listeners; on_shutdown: called
        once shutdown begins, to end long-lived responses (event streams)."""
        self.app = app
        self.request_timeout, self.tls, self.max_body = request_timeout, tls, max_body
        self.socket_mode, self.socket_gid = socket_mode, socket_gid
        self.on_shutdown = on_shutdown
        self.listeners = list(listeners)
        for spec in self.listeners:
            parse_listen(spec)  # fail early, before anything is bound
        self.workers, self.timeout, self.keepalive_timeout = workers, timeout, keepalive_timeout
        self.grace, self.max_head, self.backlog = grace, max_head, backlog
        self.addresses = []  # bound addresses, from getsockname(): tuples or unix paths
        self._queue = queue.Queue(queue_size)
        self._returned = collections.deque()  # keep-alive connections back from workers
        self._active = set()  # connections a worker is serving, cut after the grace period
        self._sockets = []
        self._threads = []  # the selector, then the workers started so far
        self._idle = 0  # workers waiting on the queue (or about to)
        self._idle_lock = threading.Lock()
        self._stopping = False
        self._stop_requested = False
        self._selector = None
        self._wake_r = self._wake_w = None

    # -- life cycle --------------------------------------------------------------

    def start(self):
        """Bind every listener and start the threads; return once listening."""
        try:
            for spec in self.listeners:
                sock = _bind(spec, self.backlog, self.socket_mode, self.socket_gid)
                self._sockets.append(sock)
                self.addresses.append(sock.getsockname())
        except OSError:
            for sock in self._sockets:
                sock.close()
            raise
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        for sock in self._sockets:
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, "listen")
        self._threads = [threading.Thread(target=self._select_loop, name="xend-rest-selector", daemon=True)]
        self._threads[0].start()
        log.info("listening on %s", ", ".join(map(format_address, self.addresses)))

    def serve_forever(self):
        """start(), notify systemd, serve until SIGTERM/SIGINT or stop(), then shut down."""
        received = []

        def on_signal(signum, frame):
            received.append(signal.Signals(signum).name)
            self.stop()
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            sd_notify("READY=1")
            # A plain flag and a short sleep: a signal handler must not take a lock
            # (Event.set, logging) that the interrupted main thread may be holding.
            while not self._stop_requested:
                time.sleep(0.1)
            log.info("%s, shutting down", f"received {received[0]}" if received else "asked to stop")
            sd_notify("STOPPING=1")
            self.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self):
        """Ask serve_forever() to shut down (safe from a signal handler or another thread)."""
        self._stop_requested = True

    def shutdown(self, grace=None):
        """Stop accepting, let in-flight and queued requests finish within grace seconds, close."""
        if self._stopping or self._selector is None:
            return
        grace = self.grace if grace is None else grace
        deadline = time.monotonic() + grace
        self._stopping = True
        self._wake()
        self._threads[0].join()  # the selector closes listeners and idle connections
        if self.on_shutdown:
            self.on_shutdown()
        workers = self._threads[1:]
        for _ in workers:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                break
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        for conn in list(self._active):  # past the grace period: cut blocked I/O short
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in workers:
            thread.join(1.0)
        while self._returned:  # handed back by a worker as the selector was exiting
            self._returned.popleft().close()
        self._wake_r.close()
        self._wake_w.close()
        log.info("stopped")

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except BlockingIOError:
            pass  # the selector already has wake-ups pending

    # -- selector thread ---------------------------------------------------------

    def _select_loop(self):
        selector = self._selector
        interval = min(1.0, self.timeout, self.keepalive_timeout) / 2  # deadline resolution
        next_sweep = time.monotonic() + interval
        while not self._stopping:
            for key, _ in selector.select(timeout=interval):
                if key.data == "listen":
                    self._accept(key.fileobj)
                elif key.data == "wake":
                    self._drain_wake()
                elif key.data.handshaking:
                    self._handshake(key.data)
                else:
                    self._read_head(key.data)
            now = time.monotonic()
            if now >= next_sweep:  # close idle and too-slow connections
                next_sweep = now + interval
                for key in list(selector.get_map().values()):
                    if isinstance(key.data, _Connection) and key.data.deadline < now:
                        if key.data.awaiting_body:  # the head was fine: say why we hang up
                            self._selector.unregister(key.fileobj)
                            self._reject(key.data, "408 Request Timeout",
                                         "the request body did not arrive in time", "timeout")
                        else:
                            self._drop(key.data)
        for key in list(selector.get_map().values()):
            if isinstance(key.data, _Connection):
                key.data.close()
        for sock in self._sockets:
            family, address = sock.family, sock.getsockname()
            sock.close()
            if family == socket.AF_UNIX:
                try:
                    os.unlink(address)
                except OSError:
                    pass
        selector.close()

    def _accept(self, listener):
        for _ in range(64):  # several per wake-up under load, but never starve the others
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. EMFILE: keep serving the connections we have
                log.error("accept failed: %s", err)
                return
            sock.setblocking(False)
            transport = "unix"
            if sock.family == socket.AF_UNIX:
                client, client_port, server_name, server_port = "unix", "", listener.getsockname(), ""
            else:
                # Without it a small response on a keep-alive connection can wait 40 ms for an ACK.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                host, port = listener.getsockname()[:2]
                client, client_port, server_name, server_port = peer[0], str(peer[1]), host, str(port)
                transport = "tcp"
                if self.tls is not None:  # the handshake happens in _handshake(), never here
                    sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                    transport = "tls"
            conn = _Connection(sock, client, client_port, server_name, server_port, transport)
            conn.deadline = time.monotonic() + self.timeout  # for the handshake and the head
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _handshake(self, conn):
        """One non-blocking step of a TLS handshake; the sweep drops it if it takes too long."""
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        except OSError as err:  # SSLError included: bad or missing client certificate
            log.info("TLS handshake with %s failed: %s", conn.client, err)
            self._drop(conn)
            return
        conn.handshaking = False
        subject = dict(field[0] for field in (conn.sock.getpeercert() or {}).get("subject", ()))
        conn.client_cn = subject.get("commonName")
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        deadline = time.monotonic() + self.keepalive_timeout
        while self._returned:
            conn = self._returned.popleft()
            conn.deadline = deadline
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            if conn.transport == "tls" and conn.sock.pending():  # already decrypted: no event
                self._read_head(conn)

    def _read_head(self, conn):
        try:
            data = conn.sock.recv(RECV_SIZE)
            while conn.transport == "tls" and conn.sock.pending():  # decrypted, not on the fd
                data += conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        if not conn.buf:  # a new head has begun: the client gets `timeout` to finish it
            conn.deadline = time.monotonic() + self.timeout
        conn.buf += data
        if self._complete(conn):
            self._selector.unregister(conn.sock)
            try:
                conn.awaiting_body = False
                self._queue.put_nowait(conn)
                self._add_worker_if_all_busy()
            except queue.Full:
                log.warning("all workers busy and queue full, refusing %s", conn.client)
                self._reject(conn, "503 Service Unavailable", "server busy", "busy")
        elif len(conn.buf) > self.max_head and not conn.awaiting_body:
            self._selector.unregister(conn.sock)
            self._reject(conn, "431 Request Header Fields Too Large", "request head too large",
                         "bad_request")

    def _complete(self, conn):
        """Whether a worker may take the request: its head, and its body unless that is larger
        than max_body (a worker streams those), are here. So a client that sends a head and then
        stalls its body costs a descriptor, not a worker."""
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        found = CONTENT_LENGTH.search(conn.buf, 0, end + 2)
        length = int(found.group(1)) if found else 0
        if length > self.max_body or len(conn.buf) >= end + 4 + length:
            return True
        if not conn.awaiting_body:  # the head just completed: the body gets its own deadline
            conn.awaiting_body = True
            conn.deadline = time.monotonic() + self.request_timeout
            if EXPECT_CONTINUE.search(conn.buf, 0, end + 2):
                try:
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")  # small: fits the buffer
                except OSError:
                    pass
        return False

    def _reject(self, conn, status, message, code):
        try:
            conn.sock.send(_json_error(status, message, code)[0])  # small: fits the socket buffer
        except OSError:
            pass
        conn.close()

    def _drop(self, conn):
        self._selector.unregister(conn.sock)
        conn.close()

    # -- workers -----------------------------------------------------------------

    def _add_worker_if_all_busy(self):
        """Workers start on demand, up to `workers`: an idle daemon keeps a small footprint."""
        with self._idle_lock:
            if self._idle or len(self._threads) > self.workers:
                return
            self._idle += 1  # counted now, so the next request does not start another one
        thread = threading.Thread(target=self._worker, name=f"xend-rest-worker-{len(self._threads)}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def _worker(self):
        while True:
            conn = self._queue.get()
            with self._idle_lock:
                self._idle -= 1
            if conn is None:
                return
            self._active.add(conn)
            keep = False
            try:
                # A client that stalls in the middle of its body holds this worker up to `timeout`.
                conn.sock.settimeout(self.timeout)
                keep = self._serve(conn)
            except OSError as err:  # client gone, timed out, or connection cut at shutdown
                log.debug("connection from %s: %s", conn.client, err)
            except Exception:
                log.exception("unexpected error serving %s", conn.client)
            finally:
                self._active.discard(conn)
            if keep and not self._stopping:
                conn.sock.setblocking(False)
                self._returned.append(conn)
                self._wake()
            else:
                conn.close()
            with self._idle_lock:
                self._idle += 1

    def _serve(self, conn):
        """Serve every complete request head buffered on conn; True to keep the connection."""
        while True:
            if not self._serve_one(conn) or self._stopping:
                return False
            if b"\r\n\r\n" not in conn.buf:  # no pipelined request waiting: back to the selector
                return True

    def _serve_one(self, conn):
        start = time.perf_counter()
        buf = conn.buf
        end = buf.find(b"\r\n\r\n")
        head = buf[:end].decode("latin-1").lstrip("\r\n")
        method = target = "-"
        try:
            environ, keep_alive, length = self._parse(conn, head)
            method, target = environ["REQUEST_METHOD"], environ["RAW_URI"]
        except BadRequest as err:
            if head.count(" ", 0, head.find("\r\n")) == 2:
                method, target = head.split(" ", 2)[:2]
            response, nbytes = _json_error(err.status, str(err), err.code)
            conn.sock.sendall(response)
            self._log(method, target, err.status[:3], nbytes, start, conn)
            return False
        # A body of up to max_body gets the request's deadline (it is usually here already). A
        # larger one is streamed (an image upload) for as long as it keeps coming: each read
        # still waits at most `timeout`, so a client that stalls is cut off all the same.
        deadline = time.monotonic() + self.request_timeout if length <= self.max_body else float("inf")
        body = _Input(conn.sock, buf[end + 4:], length,
                      environ.get("HTTP_EXPECT", "").lower() == "100-continue"
                      and environ["SERVER_PROTOCOL"] == "HTTP/1.1",
                      self.timeout, deadline)
        environ["wsgi.input"] = body
        response = _Response(conn.sock, method == "HEAD", keep_alive and not self._stopping,
                             environ["SERVER_PROTOCOL"] == "HTTP/1.0")
        self._run_app(environ, response)
        conn.buf = body.extra
        keep = response.keep_alive
        if keep and body.remaining:  # unread body: drain a little of it, else give up
            if body.expect_continue or body.remaining > MAX_DRAIN:
                keep = False
            else:
                body.read()
        self._log(method, target, response.status[:3], response.nbytes, start, conn)
        return keep

    def _run_app(self, environ, response):
        try:
            result = self.app(environ, response.start_response)
            try:
                if type(result) in (list, tuple):  # the usual case: one send with a Content-Length
                    data = b"".join(result)
                    response.write(data, len(data) if not response.sent else None)
                else:
                    for data in result:
                        if data:
                            response.write(data)
                    if not response.sent:
                        response.write(b"", 0)
            finally:
                if hasattr(result, "close"):
                    result.close()
        except OSError:
            raise  # the client's socket, not the application
        except Exception:
            log.exception("unhandled exception in the application for %s %s",
                          environ["REQUEST_METHOD"], environ["RAW_URI"])
            response.keep_alive = False
            if response.sent:
                raise ConnectionAbortedError("response cut short by an application error")
            response.status = "500 Internal Server Error"
            response.headers = [("Content-Type", "application/json")]
            body = json.dumps({"message": "internal server error", "code": "internal_error"}).encode()
            response.write(body, len(body))

    def _parse(self, conn, head):
        """The PEP 3333 environ (minus wsgi.input), keep-alive, and the body length of a request head."""
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise BadRequest("malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            if not version.startswith("HTTP/"):
                raise BadRequest("malformed request line")
            raise BadRequest("HTTP version not supported", "505 HTTP Version Not Supported")
        if not method.isalpha() or not method.isupper():
            raise BadRequest("malformed request method")
        if target.startswith(("http://", "https://")):  # absolute form: keep only the path
            target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
        elif not target.startswith("/") and target != "*":
            raise BadRequest("malformed request target")
        path, _, query = target.partition("?")
        environ = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, "latin-1"),  # PEP 3333: bytes as latin-1 characters
            "QUERY_STRING": query,
            "RAW_URI": target,
            "SERVER_PROTOCOL": version,
            "SERVER_NAME": conn.server_name,
            "SERVER_PORT": conn.server_port,
            "REMOTE_ADDR": conn.client,
            "REMOTE_PORT": conn.client_port,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if conn.transport == "tls" else "http",
            "wsgi.errors": ERROR_STREAM,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "xend_rest.transport": conn.transport,  # what security.Guard authenticates by
        }
        if conn.client_cn is not None:
            environ["xend_rest.client_cn"] = conn.client_cn
        # Parsed by hand rather than with http.client.parse_headers: the email parser costs
        # more than the rest of the request, and accepts obsolete line folding we refuse.
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or line[0] in " \t":
                raise BadRequest("malformed header line")
            if "_" in name:
                continue  # X_Foo and X-Foo would both be HTTP_X_FOO: drop the ambiguous one
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            value = value.strip(" \t")
            if key in environ:
                if key == "CONTENT_LENGTH":
                    raise BadRequest("several Content-Length headers")
                value = environ[key] + ", " + value
            environ[key] = value
        if "HTTP_TRANSFER_ENCODING" in environ:
            raise BadRequest("a request body needs a Content-Length (chunked bodies are not supported)",
                             "411 Length Required", "length_required")
        length = environ.get("CONTENT_LENGTH", "0")
        if not length.isdigit() or not length.isascii():
            raise BadRequest("malformed Content-Length")
        connection = environ.get("HTTP_CONNECTION", "").lower()
        if version == "HTTP/1.1":
            keep_alive = "close" not in connection
        else:
            keep_alive = "keep-alive" in connection
        return environ, keep_alive, int(length)

    def _log(self, method, target, status, nbytes, start, conn):
        if access_log.isEnabledFor(logging.INFO):  # skip the formatting when nobody listens
            access_log.info("%s %s %s %d %.2fms %s", method, target, status, nbytes,
                            (time.perf_counter() - start) * 1000, conn.client)
