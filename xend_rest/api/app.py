"""make_app(): the WSGI application object, and the single place that turns exceptions into
responses."""
import dataclasses
import logging
import os
from time import perf_counter
from urllib.parse import parse_qs, urlsplit

import libvirt

from xend_rest import defaults
from xend_rest.consoles.registry import Bridges
from xend_rest.errors import HTTPError, bad_request, json_payload
from xend_rest.headers import required_length
from xend_rest.hypervisor import libvirt_errors, names
from xend_rest.hypervisor.convert import JSONText
from xend_rest.hypervisor.domain_events import EventHub, Watchers
from xend_rest.hypervisor.hypervisors import Hypervisor
from xend_rest.hypervisor.libvirt_connection import SharedConnection
from xend_rest.hypervisor.moves.operations import Operations
from xend_rest.logtext import REQUEST_LINE, printable, printable_text, traceback_text
from . import jsonbody
from .bodies import Raw
from .metrics import RequestMetrics
from .router import Router, path_segments
from .routes import ROUTES
from .security import Guard, ticket_tokens
from .tickets import target_of

log = logging.getLogger(__name__)

LOG_TARGET = 'xend_rest.log_target'  # for the server: the request target as its log may show it

NO_BODY_STATUSES = (101, 204, 304)
SAFE_METHODS = ('GET', 'HEAD')  # the rest may change the hypervisor's state
REASONS = {
    101: 'Switching Protocols', 200: 'OK', 201: 'Created', 202: 'Accepted', 204: 'No Content',
    206: 'Partial Content', 304: 'Not Modified', 400: 'Bad Request', 401: 'Unauthorized',
    403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 406: 'Not Acceptable',
    408: 'Request Timeout', 409: 'Conflict', 411: 'Length Required', 413: 'Payload Too Large',
    415: 'Unsupported Media Type', 416: 'Range Not Satisfiable', 426: 'Upgrade Required',
    429: 'Too Many Requests', 499: 'Client Closed Request', 500: 'Internal Server Error',
    501: 'Not Implemented', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
    507: 'Insufficient Storage',
}


@dataclasses.dataclass(frozen=True)
class AppSettings:
    """What the application is told by the CLI and the configuration file (cli.OPTIONS fills the
    fields of the same names), each defaulting to defaults.py. Who may call (tokens, allowed
    hosts and paths...) is the Guard's, which the CLI builds (cli.build_security)."""
    max_body: int = defaults.MAX_BODY  # a JSON body's bytes at most: 413 past it
    # Event streams and waits one caller may hold, of defaults.WATCHERS on all connections.
    watchers_per_caller: int = defaults.WATCHERS_PER_CALLER
    state_dir: str = None  # where uploads' markers outlive the process; None: in memory only
    console_sessions: int = defaults.CONSOLE_SESSIONS  # console and screen sessions at once
    console_sessions_per_caller: int = defaults.CONSOLE_SESSIONS_PER_CALLER
    console_idle_timeout: float = defaults.CONSOLE_IDLE
    operation_threads: int = defaults.OPERATION_THREADS  # operations running at once
    operations_kept: int = defaults.OPERATIONS_KEPT  # finished ones kept, at most
    operation_age: float = defaults.OPERATION_AGE  # seconds a finished one is kept


