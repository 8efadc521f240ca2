"""Who may call which route, from where, with what body: the access policy, as a Guard that reads
each route's row (routes.py).

Whoever can call this API is root on dom0, so every route needs a role (a row without one:
admin), every request must come from the daemon's own names and never from a browser page, and
host paths in a definition may be confined to a few directories.
"""
import functools
import hmac
import ipaddress
import os
import re
import socket
import ssl
import stat
import xml.etree.ElementTree as ElementTree
from collections import Counter, namedtuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

import libvirt

from . import convert, defaults
from .errors import HTTPError, bad_request, is_connection_error
from .headers import content_length, media_type
from .names import check as check_name
from .params import is_whole
from .tickets import PARAMETER as TICKET, Tickets, target_of
from .routes import ADMIN, ROLES
from .handlers import images
from .schema_paths import SCHEMA_PATHS

# Places whose values are host paths although libvirt's schema types them as plain text: found by
# defining libvirt's own test definitions and reading back what it stored (tests/
# test_schema_paths.py). Judged like the schema's own (schema_paths.SCHEMA_PATHS).
TEXT_TYPED_PATHS = {
    ('source', '@path'): 'path',  # a character device's file, device or socket (serial, channel...)
    ('source', '@master'): 'path', ('source', '@slave'): 'path',  # nmdm character devices
    ('bootloader', '#text'): 'path',  # the program Xen runs to boot a PV guest
    ('entry', '@file'): 'path',  # <sysinfo type='fwcfg'>: a file QEMU hands the guest
    ('lease', 'target', '@path'): 'path',  # a lock manager's lease file
    ('graphics', '@xauth'): 'path',  # SDL's X authority file
}
PATH_PLACES = {**SCHEMA_PATHS, **TEXT_TYPED_PATHS}
# Places whose values name no host file, though they may start with '/': every other value that
# does is judged as a path too, wherever it stands (a place libvirt may add after this table). A
# place starting with 'domain' is that place only, never the same names deeper down: their text
# is also left out of the text of the elements around them (see _read).
NOT_HOST_PATHS = {
    ('domain', 'resource', 'partition', '#text'),  # a cgroup partition (/machine)
    ('domain', 'os', 'cmdline', '#text'),  # the kernel's command line (root=/dev/xvda1)
    ('domain', 'description', '#text'), ('domain', 'title', '#text'),  # free text
    ('filesystem', 'target', '@dir'),  # where the guest mounts it
    ('source', '@name'),  # network disks: a name on the storage server
}
# Places that pass a program options, which may name any host file: refused while allowed-paths
# is set. libxl puts a bootloader's after its own --output and --output-directory, so pygrub
# would write what it reads from the guest's disk wherever they say.
OPTIONS = {('domain', 'bootloader_args', '#text')}
# Elements that hand a host device to the guest (when their attribute says so), with no path:
# refused while allowed-paths is set, unless allow-host-devices.
HOST_DEVICES = {'hostdev': None, 'interface': ('@type', 'hostdev'), 'smartcard': ('@mode', 'host'),
                'disk': ('@type', 'nvme'), 'backingStore': ('@type', 'nvme'),
                'mirror': ('@type', 'nvme')}
# Elements that give the guest a host directory (<source dir=...>): the guest of a writable one
# can make links and files there, which the hypervisor then follows or reads for another domain
# (a disk named before it exists): refused while allowed-paths is set, unless <readonly/>.
DIRECTORY_SHARES = ('filesystem', 'disk')
# The longest name the kernel opens, in bytes with its NUL (a longer one fails, ENAMETOOLONG): a
# longer value is refused where a path is expected, and is no path elsewhere. (This also bounds
# the time realpath takes: about 20 us a component.)
PATH_MAX = 4096
# A name without '/' (not '.' or '..'): what a consumer looks up in directories of its own.
BARE_NAME = re.compile(r'(?!\.\.?\Z)[^/\x00]+\Z')
# An ALSA device as alsa-lib names a card's PCM: a plugin that opens only sound devices, with
# card and device arguments (the file and ladspa plugins, which open host files, are not here).
ALSA_DEVICE = re.compile(r'(default|sysdefault|hw|plughw|dmix|dsnoop|front|rear|center_lfe|side'
                         r'|surround[0-9]{2}|iec958|hdmi)(:[A-Za-z0-9_=,]+)?\Z')
