"""A running domain's interfaces and the addresses each source knows for them, merged.

Sources: libvirt's own (lease, agent, arp), the guest agents' xenstore keys (a local Xen host)
and dom0's neighbour table (a local host). A source that cannot apply to this domain on this
connection is not asked, and names no address: it is never an error.
"""
import ipaddress
import logging
import socket
import time
import xml.etree.ElementTree as ElementTree
from urllib.parse import urlsplit

import libvirt

from xend_rest.errors import HTTPError, client_gone, wait_timeout
from xend_rest.logtext import printable_text
from xend_rest.hypervisor.libvirt_errors import is_connection_error, is_no_domain
from . import neighbours, xenstore

log = logging.getLogger(__name__)

SOURCES = ('lease', 'agent', 'arp', 'xenstore', 'neighbour')  # also the order of `Sources`
LIBVIRT_SOURCES = {'lease': libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
                   'agent': libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
                   'arp': libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP}
# A driver without a source answers one of these: the source does not apply there.
NOT_THERE = {getattr(libvirt, name) for name in (
    'VIR_ERR_NO_SUPPORT', 'VIR_ERR_ARGUMENT_UNSUPPORTED', 'VIR_ERR_OPERATION_UNSUPPORTED')}
# The agent's channel was connected when we looked, and has gone away since: no agent source.
AGENT_GONE = {libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_AGENT_UNSYNCED}
# The domain stopped or vanished meanwhile: the request's answer (409), not a source's.
STATE_CHANGED = {libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN}
AGENT_CHANNEL = 'org.qemu.guest_agent.0'
POLL_SECONDS = 1.0  # between looks while a request waits for an address (no event announces one)


class Place:
    """Where the daemon stands to a connection: which of the host's own sources it can read."""

    def __init__(self, uri, driver):
        self.local = urlsplit(uri).hostname is None  # xen:///system, not xen+ssh://dom0/
        self.driver = driver  # conn.getType(): 'Xen', 'QEMU', 'Test'

    def applies(self, source):
        if source == 'xenstore':
            return self.local and self.driver == 'Xen' and xenstore.available()
        if source == 'neighbour':
            return self.local
        return True


class Interface:
    """One interface of the live definition, with the addresses found for it."""

    def __init__(self, element):
        target, source = element.find('target'), element.find('source')
        mac = element.find('mac')
        self.name = None if target is None else target.get('dev')
        self.mac = None if mac is None else (mac.get('address') or '').lower() or None
        self.network = None if source is None else source.get('network')
        self.bridge = None if source is None else source.get('bridge')
        self.found = {}  # ip address -> [prefix, family, sources]

    def add(self, address, prefix, family, source):
        if not usable(address):
            return
        entry = self.found.setdefault(address, [None, family, []])
        if entry[0] is None:
            entry[0] = prefix
        if source not in entry[2]:
            entry[2].append(source)

    def describe(self):
        ordered = sorted(self.found.items(), key=lambda item: (item[0].version, item[0]))
        return {'Name': self.name, 'Mac': self.mac, 'Network': self.network,
                'Bridge': self.bridge, 'Addresses': [
                    {'Address': str(address), 'Prefix': prefix, 'Family': family,
                     'Sources': sorted(sources, key=SOURCES.index)}
                    for address, (prefix, family, sources) in ordered]}


def usable(address):
    """Whether an address can reach the guest from beyond its own link (link-local ones cannot,
    nor loopback, unspecified or multicast ones)."""
    return not (address.is_link_local or address.is_loopback or address.is_unspecified
                or address.is_multicast)


def parse_sources(values):
    """The sources `source=` lists (in our order; empty items skipped): every one when there is
    no `source`; None when a value names none (`source=`) or one we do not know."""
    if values is None:
        return SOURCES
    listed = [{name for name in value.split(',') if name} for value in values]
    names = set().union(*listed)
    if not all(listed) or names - set(SOURCES):
        return None
    return tuple(name for name in SOURCES if name in names)


def look(conn, dom, place, wanted, warned):
    """The domain's interfaces (live definition) with what each wanted source says now;
    `warned`: the sources whose failure this request has logged already."""
    root = ElementTree.fromstring(dom.XMLDesc(0))
    interfaces = [Interface(element) for element in root.iterfind('devices/interface')]
    by_mac = {interface.mac: interface for interface in interfaces if interface.mac}
    for source in wanted:
        if not place.applies(source):
            continue
        if source in LIBVIRT_SOURCES:
            if source != 'agent' or _agent_connected(root):
                _from_libvirt(dom, source, by_mac, warned)
        elif source == 'xenstore':
            _from_xenstore(dom, by_mac, warned)
        else:
            _from_neighbours(by_mac, warned)
    return [interface.describe() for interface in interfaces]


