"""Moving a domain to another host. A running one migrates live, peer to peer: the source libvirtd
drives the migration, so it goes on (and ends, or fails, in libvirt's hands) if the daemon stops
or dies meanwhile. A shut-off one migrates offline as the daemon's own move (move_definition):
no driver is asked to migrate it (libvirt 9.0's libxl cannot)."""
import logging
import re
import xml.etree.ElementTree as ElementTree

import libvirt

from xend_rest.errors import HTTPError
from xend_rest.logtext import printable_text
from ..libvirt_errors import is_connection_error, is_no_domain, is_no_support

log = logging.getLogger(__name__)

SMBIOS_UUID = re.compile(r'[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}')

# The definition an offline migration defines on the destination: inactive, migratable (no
# state of this host's), with its secrets (a graphics password would otherwise be dropped, and
# the guest's screen come up unprotected there). Where libvirt withholds the secrets (access
# control), the XMLDesc call is refused (403 denied) and nothing moves.
OFFLINE_XML = (libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_MIGRATABLE
               | libvirt.VIR_DOMAIN_XML_SECURE)


def host_of(conn):
    """What tells two hypervisors apart: the host UUID libvirt reports in its capabilities
    (QEMU, LXC); else, from a driver whose capabilities carry none (libxl), the SMBIOS system
    UUID of its sysinfo (sysinfo_uuid); else (the test driver, whose fixed sysinfo names no
    system; a host without dmidecode) the URI libvirt says it is connected to."""
    uuid = ElementTree.fromstring(conn.getCapabilities()).findtext('host/uuid')
    if uuid:
        return 'uuid', uuid.lower()
    try:
        uuid = sysinfo_uuid(conn.getSysinfo(0))
    except libvirt.libvirtError as err:
        if is_connection_error(err):
            raise  # not an answer: asked again on the next connection
        uuid = None  # no such call, or no SMBIOS (libxl's dom0 without dmidecode)
    return ('uuid', uuid) if uuid else ('uri', conn.getURI())


def sysinfo_uuid(xml):
    """The SMBIOS system UUID of a host's sysinfo XML, lower case; None where it names none, or
    one that identifies no machine (not a UUID: dmidecode's "Not Settable"; all of one byte,
    as a board with no UUID set reports: libvirt's virUUIDIsValid refuses those too)."""
    text = (ElementTree.fromstring(xml).findtext("system/entry[@name='uuid']") or '').strip()
    digits = text.replace('-', '').lower()
    if not SMBIOS_UUID.fullmatch(text) or len(set(digits[i:i + 2] for i in range(0, 32, 2))) == 1:
        return None
    return text.lower()


def migrates(conn):
    """Whether the driver migrates at all: its capabilities list migration features (QEMU's and
    libxl's do, the test driver's do not)."""
    return ElementTree.fromstring(conn.getCapabilities()).find('host/migration_features') \
        is not None


def check_distinct(source, destination, names):
    """400 when both connections reach one hypervisor."""
    kind, _ = host = host_of(source)
    if host == host_of(destination):
        raise HTTPError(400, f'{names[0]} and {names[1]} are the same hypervisor (same host '
                        f"{'UUID' if kind == 'uuid' else 'URI, its driver reporting no host UUID'}"
                        '): a domain cannot migrate to where it is', 'same_hypervisor')


def check_support(source, destination, names):
    """501 when a driver cannot migrate."""
    for name, conn in zip(names, (source, destination)):
        if not migrates(conn):
            raise HTTPError(501, f'the driver of connection {name} ({conn.getType()}) does not '
                            'migrate domains', 'not_supported')


# A live migration's bounds, each with the call that reads it: a driver that answers it
# VIR_ERR_NO_SUPPORT (libxl: neither) has no such bound, and would refuse the migration only once
# it started (libxl's migrateToURI3 takes no bandwidth parameter).
BOUND_PROBES = {'bandwidth': ('migrateGetMaxSpeed', 'a bandwidth bound'),
                'downtime': ('migrateGetMaxDowntime', 'a downtime bound')}


