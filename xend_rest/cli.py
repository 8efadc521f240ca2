"""The xend-rest command: arguments, configuration file, logging, then the server."""

import argparse
import configparser
import grp
import logging
import os
import socket
import sys
from urllib.parse import urlsplit

from xend_rest import defaults, names, security, tickets
from xend_rest.listeners import parse_listen
from xend_rest.server import Server

log = logging.getLogger('xend_rest')

CONFIG_SECTION = 'xend-rest'
CONNECTION_SECTION = 'connection'  # [connection NAME]: a hypervisor served under /libvirt/NAME/
LOG_LEVELS = ('DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')
M_ARENA_MAX = -8  # glibc's mallopt() parameter: the most malloc arenas there may be


def listen_address(spec):
    """argparse type for --listen: the spec itself, once it parses."""
    try:
        parse_listen(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return spec


def positive(kind):
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f'expected a positive number, not {text!r}')
        return value
    return convert


def octal_mode(text):
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f'expected an octal file mode such as 660, not {text!r}')
    return mode


def yes_no(text):
    """A boolean setting, as configparser spells one (yes/no, true/false, on/off, 1/0)."""
    value = configparser.ConfigParser.BOOLEAN_STATES.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f'expected yes or no, not {text!r}')
    return value


def connect_spec(text):
    """argparse type for --connect: (name, URI) from NAME=URI."""
    name, equals, uri = text.partition('=')
    if not equals or not uri:
        raise argparse.ArgumentTypeError(f'expected NAME=URI, not {text!r}')
    try:
        return names.check(name), uri
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def words(text):
    return text.split()


def log_level(text):
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, not {text!r}")
    return text.upper()


# Configuration file keys: (key, argparse dest, type). `listen` is whitespace-separated.
CONFIG_KEYS = [
    ('uri', 'uri', str),
    ('listen', 'listen', None),
    ('log-level', 'log_level', log_level),
    ('workers', 'workers', positive(int)),
    ('concurrency', 'concurrency', positive(int)),
    ('timeout', 'timeout', positive(float)),
    ('state-dir', 'state_dir', str),
]
# Who may call, and how much they may send: see the README, "Security".
SECURITY_KEYS = [
    ('socket-mode', 'socket_mode', octal_mode),
    ('socket-group', 'socket_group', str),
    ('tls-cert', 'tls_cert', str),
    ('tls-key', 'tls_key', str),
    ('tls-ca', 'tls_ca', str),
    ('tls-allowed-clients', 'tls_allowed_clients', str),
    ('tokens-file', 'tokens_file', str),
    ('allowed-hosts', 'allowed_hosts', words),
    ('allowed-paths', 'allowed_paths', words),
    ('allow-host-devices', 'allow_host_devices', yes_no),
    ('allowed-origins', 'allowed_origins', words),
    ('max-body', 'max_body', positive(int)),
    ('max-head', 'max_head', positive(int)),
    ('request-timeout', 'request_timeout', positive(float)),
    ('watchers-per-caller', 'watchers_per_caller', positive(int)),
    ('max-uploads', 'max_uploads', positive(int)),
]
# How soon a libvirtd that stopped answering is given up (503/504 instead of a hang).
LIBVIRT_KEYS = [
    ('keepalive-interval', 'keepalive_interval', positive(int)),
    ('keepalive-count', 'keepalive_count', positive(int)),
    ('open-timeout', 'open_timeout', positive(float)),
]
# Console and screen sessions (docs/consoles.md).
CONSOLE_KEYS = [
    ('console-sessions', 'console_sessions', positive(int)),
    ('console-idle-timeout', 'console_idle_timeout', positive(float)),
    ('console-sessions-per-caller', 'console_sessions_per_caller', positive(int)),
    ('console-tickets-per-caller', 'console_tickets_per_caller', positive(int)),
]
CONFIG_KEYS += SECURITY_KEYS + LIBVIRT_KEYS + CONSOLE_KEYS
# A [connection NAME] section: its URI, and the libvirt settings it does not take from above.
CONNECTION_KEYS = [('uri', 'uri', str)] + LIBVIRT_KEYS
# Defaults of the settings above that have one (the others default to None: off).
SECURITY_DEFAULTS = {'socket_mode': defaults.SOCKET_MODE, 'allowed_hosts': [], 'allowed_paths': [],
                     'allow_host_devices': False, 'allowed_origins': [],
                     'max_body': defaults.MAX_BODY, 'request_timeout': defaults.REQUEST_TIMEOUT,
                     'max_head': defaults.MAX_HEAD, 'max_uploads': defaults.MAX_UPLOADS,
                     'watchers_per_caller': defaults.WATCHERS_PER_CALLER}
