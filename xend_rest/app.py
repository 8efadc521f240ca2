"""make_app(): the WSGI callable, and the single place that turns exceptions into responses."""
import json
import logging
import os
from time import perf_counter
from urllib.parse import parse_qs

import libvirt

from . import errors
from .bodies import Raw
from .convert import JSONText
from .errors import HTTPError, bad_request
from .events import EventHub
from .metrics import RequestMetrics
from .pool import ConnectionCache, ConnectionPool
from .routes import Router, ROUTES

log = logging.getLogger(__name__)

MAX_JSON_BODY = 1 << 20  # a domain definition is a few KiB; 1 MiB is generous
JSON_TYPE = 'application/json'
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

    def __init__(self, environ, pool, app=None):
        self.environ = environ
        self.app = app  # the WSGI app, for its per-app objects: hub, metrics, router
        self.method = environ['REQUEST_METHOD']
        # PEP 3333 hands the path over as latin-1; domain names may be UTF-8.
        self.path = environ.get('PATH_INFO', '').encode('latin-1').decode('utf-8', 'replace')
        self.query = parse_qs(environ.get('QUERY_STRING', ''), keep_blank_values=True)
        self._pool = pool
        self._conn = None

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
        """The request body, parsed as JSON."""
        try:
            length = int(self.environ.get('CONTENT_LENGTH') or 0)
        except ValueError:
            raise bad_request('Content-Length is not a number') from None
        if length > MAX_JSON_BODY:
            raise HTTPError(413, 'the body is larger than %d bytes' % MAX_JSON_BODY, 'too_large')
        body = self.environ['wsgi.input'].read(length) if length > 0 else b''
        if not body:
            raise bad_request('a JSON body is required')
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise bad_request('the body is not valid JSON: %s' % err) from None


def make_app(uri=None, pool=None, routes=ROUTES, hub=None):
    """A WSGI application serving the API on one pooled libvirt connection.

    The URI defaults to $XEND_REST_URI, else xen:///system.
    """
    if pool is None:
        pool = ConnectionPool(uri or os.environ.get('XEND_REST_URI') or 'xen:///system')
    router = Router(routes)
    hub = hub or EventHub()
    pool.on_connect(hub.attach)
    metrics = RequestMetrics()

    def app(environ, start_response):
        started = perf_counter()
        request = Request(environ, pool, app)
        route = 'unmatched'  # a route pattern, never the raw path: metrics stay bounded
        try:
            route, handler, params = router.find(request.method, request.path)
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
            answer = _error_answer(HTTPError(500, 'internal server error', 'internal_error'))
        status, body, headers = answer if len(answer) == 3 else (*answer, [])
        metrics.observe(route, status, perf_counter() - started)
        return _respond(start_response, request.method, status, body, headers)

    app.pool = pool
    app.router = router
    app.hub = hub
    app.metrics = metrics
    app.supports = ConnectionCache()  # what the driver can do, probed once per connection
    return app


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
        text = body if isinstance(body, JSONText) else json.dumps(body, sort_keys=True)
        payload = text.encode() + b'\n'
        headers = [('Content-Type', JSON_TYPE), ('Content-Length', str(len(payload)))] + headers
    start_response('%d %s' % (status, REASONS.get(status, 'Unknown')), headers)
    return [b''] if method == 'HEAD' else [payload]


def _respond_raw(start_response, method, status, body, headers):
    headers = [('Content-Type', body.content_type)] + headers
    if not body.streamed:
        headers.append(('Content-Length', str(len(body.content))))
    start_response('%d %s' % (status, REASONS.get(status, 'Unknown')), headers)
    if method != 'HEAD':
        return body.content if body.streamed else [body.content]
    if hasattr(body.content, 'close'):
        body.content.close()
    return [b'']
