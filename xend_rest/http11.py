"""HTTP/1.1 framing: a request head into a PEP 3333 environ, wsgi.input, the response writer,
and protocol errors. Nothing here owns a thread or a selector: the server (server.py) calls it.

Request bodies must carry a Content-Length: a chunked request body is refused with 411 Length
Required (our API only takes small JSON bodies and image uploads of a known size).
"""
import logging
import re
import ssl
import sys
import time
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote

from . import accesslog, defaults
from .errors import HTTPError
from .headers import content_length

log = logging.getLogger('xend_rest.server')

RECV_SIZE = 65536
STATUSES_WITHOUT_BODY = ('204', '304')
CONTINUE = b'HTTP/1.1 100 Continue\r\n\r\n'
# A line ends with LF, a CR before it ignored (RFC 9112 2.2): the head ends at an empty line.
HEAD_END = re.compile(rb'\n\r?\n')
# Control characters but HTAB, and a CR that does not end a line (RFC 9110 5.5).
CONTROL = re.compile(rb'[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)')
FIRST_LINE = re.compile(rb'[\r\n]*([^\n]*)')  # the request line, after any empty lines
# What an incomplete head can begin with: empty lines, then a method and a space.
REQUEST_START = re.compile(rb'[\r\n]*[A-Z]{0,32}(?: |\Z)')


class ProtocolError(HTTPError):
    """Malformed or unacceptable HTTP (400, 411, 431, 505...): answered, then the connection closed."""

    def __init__(self, message, status=400, code='bad_request'):
        super().__init__(status, message, code)


def status_line(status):
    """'431 Request Header Fields Too Large' for 431."""
    return f'{status} {HTTPStatus(status).phrase}'


_date_cache = [0, '']


def http_date():
    now = int(time.time())
    if now != _date_cache[0]:  # formatting costs more than the whole header block
        _date_cache[:] = now, formatdate(now, usegmt=True)
    return _date_cache[1]


def error_response(err):
    """A complete JSON answer for an HTTPError that closes the connection, and its body's length."""
    body = err.payload()
    extra = ''.join(f'{name}: {value}\r\n' for name, value in err.headers)
    head = (f'HTTP/1.1 {status_line(err.status)}\r\nContent-Type: {defaults.JSON}\r\n'
            f'Content-Length: {len(body)}\r\n{extra}Connection: close\r\nDate: {http_date()}\r\n\r\n')
    return head.encode('latin-1') + body, len(body)


class _ErrorStream:
    """wsgi.errors: what the application writes goes to logging, not to stderr."""

    def write(self, text):
        if text.strip():  # it may quote a request: kept on its line
            log.error('%s', accesslog.printable_text(text.rstrip()))

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass


ERROR_STREAM = _ErrorStream()


class Request:
    """A parsed request head: its environ (without wsgi.input), where its body starts, its length."""
    __slots__ = ('environ', 'keep_alive', 'length', 'body_start', 'expect_continue')

    def __init__(self, environ, keep_alive, length, body_start, expect_continue):
        self.environ, self.keep_alive, self.length = environ, keep_alive, length
        self.body_start, self.expect_continue = body_start, expect_continue


def find_head(buf):
    """The end of the request head in buf and where the body starts, or None while incomplete."""
    found = HEAD_END.search(buf)
    return None if found is None else (found.start() + 1, found.end())


def check_partial_head(buf, max_head):
    """ProtocolError as soon as an incomplete head cannot become a request we serve: too large,
    a request line that is not HTTP/1.x (HTTP/0.9), or bytes no request starts with (a TLS
    ClientHello on a plain listener). So such a client is answered at once, never left to time out."""
    line_end = buf.find(b'\n')
    if line_end < 0:
        if len(buf) > max_head:
            raise ProtocolError('request line too long', 414, 'uri_too_long')
        if not REQUEST_START.match(buf):
            raise ProtocolError('not an HTTP/1.x request')
        return
    if not buf[:line_end].strip(b'\r'):
        return  # an empty line before the request line: allowed (RFC 9112 2.2)
    _request_line(buf[:line_end].decode('latin-1').strip('\r\n'))
    if len(buf) > max_head:
        raise ProtocolError('request head too large', 431, 'head_too_large')


