"""What operators look at: liveness, versions, the host, statistics, metrics and the API's spec."""
from operator import itemgetter

import libvirt

from xend_rest import __version__
from xend_rest import defaults
from xend_rest.api.bodies import Raw
from xend_rest.api.metrics import Exposition, add_requests, escape, labels
from xend_rest.api.params import parse_bool
from xend_rest.errors import HTTPError
from xend_rest.hypervisor.hypervisors import dotted, gather, public_uri
from xend_rest.hypervisor.libvirt_errors import still_there
from xend_rest.hypervisor.moves.maintenance import host_state
from xend_rest.hypervisor.stats import BULK, STATE_NAMES, bulk_stats, describe
from .domains import is_dom0, lookup_domain

API_VERSION = '1.0'
# Optional domain calls, probed with an empty definition and an unknown flag bit: a driver that
# has the call refuses the flag (or the XML) before doing anything; one that lacks it says so.
PROBED_CALLS = (
    ('DeviceAttach', 'attachDeviceFlags'),
    ('DeviceDetach', 'detachDeviceFlags'),
    ('DeviceUpdate', 'updateDeviceFlags'),
)
PROBE_FLAG = 1 << 31
UNSUPPORTED = (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED)
# (our state count key, listAllDomains flag)
STATE_LISTS = (
    ('running', libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING),
    ('paused', libvirt.VIR_CONNECT_LIST_DOMAINS_PAUSED),
    ('shutoff', libvirt.VIR_CONNECT_LIST_DOMAINS_SHUTOFF),
    ('other', libvirt.VIR_CONNECT_LIST_DOMAINS_OTHER),
)


def ping(request):
    """GET /_ping: the daemon answers; it opens no libvirt connection (GET /info does).
    Libvirt-Connected speaks of the default connection: only to those it covers."""
    headers = [('Api-Version', API_VERSION), ('Cache-Control', 'no-cache')]
    if request.may_use(request.hypervisor):
        connected = 'true' if request.hypervisor.connection.connected else 'false'
        headers.append(('Libvirt-Connected', connected))
    return 200, Raw(b'OK', defaults.TEXT), headers


def version(request):
    """GET /version: the daemon's versions, and each connection's (null while unreachable);
    the top-level libvirtd and hypervisor fields are the default connection's."""
    described = _connections(request)
    versions = {item['Name']: {'Connected': item['Connected'], 'Hypervisor': item['Driver'],
                               'DaemonLibvirtVersion': item['LibvirtVersion'],
                               'HypervisorVersion': item['HypervisorVersion']}
                for item in described}
    default = versions.get(request.app.hypervisor.name) or dict.fromkeys(
        ('Hypervisor', 'DaemonLibvirtVersion', 'HypervisorVersion'))
    return 200, {
        'Version': __version__,
        'ApiVersion': API_VERSION,
        'LibvirtVersion': dotted(libvirt.getVersion()),  # the library this daemon runs on
        'DaemonLibvirtVersion': default['DaemonLibvirtVersion'],  # libvirtd's, when remote
        'Hypervisor': default['Hypervisor'],
        'HypervisorVersion': default['HypervisorVersion'],
        'Connections': versions,
    }


def list_connections(request):
    """GET /libvirt/json: the connections the caller may use, as far as they answer now."""
    return 200, _connections(request)


def _connections(request):
    """The usable connections described: each asked (and opened) in parallel, for
    LISTING_WAIT at most; one that does not answer by then is described as last known."""
    hypervisors = request.usable_hypervisors()
    gather(hypervisors, lambda hypervisor: hypervisor.learn_facts(), defaults.LISTING_WAIT)
    everyone = request.app.hypervisors.values()
    return [hypervisor.describe(host_state(everyone, hypervisor, known=True) is not None)
            for hypervisor in hypervisors]


def info(request):
    """GET /info: the default connection's host (GET /libvirt/{connection}/info: any one's)."""
    conn = request.conn
    model, memory_mib, cpus, mhz, numa_nodes, sockets, cores, threads = conn.getInfo()
    return 200, {
        'Hostname': conn.getHostname(),
        'Driver': conn.getType(),
        'Uri': public_uri(conn.getURI()),
        'Cpus': cpus, 'CpuModel': model, 'CpuMhz': mhz,
        'NumaNodes': numa_nodes, 'Sockets': sockets, 'Cores': cores, 'Threads': threads,
        'MemoryKiB': memory_mib * 1024,
        'Domains': _domain_counts(conn),
        'Supports': request.hypervisor.features.get(
            conn, 'operations', lambda conn: _probe_operations(conn, request.hypervisor.features)),
    }