class Request:
    """What a handler sees of a request: method, path, query, body, and its hypervisor."""

    def __init__(self, environ, app):
        self.environ = environ
        self.app = app  # for what is the daemon's own: its router, metrics, hypervisors
        self.hypervisor = app.hypervisor  # the route's, once routed
        self.role = None  # set by the Guard
        self.caller = None  # who made it, as the access log names it: set by the Guard
        self.ticket = None  # the console ticket the Guard took the role from, if any
        # what it was admitted with, (kind, token or CN, role): Guard.still_grants after a reload
        self.credential = None
        self.connections = None  # the connections the caller may use (None: all); by the Guard
        self.route = None  # set once routed
        self.method = environ['REQUEST_METHOD']
        self.query = {}  # read once admitted (see read_query)
        self._conn = None
        self._json = _UNREAD

    @property
    def conn(self):
        """The hypervisor's shared libvirt connection (opened on first use)."""
        if self._conn is None:
            self._conn = self.hypervisor.connection.get()
        return self._conn

    def connection_broke(self):
        """Tell the connection's owner that it broke under this request: the next one reopens it."""
        if self._conn is not None:
            self.hypervisor.connection.discard(self._conn)

    def read_query(self):
        """Parse the query string: names and values are UTF-8 (400 otherwise, never U+FFFD)."""
        try:
            self.query = parse_qs(self.environ.get('QUERY_STRING', ''), keep_blank_values=True,
                                  errors='strict')
        except UnicodeDecodeError:
            raise bad_request('the query string is not valid UTF-8') from None

    def client_gone(self):
        """Whether the client hung up meanwhile: our server says (xend_rest.client_gone);
        under another WSGI server nobody does, and a client is never taken to be gone."""
        gone = self.environ.get('xend_rest.client_gone')
        return gone is not None and gone()

    @property
    def hold(self):
        """Our server's environ['xend_rest.hold']: ask it for a worker to hold for long (a
        wait, an event stream); None under another WSGI server, which says nothing of it."""
        return self.environ.get('xend_rest.hold')

    def may_use(self, hypervisor):
        """Whether the caller's credentials cover this hypervisor connection."""
        return self.connections is None or hypervisor.name in self.connections

    def usable_hypervisors(self):
        """The connections the caller may use, in their configured order."""
        return [hv for hv in self.app.hypervisors.values() if self.may_use(hv)]

    def route_name(self):
        """The route as metrics label it: 'GET /libvirt/xen/nodes/{ident}/json', or 'unmatched'."""
        if self.route is None:
            return 'unmatched'
        return self.route.name.replace('{connection}', self.hypervisor.name)

    def acted_on(self):
        """The name of the connection the request's route acts on; None for a daemon-wide one."""
        return self.hypervisor.name if self.route is not None and self.route.on_connection \
            else None

    def arg(self, name, default=None):
        """One query parameter; given twice is an error."""
        values = self.query.get(name)
        if values is None:
            return default
        if len(values) > 1:
            raise bad_request(f'query parameter "{name}" is given more than once')
        return values[0]

    def json(self):
        """The request body, parsed as strict JSON (read once, then remembered)."""
        if self._json is _UNREAD:
            self._json = jsonbody.loads(self._read_body())
        return self._json

    def _read_body(self):
        length = self.content_length()
        if length > self.app.max_body:
            raise HTTPError(413, f'the body is larger than {self.app.max_body} bytes', 'too_large')
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
                raise HTTPError(400, f'the body was cut off: {err}', 'incomplete_body') from None
            if not chunk:
                raise HTTPError(400, f'the body ended after {total - remaining} of its {total} '
                                'bytes', 'incomplete_body')
            remaining -= len(chunk)
            yield chunk


_UNREAD = object()