# Values at path places that name no host file a client chooses: (place, driver (None: any),
# (element of the place, attribute, value) it needs, or None, the form of such a value).
NAMES = [
    # libxl runs a relative interface script from Xen's script directory (/etc/xen/scripts,
    # libxl__abs_path), which only root controls
    (('interface', 'script', '@path'), 'xen', None, BARE_NAME),
    # libxl runs a bootloader without '/' from its private binary directory
    # (/usr/lib/xen-<version>/bin) if there, else from libvirtd's PATH: root's directories
    (('domain', 'bootloader', '#text'), 'xen', None, BARE_NAME),
    # an ALSA device is a name alsa-lib resolves (hw:0), not a file
    (('audio', 'input', '@dev'), None, ('audio', 'type', 'alsa'), ALSA_DEVICE),
    (('audio', 'output', '@dev'), None, ('audio', 'type', 'alsa'), ALSA_DEVICE),
]

# The most names a place of these tables has (_at looks no further).
LONGEST_PLACE = max(len(place) for table in (PATH_PLACES, NOT_HOST_PATHS, OPTIONS,
                                             [tail for tail, *_ in NAMES]) for place in table)

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
        # A plain role where a Grant goes covers every connection (as before there were several).
        self.tokens = {token: (_as_grant(grant), name)  # token -> (Grant, name)
                       for token, (grant, name) in (tokens or {}).items()}
        # None (any verified client is admin) or {CN: Grant}
        self.tls_clients = None if tls_clients is None else {
            name: _as_grant(grant) for name, grant in tls_clients.items()}
        self.allowed_hosts = own_names() | {_host_name(host) for host in allowed_hosts}
        self.allowed_paths = [os.path.realpath(path) for path in allowed_paths]
        # As a hypervisor on another host reads them: the daemon cannot see its links.
        self.remote_allowed_paths = [_lexical(path) for path in allowed_paths]
        self.allow_host_devices = allow_host_devices
        # Pages that may open a console or a screen, with a ticket and nothing else.
        self.allowed_origins = {origin_name(origin) for origin in allowed_origins}
        self.tickets = Tickets() if tickets is None else tickets

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
            # Its role, on the one connection it was issued for, for whoever asked for it.
            request.role, request.connections = request.ticket.role, {request.ticket.hypervisor}
            caller = request.ticket.caller
        else:
            (request.role, request.connections), caller = self._grant(environ, transport, known)
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
            doc = request.json()
            where = next(hypervisor_elements(doc), None)
            if where is not None:
                raise HTTPError(403, f"{where}: elements in a hypervisor's namespace "
                                '(xen:commandline, qemu:commandline, ...) pass anything to the '
                                'device model, so they are refused while allowed-paths is set',
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
        """(the Grant, the caller) of the credentials that decide: a bearer token, else the
        unix peer or the client certificate (`known`: the connection's caller); 401 or 403
        without acceptable ones."""
        authorization = environ.get('HTTP_AUTHORIZATION')
        if authorization is not None and self.tokens:
            grant, name = self._token_grant(authorization)
            return grant, caller_name('token', name)
        if transport == 'unix':
            # the socket's owner, group and mode decided who got this far
            return EVERYTHING, ANONYMOUS if known == NOBODY else known
        # With an allow-list, a certificate must name an allowed CN: one without a CN gets nothing.
        subject = environ.get('xend_rest.client_subject')
        if transport == 'tls' and (self.tls_clients is not None or subject):
            return self._client_grant(subject), known
        if self.tokens:
            raise HTTPError(401, 'authentication required: send Authorization: Bearer <token>',
                            'unauthorized', UNAUTHENTICATED)
        # no authentication configured: start-up allowed this only on loopback
        return EVERYTHING, ANONYMOUS

    def _token_grant(self, authorization):
        scheme, _, token = authorization.partition(' ')
        found = None
        # Compare with every token, in constant time each: timing reveals nothing.
        for known, entry in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                found = entry
        if scheme.lower() != 'bearer' or found is None:
            raise HTTPError(401, 'the bearer token is not valid', 'unauthorized',
                            [('WWW-Authenticate', 'Bearer realm="xend-rest", error="invalid_token"')])
        return found

    def _client_grant(self, subject):
        common_name = client_cn(subject or ())
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


def sent_xml(doc):
    """The XML libvirt is sent for a JSON definition ({"domain": ...}) or one device, parsed
    back: ours, from convert (no DOCTYPE, no entities), so every spelling question (lists,
    #text, prefixes, order) is answered by the same serialisation libvirt reads. 400 for what
    convert refuses."""
    domain = isinstance(doc, dict) and 'domain' in doc
    return ElementTree.fromstring(convert.dict_to_xml(doc, 'domain') if domain
                                  else convert.device_to_xml(doc))


def read_elements(root, name):
    """The elements of a definition with this name, but those in <metadata> (never read)."""
    unread = {id(element) for metadata in (root.findall('metadata') if root.tag == 'domain' else ())
              for element in metadata.iter()}
    return [element for element in root.iter(name) if id(element) not in unread]


def driver_of(uri):
    """The libvirt driver a URI names: 'xen' for xen:///system and xen+tls://dom0/system."""
    return urlsplit(uri).scheme.partition('+')[0]


def host_access(root, driver=None):
    """(where, kind, value) for what a definition (or one device) reaches on the host, read from
    the XML libvirt is sent (sent_xml) as libvirt reads it: attributes by their local names, an
    element's text as all the text inside it (XPath's string value, children's included). A
    value at a place PATH_PLACES names (kind 'path' or 'dbus') unless it is one of the NAMES the
    `driver` resolves itself, any other value starting with '/' ('absolute'), the (pool, volume)
    of a volume disk ('volume'), a host device ('device'), a program's options ('options'), a
    writable host directory ('share'). <metadata> is never read."""
    found = []
    if root.tag == 'domain':
        _read(root, ('domain',), (root.attrib,), 'domain', driver, found)
    else:
        chain = ('domain', 'devices', _local(root.tag))
        _read(root, chain, ({}, {}, root.attrib), chain[-1], driver, found)
    return found


def _read(element, chain, owners, where, driver, found):
    """Add what `element` and its children reach to `found`; its text as libvirt reads it.
    `owners`: the attributes of each element of `chain`."""
    attributes = {_local(name): value for name, value in element.attrib.items()}
    if chain[-1] == 'source' and 'pool' in attributes and 'volume' in attributes:
        found.append((where, 'volume', (attributes['pool'], attributes['volume'])))
    for name, value in attributes.items():
        _judge(chain + ('@' + name,), owners, f'{where}.@{name}', value, driver, found)
    text = [element.text or '']
    names = [_local(child.tag) for child in element]
    repeated, seen = Counter(names), Counter()
    for child, name in zip(element, names):
        inner = chain + (name,)
        if inner != ('domain', 'metadata'):
            index = f'[{seen[name]}]' if repeated[name] > 1 else ''
            seen[name] += 1
            value = _read(child, inner, owners + (child.attrib,), f'{where}.{name}{index}',
                          driver, found)
            if _at(inner + ('#text',), NOT_HOST_PATHS) is None:
                text.append(value)
        text.append(child.tail or '')
    text = ''.join(text)
    if text:
        spelt = f'{where}.#text' if attributes or len(element) else where  # as Inspect shows it
        _judge(chain + ('#text',), owners, spelt, text, driver, found)
    if chain[-1] in DIRECTORY_SHARES and 'readonly' not in names:
        found += [(where, 'share', source.get('dir')) for source in element
                  if _local(source.tag) == 'source' and source.get('dir') is not None]
    device = HOST_DEVICES.get(chain[-1], False)  # after its paths, the more telling refusal
    if device is None or device and attributes.get(device[0][1:]) == device[1]:
        found.append((where, 'device', chain[-1]))
    return text


def _judge(place, owners, where, value, driver, found):
    """Add (where, kind, value) to `found` if the value at `place` reaches the host."""
    if _at(place, OPTIONS) is not None:
        found.append((where, 'options', value))
    elif _at(place, NOT_HOST_PATHS) is None:
        key = _at(place, PATH_PLACES)
        if key is not None:
            if not _names_no_file(place, owners, value, driver):
                found.append((where, PATH_PLACES[key], value))
        elif value.strip().startswith('/') and len(value.encode('utf-8', 'surrogatepass')) < PATH_MAX:
            found.append((where, 'absolute', value))  # (a longer text is no name the kernel opens)


def _names_no_file(place, owners, value, driver):
    """Whether the value at a path place is one of the NAMES: resolved by its consumer to no
    host file the client chooses (a script in Xen's own directory, an ALSA device)."""
    for tail, consumer, needs, form in NAMES:
        if _at(place, {tail}) is None or consumer not in (None, driver):
            continue
        owner = owners[len(place) - len(tail)]  # the attributes of the tail's first element
        if (needs is None or owner.get(needs[1]) == needs[2]) and form.match(value):
            return True
    return False


def _local(name):
    """A name's local part, as libvirt reads it: '{urn:x}file' (ElementTree's p:file) -> 'file'."""
    return name.rpartition('}')[2]


def _at(place, table):
    """The key of `table` that the place ends with (two names at least), or None. A key that
    starts with 'domain' is that place only, not a tail."""
    for length in range(2, min(len(place), LONGEST_PLACE) + 1):
        key = place[-length:]
        if key in table and (key[0] != 'domain' or length == len(place)):
            return key
    return None


def volume_path(conn, pool, volume):
    """The file a volume disk reaches, asked of the hypervisor's connection; None when libvirt
    cannot say (no such pool or volume yet, an inactive pool): nothing to judge it by."""
    try:
        return conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).path()
    except libvirt.libvirtError as err:
        if is_connection_error(err):
            raise
        return None
    except TypeError:  # a pool or volume name that is not a string
        return None


