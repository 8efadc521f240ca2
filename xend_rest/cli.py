"""The xend-rest command: arguments, configuration file, logging, then the server."""

import argparse
import configparser
import copy
import grp
import logging
import math
import os
import socket
import ssl
import sys
from collections import namedtuple
from urllib.parse import urlsplit

from xend_rest import defaults
from xend_rest.api import security, tickets
from xend_rest.api.app import AppSettings
from xend_rest.hypervisor import names
from xend_rest.hypervisor.libvirt_connection import LibvirtSettings
from xend_rest.server.listeners import parse_listen
from xend_rest.server.serving import Server, ServerSettings

log = logging.getLogger(__name__)

CONFIG_SECTION = 'xend-rest'
CONNECTION_SECTION = 'connection'  # [connection NAME]: a hypervisor served under /libvirt/NAME/
LOG_LEVELS = ('DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')
M_ARENA_MAX = -8  # glibc's mallopt() parameter: the most malloc arenas there may be
FROM_FIELD = object()  # an Option's default: its settings field's
SECURITY = 'security (see the README, section Security)'
# Exit statuses: the unit's RestartPreventExitStatus= names CONFIG_ERROR (a restart cannot fix
# it); LISTEN_ERROR is worth a restart (the address may be free again).
CONFIG_ERROR, LISTEN_ERROR = 2, 1
# What a reload (SIGHUP) reads again; other settings changed in the file wait for a restart.
RELOADED = ('tokens_file', 'tls_cert', 'tls_key', 'tls_ca', 'tls_allowed_clients')


class ArgumentParser(argparse.ArgumentParser):
    """argparse, whose errors are configuration errors (security.ConfigError): one line in the
    log, without the usage text, which is not what an administrator reads the journal for."""

    def error(self, message):
        raise security.ConfigError(message)


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
        if not 0 < value < math.inf:  # nan and inf too
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


class Option(namedtuple('Option', 'key type help metavar default', defaults=(None, FROM_FIELD))):
    """One setting: its flag --KEY and its key in the configuration file, the type that parses
    it (a list type: the flag repeats, and the file's value is whitespace-separated; yes_no:
    the flag takes no value), its --help text ('{default}' is filled in) and its default: the
    field of the same name of ServerSettings, AppSettings or LibvirtSettings (defaults.py), else
    `default`, else None (off). The value reaches each of those settings that has the field."""

    @property
    def dest(self):
        return self.key.replace('-', '_')


def repeated(kind):
    """A list type: a repeatable flag, or the file's whitespace-separated values, each parsed."""
    def convert(text):
        return kind(text)
    convert.repeated = True
    return convert


def _repeated(option):
    return getattr(option.type, 'repeated', False)