class App:
    """The WSGI application: routes a request, admits and authorizes it, calls its handler, and
    turns whatever happens into a response."""

    def __init__(self, hypervisors, routes=ROUTES, guard=None, settings=None, consoles=None):
        self.settings = settings = settings or AppSettings()
        self.hypervisors = {hypervisor.name: hypervisor for hypervisor in hypervisors}
        if len(self.hypervisors) != len(hypervisors):
            raise ValueError('two hypervisor connections have the same name')
        self.hypervisor = hypervisors[0]  # the default: daemon-wide routes (/info) answer for it
        self.router = Router(routes)
        # guard: who may call what; the default checks Host, Origin and body types and
        # authenticates nobody, for a loopback or unix socket listener.
        self.guard = guard or Guard()
        self.guard.check_connections(self.hypervisors)  # a credential limited to a typo: refused
        self.metrics = RequestMetrics()
        self.max_body = settings.max_body
        self.consoles = Bridges(  # daemon-wide sessions
            settings.console_sessions, settings.console_idle_timeout,
            per_owner=settings.console_sessions_per_caller) if consoles is None else consoles
        self.operations = Operations(settings.operation_threads, settings.operations_kept,
                                     settings.operation_age)  # daemon-wide, in memory

    def __call__(self, environ, start_response):
        started = perf_counter()
        request = Request(environ, self)
        # The target as logs show it (the server's access log, the session's line, ours),
        # decided before the Guard spends the tickets it carries.
        environ[LOG_TARGET] = self.guard.tickets.hide(target_of(environ))
        try:
            answer = self._dispatch(request)
        except HTTPError as err:
            answer = _error_answer(err)
        except libvirt.libvirtError as err:
            if libvirt_errors.is_connection_error(err):
                request.connection_broke()
            write = request.method not in SAFE_METHODS
            answer = _error_answer(libvirt_errors.from_libvirt(err, write))
        except Exception as err:
            log.error('%s failed\n%s', _request_line(environ), traceback_text(err))
            answer = _internal_error()
        status, body, headers = answer if len(answer) == 3 else (*answer, [])
        try:
            response = _respond(start_response, request.method, status, body, headers)
        except Exception as err:  # an answer that cannot be sent (a body JSON cannot carry): a bug
            log.error('%s: cannot send the answer\n%s', _request_line(environ),
                      traceback_text(err))
            status, body, headers = _internal_error()
            response = _respond(start_response, request.method, status, body, headers)
        # A route's name, never the raw path: metrics stay bounded.
        self.metrics.observe(request.route_name(), status, perf_counter() - started,
                             request.acted_on())
        return response

    def _dispatch(self, request):
        self.guard.admit(request)
        request.read_query()
        route, params = self.router.find(request.method, _segments(request.environ))
        if 'connection' in params:
            request.hypervisor = self.covered_hypervisor(request, params.pop('connection'))
        request.route = route  # once its connection is known: metrics name it
        self.guard.authorize(request, route)
        return route.handler(request, **params)

    def covered_hypervisor(self, request, name):
        """The connection a path names. One the caller's credentials do not cover is answered
        as one that does not exist: what a credential cannot act on, it cannot see."""
        hypervisor = self.hypervisors.get(name)
        if hypervisor is None or not request.may_use(hypervisor):
            known = ', '.join(usable.name for usable in request.usable_hypervisors())
            raise HTTPError(404, f'no such hypervisor connection: {name} (configured: {known})',
                            'no_such_connection')
        return hypervisor

    def screen(self, environ):
        """For our server (Server(screen=...)), with the head of a request whose body is on its
        way, before it keeps any of it: the Guard's refusal of who sent it (credentials, Host,
        Origin) as an HTTPError, so that bodies are kept only for callers the daemon knows. A
        request with a console ticket is left to the app: reading a ticket spends it."""
        if not ticket_tokens(environ):
            self.guard.admit(Request(dict(environ), self))

    def refused(self, method, target):
        """For the server (its on_refused): a request it refused before calling the app. Every
        console ticket its target carries is spent (it was sent); the answer is the target as
        the access log may show it."""
        tickets = self.guard.tickets
        shown = tickets.hide(target)  # first: it is known by its value until spent
        tickets.spend_in(target)
        return shown

    def end_streams(self):
        """End every open event stream (at shutdown: they would otherwise never finish), and
        tell console sessions to end (the server does too; this also frees any it never ran)."""
        for hypervisor in self.hypervisors.values():
            hypervisor.events.close()
        self.consoles.close_all(timeout=0)

    def end_revoked(self):
        """After a reload: end the event streams and console sessions opened with credentials
        that no longer give the role they had; how many."""
        def revoked(held):
            return not self.guard.still_grants(held.credential)
        ended = sum(hypervisor.events.end_where(revoked, 'revoked')
                    for hypervisor in self.hypervisors.values())
        return ended + self.consoles.end_where(revoked, 'revoked')

    def close(self):
        """Close every libvirt connection."""
        for hypervisor in self.hypervisors.values():
            hypervisor.connection.close()


