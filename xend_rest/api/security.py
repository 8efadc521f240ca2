"""Who may call which route, from where, with what body: the access policy, as a Guard that reads
each route's row (routes.py), and the credentials it knows callers by (tokens, TLS clients,
console tickets).

Whoever can call this API is root on dom0, so every route needs a role (a row without one:
admin), every request must come from the daemon's own names and never from a browser page, and
host paths in a definition may be confined to a few directories (what a definition reaches is
found by host_paths.py; the Guard judges it).
"""
import functools
import hmac
import ipaddress
import os
import socket
import ssl
import stat
from collections import namedtuple
from urllib.parse import parse_qs, quote, urlsplit

from xend_rest import defaults
from xend_rest.api.handlers import images
from xend_rest.errors import HTTPError, bad_request
from xend_rest.headers import content_length, media_type
from xend_rest.hypervisor.names import check as check_name
from .host_paths import (PATH_MAX, dbus_socket, driver_of, host_access, hypervisor_elements,
                         read_elements, sent_xml, volume_path)
from .params import is_whole
from .routes import ADMIN, ROLES
from .tickets import PARAMETER as TICKET, Tickets, target_of

# Names a client on this machine may use in Host: besides these, the listen addresses and the
# host's own names. Anything else is a DNS-rebinding page or a misdirected request.
LOOPBACK_HOSTS = ('localhost', '127.0.0.1', '::1')
UNAUTHENTICATED = [('WWW-Authenticate', 'Bearer realm="xend-rest"')]
# Sec-Fetch-Site values a browser sends for requests a web page made (a typed URL sends "none").
PAGE_FETCHES = ('cross-site', 'same-site', 'same-origin')
MIN_TOKEN_LENGTH = 16
# Who made a request, as the access log names it and the per-caller limits count it: a token's
# name, a client certificate's subject, or a unix socket's peer user (see caller_name). Without
# any of them the caller is anonymous (TCP on loopback without credentials: all one caller);
# NOBODY is a request refused before its caller was known.
ANONYMOUS, NOBODY = 'anonymous', '-'
# A caller is printable ASCII without spaces; anything else in a name is percent-encoded.
CALLER_SAFE = ''.join(chr(code) for code in range(0x21, 0x7f) if chr(code) != '%')
RFC4514_ESCAPES = {'\0': '\\00', **{char: '\\' + char for char in '"+,;<>\\'}}
# Certificate attribute names as RFC 4514 writes them; the others keep Python's (long) names.
SHORT_NAMES = {'commonName': 'CN', 'organizationName': 'O', 'organizationalUnitName': 'OU',
               'countryName': 'C', 'stateOrProvinceName': 'ST', 'localityName': 'L',
               'streetAddress': 'STREET', 'domainComponent': 'DC', 'userId': 'UID'}


class ConfigError(ValueError):
    """A security setting the daemon must not start with."""


class Grant(namedtuple('Grant', 'role connections')):
    """What a credential allows: a role, on some hypervisor connections (None: all of them)."""


EVERYTHING = Grant(ADMIN, None)


def own_names():
    """This machine's loopback names and host name."""
    return {*LOOPBACK_HOSTS, socket.gethostname().lower()}


@functools.lru_cache(maxsize=1)
def own_fqdn():
    """This machine's FQDN: a DNS look-up, done once and only when a Host needs it."""
    return socket.getfqdn().lower()