# Every setting, by group: a new one is its default in defaults.py (and its field in the
# settings of the layer that reads it) and a row here.
OPTIONS = {
    None: [
        Option('uri', str, f'libvirt URI of the connection named {names.DEFAULT} (default: '
               f'$XEND_REST_URI, else {defaults.DEFAULT_URI}, unless --connect or the '
               'configuration file names others)'),
        Option('listen', repeated(listen_address), 'HOST:PORT, [IPV6]:PORT or unix:/path; '
               f'repeatable (default: {defaults.DEFAULT_LISTEN[0]})', 'ADDRESS',
               list(defaults.DEFAULT_LISTEN)),
        Option('log-level', log_level, 'DEBUG, INFO, WARNING, ERROR (default: {default})',
               default='INFO'),
        Option('workers', positive(int), 'worker threads at most (default: {default})'),
        Option('concurrency', positive(int), 'requests served at once while none stalls (default: '
               f'{defaults.CONCURRENCY_IN_PROCESS} on the test driver, '
               f'{defaults.CONCURRENCY_THROUGH_LIBVIRTD} through libvirtd)', 'N', None),
        Option('timeout', positive(float), 'socket timeout in seconds (default: {default})'),
        Option('state-dir', str, 'where what must outlive the daemon is kept: the markers of '
               'uploads under way, each connection\'s maintenance (default: {default})', 'DIR',
               defaults.STATE_DIR),
    ],
    # Who may call, and how much they may send: see the README, "Security".
    SECURITY: [
        Option('socket-mode', octal_mode, 'mode of unix sockets (default: 660)'),
        Option('socket-group', str, 'group of unix sockets (default: ours)', 'GROUP'),
        Option('tls-cert', str, 'TLS server certificate: TCP listeners speak HTTPS', 'FILE'),
        Option('tls-key', str, 'its private key (default: in --tls-cert)', 'FILE'),
        Option('tls-ca', str, 'CA that client certificates must be signed by', 'FILE'),
        Option('tls-allowed-clients', str, 'client certificate CNs allowed in, with their roles '
               '(default: any, admin)', "'CN[:ROLE] ...'"),
        Option('tokens-file', str, "bearer tokens: 'TOKEN ROLE [NAME]' lines, mode 600", 'FILE'),
        Option('allowed-hosts', words, "Host names accepted besides loopback, the host's names "
               'and the listen addresses', "'NAME ...'", []),
        Option('allowed-paths', words, 'directories that every host path of a definition (disks, '
               'kernels, bootloaders, devices) may point into; also refuses '
               'xen:/qemu:commandline, bootloader_args and host devices (default: anywhere)',
               "'DIR ...'", []),
        Option('allow-host-devices', yes_no, 'with --allowed-paths, still let definitions hand '
               'host PCI, USB, SCSI, NVMe and smartcard devices to guests (default: refused)',
               default=False),
        Option('allowed-origins', words, 'web pages (https://host[:port]) that may open a console '
               'or screen with a ticket (default: none)', "'ORIGIN ...'", []),
        Option('max-body', positive(int), 'largest JSON body (default: 1 MiB)', 'BYTES'),
        Option('max-head', positive(int), 'largest request line, and request head: 414 and 431 '
               'past it (default: {default})', 'BYTES'),
        Option('request-timeout', positive(float), 'deadline for a request body of up to '
               '--max-body; larger ones (uploads) may take longer while they keep coming '
               '(default: {default})', 'SECONDS'),
        Option('watchers-per-caller', positive(int), 'event streams and waits one caller (token, '
               f'certificate, unix user) may hold at once, of {defaults.WATCHERS} on all '
               'connections together; past it 429 (default: {default})', 'N'),
        Option('max-uploads', positive(int), 'request bodies larger than --max-body (image '
               'uploads) received at once, each holding a worker: 503 past it; with event '
               'streams and waits, at most --workers minus --concurrency (default: {default})',
               'N'),
    ],
    # How soon a libvirtd that stopped answering is given up (503/504 instead of a hang); a
    # [connection NAME] section may set them for its connection.
    'libvirt connection': [
        Option('keepalive-interval', positive(int), 'libvirt keepalive probe interval (default: '
               '{default})', 'SECONDS'),
        Option('keepalive-count', positive(int), 'unanswered probes before the connection is '
               'given up: 504 (default: {default})', 'N'),
        Option('open-timeout', positive(float), 'longest wait for a new libvirt connection '
               '(default: {default})', 'SECONDS'),
        Option('migration-uri', str, "for migrations to this connection's host: the libvirt URI "
               "the source host's libvirtd reaches it by (default: the connection's URI)", 'URI'),
        Option('migration-address', str, "for migrations to this connection's host: where the "
               "guest's memory is sent, as libvirt's migration URI (default: libvirt's choice, "
               'from the host name)', 'URI'),
    ],
    # Console and screen sessions (docs/consoles.md).
    'consoles and screens': [
        Option('console-sessions', positive(int), 'sessions open at once; past it 429 (default: '
               '{default})', 'N'),
        Option('console-idle-timeout', positive(float), 'a session without input or output is '
               'closed after (default: {default})', 'SECONDS'),
        Option('console-sessions-per-caller', positive(int), 'sessions one caller (token, '
               'certificate, unix user) may hold at once; past it 429 (default: {default})', 'N'),
        Option('console-tickets-per-caller', positive(int), 'console tickets one caller may have '
               f'outstanding (each lives {tickets.LIFETIME} s, of {tickets.MAX_TICKETS} in all); '
               'past it 429 (default: {default})', 'N', defaults.CONSOLE_TICKETS_PER_CALLER),
    ],
    # Operations: long actions on threads of their own, kept in memory (docs/api.md).
    'operations': [
        Option('operation-threads', positive(int), 'operations running at once, on all '
               'connections; past it 503 (default: {default})', 'N'),
        Option('operations-kept', positive(int), 'finished operations kept to be read '
               '(default: {default})', 'N'),
        Option('operation-age', positive(float), 'how long a finished operation is kept '
               '(default: {default})', 'SECONDS'),
    ],
}
ALL_OPTIONS = [option for group in OPTIONS.values() for option in group]
SETTINGS = (ServerSettings, AppSettings, LibvirtSettings)  # each option fills its field in these
# A [connection NAME] section: its URI, and the libvirt settings it does not take from above.
CONNECTION_OPTIONS = [option for option in ALL_OPTIONS if option.dest == 'uri'
                      or option.dest in LibvirtSettings.__dataclass_fields__]


