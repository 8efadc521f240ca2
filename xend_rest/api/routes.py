"""The route table, as data: one row per route with everything about it.

A row says which method and path reach which handler, the least role that may call it, the media
type of its body (None: it takes none), which `flag` bit makes it answer secrets, whether host
paths in its body are checked against allowed-paths, and its OpenAPI words. `security`,
`openapi` and the router read the rows; none of them knows a handler.
"""
import libvirt

from xend_rest import defaults
from xend_rest.api.handlers import (addresses, consoles, domains, events, images, migration,
                                    networks, operations, system)
from xend_rest.hypervisor.addresses.lookup import POLL_SECONDS, SOURCES
from xend_rest.hypervisor.domain_events import CONDITION_STATES, EVENT_TYPES
from .openapi import (AFFECT_FLAG, ALL, BOOLEAN, CAPACITY, ERROR, FORCE, NAME, NO_BODY, NO_FLAG,
                      OCTETS, SIZE_SCHEMA, SIZE_TEXT, STRING, TEXT, WAIT, WATCHER_ANSWERS, WHOLE,
                      XML_FLAG, Doc, flag, lifecycle, query, upgrade)
from .params import (DESTROY_FLAGS, IMAGE_FORMATS, MAX_WHOLE, NETWORK_XML_FLAGS, REBOOT_FLAGS,
                     SHUTDOWN_FLAGS, START_FLAGS, UNDEFINE_FLAGS, VOL_CREATE_FLAGS,
                     VOL_DELETE_FLAGS, VOL_RESIZE_FLAGS, WIPE_ALGORITHMS)

READ, OPERATOR, ADMIN = 'read', 'operator', 'admin'
ROLES = (READ, OPERATOR, ADMIN)  # each role may do everything the ones before it may
# VIR_DOMAIN_XML_SECURE adds VNC/SPICE passwords to a description: only admins may ask for it.
SECURE_XML = ('VIR_DOMAIN_XML_SECURE', libvirt.VIR_DOMAIN_XML_SECURE, ADMIN)


class Route:
    """One route: how it is reached, who may call it, what it takes, and its documentation."""

    __slots__ = ('method', 'path', 'handler', 'role', 'body', 'secret_flag', 'host_paths', 'doc',
                 'default_connection')

    def __init__(self, method, path, handler, role=None, doc=None, body=None, secret_flag=None,
                 host_paths=False, default_connection=False):
        self.method = method
        self.path = path  # '/libvirt/{connection}/nodes/{ident}/json': OpenAPI's template
        self.handler = handler
        self.role = role  # None: not decided, so admin only (a test fails for such a row)
        self.doc = doc  # openapi.Doc; None: undocumented (a test fails for such a row)
        self.body = body  # the media type of its body; None: a body is ignored
        self.secret_flag = secret_flag  # (name, bit, role): a flag bit only that role may set
        self.host_paths = host_paths  # its JSON body may name host files: check allowed-paths
        # its path names no connection, yet it acts on the default one (/info)
        self.default_connection = default_connection

    @property
    def on_connection(self):
        """Whether it acts on one hypervisor connection (else it is daemon-wide)."""
        return self.default_connection or '{connection}' in self.path

    @property
    def name(self):
        """'GET /libvirt/{connection}/nodes/{ident}/json': labels metrics and logs."""
        return f'{self.method} {self.path}'

    def __repr__(self):
        return f'<Route {self.name}>'


def unfinished(routes):
    """The rows that do not say who may call them or how they are documented."""
    return [route for route in routes if route.role is None or route.doc is None]


HV = '/libvirt/{connection}'  # the hypervisor connection the route acts on
NODES = HV + '/nodes'
DOMAIN = NODES + '/{ident}'
IMAGES = HV + '/images'
IMAGE = IMAGES + '/{pool}/{name}'
POOLS = HV + '/pools'
OPERATIONS = HV + '/operations'
NETWORKS = HV + '/networks'
NETWORK = NETWORKS + '/{network}'
JSON = defaults.JSON
SECONDS = {'type': 'number', 'minimum': 0}
CONNECTION = '$request.path.connection'


def to_domain(*handlers):
    """Links from an answer carrying a domain's Uuid to the routes that act on that domain."""
    return {handler.__name__: (handler, {'connection': CONNECTION, 'ident': '$response.body#/Uuid'})
            for handler in handlers}


