"""The one table that maps libvirt errors onto HTTP errors, and the named checks of libvirt's
error codes."""
from urllib.parse import urlsplit

import libvirt

from xend_rest.errors import RETRY_AFTER, HTTPError


def _code(name):
    # Older libvirt-python builds lack some constants; an absent one simply never matches.
    return getattr(libvirt, name, None)


# libvirt error code -> (HTTP status, our stable code).  Anything absent is a 500.
#
# VIR_ERR_INTERNAL_ERROR, VIR_ERR_OPERATION_FAILED and VIR_ERR_SYSTEM_ERROR stay 500 on purpose:
# drivers use them for their own failures too, and only the message (never matched) would tell
# a refusal apart. The refusals that reach them on the drivers the tests run are prevented by a
# state check before the call instead:
#   test driver, INTERNAL_ERROR: start of a running domain (304), shutdown of one shut off (304),
#     suspend of one not running (409) or paused (304), resume of one not paused (304): checked in
#     api/handlers/domains.py; "Not enough free space in pool" on image create and clone: 507
#     (api/handlers/images.py, _refuse_no_space).
#   QEMU (and Xen's libxl), OPERATION_FAILED: a live attach of a disk on a taken target (409,
#     _refuse_taken_target); "Not enough space left in storage pool" on a resize that allocates
#     (507); SYSTEM_ERROR ENOSPC on create, clone or upload (507, the same free-space check).
# What stays a 500: a race that changes the state between our check and the call (a domain shut
# down meanwhile; a pool filled by another writer), a host failure (QEMU dying at start, a missing
# binary such as scrub for a wipe pattern, a file system without reflink) and a file libvirt's
# pool does not know of yet blocking a new image's name (refresh the pool).
LIBVIRT_ERRORS = {
    _code('VIR_ERR_NO_DOMAIN'): (404, 'no_such_domain'),
    _code('VIR_ERR_NO_DOMAIN_SNAPSHOT'): (404, 'no_such_snapshot'),
    _code('VIR_ERR_NO_STORAGE_POOL'): (404, 'no_such_pool'),
    _code('VIR_ERR_NO_STORAGE_VOL'): (404, 'no_such_image'),
    _code('VIR_ERR_NO_NETWORK'): (404, 'no_such_network'),
    _code('VIR_ERR_DEVICE_MISSING'): (404, 'no_such_device'),
    _code('VIR_ERR_INVALID_ARG'): (400, 'bad_parameter'),
    _code('VIR_ERR_OVERFLOW'): (400, 'bad_parameter'),
    _code('VIR_ERR_XML_ERROR'): (400, 'bad_definition'),
    _code('VIR_ERR_XML_DETAIL'): (400, 'bad_definition'),
    _code('VIR_ERR_CONFIG_UNSUPPORTED'): (400, 'bad_definition'),
    _code('VIR_ERR_OPERATION_INVALID'): (409, 'invalid_state'),
    _code('VIR_ERR_DOM_EXIST'): (409, 'already_exists'),
    _code('VIR_ERR_STORAGE_VOL_EXIST'): (409, 'already_exists'),
    _code('VIR_ERR_STORAGE_POOL_BUILT'): (409, 'already_exists'),
    _code('VIR_ERR_OPERATION_DENIED'): (403, 'denied'),
    _code('VIR_ERR_ACCESS_DENIED'): (403, 'denied'),
    _code('VIR_ERR_NO_SUPPORT'): (501, 'not_supported'),
    _code('VIR_ERR_OPERATION_UNSUPPORTED'): (501, 'not_supported'),
    _code('VIR_ERR_ARGUMENT_UNSUPPORTED'): (501, 'not_supported'),
    _code('VIR_ERR_OPERATION_TIMEOUT'): (504, 'hypervisor_timeout'),
    _code('VIR_ERR_AGENT_UNRESPONSIVE'): (504, 'hypervisor_timeout'),
    _code('VIR_ERR_AGENT_UNSYNCED'): (504, 'hypervisor_timeout'),
    _code('VIR_ERR_NO_CONNECT'): (503, 'hypervisor_unavailable'),
    _code('VIR_ERR_INVALID_CONN'): (503, 'hypervisor_unavailable'),
}
LIBVIRT_ERRORS.pop(None, None)

