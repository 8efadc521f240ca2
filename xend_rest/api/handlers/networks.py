"""The network endpoints: libvirt's virtual networks (a bridge, perhaps NAT and a DHCP server on
dom0), addressed by name, and dom0's bridges as libvirt's interface driver reports them."""
import re
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone

import libvirt

from xend_rest.api.params import NETWORK_XML_FLAGS, parse_bool, parse_flag
from xend_rest.errors import HTTPError, bad_request
from xend_rest.hypervisor import convert
from xend_rest.hypervisor.libvirt_errors import (from_libvirt, is_connection_error, is_no_support,
                                                 still_there)
from .domains import NO_CONTENT, NOT_MODIFIED, _change_state, _rejected, parse_uuid

# What Inspect answers beside the definition: the network's state, which Create takes back
# unchanged and ignores (as Incus ignores a network's status and used_by on PUT), each key with
# what Inspect may give for it. Create defines; start and autostart change the state.
STATE_KEYS = {
    'State': lambda value: value in ('active', 'inactive'),
    'Autostart': lambda value: isinstance(value, bool),
    'Persistent': lambda value: isinstance(value, bool),
    'Bridge': lambda value: value is None or isinstance(value, str),
    'UsedBy': lambda value: isinstance(value, list) and all(isinstance(item, str)
                                                            for item in value),
}
CONTROL = re.compile('[\x00-\x1f\x7f]')  # (a '\r' sent would reach libvirt as '\n': XML's own)
MAC = '[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}'  # as libvirt writes one (any case taken)
FAMILIES = {libvirt.VIR_IP_ADDR_TYPE_IPV4: 'ipv4', libvirt.VIR_IP_ADDR_TYPE_IPV6: 'ipv6'}


def lookup_network(conn, name):
    try:
        return conn.networkLookupByName(name)
    except (ValueError, TypeError):  # a name with a NUL: no such network
        raise HTTPError(404, f'no network named {name!r}', 'no_such_network') from None


def _lookup(find, key):
    """A network, or None where there is none."""
    try:
        return find(key)
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
            raise
    except (ValueError, TypeError):
        pass
    return None


def _is_no_network(err):
    return err.get_error_code() == libvirt.VIR_ERR_NO_NETWORK


def _active(net):
    """Whether the network runs; False once it is gone (a transient network that stopped)."""
    try:
        return bool(net.isActive())
    except libvirt.libvirtError as err:
        if not _is_no_network(err):
            raise
    return False


class NetworkUsers:
    """Which running domains are attached to which network, from libvirt's state: the network's
    ports (the owner libvirt recorded), or, on a driver that keeps none, the running domains'
    live interfaces (<source network=...>); and on either, the running domains whose live
    interface is on the network's bridge (<source bridge=...>, a plain bridge interface). Read
    once per request, whatever it asks about."""

    def __init__(self, conn):
        self._conn = conn
        self._interfaces = None  # {('network' or 'bridge', name): {domain names}}, on first need

    def of(self, net):
        if not _active(net):
            return []
        bridge = ElementTree.fromstring(net.XMLDesc(0)).find('bridge')
        users = set(self._live_interfaces().get(('bridge', bridge.get('name')), ())
                    if bridge is not None else ())
        try:
            ports = net.listAllPorts(0)
        except libvirt.libvirtError as err:
            if not is_no_support(err):
                raise
            return sorted(users | self._live_interfaces().get(('network', net.name()), set()))
        owners = (ElementTree.fromstring(port.XMLDesc(0)).findtext('owner/name') for port in ports)
        return sorted(users | set(owners) - {None})

    def _live_interfaces(self):
        if self._interfaces is None:
            self._interfaces = {}
            running = self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            for name, xml in still_there(running, lambda dom: (dom.name(), dom.XMLDesc(0))):
                for source in ElementTree.fromstring(xml).iterfind('devices/interface/source'):
                    for kind in ('network', 'bridge'):
                        if source.get(kind):
                            self._interfaces.setdefault((kind, source.get(kind)), set()).add(name)
        return self._interfaces


def _state(net, xml, users):
    """A network's state, as List and Inspect give it."""
    bridge = xml.find('bridge')
    active = _active(net)
    return {
        'State': 'active' if active else 'inactive',
        'Autostart': bool(net.autostart()),
        'Persistent': bool(net.isPersistent()),
        'Bridge': bridge.get('name') if bridge is not None else None,
        'UsedBy': users.of(net) if active else [],
    }