def to_image(*handlers):
    """Links from an answer describing an image (Pool, Name) to the routes on that image."""
    return {handler.__name__: (handler, {'connection': CONNECTION, 'pool': '$response.body#/Pool',
                                         'name': '$response.body#/Name'})
            for handler in handlers}

NETWORK_FORCE = query('force', '1/True/true: even while running domains use the network (they are '
                      'cut off).', BOOLEAN)
IMAGE_LINKS = to_image(images.inspect_image, images.clone_image, images.resize_image,
                       images.wipe_image, images.delete_image, images.download_image)
FORMAT = query('format', 'raw (default) or qcow2.', {'type': 'string',
                                                    'enum': list(IMAGE_FORMATS)})
# Event names as `event` takes them (and kinds as `type` does): comma-separated, empty items
# skipped.
ANY_EVENT = '|'.join(dict.fromkeys(name for names in EVENT_TYPES.values() for name in names))
EVENT_LIST = f'^(?:{ANY_EVENT})?(?:,(?:{ANY_EVENT})?)*$'
ANY_TYPE = '|'.join(EVENT_TYPES)
TYPE_LIST = f'^(?:{ANY_TYPE})?(?:,(?:{ANY_TYPE})?)*$'
ANY_SOURCE = '|'.join(SOURCES)
SOURCE_LIST = f'^,*(?:{ANY_SOURCE})(?:,(?:{ANY_SOURCE})?)*$'  # naming one at least

# An answer that starts an operation (202) links to where it is read.
OPERATION_LINKS = {'inspect_operation': (operations.inspect_operation, {
    'connection': CONNECTION, 'operation': '$response.body#/Id'})}