LIBVIRT_DEFAULTS = {'keepalive_interval': defaults.KEEPALIVE_INTERVAL,
                    'keepalive_count': defaults.KEEPALIVE_COUNT, 'open_timeout': defaults.OPEN_TIMEOUT}
CONSOLE_DEFAULTS = {'console_sessions': defaults.CONSOLE_SESSIONS,
                    'console_idle_timeout': defaults.CONSOLE_IDLE,
                    'console_sessions_per_caller': defaults.CONSOLE_SESSIONS_PER_CALLER,
                    'console_tickets_per_caller': defaults.CONSOLE_TICKETS_PER_CALLER}


def build_parser():
    parser = argparse.ArgumentParser(
        prog='xend-rest', description='Manage the virtual machines of a Xen host over HTTP, through libvirt.',
        epilog='Each setting comes from the command line, else $XEND_REST_URI (the URI only), '
               'else the configuration file, else the default.')
    parser.add_argument('--uri', help=f'libvirt URI of the connection named {names.DEFAULT} '
                                      f'(default: $XEND_REST_URI, else {defaults.DEFAULT_URI}, '
                                      'unless --connect or the configuration file names others)')
    parser.add_argument('--connect', action='append', type=connect_spec, metavar='NAME=URI',
                        help='one more hypervisor, served under /libvirt/NAME/; repeatable '
                             f'(NAME: {names.RULE}; see docs/connections.md)')
    parser.add_argument('--listen', action='append', type=listen_address, metavar='ADDRESS',
                        help=f'HOST:PORT, [IPV6]:PORT or unix:/path; repeatable (default: {defaults.DEFAULT_LISTEN[0]})')
    parser.add_argument('--config', metavar='FILE', help=f'INI file with a [{CONFIG_SECTION}] section '
                                                         f'and a [{CONNECTION_SECTION} NAME] one per connection')
    parser.add_argument('--log-level', type=log_level, help='DEBUG, INFO, WARNING, ERROR (default: INFO)')
    parser.add_argument('--workers', type=positive(int), help=f'worker threads at most (default: {defaults.WORKERS})')
    parser.add_argument('--concurrency', type=positive(int), metavar='N',
                        help='requests served at once while none stalls (default: '
                             f'{defaults.CONCURRENCY_IN_PROCESS} on the test driver, '
                             f'{defaults.CONCURRENCY_THROUGH_LIBVIRTD} through libvirtd)')
    parser.add_argument('--timeout', type=positive(float), help=f'socket timeout in seconds (default: {defaults.TIMEOUT:g})')
    parser.add_argument('--state-dir', metavar='DIR',
                        help='where what must outlive the daemon is kept: the markers of uploads '
                             f'under way (default: {defaults.STATE_DIR})')
    group = parser.add_argument_group('security (see the README, section Security)')
    group.add_argument('--socket-mode', type=octal_mode, help='mode of unix sockets (default: 660)')
    group.add_argument('--socket-group', metavar='GROUP', help='group of unix sockets (default: ours)')
    group.add_argument('--tls-cert', metavar='FILE', help='TLS server certificate: TCP listeners speak HTTPS')
    group.add_argument('--tls-key', metavar='FILE', help='its private key (default: in --tls-cert)')
    group.add_argument('--tls-ca', metavar='FILE', help='CA that client certificates must be signed by')
    group.add_argument('--tls-allowed-clients', metavar="'CN[:ROLE] ...'",
                       help='client certificate CNs allowed in, with their roles (default: any, admin)')
    group.add_argument('--tokens-file', metavar='FILE', help="bearer tokens: 'TOKEN ROLE [NAME]' lines, mode 600")
    group.add_argument('--allowed-hosts', type=words, metavar="'NAME ...'",
                       help="Host names accepted besides loopback, the host's names and the listen addresses")
    group.add_argument('--allowed-paths', type=words, metavar="'DIR ...'",
                       help='directories that every host path of a definition (disks, kernels, bootloaders, '
                            'devices) may point into; also refuses xen:/qemu:commandline, bootloader_args '
                            'and host devices (default: anywhere)')
    group.add_argument('--allow-host-devices', action='store_true', default=None,
                       help='with --allowed-paths, still let definitions hand host PCI, USB, SCSI, NVMe '
                            'and smartcard devices to guests (default: refused)')
    group.add_argument('--allowed-origins', type=words, metavar="'ORIGIN ...'",
                       help='web pages (https://host[:port]) that may open a console or screen with a '
                            'ticket (default: none)')
    group.add_argument('--max-body', type=positive(int), metavar='BYTES', help='largest JSON body (default: 1 MiB)')
    group.add_argument('--max-head', type=positive(int), metavar='BYTES',
                       help='largest request line, and request head: 414 and 431 past it (default: 65536)')
    group.add_argument('--request-timeout', type=positive(float), metavar='SECONDS',
                       help='deadline for a request body of up to --max-body; larger ones (uploads) '
                            'may take longer while they keep coming (default: 60)')
    group.add_argument('--watchers-per-caller', type=positive(int), metavar='N',
                       help='event streams and waits one caller (token, certificate, unix user) may '
                            f'hold at once, of {defaults.WATCHERS} on all connections together; past '
                            f'it 429 (default: {defaults.WATCHERS_PER_CALLER})')
    group.add_argument('--max-uploads', type=positive(int), metavar='N',
                       help='request bodies larger than --max-body (image uploads) received at once, '
                            'each holding a worker: 503 past it; with event streams and waits, at '
                            f'most --workers minus --concurrency (default: {defaults.MAX_UPLOADS})')
    group.add_argument('--insecure', action='store_true',
                       help='allow TCP beyond loopback without TLS client certificates or tokens, or with '
                            'tokens but without TLS')
    group = parser.add_argument_group('libvirt connection')
    group.add_argument('--keepalive-interval', type=positive(int), metavar='SECONDS',
                       help=f'libvirt keepalive probe interval (default: {defaults.KEEPALIVE_INTERVAL})')
    group.add_argument('--keepalive-count', type=positive(int), metavar='N',
                       help=f'unanswered probes before the connection is given up: 504 (default: {defaults.KEEPALIVE_COUNT})')
    group.add_argument('--open-timeout', type=positive(float), metavar='SECONDS',
                       help=f'longest wait for a new libvirt connection (default: {defaults.OPEN_TIMEOUT:g})')
    group = parser.add_argument_group('consoles and screens')
    group.add_argument('--console-sessions', type=positive(int), metavar='N',
                       help=f'sessions open at once; past it 429 (default: {defaults.CONSOLE_SESSIONS})')
    group.add_argument('--console-idle-timeout', type=positive(float), metavar='SECONDS',
                       help=f'a session without input or output is closed after (default: {defaults.CONSOLE_IDLE:g})')
    group.add_argument('--console-sessions-per-caller', type=positive(int), metavar='N',
                       help='sessions one caller (token, certificate, unix user) may hold at '
                            f'once; past it 429 (default: {defaults.CONSOLE_SESSIONS_PER_CALLER})')
    group.add_argument('--console-tickets-per-caller', type=positive(int), metavar='N',
                       help='console tickets one caller may have outstanding (each lives '
                            f'{tickets.LIFETIME} s, of {tickets.MAX_TICKETS} in all); past it 429 '
                            f'(default: {defaults.CONSOLE_TICKETS_PER_CALLER})')
    parser.add_argument('--demo', action='store_true',
                        help='serve an in-memory libvirt test hypervisor instead of Xen')
    return parser