class Guard:
    """Admits a request (Host, Origin, credentials), then authorizes it for its route."""

    def __init__(self, tokens=None, tls_clients=None, allowed_hosts=(), allowed_paths=(),
                 allowed_origins=(), tickets=None, allow_host_devices=False):
        self.set_credentials(tokens, tls_clients)
        self.allowed_hosts = own_names() | {_host_name(host) for host in allowed_hosts}
        self.allowed_paths = [os.path.realpath(path) for path in allowed_paths]
        # As a hypervisor on another host reads them: the daemon cannot see its links.
        self.remote_allowed_paths = [_lexical(path) for path in allowed_paths]
        self.allow_host_devices = allow_host_devices
        # Pages that may open a console or a screen, with a ticket and nothing else.
        self.allowed_origins = {origin_name(origin) for origin in allowed_origins}
        self.tickets = Tickets() if tickets is None else tickets

    def set_credentials(self, tokens, tls_clients):
        """The tokens and TLS clients callers are known by (at start, and at each reload)."""
        # A plain role where a Grant goes covers every connection (as before there were several).
        self.tokens = {token: (_as_grant(grant), name)  # token -> (Grant, name)
                       for token, (grant, name) in (tokens or {}).items()}
        # None (any verified client is admin) or {CN: Grant}
        self.tls_clients = None if tls_clients is None else {
            name: _as_grant(grant) for name, grant in tls_clients.items()}

    def still_grants(self, credential):
        """Whether a credential a request was admitted with (request.credential: None, or
        (kind, token or CN, the role it had)) still gives that role: after a reload, event
        streams and console sessions opened with one that no longer does are ended."""
        if credential is None:
            return True
        kind, key, role = credential
        if kind == 'token':
            grant = self.tokens.get(key, (None,))[0]
        elif self.tls_clients is None:
            grant = EVERYTHING
        else:
            grant = self.tls_clients.get(key)
        return grant is not None and ROLES.index(grant.role) >= ROLES.index(role)

    def is_own_host(self, host):
        return host in self.allowed_hosts or '*' in self.allowed_hosts or host == own_fqdn()

    def admit(self, request):
        """The caller's role; 403 for a foreign Host or a web page's request, 401 without credentials.

        A request with ?ticket= is a console or screen upgrade (a browser's WebSocket): the
        ticket is its only credential, and a page of an allowed origin may send it. Every ticket
        a request carries is used up first, whatever is answered: once sent, it was seen (the
        ?ticket= the app reads, and any other ticket anywhere in its target: Tickets.spend_in).
        Who the caller is goes to request.caller and environ['xend_rest.caller'] (the access log).
        """
        environ = request.environ
        transport = environ.get('xend_rest.transport', 'tcp')
        # Until its credentials are read, the caller is what the connection proves, if anything.
        known = request.caller = environ['xend_rest.caller'] = connection_caller(environ, transport)
        tokens = ticket_tokens(environ)
        tickets = [self.tickets.redeem(token) for token in tokens]
        self.tickets.spend_in(target_of(environ))  # and any other it carries, however spelled
        if len(tokens) > 1:
            raise HTTPError(400, f'query parameter "{TICKET}" is given more than once',
                            'bad_parameter')
        token = tokens[0] if tokens else None
        if token is None and ('HTTP_ORIGIN' in environ
                              or environ.get('HTTP_SEC_FETCH_SITE') in PAGE_FETCHES):
            raise HTTPError(403, 'requests from web pages (with an Origin header) are refused',
                            'cross_origin')
        origin = environ.get('HTTP_ORIGIN')
        if token is not None and origin is not None and origin_name(origin) not in self.allowed_origins:
            raise HTTPError(403, f'Origin {origin} may not open consoles; add it to '
                            'allowed-origins', 'cross_origin')
        host = _host_name(environ.get('HTTP_HOST') or environ.get('SERVER_NAME', ''))
        if transport != 'unix' and not self.is_own_host(host):
            raise HTTPError(403, f'Host {host!r} is not a name of this daemon; add it to '
                            'allowed-hosts', 'foreign_host')
        if token is not None:
            request.ticket = tickets[0]
            if request.ticket is None:
                raise HTTPError(401, 'the console ticket is unknown, used already or expired',
                                'bad_ticket')
            if not self.still_grants(request.ticket.credential):
                raise HTTPError(401, 'the credentials this console ticket was issued for are '
                                'no longer valid', 'bad_ticket')
            # Its role, on the one connection it was issued for, for whoever asked for it.
            request.role, request.connections = request.ticket.role, {request.ticket.hypervisor}
            caller, request.credential = request.ticket.caller, request.ticket.credential
        else:
            (request.role, request.connections), caller, key = self._grant(environ, transport,
                                                                          known)
            request.credential = None if key is None else (*key, request.role)
        request.caller = environ['xend_rest.caller'] = caller
        return request.role

    def check_connections(self, names):
        """ConfigError if a token or client is limited to a connection not among `names`."""
        grants = [(repr(name), grant) for grant, name in self.tokens.values()]
        grants += [(f'CN={cn}', grant) for cn, grant in (self.tls_clients or {}).items()]
        for who, grant in grants:
            unknown = sorted(set(grant.connections or ()) - set(names))
            if unknown:
                raise ConfigError(f"{who} is limited to {', '.join(unknown)}, which is not a "
                                  f"configured connection (configured: {', '.join(names)})")

    def authorize(self, request, route):
        """403 unless the role may call the route; 415 for a body of the wrong type; 403 for paths.

        Any body must have the route's media type, JSON where the route takes none (it is then
        ignored): so no HTML form can reach an action, whichever route it posts to."""
        ticket = request.ticket
        if ticket is not None and (route.handler is not ticket.handler
                                   or request.hypervisor.name != ticket.hypervisor):
            raise HTTPError(403, 'this console ticket is for another route', 'ticket_mismatch')
        needed = route.role or ADMIN  # a route nobody classified is for admins only
        if ROLES.index(request.role) < ROLES.index(needed):
            raise HTTPError(403, f'this needs the {needed} role; your credentials have '
                            f'{request.role}', 'forbidden')
        if route.on_connection and not request.may_use(request.hypervisor):
            # /info (a path naming a connection never gets here: the app answers 404). The
            # connection is not named: a credential does not learn of others.
            only = ', '.join(sorted(request.connections))
            raise HTTPError(403, 'this route acts on the default connection, which your '
                            f'credentials do not cover (only {only})', 'forbidden')
        self.check_secret_flag(request, route)
        if content_length(request.environ.get('CONTENT_LENGTH')):
            expected = route.body or defaults.JSON
            given = media_type(request.environ.get('CONTENT_TYPE'))
            if given != expected:
                raise HTTPError(415, f"the body must be {expected}, not {given or 'untyped'}",
                                'unsupported_media_type')
        if self.allowed_paths and route.host_paths:
            self.check_definition(request, request.json())

    def check_definition(self, request, doc):
        """403 for a definition (JSON, as posted) that reaches what the host-path policy does
        not allow on request.hypervisor (and request.conn): nothing while allowed-paths is
        unset."""
        if not self.allowed_paths:
            return
        where = next(hypervisor_elements(doc), None)
        if where is not None:
            raise HTTPError(403, f"{where}: elements in a driver's namespace "
                            '(xen:commandline, qemu:commandline, dnsmasq:options...) pass '
                            'anything to a program libvirt runs as root (a device model, '
                            'dnsmasq), so they are refused while allowed-paths is set',
                            'path_not_allowed')
        # Judged as libvirt will read it: the XML it is sent (400 for what XML or libvirt's
        # reading of names cannot carry, before any path is looked at).
        root = sent_xml(doc)
        self.check_host_access(request, root)
        images.judge_disks(request, read_elements(root, 'disk'), self.check_path)  # their images

    def check_secret_flag(self, request, route):
        """403 unless the role may set the route's flag bit that asks for secrets."""
        if route.secret_flag is None:
            return
        name, bit, needed = route.secret_flag
        flag = request.arg('flag')
        if flag is None or not is_whole(flag):  # the handler answers 400, as to anyone
            return
        if not int(flag) & bit:
            return
        if ROLES.index(request.role) < ROLES.index(needed):
            raise HTTPError(403, f'flag={flag} asks for secrets ({name}): this needs the {needed} '
                            f'role; your credentials have {request.role}', 'forbidden')

    def check_host_access(self, request, root):
        """403 for a path, volume, host device or writable directory of a definition (parsed XML:
        host_access) that the policy does not allow; paths are judged on the hypervisor's host
        as well as the daemon can."""
        uri = request.hypervisor.connection.uri
        remote = is_remote(uri)
        for where, kind, value in host_access(root, driver_of(uri)):
            if kind == 'device':
                if not self.allow_host_devices:
                    raise HTTPError(403, f'{where}: a <{value}> hands a host device to the guest; '
                                    'while allowed-paths is set, that needs allow-host-devices',
                                    'host_device_not_allowed')
            elif kind == 'options':
                raise HTTPError(403, f"{where}: a program's options may name any host file, so "
                                'they are refused while allowed-paths is set', 'path_not_allowed')
            elif kind == 'share':
                raise HTTPError(403, f'{where}: a guest given a host directory writable could make '
                                'links and files there, which the hypervisor would follow for '
                                'other domains; while allowed-paths is set, add <readonly/>',
                                'path_not_allowed')
            elif kind == 'volume':
                self.check_path(where, volume_path(request.conn, *value), remote,
                                f'volume {value[1]!r} of pool {value[0]!r}')
            elif kind == 'dbus':
                self.check_path(where, dbus_socket(value), remote, f'D-Bus address {value!r}')
            else:
                self.check_path(where, value, remote)

    def check_path(self, where, path, remote=False, what=None):
        """403 unless path resolves into one of allowed-paths: links followed on this host, and
        only '..' and '//' resolved for a hypervisor on another (remote: its links are unseen)."""
        tops = self.remote_allowed_paths if remote else self.allowed_paths
        if isinstance(path, str) and '\0' in path:  # (a D-Bus address may escape one: %00)
            raise bad_request(f'{where}: {what or repr(path)} holds a NUL, which no path can')
        if isinstance(path, str) and len(path.encode('utf-8', 'surrogatepass')) >= PATH_MAX:
            raise HTTPError(403, f'{where}: a path of {len(path)} characters is longer than any '
                            'the kernel opens', 'path_not_allowed')
        real = None
        if isinstance(path, str) and path.startswith('/'):
            real = _lexical(path) if remote else os.path.realpath(path)
        if real is None or not any(real == top or real.startswith(top.rstrip('/') + '/')
                                   for top in tops):
            raise HTTPError(403, f"{where}: {what or repr(path)} is outside the allowed paths "
                            f"({' '.join(tops)})", 'path_not_allowed')

    def _grant(self, environ, transport, known):
        """(the Grant, the caller, the credential's (kind, token or CN) or None) of the
        credentials that decide: a bearer token, else the unix peer or the client certificate
        (`known`: the connection's caller); 401 or 403 without acceptable ones."""
        authorization = environ.get('HTTP_AUTHORIZATION')
        tokens = self.tokens  # one set of credentials for the whole request, reloads or not
        if authorization is not None and tokens:
            token, (grant, name) = self._token_grant(tokens, authorization)
            return grant, caller_name('token', name), ('token', token)
        if transport == 'unix':
            # the socket's owner, group and mode decided who got this far
            return EVERYTHING, ANONYMOUS if known == NOBODY else known, None
        # With an allow-list, a certificate must name an allowed CN: one without a CN gets nothing.
        subject = environ.get('xend_rest.client_subject')
        if transport == 'tls' and (self.tls_clients is not None or subject):
            common_name = client_cn(subject or ())
            return self._client_grant(common_name), known, ('cert', common_name)
        if tokens:
            raise HTTPError(401, 'authentication required: send Authorization: Bearer <token>',
                            'unauthorized', UNAUTHENTICATED)
        # no authentication configured: start-up allowed this only on loopback
        return EVERYTHING, ANONYMOUS, None

    @staticmethod
    def _token_grant(tokens, authorization):
        """(the token, its (Grant, name)); 401 for none of `tokens`."""
        scheme, _, token = authorization.partition(' ')
        found = None
        # Compare with every token, in constant time each: timing reveals nothing.
        for known, entry in tokens.items():
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                found = known, entry
        if scheme.lower() != 'bearer' or found is None:
            raise HTTPError(401, 'the bearer token is not valid', 'unauthorized',
                            [('WWW-Authenticate', 'Bearer realm="xend-rest", error="invalid_token"')])
        return found

    def _client_grant(self, common_name):
        if self.tls_clients is None:
            return EVERYTHING  # like docker --tlsverify: a certificate from our CA is enough
        if common_name is None:
            raise HTTPError(403, 'a client certificate without a CN is not allowed', 'forbidden')
        if common_name not in self.tls_clients:
            raise HTTPError(403, f'client certificate CN={common_name} is not allowed',
                            'forbidden')
        return self.tls_clients[common_name]


