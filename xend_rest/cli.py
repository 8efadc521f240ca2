"""The xend-rest command: arguments, configuration file, logging, then the server."""

import argparse
import configparser
import logging
import os
import sys

from xend_rest.server import Server, parse_listen

log = logging.getLogger("xend_rest")

DEFAULT_URI = "xen:///system"
DEFAULT_LISTEN = ["127.0.0.1:8000"]
CONFIG_SECTION = "xend-rest"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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
            raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
        return value
    return convert


def log_level(text):
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, not {text!r}")
    return text.upper()


# Configuration file keys: (key, argparse dest, type). `listen` is whitespace-separated.
CONFIG_KEYS = [
    ("uri", "uri", str),
    ("listen", "listen", None),
    ("log-level", "log_level", log_level),
    ("workers", "workers", positive(int)),
    ("timeout", "timeout", positive(float)),
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="xend-rest", description="Manage the virtual machines of a Xen host over HTTP, through libvirt.",
        epilog="Each setting comes from the command line, else $XEND_REST_URI (the URI only), "
               "else the configuration file, else the default.")
    parser.add_argument("--uri", help=f"libvirt connection URI (default: $XEND_REST_URI, else {DEFAULT_URI})")
    parser.add_argument("--listen", action="append", type=listen_address, metavar="ADDRESS",
                        help=f"HOST:PORT, [IPV6]:PORT or unix:/path; repeatable (default: {DEFAULT_LISTEN[0]})")
    parser.add_argument("--config", metavar="FILE", help=f"INI file with a [{CONFIG_SECTION}] section")
    parser.add_argument("--log-level", type=log_level, help="DEBUG, INFO, WARNING, ERROR (default: INFO)")
    parser.add_argument("--workers", type=positive(int), help="worker threads (default: 32)")
    parser.add_argument("--timeout", type=positive(float), help="socket timeout in seconds (default: 30)")
    parser.add_argument("--demo", action="store_true",
                        help="serve an in-memory libvirt test hypervisor instead of Xen")
    return parser


def read_config(path, parser):
    """The settings of the [xend-rest] section of an INI file, as argparse dests."""
    config = configparser.ConfigParser()
    try:
        with open(path) as f:
            config.read_file(f)
    except (OSError, configparser.Error) as err:
        parser.error(f"cannot read configuration file {path}: {err}")
    if not config.has_section(CONFIG_SECTION):
        return {}
    section = config[CONFIG_SECTION]
    known = {key for key, _, _ in CONFIG_KEYS}
    unknown = set(section) - known
    if unknown:
        parser.error(f"{path}: unknown key(s) in [{CONFIG_SECTION}]: {', '.join(sorted(unknown))}")
    settings = {}
    for key, dest, kind in CONFIG_KEYS:
        if key not in section:
            continue
        try:
            if key == "listen":
                settings[dest] = [listen_address(spec) for spec in section[key].split()]
            else:
                settings[dest] = kind(section[key])
        except argparse.ArgumentTypeError as err:
            parser.error(f"{path}: {key}: {err}")
    return settings


def parse_args(argv=None):
    """Parsed arguments, with the configuration file and defaults filled in."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from_file = read_config(args.config, parser) if args.config else {}
    defaults = {"uri": os.environ.get("XEND_REST_URI") or from_file.get("uri") or DEFAULT_URI,
                "listen": from_file.get("listen") or DEFAULT_LISTEN,
                "log_level": from_file.get("log_level", "INFO"),
                "workers": from_file.get("workers", 32),
                "timeout": from_file.get("timeout", 30.0)}
    for dest, value in defaults.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    return args


def setup_logging(level):
    # journald stamps each line itself; elsewhere a timestamp helps.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.log_level)
    from xend_rest.app import make_app  # after logging: importing libvirt may log
    if args.demo:
        from xend_rest.demo import demo_uri
        args.uri = demo_uri()
        log.warning("*** DEMO MODE: serving an in-memory libvirt TEST hypervisor (%s), NOT Xen; "
                    "nothing here touches real virtual machines ***", args.uri)
    log.info("libvirt URI %s", args.uri)
    app = make_app(uri=args.uri)
    server = Server(app, args.listen, workers=args.workers, timeout=args.timeout)
    try:
        server.serve_forever()
    except OSError as err:
        log.error("cannot listen: %s", err)
        return 1
    finally:
        app.pool.close()
    return 0