def _warn(warned, source, message, *args):
    """Log a source's failure once per request (a wait looks again every POLL_SECONDS)."""
    if source not in warned:
        warned.add(source)
        log.warning(message, *args)


def _agent_connected(root):
    """Whether the domain has a guest agent channel that is not known to be disconnected (QEMU
    says connected or disconnected; the test driver says nothing)."""
    for target in root.iterfind('devices/channel/target'):
        if target.get('name') == AGENT_CHANNEL and target.get('state') != 'disconnected':
            return True
    return False


def _from_libvirt(dom, source, by_mac, warned):
    try:
        answer = dom.interfaceAddresses(LIBVIRT_SOURCES[source])
    except libvirt.libvirtError as err:
        code = err.get_error_code()
        if code in NOT_THERE | AGENT_GONE:
            return
        if is_connection_error(err) or code in STATE_CHANGED:
            raise
        # One source failing (libvirt 9.0's arp on a kernel that ends a netlink dump in the
        # same datagram: "wrong nlmsg len") leaves the others' answer standing.
        _warn(warned, source, 'the %s source failed: %s', source,
              printable_text(err.get_error_message() or str(err)))
        return
    for details in (answer or {}).values():
        interface = by_mac.get((details.get('hwaddr') or '').lower())
        if interface is None:
            continue  # the guest's loopback, or an interface that is not the domain's
        for item in details.get('addrs') or ():
            try:
                address = ipaddress.ip_address(item['addr'])
            except (KeyError, ValueError):
                continue
            interface.add(address, item.get('prefix'), 'ipv6' if address.version == 6 else 'ipv4',
                          source)


def _from_xenstore(dom, by_mac, warned):
    if not by_mac:
        return
    try:
        published = xenstore.published(dom.ID(), set(by_mac))
    except OSError as err:
        _warn(warned, 'xenstore', 'xenstore cannot be read: %s', printable_text(str(err)))
        return
    for mac, addresses in published.items():
        for address, family in addresses:
            by_mac[mac].add(address, None, family, 'xenstore')


def _from_neighbours(by_mac, warned):
    if not by_mac:
        return
    try:
        table = neighbours.neighbours()
    except (OSError, ValueError) as err:
        _warn(warned, 'neighbour', 'the neighbour table cannot be read: %s',
              printable_text(str(err)))
        return
    links = {}
    for interface in by_mac.values():
        if interface.bridge and interface.bridge not in links:
            try:
                links[interface.bridge] = socket.if_nametoindex(interface.bridge)
            except OSError:
                links[interface.bridge] = None  # not a link of ours: nothing can match there
    for entry in table:
        interface = by_mac.get(entry.mac)
        if interface is not None and (not interface.bridge
                                      or links[interface.bridge] == entry.ifindex):
            interface.add(entry.address, None, entry.family, 'neighbour')


def not_running(dom, why='is not running'):
    return HTTPError(409, f'domain {dom.name()} {why}: it has no addresses', 'invalid_state')


def addresses(conn, dom, place, wanted, warned=None):
    """look(), or 409 for a domain that is not running (or stopped since it was looked up)."""
    try:
        if not dom.isActive():
            raise not_running(dom)
        return look(conn, dom, place, wanted, set() if warned is None else warned)
    except libvirt.libvirtError as err:
        if is_no_domain(err):  # a transient domain that stopped is gone with its run
            raise not_running(dom, 'stopped and is gone (transient)') from None
        if err.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and not dom.isActive():
            raise not_running(dom) from None  # it stopped meanwhile
        raise


def wait_for_addresses(conn, dom, place, wanted, timeout, watchers, owner=None, gone=None,
                       hold=None):
    """addresses() once one of them names an address, looking every POLL_SECONDS for `timeout`
    s at most (408 then); in a place of the Watchers taken for `owner` (see Watchers.take)."""
    watchers.take(owner, hold)
    try:
        deadline = time.monotonic() + timeout
        warned = set()
        while True:
            found = addresses(conn, dom, place, wanted, warned)
            if any(interface['Addresses'] for interface in found):
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise wait_timeout(f'domain {dom.name()} has no known address after '
                                   f'{timeout:g} s')
            if gone is not None and gone():
                raise client_gone('the client hung up while it waited for an address: it was '
                                  'given up')
            time.sleep(min(POLL_SECONDS, remaining))  # also how often gone() is asked
    finally:
        watchers.give(owner)