def _as_grant(grant):
    return grant if isinstance(grant, Grant) else Grant(parse_role(grant), None)


def is_remote(uri):
    """Whether a libvirt URI reaches a hypervisor on another host (xen+tls://dom0.example/)."""
    host = urlsplit(uri).hostname
    return bool(host) and not is_loopback(host)


def _lexical(path):
    """An absolute path with '..', '.' and '//' resolved, links not followed."""
    return os.path.normpath('/' + path.lstrip('/'))


def ticket_tokens(environ):
    """Every ?ticket= of a request, read before the rest of its query is."""
    return parse_qs(environ.get('QUERY_STRING', ''), keep_blank_values=True).get(TICKET, [])


def caller_name(kind, name):
    """'token:alice', 'cert:CN=alice,O=Example', 'uid:1000': a caller as the access log names it
    and the per-caller limits count it. Printable ASCII without spaces: anything else in the
    name (a space, a newline, a NUL, a non-ASCII letter) is percent-encoded, so that a name
    cannot forge a log line, and two names never read the same."""
    return f"{kind}:{quote(name, safe=CALLER_SAFE, errors='surrogatepass')}"


def connection_caller(environ, transport):
    """The caller the connection itself proves (the kernel's word for a unix socket's peer, the
    CA's for a client certificate), or NOBODY."""
    if transport == 'unix' and 'xend_rest.peer_uid' in environ:
        return caller_name('uid', str(environ['xend_rest.peer_uid']))
    subject = environ.get('xend_rest.client_subject')
    if transport == 'tls' and subject:
        return caller_name('cert', subject_text(subject))
    return NOBODY