# Error domains whose failures mean "the link to libvirtd broke", whatever the code.
CONNECTION_DOMAINS = {_code('VIR_FROM_RPC'), _code('VIR_FROM_REMOTE')} - {None}
# Never retried by the daemon: a write libvirtd carried out before the link broke would run twice.
OUTCOME_UNKNOWN = ('; the connection broke while the request was under way, so whether it took '
                   'effect is unknown: read the domain again (Inspect) before retrying')


def is_connection_error(err):
    """True when a libvirt error says the connection itself is unusable."""
    code = err.get_error_code()
    if LIBVIRT_ERRORS.get(code, (0,))[0] == 503:
        return True
    return err.get_error_domain() in CONNECTION_DOMAINS and code in (
        libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_INTERNAL_ERROR)


def is_no_domain(err):
    return err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


def is_no_support(err):
    """The driver lacks the call (libxl: snapshots, the bandwidth of a migration)."""
    return err.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT


def is_no_image(err):
    return err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL


def from_libvirt(err, write=False):
    """The HTTPError that a libvirt error means for a client; `write`: the request may have
    changed something, so a connection that broke under it leaves the outcome unknown."""
    message = err.get_error_message() or str(err)
    if is_connection_error(err):
        broken = hypervisor_timeout(message) if 'keepalive' in message else unavailable(message)
        if write:
            broken.message += OUTCOME_UNKNOWN
            broken.code = 'outcome_unknown'
        return broken
    if err.get_error_code() == libvirt.VIR_ERR_INVALID_ARG and 'unsupported flags' in message:
        # virCheckFlags: a documented flag this driver does not implement
        return HTTPError(501, message, 'not_supported')
    status, code = LIBVIRT_ERRORS.get(err.get_error_code(), (500, 'libvirt_error'))
    return HTTPError(status, message, code)


# Why a xen:///system connection cannot open while libvirtd runs: its libxl driver found no Xen
# (libvirtd started before xenstored) and stays inactive until libvirtd restarts.
XEN_DRIVER_INACTIVE = ("libvirtd's Xen driver is not active: libvirtd started before Xen's "
                       'daemons were up, and stays so until it restarts. Run: systemctl restart '
                       'libvirtd; and have libvirtd ordered after xen.service (After=xen.service, '
                       "as xend-rest's package does for Debian's units)")


def open_failure(err, uri):
    """What a client should read when a connection to `uri` could not be opened. libxl reports
    two failures at open, both VIR_ERR_INTERNAL_ERROR from VIR_FROM_LIBXL (as libvirtd on Debian
    12's dom0 answered): a URI path other than /system, and an inactive driver; the URI tells
    them apart."""
    message = err.get_error_message() or str(err)
    if (err.get_error_domain() == libvirt.VIR_FROM_LIBXL
            and err.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR
            and urlsplit(uri).path in ('', '/', '/system')):
        return f'{XEN_DRIVER_INACTIVE} (libvirt: {message})'
    return message


def unavailable(message):
    return HTTPError(503, 'libvirt is unreachable: ' + message, 'hypervisor_unavailable',
                     [('Retry-After', RETRY_AFTER)])


def hypervisor_timeout(message):
    return HTTPError(504, 'libvirt did not answer in time: ' + message, 'hypervisor_timeout',
                     [('Retry-After', RETRY_AFTER)])


def still_there(items, read, gone=is_no_domain):
    """read(item) for each item, skipping those that vanished between listing and reading
    (gone(err) says so) and those read answers None for."""
    for item in items:
        try:
            value = read(item)
        except libvirt.libvirtError as err:
            if not gone(err):
                raise
            continue
        if value is not None:
            yield value
