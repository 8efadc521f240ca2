"""make_app(): the WSGI callable, and the single place that turns exceptions into responses."""
import logging
import os
from time import perf_counter
from urllib.parse import parse_qs

import libvirt

from . import defaults, errors, jsonbody
from .bodies import Raw
from .convert import JSONText
from .errors import HTTPError, bad_request, json_payload
from .events import EventHub
from .headers import required_length
from .handlers.images import Uploads
from .metrics import RequestMetrics
from .pool import ConnectionCache, ConnectionPool
from .routes import Router, ROUTES
from .security import Guard

log = logging.getLogger(__name__)

NO_BODY_STATUSES = (204, 304)
SAFE_METHODS = ('GET', 'HEAD')  # the rest may change the hypervisor's state
REASONS = {
    200: 'OK', 201: 'Created', 202: 'Accepted', 204: 'No Content', 206: 'Partial Content',
    304: 'Not Modified', 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden',
    404: 'Not Found', 405: 'Method Not Allowed', 406: 'Not Acceptable', 408: 'Request Timeout',
    409: 'Conflict', 411: 'Length Required', 413: 'Payload Too Large', 415: 'Unsupported Media Type',
    416: 'Range Not Satisfiable', 500: 'Internal Server Error', 501: 'Not Implemented',
    503: 'Service Unavailable', 504: 'Gateway Timeout',
}


class Request:
    """What a handler sees of a request: method, path, query, body, and the libvirt connection."""

    def __init__(self, environ, pool, app=None, max_body=defaults.MAX_BODY):
        self.environ = environ
        self.app = app  # the WSGI app, for its per-app objects: hub, metrics, router
        self.max_body = max_body
        self.role = None  # set by the Guard
        self.method = environ['REQUEST_METHOD']
        self.path = _decoded_path(environ.get('PATH_INFO', ''))
        self.query = parse_qs(environ.get('QUERY_STRING', ''), keep_blank_values=True)
        self._pool = pool
        self._conn = None
        self._json = _UNREAD

    @property
    def conn(self):
        """The pooled libvirt connection (opened on first use)."""
        if self._conn is None:
            self._conn = self._pool.get()
        return self._conn

    def arg(self, name, default=None):
        """One query parameter; given twice is an error."""
        values = self.query.get(name)
        if values is None:
            return default
        if len(values) > 1:
            raise bad_request('query parameter "%s" is given more than once' % name)
        return values[0]

    def json(self):
        """The request body, parsed as strict JSON (read once, then remembered)."""
        if self._json is _UNREAD:
            self._json = jsonbody.loads(self._read_body())
        return self._json

    def _read_body(self):
        length = self.content_length()
        if length > self.max_body:
            raise HTTPError(413, 'the body is larger than %d bytes' % self.max_body, 'too_large')
        body = b''.join(self.body_chunks(length or 1))
        if not body:
            raise bad_request('a JSON body is required')
        return body

    def content_length(self):
        """The declared length of the body: 411 when there is none, 400 when it is not a length."""
        return required_length(self.environ.get('CONTENT_LENGTH'))

    def body_chunks(self, size):
        """The body in chunks of at most `size` bytes, without the JSON cap; ending early is an error."""
        remaining = total = self.content_length()
        body = self.environ['wsgi.input']
        while remaining:
            try:
                chunk = body.read(min(size, remaining))
            except TimeoutError:
                raise HTTPError(408, 'the client stopped sending the body', 'timeout') from None
            except OSError as err:  # the client went away
                raise HTTPError(400, 'the body was cut off: %s' % err, 'incomplete_body') from None
            if not chunk:
                raise HTTPError(400, 'the body ended after %d of its %d bytes'
                                % (total - remaining, total), 'incomplete_body')
            remaining -= len(chunk)
            yield chunk


_UNREAD = object()


def _decoded_path(path):
    """PEP 3333 hands the path over as latin-1; domain names may be UTF-8. A server that
    decoded it already (characters latin-1 cannot hold) is taken at its word."""
    try:
        return path.encode('latin-1').decode('utf-8', 'replace')
    except UnicodeEncodeError:
        return path


def make_app(uri=None, pool=None, routes=ROUTES, hub=None, guard=None, max_body=defaults.MAX_BODY):
    """A WSGI application serving the API on one pooled libvirt connection.

    The URI defaults to $XEND_REST_URI, else xen:///system. guard: who may call what
    (security.Guard); the default checks Host, Origin and body types and authenticates nobody,
    for a loopback or unix socket listener.
    """
    if pool is None:
        pool = ConnectionPool(uri or os.environ.get(defaults.URI_VARIABLE) or defaults.DEFAULT_URI)
    router = Router(routes)
    hub = hub or EventHub()
    pool.on_connect(hub.attach)
    metrics = RequestMetrics()
    guard = guard or Guard()

    def app(environ, start_response):
        started = perf_counter()
        request = Request(environ, pool, app, max_body)
        route = 'unmatched'  # a route pattern, never the raw path: metrics stay bounded
        try:
            guard.admit(request)
            route, handler, params = router.find(request.method, request.path)
            guard.authorize(request, handler)
            answer = handler(request, **params)
        except HTTPError as err:
            answer = _error_answer(err)
        except libvirt.libvirtError as err:
            if errors.is_connection_error(err):
                pool.discard(request._conn)
            write = request.method not in SAFE_METHODS
            answer = _error_answer(errors.from_libvirt(err, write))
        except Exception:
            log.exception('%s %s failed', request.method, request.path)
            answer = _internal_error()
        status, body, headers = answer if len(answer) == 3 else (*answer, [])
        try:
            response = _respond(start_response, request.method, status, body, headers)
        except Exception:  # an answer that cannot be sent (a body JSON cannot carry): a bug
            log.exception('%s %s: cannot send the answer', request.method, request.path)
            status, body, headers = _internal_error()
            response = _respond(start_response, request.method, status, body, headers)
        metrics.observe(route, status, perf_counter() - started)
        return response

    app.pool = pool
    app.router = router
    app.hub = hub
    app.metrics = metrics
    app.supports = ConnectionCache()  # what the driver can do, probed once per connection
    app.uploads = Uploads()  # images this app is uploading into
    app.guard = guard
    return app


def _internal_error():
    return _error_answer(HTTPError(500, 'internal server error', 'internal_error'))


def _error_answer(err):
    if err.status >= 500:
        log.warning('%d %s: %s', err.status, err.code, err.message)
    return err.status, err.body(), err.headers


def _respond(start_response, method, status, body, headers):
    if isinstance(body, Raw):
        return _respond_raw(start_response, method, status, body, headers)
    if status in NO_BODY_STATUSES or body is None:
        payload = b''
    else:
        payload = (body.encode() + b'\n') if isinstance(body, JSONText) else json_payload(body)
        headers = [('Content-Type', defaults.JSON), ('Content-Length', str(len(payload)))] + headers
    start_response('%d %s' % (status, REASONS.get(status, 'Unknown')), headers)
    return [b''] if method == 'HEAD' else [payload]


def _respond_raw(start_response, method, status, body, headers):
    headers = [('Content-Type', body.content_type)] + headers
    if body.length is not None:
        headers.append(('Content-Length', str(body.length)))
    start_response('%d %s' % (status, REASONS.get(status, 'Unknown')), headers)
    if method != 'HEAD':
        return body.content if body.streamed else [body.content]
    if hasattr(body.content, 'close'):
        body.content.close()
    return [b'']