def check_bounds(dom, name, **bounds):
    """501 before anything moves when the source's driver (connection `name`) lacks a bound
    asked for (bandwidth=MiB/s, downtime=ms; None: not asked): each is probed by reading it."""
    for bound, value in bounds.items():
        if value is None:
            continue
        call, what = BOUND_PROBES[bound]
        try:
            if getattr(dom, call)(0) is None:
                # libvirt-python's migrateGetMaxDowntime answers None where it should raise:
                # the error is libvirt's last one, which libvirtError reads
                raise libvirt.libvirtError(f'{call} failed')
        except libvirt.libvirtError as err:
            if not is_no_support(err):
                raise
            raise HTTPError(501, f'the driver of connection {name} ({dom.connect().getType()}) '
                            f'migrates without {what} ({bound}=): leave it out', 'not_supported'
                            ) from None


def flags(persist, undefine, live=True):
    """A running domain's migration flags: peer to peer, live unless asked not to (live=0:
    the guest paused while its memory is copied, as `virsh migrate` without --live), and the
    options asked for."""
    bits = libvirt.VIR_MIGRATE_PEER2PEER | (libvirt.VIR_MIGRATE_LIVE if live else 0)
    if persist:
        bits |= libvirt.VIR_MIGRATE_PERSIST_DEST
    if undefine:
        bits |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    return bits


def parameters(settings, bandwidth=None):
    """virDomainMigrateToURI3's typed parameters: the destination's migration address, and a
    bandwidth bound (MiB/s)."""
    params = {}
    if settings.migration_address:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = settings.migration_address
    if bandwidth is not None:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth
    return params


def migrate(source, dom_uuid, destination, params, bits, downtime=None):
    """Ask the source's libvirtd to migrate the domain (returns once libvirt says it ended), on
    a libvirt connection of the call's own (source: its SharedConnection), opened as the pool
    opens its own (open_own: within open_timeout, else 504; with keepalive, so that a source
    libvirtd that stops answering fails the operation rather than hold it for ever): the call
    holds its connection for the whole migration, and a lane of the pool would let no other
    call through meanwhile (progress, abort, other requests). downtime: the longest pause at
    the switch-over, in ms."""
    conn = source.open_own()
    try:
        dom = conn.lookupByUUIDString(dom_uuid)
        if downtime is not None:
            dom.migrateSetMaxDowntime(downtime)
        try:
            dom.migrateToURI3(destination, params, bits)
        except libvirt.libvirtError as err:
            if is_connection_error(err) and conn.isAlive():
                raise peer_failed(err) from None
            raise
    finally:
        conn.close()


def peer_failed(err):
    """A socket error of the source libvirtd's own (dialling the destination's libvirtd or
    its migration address), carried back on a connection that still works: the migration
    failed and nothing broke between the daemon and libvirt (not outcome_unknown)."""
    return HTTPError(502, 'the source host could not reach the destination: '
                     f'{printable_text(err.get_error_message() or str(err))} (see '
                     'migration-uri and migration-address in docs/connections.md)',
                     'migration_unreachable')


def destination_uri(connection):
    """The libvirt URI the source's libvirtd reaches the destination's by."""
    return connection.settings.migration_uri or connection.uri


def check_vacant(destination, name, uuid, where):
    """409 `already_exists` when the destination (a libvirt connection) has a domain of that
    name or UUID: an offline migration defines a new one there, never redefines another."""
    for key, find in ((name, destination.lookupByName), (uuid, destination.lookupByUUIDString)):
        try:
            found = find(key)
        except libvirt.libvirtError as err:
            if is_no_domain(err):
                continue
            raise
        raise HTTPError(409, f'{where} has a domain {found.name()!r} (UUID '
                        f'{found.UUIDString()}) already: {name} ({uuid}) cannot be defined there',
                        'already_exists')