def _summary(net, users):
    xml = ElementTree.fromstring(net.XMLDesc(0))
    forward = xml.find('forward')
    return {'Name': net.name(), 'Uuid': net.UUIDString(),
            'Forward': forward.get('mode', 'nat') if forward is not None else None,
            **_state(net, xml, users)}


def list_networks(request):
    """GET /networks/json: every network, active or not, with its state."""
    users = NetworkUsers(request.conn)
    summaries = still_there(request.conn.listAllNetworks(0), lambda net: _summary(net, users),
                            _is_no_network)
    return 200, sorted(summaries, key=lambda summary: summary['Name'])


def inspect_network(request, network):
    """GET /networks/(name)/json: the definition (flag=1: the persistent one) and the state."""
    flag = parse_flag(request, NETWORK_XML_FLAGS)
    net = lookup_network(request.conn, network)
    xml = net.XMLDesc(flag)
    return 200, {**convert.xml_to_dict(xml),
                 **_state(net, ElementTree.fromstring(net.XMLDesc(0)), NetworkUsers(request.conn))}


def create_network(request):
    """POST /networks/create: define (or redefine) a network; Warnings name what libvirt dropped."""
    posted = request.json()
    if not isinstance(posted, dict) or 'network' not in posted or not all(
            key in STATE_KEYS and STATE_KEYS[key](value) for key, value in posted.items()
            if key != 'network'):
        raise bad_request('the body must be a JSON object with the key "network" (and, as '
                          f"Inspect answers them, none but {', '.join(STATE_KEYS)} beside it)")
    definition = {'network': posted['network']}
    xml = convert.dict_to_xml(definition, 'network')
    kept_uuid = _check_identity(request.conn, xml)
    if kept_uuid is not None:
        xml = convert.dict_to_xml({'network': {**posted['network'], 'uuid': kept_uuid}}, 'network')
    try:
        net = request.conn.networkDefineXML(xml)
    except libvirt.libvirtError as err:
        if is_connection_error(err):
            raise
        raise _rejected(err) from None
    stored = _persistent_xml(net)
    if stored is None:
        return 201, {'Uuid': net.UUIDString(), 'Warnings': [UNKNOWN_DEFINITION]}
    warnings = [f'{path} was dropped by libvirt' for path in convert.dropped(
        posted['network'], convert.xml_to_dict(stored)['network'], 'network')]
    return 201, {'Uuid': net.UUIDString(), 'Warnings': warnings}


UNKNOWN_DEFINITION = ('the network runs, and libvirt cannot show the definition it starts with '
                      'next on this connection (no VIR_NETWORK_XML_INACTIVE): what it kept of '
                      'this one is not known')


def _persistent_xml(net):
    """The definition a network starts with next: of an inactive one, its only one; of an active
    one, what VIR_NETWORK_XML_INACTIVE shows (the network drivers), or None where the driver has
    no such flag (the test driver): its live definition is not the one stored."""
    if not net.isActive():
        return net.XMLDesc(0)
    try:
        return net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
    except libvirt.libvirtError as err:
        if from_libvirt(err).status != 501:
            raise
    return None


def _check_identity(conn, xml):
    """409 for a definition whose name or UUID is another network's; the UUID to fill in when it
    gives none and its name is a network's (None: leave it). As domains' Create decides."""
    root = ElementTree.fromstring(xml)  # ours, from dict_to_xml: no DOCTYPE, no entities
    name, text = _text(root.find('name')), _text(root.find('uuid'))
    if name is not None and CONTROL.search(name):  # libvirt's network driver refuses '\n' too
        raise bad_request(f'network name {name!r}: control characters are not allowed in it')
    uuid = parse_uuid(text)
    named = _lookup(conn.networkLookupByName, name) if name is not None else None
    owner = _lookup(conn.networkLookupByUUIDString, uuid) if uuid is not None else None
    if name is not None and owner is not None and owner.name() != name:
        raise HTTPError(409, f'UUID {uuid} is the network {owner.name()!r}: Create does not '
                        'rename a network', 'already_exists')
    if named is not None and uuid is not None and named.UUIDString() != uuid:
        raise HTTPError(409, f'a network named {name!r} exists with UUID {named.UUIDString()}: '
                        'give that UUID (or none) to replace its definition', 'already_exists')
    return named.UUIDString() if named is not None and text is None else None


def _text(element):
    return None if element is None else ''.join(element.itertext()) or None


def start_network(request, network):
    net = lookup_network(request.conn, network)
    if net.isActive():
        return NOT_MODIFIED
    return _change_state(net.create, lambda: _active(net))