def read_config(path, parser):
    """The settings of the [xend-rest] section of an INI file, as argparse dests, and under
    "connections" those of each [connection NAME] section: {name: {dest: value}}."""
    config = configparser.ConfigParser()
    try:
        with open(path) as f:
            config.read_file(f)
    except (OSError, configparser.Error) as err:
        parser.error(f'cannot read configuration file {path}: {err}')
    settings = {}
    if config.has_section(CONFIG_SECTION):
        settings = _section_settings(config[CONFIG_SECTION], CONFIG_KEYS, path, parser)
    connections = settings['connections'] = {}
    for title in config.sections():
        kind, _, name = title.partition(' ')
        if kind != CONNECTION_SECTION:
            continue
        try:
            names.check(name.strip())
        except ValueError as err:
            parser.error(f'{path}: [{title}]: {err}')
        connections[name.strip()] = _section_settings(config[title], CONNECTION_KEYS, path, parser)
    return settings


def _section_settings(section, keys, path, parser):
    unknown = set(section) - {key for key, _, _ in keys}
    if unknown:
        parser.error(f"{path}: unknown key(s) in [{section.name}]: {', '.join(sorted(unknown))}")
    settings = {}
    for key, dest, kind in keys:
        if key not in section:
            continue
        try:
            if key == 'listen':
                settings[dest] = [listen_address(spec) for spec in section[key].split()]
            else:
                settings[dest] = kind(section[key])
        except argparse.ArgumentTypeError as err:
            parser.error(f'{path}: [{section.name}] {key}: {err}')
    return settings