def default_of(option):
    """An option's value when neither the command line nor the configuration file gives one."""
    if option.default is not FROM_FIELD:
        return copy.copy(option.default)
    for settings in SETTINGS:
        field = settings.__dataclass_fields__.get(option.dest)
        if field is not None:
            return field.default
    return None


def settings_from(settings, values, **computed):
    """A settings object (ServerSettings...) of the options' values (argparse's namespace, or a
    connection's dict) that are its fields, and of those `computed` here from others."""
    values = values if isinstance(values, dict) else vars(values)
    return settings(**{name: values[name] for name in settings.__dataclass_fields__
                       if name in values and name not in computed}, **computed)


def build_parser():
    parser = ArgumentParser(
        prog='xend-rest', description='Manage the virtual machines of a Xen host over HTTP, through libvirt.',
        epilog='Each setting comes from the command line, else $XEND_REST_URI (the URI only), '
               'else the configuration file, else the default.')
    parser.add_argument('--connect', action='append', type=connect_spec, metavar='NAME=URI',
                        help='one more hypervisor, served under /libvirt/NAME/; repeatable '
                             f'(NAME: {names.RULE}; see docs/connections.md)')
    parser.add_argument('--config', metavar='FILE', help=f'INI file with a [{CONFIG_SECTION}] section '
                                                         f'and a [{CONNECTION_SECTION} NAME] one per connection')
    for title, options in OPTIONS.items():
        group = parser if title is None else parser.add_argument_group(title)
        if title == SECURITY:
            group.add_argument('--insecure', action='store_true',
                               help='allow TCP beyond loopback without TLS client certificates or '
                                    'tokens, or with tokens but without TLS')
        for option in options:
            shown = default_of(option)
            text = option.help.format(default=f'{shown:g}' if isinstance(shown, float) else shown)
            if option.type is yes_no:  # a switch: given, it is yes
                group.add_argument('--' + option.key, action='store_true', default=None, help=text)
            else:
                group.add_argument('--' + option.key, type=option.type, metavar=option.metavar,
                                   help=text, action='append' if _repeated(option) else None)
    parser.add_argument('--demo', action='store_true',
                        help='serve an in-memory libvirt test hypervisor instead of Xen')
    parser.add_argument('--check-config', action='store_true',
                        help='read the configuration, tokens file, TLS files and allowed clients '
                             'as a start would, print one line per problem, and exit: 0 if '
                             f'there is none, else {CONFIG_ERROR}')
    parser.add_argument('--reload', type=positive(int), metavar='PID',
                        help='have the daemon PID read its credentials again (SIGHUP) and wait '
                             "for its answer, for the unit's ExecReload=: 0 once it took them, "
                             f'else {CONFIG_ERROR} with its reason (it keeps the old ones)')
    return parser