def parse_request(buf, found, base, max_head=defaults.MAX_HEAD):
    """The Request whose head buf holds, as found by find_head(); ProtocolError if malformed."""
    end, body_start = found
    if end > max_head:  # which part is too large decides the status (RFC 9112 3, RFC 6585 5)
        if buf.find(b'\n', 0, end) > max_head:
            raise ProtocolError('request line too long', 414, 'uri_too_long')
        raise ProtocolError('request head too large', 431, 'head_too_large')
    if CONTROL.search(buf, 0, end):
        raise ProtocolError('a control character in the request head')
    # Every CR is followed by LF (CONTROL said so): each line ends with LF or CRLF.
    lines = buf[:end].decode('latin-1').lstrip('\r\n').replace('\r\n', '\n').split('\n')[:-1]
    environ = base.copy()
    method, target, version = _request_line(lines[0] if lines else '')
    path, _, query = target.partition('?')
    environ.update({
        'REQUEST_METHOD': method,
        'PATH_INFO': unquote(path, 'latin-1'),  # PEP 3333: bytes as latin-1 characters
        'QUERY_STRING': query,
        'RAW_URI': target,  # undecoded, as gunicorn and uwsgi give it: %2F stays in its segment
        'REQUEST_URI': target,
        'SERVER_PROTOCOL': version,
    })
    _header_fields(lines, environ)
    return _framed(environ, body_start)


def _framed(environ, body_start):
    """The Request, once the header fields say how its body is framed and that it is complete."""
    version = environ['SERVER_PROTOCOL']
    if 'HTTP_TRANSFER_ENCODING' in environ:
        raise ProtocolError('a request body needs a Content-Length (chunked bodies are not supported)',
                            411, 'length_required')
    if environ.get('CONTENT_LENGTH') == '':  # absent is fine, empty is not
        raise ProtocolError('malformed Content-Length')
    length = content_length(environ.get('CONTENT_LENGTH')) or 0
    if version == 'HTTP/1.1' and 'HTTP_HOST' not in environ:
        raise ProtocolError('an HTTP/1.1 request needs a Host header')
    connection = environ.get('HTTP_CONNECTION', '').lower()
    if version == 'HTTP/1.1':
        keep_alive = 'close' not in connection
    else:
        keep_alive = 'keep-alive' in connection
    expect_continue = (version == 'HTTP/1.1'
                       and environ.get('HTTP_EXPECT', '').lower() == '100-continue')
    return Request(environ, keep_alive, length, body_start, expect_continue)


def logged_target(environ):
    """A served request's target as logs show it: as the app says (environ['xend_rest.
    log_target'], where it hides credentials), else as sent."""
    return environ.get('xend_rest.log_target') or environ['RAW_URI']


def logged_request(environ):
    """'METHOD TARGET' of a served request for a log line, each part printable."""
    return (f"{accesslog.printable(environ['REQUEST_METHOD'], accesslog.REQUEST_LINE)} "
            f"{accesslog.printable(logged_target(environ), accesslog.REQUEST_LINE)}")


def request_line_of(buf):
    """(method, target) of the request line that begins buf, as sent, for a request the server
    refuses: ('-', the whole line) for one that is not three parts (or has not ended)."""
    line = FIRST_LINE.match(buf).group(1).decode('latin-1').rstrip('\r')
    parts = line.split(' ')
    return (parts[0], parts[1]) if len(parts) == 3 else ('-', line)


def _request_line(line):
    parts = line.split(' ')
    if len(parts) != 3:
        raise ProtocolError('malformed request line')
    method, target, version = parts
    if version not in ('HTTP/1.1', 'HTTP/1.0'):
        if not version.startswith('HTTP/'):
            raise ProtocolError('malformed request line')
        raise ProtocolError('HTTP version not supported', 505, 'version_not_supported')
    if not method.isalpha() or not method.isupper():
        raise ProtocolError('malformed request method')
    if target.startswith(('http://', 'https://')):  # absolute form: keep only the path
        target = '/' + target.split('/', 3)[3] if target.count('/') >= 3 else '/'
    elif not target.startswith('/') and target != '*':
        raise ProtocolError('malformed request target')
    return method, target, version


