"""Moving guests between configured connections, as operations (docs/api.md, Migrate a domain,
Evacuate a host), and the maintenance of a host."""
import collections
import contextlib

import libvirt

from xend_rest.api.params import parse_bool, parse_int
from xend_rest.errors import HTTPError, bad_request
from xend_rest.hypervisor import convert
from xend_rest.hypervisor.libvirt_errors import from_libvirt
from xend_rest.hypervisor.moves import migration
from xend_rest.hypervisor.moves.maintenance import host_state, hosts_entries, refuse_on_host
from .domains import NO_CONTENT, changeable_domain, is_dom0
from .operations import accepted

ADMIN = 'admin'  # routes.ADMIN (the routes import this module)
MAX_BANDWIDTH = 2**31 - 1  # MiB/s: libvirt's unsigned long, as virsh takes it
MAX_BOUND = {'bandwidth': MAX_BANDWIDTH, 'downtime': 2**63 - 1}  # downtime: ms, unsigned long long
ADMIN_OPTIONS = ('persist', 'undefine')  # they change definitions on the hosts: admin changes
# The destination, as the Guard's host-path policy looks at a request: its hypervisor and
# connection.
OnDestination = collections.namedtuple('OnDestination', 'hypervisor conn')


def migrate_domain(request, ident):
    """POST /nodes/(id)/migrate?to=NAME: 202 and the operation; refusals change nothing."""
    to = request.arg('to')
    if not to:
        raise bad_request('query parameter "to" is required: the connection to migrate to')
    persist, undefine = (parse_bool(request, name) for name in ADMIN_OPTIONS)
    live = parse_bool(request, 'live', True)
    bandwidth, downtime = (parse_int(request, name, minimum=1, maximum=MAX_BOUND[name])
                           if request.arg(name) is not None else None
                           for name in ('bandwidth', 'downtime'))
    if (persist or undefine) and request.role != ADMIN:
        raise HTTPError(403, 'persist and undefine change definitions on the hosts: this needs '
                        f'the admin role; your credentials have {request.role}', 'forbidden')
    destination = request.app.covered_hypervisor(request, to)  # 404 as for any path
    dom = changeable_domain(request, ident)
    active = bool(dom.isActive())  # once: the role rule and the kind of move agree
    if not active and request.role != ADMIN:
        raise HTTPError(403, f'{dom.name()} is shut off: an offline migration moves its '
                        'definition (defined on the destination, undefined here), which needs '
                        f'the admin role; your credentials have {request.role}', 'forbidden')
    action, job = _prepared(request, dom, destination, persist, undefine, bandwidth, downtime,
                            active, live)
    # An offline migration is no libvirt job: no progress to read, no abort.
    operation = request.app.operations.start('migrate', request.hypervisor, dom, action,
                                             request.caller, job=job, also=destination)
    return accepted(request.hypervisor, operation)