def read_config(path, parser):
    """The settings of the [xend-rest] section of an INI file, as argparse dests, and under
    "connections" those of each [connection NAME] section: {name: {dest: value}}."""
    config = configparser.ConfigParser()
    try:
        with open(path, encoding='utf-8') as f:
            config.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as err:
        reason = ' '.join(str(err).split())  # configparser's spans lines: one line in the log
        parser.error(f'cannot read configuration file {path}: {reason}')
    settings = {}
    if config.has_section(CONFIG_SECTION):
        settings = _section_settings(config[CONFIG_SECTION], ALL_OPTIONS, path, parser)
    connections = settings['connections'] = {}
    for title in config.sections():
        kind, _, name = title.partition(' ')
        if kind != CONNECTION_SECTION:
            continue
        try:
            names.check(name.strip())
        except ValueError as err:
            parser.error(f'{path}: [{title}]: {err}')
        connections[name.strip()] = _section_settings(config[title], CONNECTION_OPTIONS, path,
                                                      parser)
    return settings


def _section_settings(section, options, path, parser):
    unknown = set(section) - {option.key for option in options}
    if unknown:
        parser.error(f"{path}: unknown key(s) in [{section.name}]: {', '.join(sorted(unknown))}")
    settings = {}
    for option in options:
        if option.key not in section:
            continue
        text = section[option.key]
        try:
            settings[option.dest] = ([option.type(value) for value in text.split()]
                                     if _repeated(option) else option.type(text))
        except argparse.ArgumentTypeError as err:
            parser.error(f'{path}: [{section.name}] {option.key}: {err}')
    return settings