def connection_info(request):
    """GET /libvirt/{connection}/info: as /info, for the connection the path names."""
    return info(request)


def _domain_counts(conn):
    return {state: sum(1 for dom in conn.listAllDomains(flag) if not is_dom0(dom))
            for state, flag in STATE_LISTS}


def _probe_operations(conn, features):
    """Which optional operations this driver has, found out without changing anything; the
    bulk calls' answer is the one statistics remember (features), asked once for both."""
    supports = {'BulkStats': features.get(conn, BULK, lambda conn: _has(
        lambda: conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE,
                                       libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)))}
    domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE) or conn.listAllDomains(0)
    for name, method in PROBED_CALLS:  # without a domain to ask, we cannot tell: null
        supports[name] = _has(lambda: getattr(domains[0], method)('', PROBE_FLAG)) \
            if domains else None
    return supports


def _has(call):
    try:
        call()
    except libvirt.libvirtError as err:
        return err.get_error_code() not in UNSUPPORTED
    return True


def domain_stats(request, ident):
    """GET /nodes/(id)/stats: one domain's CPU, memory, block and network counters."""
    dom = lookup_domain(request.conn, ident)
    found = _described(request.conn, request.hypervisor, [dom])
    if not found:
        raise HTTPError(404, f'no such domain: {ident}', 'no_such_domain')
    return 200, found[0]


def all_stats(request):
    """GET /nodes/stats: the counters of every running domain (all=1: every defined one)."""
    every = parse_bool(request, 'all')
    return 200, _described(request.conn, request.hypervisor, active_only=not every)


def _described(conn, hypervisor, domains=None, active_only=False):
    """The statistics of the domains (else of every one; active_only: the running ones), on
    a connection of `hypervisor` (its memo, and what it remembers of the driver)."""
    memo = hypervisor.memo

    def described(pair):
        dom, raw = pair
        uuid = dom.UUIDString()
        return None if is_dom0(dom, uuid) else describe(dom, raw, memo, uuid)
    records = bulk_stats(conn, domains, active_only, hypervisor.features)
    memo.expect(len(records))
    found = list(still_there(records, described))
    if domains is None and not active_only:  # every domain: the memo drops those that are gone
        memo.listed({stats['Uuid'] for stats in found}, complete=True)
    return found


# (metric, type, help, value of a described domain); None values are left out.
DOMAIN_METRICS = (
    ('xend_domain_state', 'gauge', 'Domain state: ' + ', '.join(
        f'{number} {name}' for number, name in enumerate(STATE_NAMES)) + '.',
     lambda d: STATE_NAMES.index(d['State']) if d['State'] in STATE_NAMES else None),
    ('xend_domain_cpu_seconds_total', 'counter', 'CPU time the domain used, in seconds.',
     lambda d: None if d['CpuTimeNs'] is None else d['CpuTimeNs'] / 1e9),
    ('xend_domain_vcpus', 'gauge', 'Virtual CPUs the domain has now.', lambda d: d['Vcpus']),
    ('xend_domain_memory_current_bytes', 'gauge', 'Memory the domain has now (its balloon).',
     lambda d: _bytes(d['Memory']['CurrentKiB'])),
    ('xend_domain_memory_maximum_bytes', 'gauge', 'Memory the domain may grow to.',
     lambda d: _bytes(d['Memory']['MaximumKiB'])),
)
# (metric, our counter key, help), per device
BLOCK_METRICS = (
    ('xend_domain_block_read_requests_total', 'ReadRequests', 'Read requests of a disk.'),
    ('xend_domain_block_read_bytes_total', 'ReadBytes', 'Bytes read from a disk.'),
    ('xend_domain_block_write_requests_total', 'WriteRequests', 'Write requests of a disk.'),
    ('xend_domain_block_write_bytes_total', 'WriteBytes', 'Bytes written to a disk.'),
    ('xend_domain_block_errors_total', 'Errors', 'I/O errors of a disk.'),
)
NET_METRICS = (
    ('xend_domain_network_receive_bytes_total', 'RxBytes', 'Bytes received by an interface.'),
    ('xend_domain_network_receive_packets_total', 'RxPackets', 'Packets received.'),
    ('xend_domain_network_receive_errors_total', 'RxErrors', 'Receive errors.'),
    ('xend_domain_network_receive_drops_total', 'RxDrops', 'Received packets dropped.'),
    ('xend_domain_network_transmit_bytes_total', 'TxBytes', 'Bytes sent by an interface.'),
    ('xend_domain_network_transmit_packets_total', 'TxPackets', 'Packets sent.'),
    ('xend_domain_network_transmit_errors_total', 'TxErrors', 'Transmit errors.'),
    ('xend_domain_network_transmit_drops_total', 'TxDrops', 'Packets to send that were dropped.'),
)


