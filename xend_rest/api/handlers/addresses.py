"""Where a running domain is on the network: its interfaces and their addresses."""
from xend_rest.api.params import parse_seconds
from xend_rest.defaults import MAX_WAIT_SECONDS
from xend_rest.errors import bad_request
from xend_rest.hypervisor.addresses.lookup import (SOURCES, Place, addresses, parse_sources,
                                                   wait_for_addresses)
from .domains import lookup_domain


def domain_addresses(request, ident):
    """GET /nodes/(id)/addresses: each interface's addresses, from the sources asked (all that
    apply by default); wait=S: once one is known, 408 after S seconds."""
    wanted = parse_sources(request.query.get('source'))
    if wanted is None:
        raise bad_request(f"source={','.join(request.query['source'])}: expected some of "
                          f"{', '.join(SOURCES)} (or no source: every one that applies)")
    wait = parse_seconds(request, 'wait', None, MAX_WAIT_SECONDS)
    conn = request.conn
    dom = lookup_domain(conn, ident)
    hypervisor = request.hypervisor
    place = Place(hypervisor.connection.uri,
                  hypervisor.features.get(conn, 'driver', lambda conn: conn.getType()))
    if wait is None:
        return 200, addresses(conn, dom, place, wanted)
    return 200, wait_for_addresses(conn, dom, place, wanted, wait, hypervisor.events.watchers,
                                   request.caller, request.client_gone, request.hold)