def parse_args(argv=None):
    """Parsed arguments, with the configuration file and defaults filled in."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from_file = read_config(args.config, parser) if args.config else {'connections': {}}
    args.connections = settle_connections(args, from_file, parser)
    for option in ALL_OPTIONS:  # concurrency stays None unless given: from the URIs, in main()
        if option.dest != 'uri' and getattr(args, option.dest) is None:
            value = from_file.get(option.dest)  # an empty list (listen =) is no value either
            setattr(args, option.dest, default_of(option) if value in (None, []) else value)
    # A [connection NAME] section's own libvirt settings beat the global ones, wherever from.
    sections = from_file['connections']
    for connection in args.connections:
        for option in CONNECTION_OPTIONS:
            if option.dest != 'uri':
                connection[option.dest] = sections.get(connection['name'], {}).get(
                    option.dest, getattr(args, option.dest))
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


# sd-daemon(3)'s prefixes: the journal reads a line's priority from them.
JOURNAL_PRIORITIES = {logging.DEBUG: '<7>', logging.INFO: '<6>', logging.WARNING: '<4>',
                      logging.ERROR: '<3>', logging.CRITICAL: '<2>'}


class JournalFormatter(logging.Formatter):
    """Each line of a record (a traceback's too) prefixed with its level's journal priority."""

    def format(self, record):
        prefix = JOURNAL_PRIORITIES.get(record.levelno, '<6>')
        return '\n'.join(prefix + line for line in super().format(record).split('\n'))


def stderr_is_the_journal():
    """Whether stderr is the journal's stream, as $JOURNAL_STREAM (device:inode) says systemd
    connected it: not a stderr the daemon's own child got redirected elsewhere."""
    try:
        device, inode = map(int, os.environ['JOURNAL_STREAM'].split(':'))
        info = os.fstat(sys.stderr.fileno())
    except (KeyError, ValueError, OSError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


def setup_logging(level):
    # journald stamps each line itself and reads its priority from a prefix; elsewhere a
    # timestamp helps.
    fmt = '%(levelname)s %(name)s: %(message)s'
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_the_journal():
        handler.setFormatter(JournalFormatter(fmt))
    else:
        handler.setFormatter(logging.Formatter('%(asctime)s ' + fmt))
    logging.basicConfig(level=level, handlers=[handler])
    # The format shows no caller, thread or process: do not gather them for every record (the
    # logging HOWTO's "Optimization"). At INFO that is one access-log line per request.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def main(argv=None):
    one_malloc_arena()  # first: before libvirt or the server starts a thread
    setup_logging('INFO')  # before the arguments: an error in them is a log line too
    try:
        args = parse_args(argv)
    except security.ConfigError as err:
        return config_error(err, 'check_config' if '--check-config' in (
            sys.argv[1:] if argv is None else argv) else 'start')
    if args.reload:
        return ask_reload(args.reload)
    if args.check_config:
        return check_config(args)
    logging.getLogger().setLevel(args.log_level)
    configured = copy.copy(args)  # as parsed, before --demo: what a reload compares with
    from xend_rest.api.app import make_app  # after logging: importing libvirt may log
    from xend_rest.hypervisor.libvirt_connection import SharedConnection
    if args.demo:
        from xend_rest.demo import demo_uri
        args.uri = demo_uri()
        args.connections = [c for c in args.connections if c['name'] != names.DEFAULT]
        args.connections.insert(0, {'name': names.DEFAULT, 'uri': args.uri, **{
            option.dest: getattr(args, option.dest) for option in CONNECTION_OPTIONS}})
        log.warning('*** DEMO MODE: serving an in-memory libvirt TEST hypervisor (%s), NOT Xen; '
                    'nothing here touches real virtual machines ***', args.uri)
    connections = {}
    for c in args.connections:
        log.info('connection %s: libvirt URI %s', c['name'], c['uri'])
        connections[c['name']] = SharedConnection(c['uri'], settings_from(LibvirtSettings, c))
    try:
        guard, tls, gid = build_security(args)
        state_dir = None if args.demo else usable_state_dir(args.state_dir)  # demo: all in memory
        app = make_app(connections=connections, guard=guard,
                       settings=settings_from(AppSettings, args, state_dir=state_dir))
    except security.ConfigError as err:
        return config_error(err, 'start')
    concurrency = args.concurrency or default_concurrency(c['uri'] for c in args.connections)
    settings = settings_from(ServerSettings, args, concurrency=concurrency, tls=tls, socket_gid=gid)
    server = Server(app, args.listen, settings, on_shutdown=app.end_streams, screen=app.screen,
                    release_memory=release_freed_memory,
                    on_refused=app.refused,  # tickets in requests the server refuses: spent
                    on_reload=lambda: reload_credentials(argv, configured, app, server))
    release_freed_memory()
    try:
        server.serve_forever()
    except OSError as err:
        log.error('cannot listen: %s', err)
        return LISTEN_ERROR
    finally:
        app.close()
    return 0


def config_error(err, when):
    """Log each problem of a ConfigError as one line (no usage text); the exit status."""
    for problem in str(err).splitlines():
        if when == 'start':
            log.error('refusing to start: %s', problem)
        else:
            log.error('%s', problem)
    return CONFIG_ERROR


def check_config(args):
    """--check-config: everything a start reads and judges before it listens (the file, the
    tokens file, the TLS files, the allowed clients, the socket group, what each credential is
    limited to), without opening a connection or a listener; errors only, one line each."""
    logging.getLogger().setLevel(logging.ERROR)  # success prints nothing
    try:
        guard, _tls, _gid = build_security(args)
        guard.check_connections([c['name'] for c in args.connections])
    except security.ConfigError as err:
        return config_error(err, 'check_config')
    return 0


def ask_reload(pid, timeout=60.0):
    """--reload PID (the unit's ExecReload=): 0 once the daemon took its new credentials,
    CONFIG_ERROR with its reasons when it refused them, 1 without an answer."""
    from xend_rest.server import reloads
    try:
        state, message = reloads.reload_and_wait(pid, timeout)
    except (RuntimeError, OSError) as err:
        log.error('reload: %s', err)
        return 1
    if state != reloads.DONE:
        log.error('reload refused, the credentials in force stay: %s', message)
        return CONFIG_ERROR
    return 0


def reload_credentials(argv, started, app, server):
    """SIGHUP: the configuration file, tokens file, TLS certificate, key and CA, and allowed
    clients read again, as at start; new connections use them, open ones stay, but for event
    streams and console sessions whose credentials are gone. Returns the problems that made it
    keep the old ones ([] when it took the new)."""
    try:
        args = parse_args(argv)
        tokens, tls, clients = load_credentials(args)
        if (tls is None) != (server.tls is None):
            raise security.ConfigError('tls-cert was set or unset: that changes how the TCP '
                                       'listeners speak, which takes a restart')
        if (tcp_hosts(started) and authenticates(app.guard.tokens, server.tls)
                and not authenticates(tokens, tls)):
            raise security.ConfigError('neither tokens-file nor tls-ca is set any more: every '
                                       'client of the TCP listeners would get in without '
                                       'credentials, which takes a restart')
        security.Guard(tokens, clients).check_connections(app.hypervisors)
    except security.ConfigError as err:
        problems = str(err).splitlines()
        for problem in problems:
            log.error('reload refused, the credentials in force stay: %s', problem)
        return problems
    changed = [option.key for option in ALL_OPTIONS if option.dest not in RELOADED
               and getattr(args, option.dest) != getattr(started, option.dest)]
    if changed:
        log.warning('reload: %s changed, which takes a restart: not applied', ', '.join(changed))
    app.guard.set_credentials(tokens, clients)
    server.tls = tls
    ended = app.end_revoked()
    log.info('reloaded the tokens file, TLS certificate, key and CA and allowed clients; '
             '%d event streams and console sessions whose credentials are gone ended', ended)
    return []


def authenticates(tokens, tls):
    """Whether a TCP client must show a credential: a token, or a certificate (tls-ca)."""
    return bool(tokens) or (tls is not None and tls.verify_mode == ssl.CERT_REQUIRED)


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


def load_credentials(args):
    """(tokens, TLS context, TLS clients) as the settings and their files say, at start and at
    each reload; ConfigError naming every problem, one a line, or an unsafe listener."""
    problems = []

    def attempt(load, *given):
        try:
            return load(*given)
        except security.ConfigError as err:
            problems.append(str(err))
    if (args.tls_key or args.tls_ca) and not args.tls_cert:
        problems.append('tls-key and tls-ca need tls-cert')
    if args.tls_allowed_clients and not args.tls_ca:
        problems.append('tls-allowed-clients needs tls-ca (client certificates)')
    tokens = attempt(security.load_tokens, args.tokens_file) if args.tokens_file else None
    tls = (attempt(security.tls_context, args.tls_cert, args.tls_key, args.tls_ca)
           if args.tls_cert else None)
    clients = (attempt(security.parse_tls_clients, args.tls_allowed_clients)
               if args.tls_allowed_clients else None)
    if problems:
        raise security.ConfigError('\n'.join(problems))
    exposed, (why, fix) = security.exposed_listeners(tcp_hosts(args), tls is not None,
                                                     bool(args.tls_ca), tokens)
    if exposed and not args.insecure:
        raise security.ConfigError(f"{', '.join(exposed)} is reachable from other machines, and "
                                   f"{why}: {fix}, or pass --insecure")
    return tokens, tls, clients


def tcp_hosts(args):
    return [address[0] for family, address in map(parse_listen, args.listen)
            if family != socket.AF_UNIX]


def build_security(args):
    """The Guard, the TLS context and the unix sockets' group; ConfigError if unsafe or
    unreadable, naming every problem, one a line."""
    problems = []
    try:
        tokens, tls, clients = load_credentials(args)
    except security.ConfigError as err:
        problems.append(str(err))
    try:
        gid = _group_id(args.socket_group)
    except security.ConfigError as err:
        problems.append(str(err))
    if problems:
        raise security.ConfigError('\n'.join(problems))
    exposed, (why, _fix) = security.exposed_listeners(tcp_hosts(args), tls is not None,
                                                      bool(args.tls_ca), tokens)
    if exposed:
        log.warning('*** INSECURE: %s is reachable from other machines, and %s: whoever '
                    'gets in controls every VM of this host ***', ', '.join(exposed), why)
    elif tcp_hosts(args) and not (args.tls_ca or tokens):
        log.warning('TCP listener without authentication: every local user can control every VM')
    guard = security.Guard(tokens, clients, args.allowed_hosts + tcp_hosts(args),
                           args.allowed_paths, args.allowed_origins,
                           allow_host_devices=args.allow_host_devices,
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
    return guard, tls, gid


def _group_id(group):
    if group is None:
        return -1
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise security.ConfigError(f'socket-group: no such group {group!r}') from None