def client_cn(subject):
    """The CN of a certificate subject (getpeercert()'s RDNs), None without one; 403 for a
    subject with several (in one RDN or in several): which one names the client is anybody's
    guess (Python's dict of the subject took the last, OpenSSL's look-up the first)."""
    names = [value for rdn in subject for kind, value in rdn if kind == 'commonName']
    if len(names) > 1:
        raise HTTPError(403, f'the client certificate names {len(names)} CNs '
                        f'({subject_text(subject)}): it must name one', 'ambiguous_certificate')
    return names[0] if names else None


def subject_text(subject):
    """A certificate subject as RFC 4514 writes it, most specific first: 'CN=alice,O=Example'."""
    return ','.join('+'.join(f'{SHORT_NAMES.get(kind, kind)}={_rfc4514_value(value)}'
                             for kind, value in rdn) for rdn in reversed(subject))


def _rfc4514_value(value):
    """An attribute value escaped as RFC 4514 says (section 2.4)."""
    escaped = [RFC4514_ESCAPES.get(char, char) for char in value]
    if value[:1] in ('#', ' '):
        escaped[0] = '\\' + value[0]
    if len(value) > 1 and value[-1] == ' ':
        escaped[-1] = '\\ '
    return ''.join(escaped)


def origin_name(origin):
    """An Origin as compared: 'HTTPS://Admin.Example:443' -> 'https://admin.example'."""
    scheme, _, rest = origin.strip().lower().partition('://')
    rest = rest.rstrip('/')
    default = {'http': ':80', 'https': ':443'}.get(scheme)
    if default and rest.endswith(default):
        rest = rest[:-len(default)]
    return f'{scheme}://{rest}'