def _prepared(request, dom, destination, persist=False, undefine=False, bandwidth=None,
              downtime=None, active=None, live=True):
    """(the migration of `dom` to `destination`, whether it is a libvirt job: a running
    domain's, live unless `live` is false, paused while copied), once every refusal is
    passed: 400 the same hypervisor, 409 a destination in maintenance, 403 a definition the
    host-path policy refuses there; live, 501 a driver that does not migrate or lacks a bound
    asked for; offline, 409 what cannot move (migration.check_vacant, check_movable)."""
    dconn = destination.connection.get()
    names = (request.hypervisor.name, destination.name)
    migration.check_distinct(request.conn, dconn, names)
    refuse_on_host(request.app.hypervisors.values(), destination)
    if active is None:
        active = bool(dom.isActive())
    if not active:  # offline: a shut-off domain is a defined one
        return _offline(request, dom, destination, dconn), False
    # The destination defines the domain from this XML: judged as a Create there would be.
    definition = convert.xml_to_dict(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
    request.app.guard.check_definition(OnDestination(destination, dconn), definition)
    migration.check_support(request.conn, dconn, names)
    migration.check_bounds(dom, names[0], bandwidth=bandwidth, downtime=downtime)
    uri = migration.destination_uri(destination.connection)
    params = migration.parameters(destination.connection.settings, bandwidth)
    bits = migration.flags(persist, undefine, live)
    source, uuid = request.hypervisor.connection, dom.UUIDString()
    # A definition that moves keeps its autostart mark (libvirt does not carry it over).
    autostart = bool(undefine and dom.isPersistent() and dom.autostart())

    def action():
        migration.migrate(source, uuid, uri, params, bits, downtime)
        if autostart:
            destination.connection.get().lookupByUUIDString(uuid).setAutostart(1)
    return action, True


def _offline(request, dom, destination, dconn):
    """An offline migration: the daemon defines the domain on the destination from the XML the
    Guard judged there, and undefines it here (migration.move_definition). bandwidth and
    downtime bound a live migration only: an offline one moves no memory."""
    where = f'connection {destination.name}'
    migration.check_vacant(dconn, dom.name(), dom.UUIDString(), where)
    migration.check_movable(dom)
    definition = convert.xml_to_dict(dom.XMLDesc(migration.OFFLINE_XML))
    request.app.guard.check_definition(OnDestination(destination, dconn), definition)
    xml = convert.dict_to_xml(definition, 'domain')  # what was judged is what is defined
    source, uuid, autostart = request.hypervisor.connection, dom.UUIDString(), dom.autostart()
    return lambda: migration.move_definition(source.get(), destination.connection.get(), uuid,
                                             xml, autostart, where)


def show_maintenance(request):
    """GET /maintenance/json: the host's, entered through this connection or another to it."""
    state = host_state(request.app.hypervisors.values(), request.hypervisor)
    return 200, {'Maintenance': state is not None, **(state or {'Since': None, 'Caller': None})}


def enter_maintenance(request):
    """POST /maintenance/enter: no guest starts here (nor migrates here) until it is lifted."""
    request.hypervisor.maintenance.enter(request.caller)
    return show_maintenance(request)


def lift_maintenance(request):
    """POST /maintenance/lift: the host's, through whichever connections it was entered; 409
    while an evacuation of the host runs (cancel it first)."""
    entries = sorted(hosts_entries(request.app.hypervisors.values(), request.hypervisor),
                     key=lambda hypervisor: hypervisor.name)  # one order for every lift
    with contextlib.ExitStack() as held:
        for hypervisor in entries:
            held.enter_context(hypervisor.maintenance.changing)
        request.app.operations.refuse_kind(request.hypervisor, 'evacuate')
        for hypervisor in entries:
            hypervisor.maintenance.lift()
    return NO_CONTENT


def evacuate(request):
    """POST /evacuate[?to=NAME][&live=0]: maintenance on, then one operation that migrates every
    running guest (dom0 never; paused while copied with live=0), one at a time on the
    evacuation's own thread, each to `to` or to the candidate with the most free memory; each
    guest's outcome in its Guests."""
    to = request.arg('to')
    if to == '':
        raise bad_request('to=: name a connection, or leave `to` out to let the daemon choose')
    live = parse_bool(request, 'live', True)
    destinations = [request.app.covered_hypervisor(request, to)] if to else _candidates(request)
    if to:
        migration.check_distinct(request.conn, destinations[0].connection.get(),
                                 (request.hypervisor.name, to))
        refuse_on_host(request.app.hypervisors.values(), destinations[0])
    if not destinations:
        raise HTTPError(409, f'no connection to evacuate {request.hypervisor.name} to: none that '
                        'your credentials cover has the same driver and is up, out of '
                        'maintenance and another host', 'no_destination')
    guests = [dom for dom in request.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
              if not is_dom0(dom)]
    maintenance = request.hypervisor.maintenance
    outcomes = [{'Name': dom.name(), 'Uuid': dom.UUIDString(), 'To': None, 'Operation': None,
                 'State': 'waiting', 'Error': None} for dom in guests]
    kind, host = migration.host_of(request.conn)
    evacuation = _Evacuation()
    with maintenance.changing:  # another evacuation's entry is not ours to undo
        was_on = maintenance.on
        maintenance.enter(request.caller)
        try:
            operation = request.app.operations.start(
                'evacuate', request.hypervisor, None,
                lambda: _evacuate(request, list(zip(outcomes, guests)), destinations,
                                  evacuation, live),
                request.caller, target={'Name': request.hypervisor.name,
                                        'Uuid': host if kind == 'uuid' else None},
                extra={'Guests': outcomes}, on_cancel=evacuation.cancel)
        except HTTPError:  # 409 one runs, 503 no thread: the maintenance is as it was
            if not was_on:
                maintenance.lift()
            raise
    return accepted(request.hypervisor, operation)


class _Evacuation:
    """What cancelling an evacuation acts on: no further guest starts, and the migration that
    runs is aborted (where its driver can; else it ends as it would)."""

    def __init__(self):
        self.stopped = False
        self.current = None  # the guest's migration running

    def cancel(self):
        self.stopped = True
        child = self.current
        if child is not None and child.running:
            try:
                child.cancel()
            except HTTPError:
                pass  # ended meanwhile, or not abortable: it ends as it would


def _candidates(request):
    """The connections the caller covers with the source's driver, up, out of maintenance, and
    on another host."""
    kind, host = request.conn.getType(), migration.host_of(request.conn)
    found = []
    for hypervisor in request.usable_hypervisors():
        if hypervisor is request.hypervisor or any(
                other.maintenance.on and other.same_host(hypervisor)
                for other in request.app.hypervisors.values()):
            continue
        try:
            conn = hypervisor.connection.get()
            if conn.getType() == kind and migration.host_of(conn) != host:
                found.append(hypervisor)
        except (HTTPError, libvirt.libvirtError):
            continue  # not answering: no destination
    return found


def _free_memory(hypervisor):
    try:
        return hypervisor.connection.get().getFreeMemory()
    except (HTTPError, libvirt.libvirtError):
        return -1


def moved(dom):
    """persist, undefine for an evacuated guest: a persistent one moves for good (defined on
    the destination, undefined here, so that a reboot of this host starts no second copy), a
    transient one as it is."""
    persistent = bool(dom.isPersistent())
    return persistent, persistent


def _evacuate(request, pending, destinations, evacuation, live):
    """Migrate each guest in turn (live unless `live` is false), as an operation of its own run
    on the evacuation's thread (no further place of the pool: an evacuation never waits for
    one); one guest's refusal or failure is its outcome and the rest go on; one shut off
    before its turn has `stayed`. Fails (`evacuation_incomplete`) unless all others moved;
    cancelled, the guests not yet started are `cancelled`."""
    operations = request.app.operations
    for outcome, dom in pending:
        if evacuation.stopped:
            outcome.update(State='cancelled')
            continue
        try:
            if not dom.isActive():  # shut off since it was listed: it stays, as shut-off guests do
                outcome.update(State='stayed')
                continue
            destination = max(destinations, key=_free_memory)
            outcome['To'] = destination.name
            # active=True: never an offline move, even if it shuts off now (that migration fails)
            action, job = _prepared(request, dom, destination, *moved(dom), active=True, live=live)
            child = operations.begin_here('migrate', request.hypervisor, dom, request.caller,
                                          job=job, also=destination)
        except HTTPError as err:
            outcome.update(State='failed', Error=err.body())
            continue
        except libvirt.libvirtError as err:
            outcome.update(State='failed', Error=from_libvirt(err, True).body())
            continue
        outcome.update(Operation=child.id, State='running')
        evacuation.current = child
        operations.run_here(child, action)
        outcome.update(State=child.state, Error=child.error)
    left = [outcome['Name'] for outcome, _dom in pending
            if outcome['State'] not in ('succeeded', 'stayed')]
    if left:
        raise HTTPError(500, f"{len(left)} of {len(pending)} guests did not move: "
                        f"{', '.join(left)} (see Guests)", 'evacuation_incomplete')