def check_movable(dom):
    """409 `invalid_state` for a shut-off domain whose definition cannot take along what it has
    on this host: snapshots or checkpoints (their metadata is this libvirtd's, and undefining
    the domain would drop it; libvirt's own migration refuses them too), a managed save image
    (the guest's saved memory, in a file of this host's: start it here to resume it, or remove
    the image). A driver without snapshots or checkpoints (libxl) has none."""
    kept = [what for what, count in (
        ('snapshots', lambda: dom.snapshotNum(0)),
        ('checkpoints', lambda: len(dom.listAllCheckpoints(0))),
        ('a managed save image', lambda: dom.hasManagedSaveImage(0))) if _supported(count)]
    if kept:
        raise HTTPError(409, f"{dom.name()} has {' and '.join(kept)}, which its definition "
                        'cannot take along to another host: remove them first (or start it '
                        'here and migrate it live, for a managed save image)', 'invalid_state')


def _supported(count):
    try:
        return count()
    except libvirt.libvirtError as err:
        if is_no_support(err):
            return 0
        raise


def undefine_flags(conn, xml):
    """What an undefine of the domain (its XML) on `conn` is told to leave: its NVRAM file (the
    firmware's variables) stays where it is, as every other file of the domain does (storage is
    assumed shared: the destination's definition names the same path). QEMU's driver refuses
    to undefine a domain whose NVRAM file exists unless told to keep (or remove) it; libxl's and
    the test driver's take no NVRAM flag (libxl takes only MANAGED_SAVE) and keep the file."""
    has_nvram = ElementTree.fromstring(xml).find('os/nvram') is not None
    return libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM if has_nvram and conn.getType() == 'QEMU' \
        else 0


def move_definition(source, destination, uuid, xml, autostart, where):
    """An offline migration, the daemon's own move between two libvirt connections: the domain
    `uuid` is defined on `destination` from `xml` (its OFFLINE_XML, as the Guard judged it), its
    autostart mark set there, then undefined on `source`. If any step after the define fails,
    the definition made on the destination is removed again and the error raised: the domain
    is never left defined on both hosts, nor on neither."""
    dom = source.lookupByUUIDString(uuid)
    check_vacant(destination, dom.name(), uuid, where)  # again: it was asked before the 202
    moved = destination.defineXML(xml)
    try:
        if autostart:
            moved.setAutostart(1)
        if not dom.isActive():
            dom.undefineFlags(undefine_flags(source, xml))
        if _runs(dom):  # started meanwhile (virsh, autostart), even just before the undefine
            if not dom.isPersistent():  # which made it transient: its definition back
                source.defineXML(xml).setAutostart(int(autostart))
            raise HTTPError(409, f'{dom.name()} was started on the source while it migrated '
                            'offline: it stays there', 'invalid_state')
    except BaseException as err:
        _undefine_again(destination, moved, xml, err, where)
        raise


def _runs(dom):
    """Whether the domain runs; False once it is gone (undefined while shut off)."""
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError as err:
        if is_no_domain(err):
            return False
        raise


def _undefine_again(destination, moved, xml, err, where):
    """Remove the definition an offline migration made on the destination, its source's part
    having failed; if that fails too, the domain is defined on both hosts: said in the error."""
    try:
        moved.undefineFlags(undefine_flags(destination, xml))
    except libvirt.libvirtError as undo:
        why = printable_text(undo.get_error_message())
        log.error('offline migration of %s: removing its definition from %s failed (%s): it is '
                  'defined on both hosts', moved.UUIDString(), where, why)
        raise HTTPError(500, f'{_message(err)}; and removing the definition made on {where} '
                        f'failed too ({why}): the domain is defined on both hosts, undefine '
                        'one of them', 'libvirt_error') from err


def _message(err):
    return err.get_error_message() if isinstance(err, libvirt.libvirtError) else str(err)