def _host_name(host):
    """The name part of a Host header, lowercased: 'Web.Example.:8000' -> 'web.example'."""
    host = host.strip().lower()
    if host.startswith('['):
        return host[1:].partition(']')[0]
    name, colon, port = host.rpartition(':')
    if colon and port.isdigit() and ':' not in name:
        host = name
    return host.rstrip('.')


def parse_role(text):
    if text not in ROLES:
        raise ConfigError(f"unknown role {text!r} (expected one of {', '.join(ROLES)})")
    return text


def parse_grant(text):
    """A Grant from 'ROLE' (every connection) or 'ROLE@NAME,NAME...' (only those)."""
    role, at, names = text.partition('@')
    if not at:
        return Grant(parse_role(role), None)
    connections = names.split(',')
    for name in connections:
        try:
            check_name(name)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return Grant(parse_role(role), frozenset(connections))


MAX_TOKENS_FILE = 1 << 20  # characters: a tokens file is a few lines a token


def load_tokens(path):
    """{token: (Grant, name)} from a file of 'TOKEN ROLE[@CONNECTION,...] [NAME]' lines that
    only its owner may read."""
    try:
        with open(path, encoding='utf-8') as f:
            info = os.fstat(f.fileno())
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):  # judged before anything is read
                raise ConfigError(f'tokens file {path} is accessible to group or others '
                                  f'(mode {stat.S_IMODE(info.st_mode):o}): chmod 600 it')
            if info.st_uid != os.geteuid():
                raise ConfigError(f'tokens file {path} must belong to the user running '
                                  'xend-rest')
            text = f.read(MAX_TOKENS_FILE + 1)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f'cannot read tokens file {path}: {err}') from None
    if len(text) > MAX_TOKENS_FILE:
        raise ConfigError(f'tokens file {path} is larger than {MAX_TOKENS_FILE} characters')
    lines = text.splitlines()
    tokens = {}
    for number, line in enumerate(lines, 1):
        fields = line.split('#', 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise ConfigError(f'{path}:{number}: expected TOKEN ROLE[@CONNECTION,...] [NAME]')
        try:
            token, grant = fields[0], parse_grant(fields[1])
        except ConfigError as err:
            raise ConfigError(f'{path}:{number}: {err}') from None
        if len(token) < MIN_TOKEN_LENGTH or token in tokens:
            raise ConfigError(f'{path}:{number}: a token must be unique and at least '
                              f'{MIN_TOKEN_LENGTH} characters')
        tokens[token] = (grant, fields[2] if len(fields) == 3 else f'line {number}')
    if not tokens:
        raise ConfigError(f'tokens file {path} holds no token')
    return tokens


def parse_tls_clients(text):
    """{CN: Grant} from 'alice bob:operator monitor:read@dom0-a,dom0-b' (a CN without a role
    is admin; a role without '@' covers every connection)."""
    clients = {}
    for item in text.split():
        name, _, grant = item.partition(':')
        clients[name] = parse_grant(grant or ADMIN)
    return clients


def tls_context(cert, key=None, ca=None):
    """A server SSLContext: TLS 1.2+, and with a CA, client certificates required and verified."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if ca:
            context.load_verify_locations(ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f'cannot load TLS certificate, key or CA: {err}') from None
    return context


def is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == 'localhost'


# Why a listener beyond loopback may not start (without --insecure), and what makes it safe.
UNAUTHENTICATED_LISTENER = ('nothing authenticates callers',
                            'set tls-cert and tls-key (HTTPS) with tls-ca (client certificates) '
                            'or tokens-file')
CLEARTEXT_TOKENS = ('bearer tokens would cross the network in cleartext, for anyone on the path '
                    'to read and replay', 'set tls-cert and tls-key (HTTPS)')


def exposed_listeners(listen_hosts, tls, tls_verifies_clients, tokens):
    """(hosts, (why, fix)): the TCP hosts that listen beyond this machine unsafely, and why;
    ([], (None, None)) if none does. A bearer token is a password: beyond loopback it needs TLS."""
    remote = [host for host in listen_hosts if not is_loopback(host)]
    if not remote or tls_verifies_clients or (tokens and tls):
        return [], (None, None)
    return remote, CLEARTEXT_TOKENS if tokens else UNAUTHENTICATED_LISTENER
