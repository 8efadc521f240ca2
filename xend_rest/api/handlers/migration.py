"""Migrating a domain to another configured connection, as an operation (docs/api.md, Migrate)."""
import collections

import libvirt

from xend_rest.api.params import parse_bool, parse_int
from xend_rest.errors import HTTPError, bad_request
from xend_rest.hypervisor import convert, migration
from .domains import changeable_domain
from .operations import accepted

ADMIN = 'admin'  # routes.ADMIN (the routes import this module)
MAX_BANDWIDTH = 2**31 - 1  # MiB/s: libvirt's unsigned long, as virsh takes it
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
    bandwidth = (parse_int(request, 'bandwidth', minimum=1, maximum=MAX_BANDWIDTH)
                 if request.arg('bandwidth') is not None else None)
    if (persist or undefine) and request.role != ADMIN:
        raise HTTPError(403, 'persist and undefine change definitions on the hosts: this needs '
                        f'the admin role; your credentials have {request.role}', 'forbidden')
    destination = request.app.covered_hypervisor(request, to)  # 404 as for any path
    dom = changeable_domain(request, ident)
    dconn = destination.connection.get()
    names = (request.hypervisor.name, destination.name)
    migration.check_distinct(request.conn, dconn, names)
    active = bool(dom.isActive())  # live; else offline (a shut-off domain is a defined one)
    # The destination defines the domain from this XML: judged as a Create there would be.
    definition = convert.xml_to_dict(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
    request.app.guard.check_definition(OnDestination(destination, dconn), definition)
    migration.check_support(request.conn, dconn, names)
    uri = migration.destination_uri(destination.connection)
    params = migration.parameters(destination.connection.settings, bandwidth)
    bits = migration.flags(active, persist, undefine)
    source, uuid = request.hypervisor.connection.uri, dom.UUIDString()
    operation = request.app.operations.start(
        'migrate', request.hypervisor, dom,
        lambda: migration.migrate(source, uuid, uri, params, bits), request.caller, job=True)
    return accepted(request.hypervisor, operation)