def _bytes(kib):
    return None if kib is None else kib * 1024


# (metric, type, help, value of a hypervisor), one series per connection
CONNECTION_METRICS = (
    ('xend_libvirt_connects_total', 'counter',
     'Connections opened to libvirt; each after the first is a reconnect.',
     lambda hypervisor: hypervisor.connection.connects),
    ('xend_events_total', 'counter', 'Domain events received from libvirt.',
     lambda hypervisor: hypervisor.events.events),
    ('xend_event_subscribers', 'gauge', 'Open event streams and waits.',
     lambda hypervisor: hypervisor.events.subscribers),
    ('xend_event_overflows_total', 'counter',
     'Event streams dropped because their client fell behind.',
     lambda hypervisor: hypervisor.events.overflows),
)


def metrics(request):
    """GET /metrics: each connection's domains, and the daemon itself, in Prometheus' text
    format; every per-connection series is labelled with its connection's name. A caller sees
    the connections its credentials cover, and the daemon-wide totals only if that is all."""
    exposition = Exposition()
    hypervisors = request.usable_hypervisors()
    # Each connection is asked in a thread of its own: a frozen libvirtd delays no other.
    scraped = gather(hypervisors, _scrape, defaults.SCRAPE_WAIT)
    for hypervisor in hypervisors:
        exposition.add('xend_libvirt_up', 'gauge', 'Whether libvirt answered this scrape.',
                       int(hypervisor.name in scraped), labels(connection=hypervisor.name))
    for hypervisor in hypervisors:
        _add_domains(exposition, hypervisor.name, scraped.get(hypervisor.name, ()))
    for name, kind, help_text, value_of in CONNECTION_METRICS:
        for hypervisor in hypervisors:
            exposition.add(name, kind, help_text, value_of(hypervisor),
                           labels(connection=hypervisor.name))
    if len(hypervisors) == len(request.app.hypervisors):  # the totals span every connection
        _add_consoles(exposition, request.app.consoles)
    add_requests(exposition, request.app.metrics, [hypervisor.name for hypervisor in hypervisors])
    return 200, Raw(exposition.text().encode(), defaults.METRICS)


def _add_consoles(exposition, consoles):
    """Daemon-wide: one limit counts the sessions of every connection."""
    sessions, typed, shown = consoles.totals()
    exposition.add('xend_console_sessions', 'gauge', 'Open console and screen sessions.', sessions)
    help_text = 'Bytes through console and screen sessions: in, typed by clients; out, shown to them.'
    exposition.add('xend_console_bytes_total', 'counter', help_text, typed, labels(direction='in'))
    exposition.add('xend_console_bytes_total', 'counter', help_text, shown, labels(direction='out'))


def _scrape(hypervisor):
    with hypervisor.using_connection() as conn:
        return _described(conn, hypervisor)


def _add_domains(exposition, connection, described):
    # Each domain's and each device's label text is built (and escaped) once, not per metric,
    # and by one f-string: through labels(), the label texts were a third of a scrape's time.
    # The values are read with map(), in C, rather than in a Python loop of our own.
    head = labels(connection=connection)[:-1]
    label_texts = [f'{head},domain="{escape(dom["Name"])}",uuid="{escape(dom["Uuid"])}"}}'
                   for dom in described]
    for name, kind, help_text, value_of in DOMAIN_METRICS:
        exposition.add_many(name, kind, help_text, map(value_of, described), label_texts)
    for group, table in (('Block', BLOCK_METRICS), ('Network', NET_METRICS)):
        # Each device's counters are read once, into a tuple that every family then reads (not
        # the device's dict once per family: at 10,000 domains, a seventh of the time).
        counters = itemgetter(*(key for _name, key, _help in table))
        rows = [counters(device) for dom in described for device in dom[group]]
        device_labels = [f'{label_text[:-1]},device="{escape(device["Device"])}"}}'
                         for dom, label_text in zip(described, label_texts)
                         for device in dom[group]]
        for index, (name, _key, help_text) in enumerate(table):
            exposition.add_many(name, 'counter', help_text, map(itemgetter(index), rows),
                                device_labels)


def openapi_document(request):
    """GET /openapi.json: this API in OpenAPI 3, built from the route table."""
    from xend_rest.api import openapi  # built on demand: most daemons never serve it
    return 200, openapi.document(request.app.router.routes,
                                 [hypervisor.name for hypervisor in request.usable_hypervisors()])