def dbus_socket(address):
    """The socket of a D-Bus address of the form unix:path=... (unescaped), else None: another
    transport, or several addresses, reach nothing the guard can judge."""
    transport, _, options = str(address).partition(':')
    if transport != 'unix' or ';' in options:
        return None
    fields = dict(option.partition('=')[::2] for option in options.split(','))
    return unquote(fields['path']) if 'path' in fields else None


def is_remote(uri):
    """Whether a libvirt URI reaches a hypervisor on another host (xen+tls://dom0.example/)."""
    host = urlsplit(uri).hostname
    return bool(host) and not is_loopback(host)


def _lexical(path):
    """An absolute path with '..', '.' and '//' resolved, links not followed."""
    return os.path.normpath('/' + path.lstrip('/'))


def hypervisor_elements(doc):
    """Where a definition puts elements in a namespace of its own at the top of <domain>: a
    prefixed name, or a default xmlns on <domain> or a child. There, libvirt reads a driver's
    extensions (xen:commandline, qemu:commandline), which no path check can see into."""
    domain = doc.get('domain') if isinstance(doc, dict) else None
    if not isinstance(domain, dict):
        return
    if '@xmlns' in domain:
        yield 'domain.@xmlns'
    for key, value in domain.items():
        if ':' in key and not key.startswith('@'):
            yield 'domain.' + key
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, dict) and '@xmlns' in child:
                yield f'domain.{key}.@xmlns'


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


def load_tokens(path):
    """{token: (Grant, name)} from a file of 'TOKEN ROLE[@CONNECTION,...] [NAME]' lines that
    only its owner may read."""
    try:
        with open(path) as f:
            info = os.fstat(f.fileno())
            lines = f.read().splitlines()
    except OSError as err:
        raise ConfigError(f'cannot read tokens file: {err}') from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f'tokens file {path} is accessible to group or others '
                          f'(mode {stat.S_IMODE(info.st_mode):o}): chmod 600 it')
    if info.st_uid != os.geteuid():
        raise ConfigError(f'tokens file {path} must belong to the user running xend-rest')
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