def stop_network(request, network):
    """Stop a network (a transient one is then gone); 409 while running guests use it."""
    force = parse_bool(request, 'force')
    net = lookup_network(request.conn, network)
    if not net.isActive():
        return NOT_MODIFIED
    _refuse_in_use(request, net, 'stop', force)
    return _change_state(net.destroy, lambda: not _active(net))


def delete_network(request, network):
    """Stop the network if it runs, then delete its definition: it is gone."""
    force = parse_bool(request, 'force')
    net = lookup_network(request.conn, network)
    persistent = net.isPersistent()
    if net.isActive():
        _refuse_in_use(request, net, 'delete', force)
        net.destroy()
    if persistent:
        net.undefine()
    return NO_CONTENT


def _refuse_in_use(request, net, action, force):
    users = NetworkUsers(request.conn).of(net)
    if users and not force:
        raise HTTPError(409, f"network {net.name()} is used by the running domain(s) "
                        f"{', '.join(users)}: {action} cuts them off; force=1 does it anyway",
                        'network_in_use')


def autostart_network(request, network):
    """POST .../autostart?enable=1|0: whether the host starts the network when it boots."""
    if request.arg('enable') is None:
        raise bad_request('query parameter "enable" is required')
    enable = parse_bool(request, 'enable')
    net = lookup_network(request.conn, network)
    if not net.isPersistent():
        raise HTTPError(409, f'network {net.name()} is transient: only a defined network starts '
                        'with the host', 'invalid_state')
    if bool(net.autostart()) == enable:
        return NOT_MODIFIED
    net.setAutostart(int(enable))
    return NO_CONTENT


def network_leases(request, network):
    """GET .../leases[?mac=]: the DHCP leases libvirt's dnsmasq gave on this network."""
    mac = request.arg('mac')
    if mac is not None and not re.fullmatch(MAC, mac):
        raise bad_request(f'mac={mac}: expected a MAC address such as 52:54:00:12:34:56')
    net = lookup_network(request.conn, network)
    if not net.isActive():
        raise HTTPError(409, f'network {net.name()} is not active: it gives no leases',
                        'invalid_state')
    leases = [_lease(lease) for lease in net.DHCPLeases(mac.lower() if mac else None)]
    return 200, sorted(leases, key=lambda lease: (lease['Family'], lease['Address']))


def _lease(lease):
    """One of libvirt's virNetworkDHCPLease records, in the API's shape."""
    expires = lease.get('expirytime')
    return {
        'Mac': lease.get('mac'),
        'Address': lease.get('ipaddr'),
        'Prefix': lease.get('prefix'),
        'Family': FAMILIES.get(lease.get('type'), 'unknown'),
        'Hostname': lease.get('hostname') or None,
        'ClientId': lease.get('clientid') or None,
        'Iaid': lease.get('iaid') or None,
        'Interface': lease.get('iface'),
        'Expires': datetime.fromtimestamp(expires, timezone.utc).isoformat().replace(
            '+00:00', 'Z') if expires else None,
    }


def list_bridges(request):
    """GET /bridges/json: dom0's bridges as libvirt's interface driver reports them (remote
    connections too), each with its member interfaces and the network whose bridge it is. A
    network or interface gone between the listing and its reading is left out, as List does."""
    networks = dict(still_there(request.conn.listAllNetworks(0), _bridge_of, _is_no_network))
    bridges = still_there(request.conn.listAllInterfaces(0), _bridge, _is_no_interface)
    return 200, sorted(({**bridge, 'Network': networks.get(bridge['Name'])} for bridge in bridges),
                       key=lambda bridge: bridge['Name'])


def _bridge_of(net):
    """(bridge name, network name), or None for a network without a bridge."""
    bridge = ElementTree.fromstring(net.XMLDesc(0)).find('bridge')
    return (bridge.get('name'), net.name()) if bridge is not None and bridge.get('name') else None


def _bridge(iface):
    """A host interface that is a bridge, as Bridges lists it (but its network); None otherwise."""
    xml = ElementTree.fromstring(iface.XMLDesc(0))
    if xml.get('type') != 'bridge':
        return None
    return {
        'Name': iface.name(),
        'Active': bool(iface.isActive()),
        'Mac': iface.MACString() or None,
        'Interfaces': sorted(member.get('name') for member in xml.iterfind('bridge/interface')),
    }


def _is_no_interface(err):
    return err.get_error_code() == libvirt.VIR_ERR_NO_INTERFACE