def _header_fields(lines, environ):
    """Header fields into HTTP_* keys, several of one name joined with ', '.

    Parsed by hand rather than with http.client.parse_headers: the email parser costs more than
    the rest of the request, and accepts obsolete line folding we refuse."""
    for line in lines[1:]:
        name, sep, value = line.partition(':')
        if not sep or not name or name != name.strip() or line[0] in ' \t':
            raise ProtocolError('malformed header line')
        if '_' in name:
            continue  # X_Foo and X-Foo would both be HTTP_X_FOO: drop the ambiguous one
        key = name.upper().replace('-', '_')
        if key not in ('CONTENT_TYPE', 'CONTENT_LENGTH'):
            key = 'HTTP_' + key
        value = value.strip(' \t')
        if key in environ:
            if key in ('CONTENT_LENGTH', 'HTTP_HOST'):
                raise ProtocolError(f'several {name} headers')
            value = environ[key] + ', ' + value
        environ[key] = value


def send(sock, data, timeout):
    """sendall() on a non-blocking socket, waiting up to `timeout` for each part that does not
    fit at once. A socket with a timeout polls before every send and recv: one system call
    more, and one more hand-over of the GIL, for the usual small answer that fits at once."""
    try:
        sent = sock.send(data)
    except (BlockingIOError, ssl.SSLWantWriteError):
        sent = 0
    if sent < len(data):
        sock.settimeout(timeout)
        try:
            sock.sendall(memoryview(data)[sent:])
        finally:
            sock.settimeout(0)


class Input:
    """wsgi.input: at most Content-Length bytes, first from what the server buffered; the
    socket is non-blocking, each read waits up to `timeout`."""

    def __init__(self, sock, buf, length, expect_continue, timeout=defaults.TIMEOUT,
                 deadline=float('inf')):
        self._sock = sock
        self._buf = buf[:length]
        self.extra = buf[length:]  # pipelined bytes that belong to the next request
        self.remaining = length - len(self._buf)  # still on the socket
        self.expect_continue = expect_continue and self.remaining > 0
        self._timeout, self._deadline = timeout, deadline

    def _fill(self, size):
        if self.expect_continue:  # the client waits for this before sending the body
            send(self._sock, CONTINUE, self._timeout)
            self.expect_continue = False
        # Each read may wait `timeout`, and all of them together only until the deadline (if
        # any): a small body trickled a byte at a time cannot hold a worker for long.
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError('the request body did not arrive within the request timeout')
        self._sock.settimeout(min(self._timeout, left))
        try:
            data = self._sock.recv(min(max(size, 1), self.remaining, RECV_SIZE))
        finally:
            self._sock.settimeout(0)
        if not data:
            raise ConnectionError('client closed the connection before the end of the body')
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
            end = self._buf.find(b'\n')
            if end >= 0 or not self.remaining or 0 <= size <= len(self._buf):
                break
            self._fill(RECV_SIZE)
        size_to_line = end + 1 if end >= 0 else len(self._buf)
        return self.read(size_to_line if size is None or size < 0 else min(size, size_to_line))

    def readlines(self, hint=-1):
        return list(self)

    def __iter__(self):
        return iter(self.readline, b'')


