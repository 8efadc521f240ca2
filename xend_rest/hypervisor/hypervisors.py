"""A hypervisor the daemon serves: its shared libvirt connection and what hangs off it."""
import contextlib
import logging
import os
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import libvirt

from xend_rest.errors import HTTPError
from xend_rest.logtext import printable_text
from .domain_events import EventHub
from .libvirt_connection import PerConnection
from .libvirt_errors import is_connection_error
from .moves.maintenance import Maintenance
from .moves.migration import host_of
from .memo import DomainMemo
from .names import check as check_name
from .uploads import Uploads

log = logging.getLogger(__name__)


def public_uri(uri):
    """The URI without a password in it: what may be shown to any reader."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition('@')[2]
    return urlunsplit(parts._replace(netloc=f'{parts.username}@{host}'))


def dotted(number):
    """libvirt's version number (major * 1,000,000 + minor * 1,000 + release) as text."""
    return f'{number // 1000000}.{number // 1000 % 1000}.{number % 1000}'


class Hypervisor:
    """One named libvirt connection, with its own event hub, uploads, driver features and memo."""

    def __init__(self, name, connection, events=None, state_dir=None):
        self.name = check_name(name)
        self.connection = connection  # a SharedConnection
        self.events = events or EventHub()
        # images being uploaded through this connection; with a state directory, their markers
        self.uploads = Uploads(state_dir and os.path.join(state_dir, 'uploads', self.name))
        self.features = PerConnection()  # what the driver can do, probed once per connection
        # no guest starts here while on; kept in the state directory, if there is one
        self.maintenance = Maintenance(state_dir and os.path.join(
            state_dir, 'maintenance', self.name + '.json'))
        # What libvirtd last said of its host, kept while the connection is down: a listing
        # shows it rather than wait for a libvirtd that may not answer.
        self.facts = None
        self._host = None  # migration.host_of, the last known (host UUID, else URI)
        self._learning = threading.Lock()  # one question at a time, however often listed
        self.memo = DomainMemo()  # what was derived from each domain's XML (its JSON, devices)
        connection.on_connect(self.events.attach)

    def learn_facts(self):
        """Ask libvirtd about its host, once per libvirt connection (opening one if need be).

        Not while opening: the QEMU driver's first getVersion() probes its binaries, for
        seconds, and an open must stay quick. While a question is out (to a dead host, it may
        wait for the whole open timeout), other callers get the last known facts at once."""
        if not self._learning.acquire(blocking=False):
            return self.facts
        try:
            with self.using_connection() as conn:
                self.facts = self.features.get(conn, 'facts', _ask_facts)
                self._host = self.features.get(conn, 'host', host_of)  # for known_host
        finally:
            self._learning.release()
        return self.facts

    def host(self):
        """Which hypervisor this connection reaches (migration.host_of: its host UUID, from the
        capabilities or the SMBIOS sysinfo, else the URI libvirt reports), asked once per
        libvirt connection; while it is down, the last
        known (None: never known). Operations in flight and maintenance are the host's: every
        connection to one host sees them."""
        try:
            with self.using_connection() as conn:
                self._host = self.features.get(conn, 'host', host_of)
        except (HTTPError, libvirt.libvirtError):
            pass
        return self._host

    @property
    def known_host(self):
        """host(), as last known: asks libvirt nothing."""
        return self._host

    def same_host(self, other):
        """Whether `other` (a Hypervisor) is this one, or another connection to its host."""
        return other is self or (self.host() is not None and self.host() == other.host())

    @contextlib.contextmanager
    def using_connection(self):
        """The shared libvirt connection (opened if need be), let go of if it breaks under the
        caller, so that the next user reopens it: for work done outside a request."""
        conn = self.connection.get()
        try:
            yield conn
        except libvirt.libvirtError as err:
            if is_connection_error(err):
                self.connection.discard(conn)
            raise

    def describe(self, maintenance):
        """The connection as GET /libvirt/json lists it (asks libvirt nothing); `maintenance`:
        whether its host is in maintenance, as its maintenance route shows it."""
        facts = self.facts or dict.fromkeys(('Driver', 'Hostname', 'LibvirtVersion',
                                             'HypervisorVersion'))
        return {'Name': self.name, 'Uri': public_uri(self.connection.uri),
                'Connected': self.connection.connected, **facts,
                'Error': None if self.connection.connected else self.connection.last_error,
                'Maintenance': maintenance}


def _ask_facts(conn):
    return {'Driver': conn.getType(), 'Hostname': conn.getHostname(),
            'LibvirtVersion': dotted(conn.getLibVersion()),
            'HypervisorVersion': dotted(conn.getVersion())}


def gather(hypervisors, work, wait):
    """{name: work(hypervisor)} for each hypervisor, each in a thread of its own, waiting at most
    `wait` seconds in all: a dead or frozen libvirtd costs the caller no more than that. A
    hypervisor whose work failed or is still going is missing from the answer."""
    results = {}

    def run(hypervisor):
        try:
            results[hypervisor.name] = work(hypervisor)
        except HTTPError:
            pass  # unreachable (503, 504): the caller reports it as not answering
        except libvirt.libvirtError as err:
            if not is_connection_error(err):
                log.warning('connection %s: %s', hypervisor.name,
                            printable_text(err.get_error_message()))
        except Exception:
            log.exception('asking connection %s failed', hypervisor.name)

    threads = [threading.Thread(target=run, args=(hypervisor,), daemon=True,
                                name=f'ask-{hypervisor.name}') for hypervisor in hypervisors]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + wait
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return dict(results)