ROUTES = [
    Route('GET', NODES + '/json', domains.list_domains, READ, secret_flag=SECURE_XML, doc=Doc(
        'List domains (dom0 excepted)', {200: 'DomainList', 501: ERROR}, [ALL, XML_FLAG])),
    # 409: another domain has the name or the UUID (decided before libvirt is called).
    Route('POST', NODES + '/create', domains.create_domain, ADMIN, body=JSON, host_paths=True,
          doc=Doc('Define (or redefine) a domain', {201: 'Created', 406: ERROR, 409: ERROR},
                  body='DomainDefinition', links=to_domain(
                      domains.inspect_domain, domains.start_domain, domains.stop_domain,
                      domains.destroy_domain, domains.restart_domain, domains.delete_domain,
                      domains.suspend_domain, domains.resume_domain, domains.attach_device,
                      domains.detach_device, domains.update_device, domains.resize_memory,
                      domains.resize_vcpu, events.wait_domain, system.domain_stats))),
    Route('GET', DOMAIN + '/json', domains.inspect_domain, READ, secret_flag=SECURE_XML, doc=Doc(
        'Inspect a domain', {200: 'Domain', 501: ERROR}, [XML_FLAG])),
    Route('POST', DOMAIN + '/start', domains.start_domain, OPERATOR,
          doc=lifecycle('Start a domain', flag(START_FLAGS))),
    Route('POST', DOMAIN + '/stop', domains.stop_domain, OPERATOR,
          doc=lifecycle('Shut a domain down', flag(SHUTDOWN_FLAGS), [WAIT], asks_guest=True)),
    Route('POST', DOMAIN + '/destroy', domains.destroy_domain, OPERATOR,
          doc=lifecycle('Power a domain off', flag(DESTROY_FLAGS))),
    Route('POST', DOMAIN + '/restart', domains.restart_domain, OPERATOR,
          doc=lifecycle('Reboot a domain', flag(REBOOT_FLAGS), [WAIT], not_modified=False,
                        asks_guest=True)),
    Route('POST', DOMAIN + '/delete', domains.delete_domain, ADMIN,
          doc=lifecycle("Delete a domain's definition", flag(UNDEFINE_FLAGS),
                        not_modified=False)),
    # Like `virsh autostart`: a persistent domain only (409 for a transient one).
    Route('POST', DOMAIN + '/autostart', domains.set_autostart, ADMIN, doc=Doc(
        'Start a domain when libvirtd starts, or not', {204: NO_BODY, 304: NO_BODY, 409: ERROR},
        [query('enable', '1/True/true: start it with libvirtd (at boot); 0/False/false: do not.',
               BOOLEAN, True)])),
    Route('POST', DOMAIN + '/suspend', domains.suspend_domain, OPERATOR,
          doc=lifecycle('Pause a domain', NO_FLAG)),
    Route('POST', DOMAIN + '/resume', domains.resume_domain, OPERATOR,
          doc=lifecycle('Resume a paused domain', NO_FLAG)),
    Route('POST', DOMAIN + '/devices/attach', domains.attach_device, ADMIN, body=JSON,
          host_paths=True, doc=Doc('Attach a device', {201: 'Device', 409: ERROR, 501: ERROR},
                                   [AFFECT_FLAG], body='DeviceDefinition')),
    Route('POST', DOMAIN + '/devices/detach', domains.detach_device, ADMIN, body=JSON, doc=Doc(
        'Detach a device', {202: 'Message', 204: NO_BODY, 409: ERROR, 501: ERROR},
        [AFFECT_FLAG], body='DeviceDefinition')),
    Route('POST', DOMAIN + '/devices/update', domains.update_device, ADMIN, body=JSON,
          host_paths=True, doc=Doc('Change a device in place', {200: 'Device', 409: ERROR,
                                                                 501: ERROR},
                                   [AFFECT_FLAG], body='DeviceDefinition')),
    Route('POST', DOMAIN + '/memory/resize', domains.resize_memory, ADMIN, doc=Doc(
        "Resize a domain's memory", {204: NO_BODY, 409: ERROR, 501: ERROR},
        [query('size', 'The new size in KiB (400 above what the domain may have).',
               {'type': 'integer', 'minimum': 1, 'maximum': MAX_WHOLE}, True),
         query('type', 'target (default) or max.', {'type': 'string',
                                                    'enum': sorted(domains.MEMORY_TYPES)}),
         AFFECT_FLAG])),
    Route('POST', DOMAIN + '/vcpu/resize', domains.resize_vcpu, ADMIN, doc=Doc(
        "Change a domain's virtual CPUs", {204: NO_BODY, 409: ERROR, 501: ERROR},
        [query('size', 'The new number (400 above what the domain may have).',
               {'type': 'integer', 'minimum': 1, 'maximum': domains.MAX_VCPUS}, True),
         query('type', 'current (default) or max.', {'type': 'string',
                                                     'enum': sorted(domains.VCPU_TYPES)}),
         AFFECT_FLAG])),
    # Consoles and screens upgrade the connection (see docs/consoles.md). Typing into a guest's
    # console or screen acts on it: operators.
    Route('GET', DOMAIN + '/console', consoles.console, OPERATOR, doc=upgrade(
        "A domain's text console over a WebSocket (binary frames both ways)", console=True)),
    Route('POST', DOMAIN + '/attach', consoles.attach, OPERATOR, doc=upgrade(
        "A domain's text console as raw bytes (Connection: Upgrade, Upgrade: tcp)",
        console=True)),
    Route('GET', DOMAIN + '/vnc', consoles.screen, OPERATOR, doc=upgrade(
        "A domain's VNC screen (RFB) over a WebSocket, for noVNC", screen=True)),
    Route('POST', DOMAIN + '/console/ticket', consoles.issue_ticket, OPERATOR, doc=Doc(
        'A single-use ticket that opens the console or screen from a browser',
        {201: 'Ticket', 429: ERROR},
        [query('for', 'console (default) or vnc.', {'type': 'string',
                                                    'enum': ['console', 'vnc']})])),
    # Watching changes nothing: events, waits, counters and descriptions are for readers.
    Route('POST', DOMAIN + '/wait', events.wait_domain, READ, doc=Doc(
        'Wait until a domain reaches a state', {200: 'WaitResult', **WATCHER_ANSWERS},
        [query('condition', 'The state to wait for.', {
            'type': 'string', 'enum': list(CONDITION_STATES)}, True),
         query('timeout', f'Seconds to wait at most (0-{defaults.MAX_WAIT_SECONDS}, '
               f'default {events.DEFAULT_WAIT_SECONDS}).',
               dict(SECONDS, maximum=defaults.MAX_WAIT_SECONDS))])),
    Route('GET', DOMAIN + '/addresses', addresses.domain_addresses, READ, doc=Doc(
        "A running domain's interfaces and their addresses (409 when it is not running)",
        {200: 'InterfaceList', 409: ERROR, **WATCHER_ANSWERS},
        [query('source', 'Only these sources (repeat the parameter, or separate them with '
               'commas); by default every one that applies.', {'type': 'array', 'items': {
                   'type': 'string', 'pattern': SOURCE_LIST}}),
         query('wait', 'Answer once an address is known, looking every '
               f'{POLL_SECONDS:g} s for at most this many seconds '
               f'(0-{defaults.MAX_WAIT_SECONDS}); 408 when that runs out.',
               dict(SECONDS, maximum=defaults.MAX_WAIT_SECONDS))])),
    Route('GET', DOMAIN + '/stats', system.domain_stats, READ, doc=Doc(
        "A domain's counters", {200: 'Stats'})),
    Route('GET', NODES + '/stats', system.all_stats, READ, doc=Doc(
        "Every domain's counters", {200: 'StatsList'}, [ALL])),
    Route('GET', HV + '/events', events.stream_events, READ, doc=Doc(
        'Domain events as they happen (Server-Sent Events for Accept: text/event-stream)',
        {200: {defaults.NDJSON: {'$ref': '#/components/schemas/StreamLine'},
               defaults.SSE: STRING}, 429: ERROR},
        [query('since', 'Replay the kept events after this id first.', WHOLE),
         query('type', 'The kinds of event to read (repeat the parameter, or separate them '
               f"with commas): {', '.join(EVENT_TYPES)}; domain alone by default.",
               {'type': 'array', 'items': {'type': 'string', 'pattern': TYPE_LIST}}),
         query('domain', 'Only events about these domains (names or UUIDs; repeat the '
               'parameter, or separate them with commas): no event that names no domain.',
               {'type': 'array', 'items': STRING}),
         query('event', 'Only these events (repeat the parameter, or separate them with '
               'commas).', {'type': 'array', 'items': {'type': 'string',
                                                       'pattern': EVENT_LIST}}),
         query('limit', 'End the stream after this many events.', dict(WHOLE, minimum=1)),
         query('timeout', 'End the stream after this many seconds '
               f'(at most {events.MAX_STREAM_SECONDS}: a week; without it the stream runs until '
               'the client or the daemon ends it).',
               dict(SECONDS, maximum=events.MAX_STREAM_SECONDS))])),
    Route('GET', '/_ping', system.ping, READ, doc=Doc(
        'Is the daemon alive? (touches no hypervisor)', {200: TEXT})),
    Route('GET', '/version', system.version, READ, doc=Doc(
        'Versions of the daemon, and of libvirt and the hypervisor behind each connection',
        {200: 'Version'})),
    Route('GET', '/info', system.info, READ, default_connection=True, doc=Doc(
        "The default connection's host, its domains, and what its driver supports",
        {200: 'Info'})),
    Route('GET', '/libvirt/json', system.list_connections, READ, doc=Doc(
        'The hypervisor connections (those your credentials cover), without waiting on a dead '
        'one', {200: 'ConnectionList'})),
    Route('GET', HV + '/info', system.connection_info, READ, doc=Doc(
        'The host, its domains, and what its driver supports', {200: 'Info'})),
    Route('GET', '/metrics', system.metrics, READ, doc=Doc(
        "Metrics in Prometheus' text format", {200: (defaults.METRICS, STRING)})),
    Route('GET', '/openapi.json', system.openapi_document, READ, doc=Doc(
        'This document', {200: (JSON, {'type': 'object'})})),
    Route('GET', IMAGES + '/json', images.list_images, READ, doc=Doc(
        'List images (every active pool, or one)', {200: 'ImageList', 409: ERROR},
        [query('pool', 'Only this pool.', NAME)])),
    Route('POST', IMAGES + '/{pool}/create', images.create_image, ADMIN, doc=Doc(
        'Create an empty image', {201: 'Image', 409: ERROR, 501: ERROR, 507: ERROR},
        [query('name', "The new image's name.", NAME, True), CAPACITY, FORMAT,
         query('allocation', "Space to allocate now, at most the capacity and the pool's free "
               'space (default 0: sparse). ' + SIZE_TEXT, SIZE_SCHEMA),
         flag(VOL_CREATE_FLAGS)], links=IMAGE_LINKS)),
    Route('GET', IMAGE + '/json', images.inspect_image, READ, doc=Doc(
        'Inspect an image', {200: 'Volume', 409: ERROR})),
    Route('POST', IMAGE + '/clone', images.clone_image, ADMIN, doc=Doc(
        'Clone an image (allocating what the source does)', {201: 'Image', 409: ERROR,
                                                             501: ERROR, 507: ERROR},
        [query('name', "The clone's name.", NAME, True),
         query('pool', "The clone's pool (default: the same).", NAME),
         dict(FORMAT, description="raw or qcow2 (default: the source's)."),
         flag(VOL_CREATE_FLAGS)], links=IMAGE_LINKS)),
    Route('POST', IMAGE + '/resize', images.resize_image, ADMIN, doc=Doc(
        'Resize an image (shrinking needs flag=4)', {204: NO_BODY, 409: ERROR, 501: ERROR,
                                                     507: ERROR},
        [CAPACITY, FORCE, flag(VOL_RESIZE_FLAGS)])),
    Route('POST', IMAGE + '/wipe', images.wipe_image, ADMIN, doc=Doc(
        "Wipe an image's content", {204: NO_BODY, 409: ERROR, 501: ERROR},
        [query('algorithm', "zero (default), or one of libvirt's wipe patterns.",
               {'type': 'string', 'enum': list(WIPE_ALGORITHMS)}), FORCE, NO_FLAG])),
    Route('POST', IMAGE + '/delete', images.delete_image, ADMIN, doc=Doc(
        'Delete an image', {204: NO_BODY, 409: ERROR, 501: ERROR},
        [FORCE, flag(VOL_DELETE_FLAGS)])),
    Route('PUT', IMAGE + '/upload', images.upload_image, ADMIN, body=defaults.OCTETS, doc=Doc(
        "Upload a new image's content", {201: 'Image', 409: ERROR, 413: ERROR, 501: ERROR,
                                          507: ERROR},
        [query('capacity', "The image's size (default: the body's length). " + SIZE_TEXT,
               SIZE_SCHEMA)], body='Octets', links=IMAGE_LINKS)),
    # A guest's disk holds its secrets, keys and data.
    Route('GET', IMAGE + '/download', images.download_image, ADMIN, doc=Doc(
        'Download an image (a single Range is honoured)', {200: OCTETS, 206: OCTETS, 409: ERROR,
                                                           416: ERROR, 501: ERROR})),
    Route('GET', POOLS + '/json', images.list_pools, READ, doc=Doc(
        'List storage pools', {200: 'PoolList'}, links={'inspect_pool': (images.inspect_pool, {
            'connection': CONNECTION, 'pool': '$response.body#/0/Name'})})),
    Route('GET', POOLS + '/{pool}/json', images.inspect_pool, READ, doc=Doc(
        'Inspect a storage pool', {200: 'StoragePool'})),
    # Operations: long actions on threads of their own (Stop and Restart past their bound).
    Route('GET', OPERATIONS + '/json', operations.list_operations, READ, doc=Doc(
        'The recent operations on this connection, newest first', {200: 'OperationList'})),
    Route('GET', OPERATIONS + '/{operation}/json', operations.inspect_operation, READ, doc=Doc(
        'Inspect an operation (with wait, once it ended)', {200: 'Operation', 429: ERROR,
                                                            499: ERROR},
        [query('wait', f'Answer once it ended, or after this many seconds (0-'
               f'{defaults.MAX_WAIT_SECONDS}) with the operation as it stands.',
               dict(SECONDS, maximum=defaults.MAX_WAIT_SECONDS))])),
    Route('POST', OPERATIONS + '/{operation}/cancel', operations.cancel_operation, OPERATOR,
          doc=Doc("Cancel an operation (abort its libvirt job)", {202: 'Operation',
                                                                   409: ERROR})),
    # Operators on both connections (the destination is one the credentials cover, else 404);
    # persist and undefine are admin changes (the handler says 403).
    Route('POST', DOMAIN + '/migrate', migration.migrate_domain, OPERATOR, doc=Doc(
        'Migrate a domain to another connection (an operation)', {202: 'Operation', 409: ERROR,
                                                                  501: ERROR},
        [query('to', 'The connection to migrate to (another hypervisor: 400 for the same one).',
               STRING, True),
         query('persist', '1/True/true: define it on the destination too (admin; always for '
               'a shut-off domain).', BOOLEAN),
         query('undefine', "1/True/true: undefine it on the source once it left (admin).",
               BOOLEAN),
         query('live', '0/False/false: pause a running guest while its memory is copied (as '
               '`virsh migrate` without --live; a PV guest on a Xen without shadow paging); '
               'default live.', BOOLEAN),
         query('bandwidth', 'At most this many MiB/s (where the driver bounds it: 501 where '
               'not).', {'type': 'integer', 'minimum': 1, 'maximum': migration.MAX_BANDWIDTH}),
         query('downtime', 'The longest pause of the guest at the switch-over, in ms (where '
               'the driver bounds it: 501 where not).',
               {'type': 'integer', 'minimum': 1, 'maximum': migration.MAX_BOUND['downtime']})],
        links=OPERATION_LINKS)),
    # Maintenance and evacuation act on every guest of a host: admins.
    Route('GET', HV + '/maintenance/json', migration.show_maintenance, READ, doc=Doc(
        'Whether the host is in maintenance (no guest starts there)', {200: 'Maintenance'})),
    Route('POST', HV + '/maintenance/enter', migration.enter_maintenance, ADMIN, doc=Doc(
        'Put the host into maintenance', {200: 'Maintenance'})),
    Route('POST', HV + '/maintenance/lift', migration.lift_maintenance, ADMIN, doc=Doc(
        'Lift the maintenance of the host', {204: NO_BODY})),
    Route('POST', HV + '/evacuate', migration.evacuate, ADMIN, doc=Doc(
        'Migrate every running guest away, the host put into maintenance (an operation)',
        {202: 'Operation', 409: ERROR},
        [query('to', 'The connection to migrate them to (default: for each guest, the '
               'connection with the most free memory among those of the same driver).', NAME),
         query('live', '0/False/false: pause each guest while its memory is copied, as '
               "Migrate's live=0 (PV guests on a Xen without shadow paging); default live.",
               BOOLEAN)],
        links=OPERATION_LINKS)),
    # Networks: defining or deleting one changes the host (a bridge, NAT rules, a DHCP server run
    # as root): admin; starting or stopping one runs or halts what an admin defined, as a
    # domain's start and stop do: operator (docs/security.md).
    Route('GET', NETWORKS + '/json', networks.list_networks, READ, doc=Doc(
        'List networks, with their state', {200: 'NetworkList'}, links={
            'inspect_network': (networks.inspect_network, {
                'connection': CONNECTION, 'network': '$response.body#/0/Name'})})),
    Route('POST', NETWORKS + '/create', networks.create_network, ADMIN, body=JSON,
          host_paths=True, doc=Doc('Define (or redefine) a network', {201: 'Created', 406: ERROR,
                                                                      409: ERROR},
                                   body='NetworkDefinition')),
    Route('GET', NETWORK + '/json', networks.inspect_network, READ, doc=Doc(
        'Inspect a network: its definition and its state', {200: 'Network', 501: ERROR},
        [flag(NETWORK_XML_FLAGS)])),
    Route('POST', NETWORK + '/start', networks.start_network, OPERATOR, doc=Doc(
        'Start a network', {204: NO_BODY, 304: NO_BODY, 409: ERROR})),
    Route('POST', NETWORK + '/stop', networks.stop_network, OPERATOR, doc=Doc(
        'Stop a network (a transient one is then gone)', {204: NO_BODY, 304: NO_BODY,
                                                          409: ERROR}, [NETWORK_FORCE])),
    Route('POST', NETWORK + '/delete', networks.delete_network, ADMIN, doc=Doc(
        'Delete a network (stopping it first if it runs)', {204: NO_BODY, 409: ERROR},
        [NETWORK_FORCE])),
    Route('POST', NETWORK + '/autostart', networks.autostart_network, ADMIN, doc=Doc(
        'Whether the host starts a network when it boots', {204: NO_BODY, 304: NO_BODY,
                                                            409: ERROR},
        [query('enable', '1/True/true: start it with the host; 0/False/false: do not.',
               BOOLEAN, True)])),
    Route('GET', NETWORK + '/leases', networks.network_leases, READ, doc=Doc(
        "The DHCP leases of a network's dnsmasq", {200: 'LeaseList', 409: ERROR, 501: ERROR},
        [query('mac', 'Only the leases of this MAC address.',
               {'type': 'string', 'pattern': f'^{networks.MAC}$'})])),
    Route('GET', HV + '/bridges/json', networks.list_bridges, READ, doc=Doc(
        "dom0's bridges, as libvirt's interface driver reports them", {200: 'BridgeList',
                                                                        501: ERROR})),
]
