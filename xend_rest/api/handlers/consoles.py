"""The console endpoints: a guest's console as a WebSocket, or as raw bytes (Upgrade: tcp), its
screen (VNC) as a WebSocket, and the tickets a browser opens them with.

Each upgrade answers 101 and hands the server a session to run on the connection
(xend_rest.consoles.bridge, with a console stream from consoles.console_stream or a VNC socket
from consoles.vnc on the guest's side). Refusals are decided before the 101, from state: 426
without the upgrade, 501 under a foreign WSGI server or a driver without consoles, 400 or 503
where our server could not hand the connection over (HTTP/1.0, Connection: close, shutting
down), 409 for a domain that is not running or a console another session holds, 429 past the
session limit.
"""
# The session machinery (bridge, console_stream, vnc, websocket) is imported by the first console
# request, not at start (nor by consoles.registry): most daemons never open one.
from xend_rest.api.params import parse_bool, parse_choice
from xend_rest.errors import HTTPError
from .domains import lookup_domain

RAW_UPGRADE = [('Upgrade', 'tcp'), ('Connection', 'Upgrade')]


def console(request, ident):
    """GET /nodes/{ident}/console: the console over a WebSocket, in binary frames both ways."""
    from xend_rest.consoles import websocket
    from xend_rest.consoles.bridge import upgrade_hook
    options = _console_options(request)  # a bad parameter is 400, with or without the handshake
    upgrade = upgrade_hook(request.environ)
    headers = websocket.handshake(request.environ)
    return _upgrade(request, upgrade, _open_console(request, ident, True, *options), headers)


def attach(request, ident):
    """POST /nodes/{ident}/attach with Upgrade: tcp: the console's raw bytes both ways, as
    Docker's attach does, for clients that speak no WebSocket."""
    from xend_rest.consoles import websocket
    from xend_rest.consoles.bridge import upgrade_hook
    options = _console_options(request)
    upgrade = upgrade_hook(request.environ)
    if not websocket.asks_upgrade(request.environ, 'tcp'):
        raise websocket.upgrade_required('tcp')
    return _upgrade(request, upgrade, _open_console(request, ident, False, *options),
                    RAW_UPGRADE)


def screen(request, ident):
    """GET /nodes/{ident}/vnc: the VNC screen's RFB bytes over a WebSocket, for noVNC."""
    from xend_rest.consoles import websocket
    from xend_rest.consoles.bridge import upgrade_hook
    from xend_rest.consoles.vnc import open_screen
    upgrade = upgrade_hook(request.environ)
    headers = websocket.handshake(request.environ)
    sessions = request.app.consoles
    dom = _running_domain(request, ident)
    guard = request.app.guard  # a socket the definition names is judged like its other paths
    session = open_screen(sessions, request.conn, dom, sessions.framing(True), request.caller,
                          guard.check_path if guard.allowed_paths else None)
    return _upgrade(request, upgrade, session, headers)


# What a ticket may open: ?for= -> the handler of its route.
TICKET_ROUTES = {'console': console, 'vnc': screen}


def issue_ticket(request, ident):
    """POST /nodes/{ident}/console/ticket?for=console|vnc: a single-use ticket, good for a few
    seconds, that opens that route on this domain as the caller, with its role (for browsers)."""
    target = request.arg('for', 'console')
    handler = parse_choice(request, 'for', TICKET_ROUTES, 'console')
    uuid = lookup_domain(request.conn, ident).UUIDString()
    tickets = request.app.guard.tickets
    token = tickets.issue(request.hypervisor.name, uuid, handler, request.role, request.caller,
                          request.credential)
    return 201, {'Ticket': token, 'Expires': tickets.lifetime,
                 'Path': f'/libvirt/{request.hypervisor.name}/nodes/{uuid}/{target}?ticket={token}'}


def _console_options(request):
    """(flags, dev) from the query: force=, safe= and dev=."""
    from xend_rest.consoles.console_stream import CONSOLE_FLAGS
    flags = 0
    for name, bit in CONSOLE_FLAGS:
        if parse_bool(request, name):
            flags |= bit
    return flags, request.arg('dev')


def _open_console(request, ident, over_websocket, flags, dev):
    from xend_rest.consoles.console_stream import open_console
    dom = _running_domain(request, ident)
    sessions = request.app.consoles
    return open_console(sessions, request.conn, dom, dev, flags, sessions.framing(over_websocket),
                        request.caller)


def _running_domain(request, ident):
    dom = lookup_domain(request.conn, ident)
    if request.ticket is not None and request.ticket.uuid != dom.UUIDString():
        raise HTTPError(403, 'this console ticket is for another domain', 'ticket_mismatch')
    if not dom.isActive():
        raise HTTPError(409, f'domain {dom.name()} is not running', 'invalid_state')
    return dom


def _upgrade(request, upgrade, session, headers):
    """Hand the session to the server; if that fails, its place and console are free again.
    (From here on the server runs it, or releases it: see xend_rest.server.upgrades.Upgrade.)"""
    environ = request.environ
    try:
        session.request = (request.method, environ['xend_rest.log_target'])  # tickets hidden
        session.client = environ.get('REMOTE_ADDR', '-')
        session.credential = request.credential  # ended by a reload that takes it away
        upgrade(session, lambda: session.end('shutdown'))
    except BaseException:
        session.discard()
        raise
    return 101, None, headers