def _segments(environ):
    """The request path's segments: from the raw request target where the server gives it (so
    that '%2F' stays inside a name), else from PATH_INFO, which the server decoded already."""
    raw = environ.get('RAW_URI') or environ.get('REQUEST_URI')
    if raw and not environ.get('SCRIPT_NAME'):
        path = urlsplit(raw).path if '://' in raw else raw.partition('?')[0]
        return path_segments(path, encoded=True)
    return path_segments(environ.get('PATH_INFO', ''), encoded=False)


def make_app(uri=None, connection=None, routes=ROUTES, events=None, guard=None,
             connections=None, consoles=None, settings=None, **overrides):
    """A WSGI application serving the API on named shared libvirt connections.

    connections: {name: URI or SharedConnection}, in the order they are listed. uri (or a
    SharedConnection) is the one named 'xen'; without connections it defaults to $XEND_REST_URI,
    else xen:///system. The default connection (the one /info answers for, and `events` goes
    to) is 'xen' if there is one, else the first; every other gets an EventHub of its own. The
    event streams and waits of every connection take their places among the same Watchers
    (those of `events`, if given). settings: an AppSettings; overrides: some of its fields by
    name, which beat it (make_app(uri=..., max_body=4096)). guard and consoles: a Guard and a
    Bridges of the caller's, else the defaults' (consoles: from settings).
    """
    settings = dataclasses.replace(settings or AppSettings(), **overrides)
    connections = dict(connections or {})
    if uri is not None or connection is not None or not connections:
        if names.DEFAULT in connections:
            raise ValueError(f'the connection {names.DEFAULT!r} is given twice')
        connections = {names.DEFAULT: connection or uri or os.environ.get(
            defaults.URI_VARIABLE) or defaults.DEFAULT_URI, **connections}
    default = names.DEFAULT if names.DEFAULT in connections else next(iter(connections))
    watchers = (Watchers(per_caller=settings.watchers_per_caller) if events is None
                else events.watchers)
    hypervisors = [Hypervisor(name, shared if isinstance(shared, SharedConnection)
                              else SharedConnection(shared),
                              events if name == default and events is not None
                              else EventHub(watchers=watchers), settings.state_dir)
                   for name, shared in connections.items()]
    hypervisors.sort(key=lambda hypervisor: hypervisor.name != default)  # the default first
    return App(hypervisors, routes, guard, settings, consoles)


def _request_line(environ):
    """'METHOD TARGET' of a request for a log line: each printable, the target without tickets."""
    return (f"{printable(environ.get('REQUEST_METHOD', '-'), REQUEST_LINE)} "
            f"{printable(environ.get(LOG_TARGET, '-'), REQUEST_LINE)}")


def _internal_error():
    return _error_answer(HTTPError(500, 'internal server error', 'internal_error'))


def _error_answer(err):
    if err.status >= 500 and not err.logged:
        log.warning('%d %s: %s', err.status, err.code, printable_text(err.message))
    return err.status, err.body(), err.headers


def _respond(start_response, method, status, body, headers):
    if isinstance(body, Raw):
        return _respond_raw(start_response, method, status, body, headers)
    if status in NO_BODY_STATUSES or body is None:
        payload = b''
    else:
        payload = (body.encode() + b'\n') if isinstance(body, JSONText) else json_payload(body)
        headers = [('Content-Type', defaults.JSON), ('Content-Length', str(len(payload)))] + headers
    start_response(f"{status} {REASONS.get(status, 'Unknown')}", headers)
    return [b''] if method == 'HEAD' else [payload]


def _respond_raw(start_response, method, status, body, headers):
    headers = [('Content-Type', body.content_type)] + headers
    if body.length is not None:
        headers.append(('Content-Length', str(body.length)))
    start_response(f"{status} {REASONS.get(status, 'Unknown')}", headers)
    if method != 'HEAD':
        return body.content if body.streamed else [body.content]
    if hasattr(body.content, 'close'):
        body.content.close()
    return [b'']