def parse_args(argv=None):
    """Parsed arguments, with the configuration file and defaults filled in."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from_file = read_config(args.config, parser) if args.config else {'connections': {}}
    args.connections = settle_connections(args, from_file, parser)
    settled = {'listen': from_file.get('listen') or list(defaults.DEFAULT_LISTEN),
               'log_level': from_file.get('log_level', 'INFO'),
               'workers': from_file.get('workers', defaults.WORKERS),
               'concurrency': from_file.get('concurrency'),  # None: from the URIs, in main()
               'timeout': from_file.get('timeout', defaults.TIMEOUT),
               'state_dir': from_file.get('state_dir', defaults.STATE_DIR)}
    settled.update({dest: from_file.get(dest, SECURITY_DEFAULTS.get(dest))
                    for _, dest, _ in SECURITY_KEYS})
    settled.update({dest: from_file.get(dest, LIBVIRT_DEFAULTS[dest])
                    for _, dest, _ in LIBVIRT_KEYS})
    settled.update({dest: from_file.get(dest, CONSOLE_DEFAULTS[dest])
                    for _, dest, _ in CONSOLE_KEYS})
    for dest, value in settled.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    # A [connection NAME] section's own libvirt settings beat the global ones, wherever from.
    sections = from_file['connections']
    for connection in args.connections:
        for _, dest, _ in LIBVIRT_KEYS:
            connection[dest] = sections.get(connection['name'], {}).get(dest, getattr(args, dest))
    return args


def settle_connections(args, from_file, parser):
    """[{"name": ..., "uri": ...}], each URI from the command line, else $XEND_REST_URI (the
    default connection's only), else the configuration file. The default connection is there
    when something names it, or when nothing names any connection: as before there were several."""
    sections = from_file['connections']
    default_section = sections.get(names.DEFAULT, {})
    if 'uri' in from_file and 'uri' in default_section:
        parser.error(f'{args.config}: uri and [{CONNECTION_SECTION} {names.DEFAULT}] uri both '
                     f'set the connection {names.DEFAULT}')
    uris = {name: section['uri'] for name, section in sections.items() if 'uri' in section}
    if 'uri' in from_file:
        uris[names.DEFAULT] = from_file['uri']
    if os.environ.get(defaults.URI_VARIABLE):
        uris[names.DEFAULT] = os.environ[defaults.URI_VARIABLE]
    given = [name for name, _ in args.connect or []] + [names.DEFAULT] * bool(args.uri)
    repeated = sorted({name for name in given if given.count(name) > 1})
    if repeated:
        parser.error(f"the connection {', '.join(repeated)} is given twice "
                     f"(--uri is --connect {names.DEFAULT}=URI)")
    uris.update(args.connect or [])
    if args.uri:
        uris[names.DEFAULT] = args.uri
    if names.DEFAULT not in uris and (not uris or names.DEFAULT in sections):
        uris[names.DEFAULT] = defaults.DEFAULT_URI
    missing = sorted(set(sections) - set(uris))
    if missing:
        parser.error(f'{args.config}: [{CONNECTION_SECTION} {missing[0]}] has no uri')
    args.uri = uris.get(names.DEFAULT)  # the default connection's, as before there were several
    return [{'name': name, 'uri': uri} for name, uri in uris.items()]


def default_concurrency(uris):
    """Requests served at once: one while every connection is to the test driver (a request
    computes, in this process); more where libvirtd answers (a request mostly waits)."""
    in_process = all(parts.scheme == 'test' and not parts.netloc for parts in map(urlsplit, uris))
    return defaults.CONCURRENCY_IN_PROCESS if in_process else defaults.CONCURRENCY_THROUGH_LIBVIRTD


def setup_logging(level):
    # journald stamps each line itself; elsewhere a timestamp helps.
    fmt = '%(levelname)s %(name)s: %(message)s'
    if not os.environ.get('JOURNAL_STREAM'):
        fmt = '%(asctime)s ' + fmt
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    # The format shows no caller, thread or process: do not gather them for every record (the
    # logging HOWTO's "Optimization"). At INFO that is one access-log line per request.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def main(argv=None):
    one_malloc_arena()  # first: before libvirt or the server starts a thread
    args = parse_args(argv)
    setup_logging(args.log_level)
    from xend_rest.app import make_app  # after logging: importing libvirt may log
    from xend_rest.connection import SharedConnection
    from xend_rest.bridges import Bridges
    if args.demo:
        from xend_rest.demo import demo_uri
        args.uri = demo_uri()
        args.connections = [c for c in args.connections if c['name'] != names.DEFAULT]
        args.connections.insert(0, {'name': names.DEFAULT, 'uri': args.uri, **{
            dest: getattr(args, dest) for _, dest, _ in LIBVIRT_KEYS}})
        log.warning('*** DEMO MODE: serving an in-memory libvirt TEST hypervisor (%s), NOT Xen; '
                    'nothing here touches real virtual machines ***', args.uri)
    connections = {}
    for c in args.connections:
        log.info('connection %s: libvirt URI %s', c['name'], c['uri'])
        connections[c['name']] = SharedConnection(
            c['uri'], keepalive_interval=c['keepalive_interval'],
            keepalive_count=c['keepalive_count'], open_timeout=c['open_timeout'])
    try:
        guard, tls, gid = build_security(args)
        consoles = Bridges(args.console_sessions, args.console_idle_timeout,
                           per_owner=args.console_sessions_per_caller)
        state_dir = None if args.demo else usable_state_dir(args.state_dir)  # demo: all in memory
        app = make_app(connections=connections, guard=guard, max_body=args.max_body,
                       consoles=consoles, watchers_per_caller=args.watchers_per_caller,
                       state_dir=state_dir)
    except security.ConfigError as err:
        log.error('refusing to start: %s', err)
        return 2
    concurrency = args.concurrency or default_concurrency(c['uri'] for c in args.connections)
    server = Server(app, args.listen, workers=args.workers, concurrency=concurrency,
                    timeout=args.timeout, tls=tls,
                    request_timeout=args.request_timeout, max_body=args.max_body,
                    max_head=args.max_head, max_uploads=args.max_uploads,
                    socket_mode=args.socket_mode, socket_gid=gid, on_shutdown=app.end_streams,
                    screen=app.screen, release_memory=release_freed_memory,
                    on_refused=app.refused)  # tickets in requests the server refuses: spent
    release_freed_memory()
    try:
        server.serve_forever()
    except OSError as err:
        log.error('cannot listen: %s', err)
        return 1
    finally:
        app.close()
    return 0


def usable_state_dir(path):
    """The state directory, which the first upload creates (mode 700) if need be; a warning if
    it cannot be written, since uploads are refused then: their markers could not be kept."""
    existing = os.path.abspath(path)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        log.warning('state-dir %s cannot be written: image uploads will be refused (500 '
                    'state_unwritable) until it can', path)
    return path


def one_malloc_arena():
    """Have every thread allocate from glibc's main arena. By default each thread that allocates
    gets an arena of its own, up to 8 per core, and a worker's kept about 70 KiB resident after
    load (0.7 MiB for a pool of 10); the GIL serialises most of our allocations anyway, so the
    threads hardly contend for the one arena. Only arenas made afterwards are affected: call it
    before any thread starts."""
    _libc_call('mallopt', M_ARENA_MAX, 1)


def release_freed_memory():
    """Hand back to the kernel the free pages of glibc's heap, which it keeps below the top of
    the heap until asked: those start-up freed (about 1.5 MiB measured, most of it from
    importing), and (the server calls it) those of request bodies let go: after 64 bodies of
    1 MiB on their way at once, 29 MiB stayed resident without it, 1 MiB with it (0.1 ms)."""
    _libc_call('malloc_trim', 0)


def _libc_call(name, *args):
    try:
        import ctypes
        getattr(ctypes.CDLL(None), name)(*args)
    except (ImportError, OSError, AttributeError):
        pass  # no ctypes, or a C library without the call (not glibc): nothing to ask


def build_security(args):
    """The Guard, the TLS context and the unix sockets' group; ConfigError if unsafe or unreadable."""
    if (args.tls_key or args.tls_ca) and not args.tls_cert:
        raise security.ConfigError('tls-key and tls-ca need tls-cert')
    if args.tls_allowed_clients and not args.tls_ca:
        raise security.ConfigError('tls-allowed-clients needs tls-ca (client certificates)')
    tokens = security.load_tokens(args.tokens_file) if args.tokens_file else None
    tls = security.tls_context(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    clients = security.parse_tls_clients(args.tls_allowed_clients) if args.tls_allowed_clients else None
    tcp_hosts = [address[0] for family, address in map(parse_listen, args.listen)
                 if family != socket.AF_UNIX]
    exposed, (why, fix) = security.exposed_listeners(tcp_hosts, tls is not None,
                                                     bool(args.tls_ca), tokens)
    if exposed and not args.insecure:
        raise security.ConfigError(f"{', '.join(exposed)} is reachable from other machines, and "
                                   f"{why}: {fix}, or pass --insecure")
    if exposed:
        log.warning('*** INSECURE: %s is reachable from other machines, and %s: whoever '
                    'gets in controls every VM of this host ***', ', '.join(exposed), why)
    elif tcp_hosts and not (args.tls_ca or tokens):
        log.warning('TCP listener without authentication: every local user can control every VM')
    guard = security.Guard(tokens, clients, args.allowed_hosts + tcp_hosts, args.allowed_paths,
                           args.allowed_origins, allow_host_devices=args.allow_host_devices,
                           tickets=tickets.Tickets(per_caller=args.console_tickets_per_caller))
    for connection in args.connections if args.allowed_paths else ():
        if security.is_remote(connection['uri']):
            log.warning("allowed-paths: connection %s is on another host, whose symlinks this "
                        "daemon cannot see: its paths are judged as spelt ('..' and '//' "
                        "resolved), see docs/security.md", connection['name'])
    for path in args.allowed_paths:
        if not os.path.isdir(path):
            log.warning("allowed-paths: %s is no directory this daemon can see (the shipped "
                        "unit hides /home and gives it a /tmp and a /dev of its own): names in "
                        "it are judged as spelt, links the host has there are not seen, see "
                        "docs/security.md", path)
    return guard, tls, _group_id(args.socket_group)


def _group_id(group):
    if group is None:
        return -1
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise security.ConfigError(f'socket-group: no such group {group!r}') from None