class Response:
    """start_response(), and the answer's bytes: queued by write(), sent by send_more() as the
    socket takes them, never waiting for it. An app's iterable is taken a part at a time, as the
    previous part is sent: a client that reads slowly costs the part that waits, not a thread."""

    def __init__(self, sock, environ, keep_alive):
        self.sock, self.environ, self.keep_alive = sock, environ, keep_alive
        self.head_only = environ['REQUEST_METHOD'] == 'HEAD'
        self.http10 = environ['SERVER_PROTOCOL'] == 'HTTP/1.0'
        self.status = self.headers = None
        self.sent = False  # the head is queued: the status can no longer change
        self.nbytes = 0
        self._out = []  # memoryviews of what is queued, in order
        self._result = self._parts = None  # the app's iterable and its iterator, until exhausted

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError('start_response() called twice')
        self.status, self.headers = status, headers
        return self.write

    def write(self, data, total=None):
        """Queue data, preceded by the head on the first call; total is the whole body's length if known."""
        if self.sent:
            if not self.head_only and data:
                self._out.append(memoryview(data))
                self.nbytes += len(data)
            return
        if self.status is None:
            raise AssertionError('write() before start_response()')
        no_body = self.status[:3] in STATUSES_WITHOUT_BODY or self.status[0] == '1'
        head = self._head(no_body, total)
        if self.head_only or no_body:
            data = b''
        self.sent = True
        self._out.append(memoryview(head + data))  # one send: no Nagle stall
        self.nbytes += len(data)

    def unsent(self):
        """Bytes queued and not yet sent."""
        return sum(len(part) for part in self._out)

    def send_more(self):
        """Send what the socket takes now, taking the app's next parts as it goes: True once
        the whole answer is sent, False when the socket is full (OSError: the client is gone)."""
        while True:
            while self._out:
                try:
                    sent = self.sock.send(self._out[0])
                except (BlockingIOError, ssl.SSLWantWriteError):
                    return False
                if sent < len(self._out[0]):
                    self._out[0] = self._out[0][sent:]
                else:
                    del self._out[0]
            if self._parts is None:
                return True
            self._next_part()

    def take(self, result):
        """The app's answer: a list is queued at once (with its Content-Length), another
        iterable a part at a time by send_more()."""
        if type(result) in (list, tuple):  # the usual case: one send with a Content-Length
            try:
                data = b''.join(result)
                self.write(data, len(data) if not self.sent else None)
            finally:
                _close(result)
        else:
            self._result, self._parts = result, iter(result)

    def _next_part(self):
        try:
            data = next(self._parts, None)
            if data is None:
                self._parts = None
                if not self.sent:
                    self.write(b'', 0)
                self.close()
            elif data:
                self.write(data)
        except OSError:
            raise  # the client's socket, not the application
        except Exception:
            self.fail()

    def fail(self):
        """The app raised: a JSON 500 if nothing is queued yet, else the answer is cut short."""
        log.error('unhandled exception in the application for %s\n%s',
                  logged_request(self.environ), accesslog.traceback_text(sys.exc_info()[1]))
        self.keep_alive = False
        self.close()
        if self.sent:
            raise ConnectionAbortedError('response cut short by an application error')
        err = HTTPError(500, 'internal server error', 'internal_error')
        body = err.payload()
        self.status = status_line(err.status)
        self.headers = [('Content-Type', defaults.JSON)]
        self.write(body, len(body))

    def close(self):
        """Close the app's iterable (once), sent in full or not."""
        result, self._result, self._parts = self._result, None, None
        if result is not None:
            _close(result)

    def _head(self, no_body, total):
        """The status line and header block; UnicodeEncodeError (nothing sent: a 500 still can be)."""
        head = [f'HTTP/1.1 {self.status}\r\n']
        upgrade = self.status[:3] == '101'  # its Connection: Upgrade is the app's to send
        has_length = False
        for name, value in self.headers:
            lower = name.lower()
            if lower == 'connection' and not upgrade:
                continue  # ours to decide
            has_length = has_length or lower == 'content-length'
            head.append(f'{name}: {value}\r\n')
        if has_length or no_body:
            pass
        elif total is not None:
            head.append(f'Content-Length: {total}\r\n')
        else:
            self.keep_alive = False  # the body ends when the connection does
        if upgrade:
            pass
        elif not self.keep_alive:
            head.append('Connection: close\r\n')
        elif self.http10:
            head.append('Connection: keep-alive\r\n')
        head.append(f'Date: {http_date()}\r\n\r\n')
        return ''.join(head).encode('latin-1')


def _close(result):
    if hasattr(result, 'close'):
        result.close()


def respond(app, sock, buf, request, timeout, deadline, keep_alive=True):
    """Call the app for one parsed request whose body starts at request.body_start in buf:
    (the Response, whose send_more() sends the answer; the body, whose `extra` holds the bytes
    past it and `remaining` what the app left unread on the socket)."""
    environ = request.environ
    body = Input(sock, buf[request.body_start:], request.length, request.expect_continue,
                 timeout, deadline)
    environ['wsgi.input'] = body
    response = Response(sock, environ, request.keep_alive and keep_alive)
    run_app(app, environ, response)
    return response, body


def run_app(app, environ, response):
    """Call the WSGI app and queue what it answers; an application error becomes a JSON 500."""
    try:
        response.take(app(environ, response.start_response))
    except OSError:
        raise  # the client's socket, not the application
    except Exception:
        response.fail()
