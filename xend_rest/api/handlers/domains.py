"""The VM endpoints: one plain function per route, each answering (status, body[, headers])."""
import re
import xml.etree.ElementTree as ElementTree

import libvirt

from xend_rest.api.params import (AFFECT_FLAGS, DESTROY_FLAGS, DOMAIN_XML_FLAGS, NO_FLAGS,
                                  REBOOT_FLAGS, SHUTDOWN_FLAGS, START_FLAGS, UNDEFINE_FLAGS,
                                  parse_bool, parse_choice, parse_flag, parse_int, parse_seconds)
from xend_rest.defaults import GUEST_REQUEST_SECONDS, MAX_WAIT_SECONDS
from xend_rest.errors import HTTPError, bad_request, wait_timeout
from xend_rest.hypervisor import convert
from xend_rest.hypervisor.bounded import StillRunning
from xend_rest.hypervisor.domain_events import wait_for_restart, wait_for_state
from xend_rest.hypervisor.moves.maintenance import refuse_on_host
from xend_rest.hypervisor.libvirt_errors import (from_libvirt, is_connection_error, is_no_domain,
                                                 still_there)
from .operations import accepted

UUID = re.compile(r'[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\Z')
DOM0_UUID = '00000000-0000-0000-0000-000000000000'
DOM0_NAME = 'Domain-0'  # Xen's: libxl names domain 0 so, and no other domain may be (names
                        # are compared exactly, as libvirt and Xen do: 'domain-0' is a guest's)
# A UUID as libvirt's virUUIDParse reads one: 32 hex digits in pairs, '-' or ' ' before any
# pair, ASCII whitespace around the whole.
LIBVIRT_UUID = re.compile(r'[ \t\n\v\f\r]*(?:[- ]*[0-9A-Fa-f]{2}){16}[ \t\n\v\f\r]*')
MEMORY_TYPES = {'target': 0, 'max': libvirt.VIR_DOMAIN_MEM_MAXIMUM}
VCPU_TYPES = {'current': 0, 'max': libvirt.VIR_DOMAIN_VCPU_MAXIMUM}
MAX_VCPUS = 2**31 - 1  # libvirt counts vCPUs in an unsigned int
NOT_MODIFIED = (304, None)
NO_CONTENT = (204, None)
JOINED = 'joined'  # an action that joined the same one of another request (see _to_guest)


def is_dom0(dom, uuid=None):
    """Xen's control domain: id 0, and the all-zero UUID (how a test node stands it in); pass the
    UUID when it is at hand (a lookup fewer)."""
    return (uuid or dom.UUIDString()) == DOM0_UUID or dom.ID() == 0


def lookup_domain(conn, ident):
    """The domain named by a running id, a UUID or a name; dom0 is never handed out."""
    dom = None
    if ident.isascii() and ident.isdigit():
        dom = _lookup(conn.lookupByID, int(ident))
    if dom is None and UUID.match(ident):
        dom = _lookup(conn.lookupByUUIDString, ident)
    if dom is None:
        dom = _lookup(conn.lookupByName, ident)
    if dom is None:
        raise HTTPError(404, f'no such domain: {ident}', 'no_such_domain')
    if is_dom0(dom):
        raise dom0_refused()
    return dom


def changeable_domain(request, ident, joins=None):
    """The domain, for a change: 409 (operation_in_progress) while an operation runs on it
    (unless of the kind `joins`, which the request's own action would join)."""
    dom = lookup_domain(request.conn, ident)
    request.app.operations.refuse_busy(request.hypervisor, dom.UUIDString(), joins)
    return dom


def dom0_refused():
    return HTTPError(403, 'dom0 cannot be managed through this API', 'dom0_refused')


def _lookup(find, key):
    try:
        return find(key)
    except libvirt.libvirtError as err:
        if is_no_domain(err):
            return None
        raise
    except (OverflowError, ValueError):
        return None  # an id too large for libvirt, a name with a NUL: no such domain


def list_domains(request):
    """GET /nodes/json: every running domain (all=1: every defined one) except dom0."""
    every = parse_bool(request, 'all')
    flag = parse_flag(request, DOMAIN_XML_FLAGS)
    listing = 0 if every else libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
    memo = request.hypervisor.memo
    domains = request.conn.listAllDomains(listing)
    memo.expect(len(domains))
    described = dict(still_there(domains, lambda dom: _described(memo, dom, flag)))
    memo.listed(described.keys(), complete=every)
    return 200, convert.json_list(described.values())


def _described(memo, dom, flag):
    """(UUID, JSON) of a listed domain; None for dom0."""
    uuid = dom.UUIDString()
    return None if is_dom0(dom, uuid) else (uuid, memo.get(uuid, dom.XMLDesc(flag),
                                                           convert.xml_to_json))


def inspect_domain(request, ident):
    flag = parse_flag(request, DOMAIN_XML_FLAGS)
    dom = lookup_domain(request.conn, ident)
    return 200, request.hypervisor.memo.get(dom.UUIDString(), dom.XMLDesc(flag),
                                            convert.xml_to_json)


def create_domain(request):
    """POST /nodes/create: define (or redefine) a domain; Warnings name what libvirt dropped."""
    posted = request.json()
    xml = convert.dict_to_xml(posted, 'domain')
    kept_uuid, replaced, uuid = _check_identity(request.conn, xml)
    if replaced is not None or uuid is not None:  # a redefinition is a change like any other,
        # and a new domain may not take the UUID of one migrating here (docs/api.md, Operations)
        request.app.operations.refuse_busy(request.hypervisor,
                                           replaced.UUIDString() if replaced else uuid)
    if kept_uuid is not None:
        xml = convert.dict_to_xml({'domain': {**posted['domain'], 'uuid': kept_uuid}}, 'domain')
    try:
        dom = request.conn.defineXML(xml)
    except libvirt.libvirtError as err:
        if is_connection_error(err):
            raise  # the app drops the connection and says the outcome is unknown
        raise _rejected(err) from None
    if is_dom0(dom):
        # libvirt found dom0's UUID where _identity does not look (a libvirt newer than 9.0?).
        # The domain is new: dom0's own definition is reached only through its name, refused
        # above, so undoing the define leaves the host as it was.
        dom.undefine()
        raise dom0_refused()
    # With its secrets (a VNC password libvirt kept is not dropped); they stay here: a Warning
    # is a path, never a value.
    stored = convert.xml_to_dict(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE |
                                             libvirt.VIR_DOMAIN_XML_SECURE))
    warnings = [f'{path} was dropped by libvirt'
                for path in convert.dropped(posted['domain'], stored['domain'], 'domain')]
    return 201, {'Uuid': dom.UUIDString(), 'Warnings': warnings}


def _identity(xml):
    """(name, uuid, system uuids) of a definition as libvirt reads them: the text of the first
    <name> and <uuid> child of <domain> (in no namespace; None where absent or empty), and of
    each <sysinfo> system's uuid entry (libvirt's UUID for a domain without <uuid>)."""
    root = ElementTree.fromstring(xml)  # ours, from dict_to_xml: no DOCTYPE, no entities
    return (_text(root.find('name')), _text(root.find('uuid')),
            [_text(entry) for entry in root.iterfind("sysinfo/system/entry[@name='uuid']")])


def _text(element):
    """An element's string value, as XPath's string() gives it; None for none or ''."""
    return None if element is None else ''.join(element.itertext()) or None


def parse_uuid(text):
    """A UUID text as libvirt reads it (virUUIDParse), in canonical form; None if libvirt
    would refuse it."""
    if text is None or not LIBVIRT_UUID.fullmatch(text):
        return None
    digits = re.sub('[^0-9A-Fa-f]', '', text).lower()
    return '-'.join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))


def _check_identity(conn, xml):
    """403 for a definition that is dom0's, 409 for one whose name or UUID is another domain's;
    (the UUID to fill in when it gives none and its name is a domain's (None: leave it), the
    domain it redefines (None: a new one), the UUID it gives (None: none libvirt would take))."""
    name, text, system_uuids = _identity(xml)
    uuid = parse_uuid(text)  # None too when libvirt would refuse it
    named = _lookup(conn.lookupByName, name) if name is not None else None
    owner = _lookup(conn.lookupByUUIDString, uuid) if uuid is not None else None
    if name == DOM0_NAME or DOM0_UUID in [uuid, *map(parse_uuid, system_uuids)] or any(
            dom is not None and is_dom0(dom) for dom in (named, owner)):
        raise dom0_refused()
    if name is not None and owner is not None and owner.name() != name:
        raise HTTPError(409, f'UUID {uuid} is the domain {owner.name()!r}: Create does not '
                        'rename a domain', 'already_exists')
    if named is not None and uuid is not None and named.UUIDString() != uuid:
        raise HTTPError(409, f'a domain named {name!r} exists with UUID {named.UUIDString()}: '
                        'give that UUID (or none) to replace its definition', 'already_exists')
    # Without a UUID libvirt makes a new one, and refuses it for a name that is taken.
    return (named.UUIDString() if named is not None and text is None else None), named, uuid


def _rejected(err):
    """A definition libvirt refuses is 406, unless the refusal means something else."""
    mapped = from_libvirt(err)
    if mapped.status in (400, 500, 501):
        return HTTPError(406, err.get_error_message(), 'definition_rejected')
    return mapped


def start_domain(request, ident):
    flag = parse_flag(request, START_FLAGS)
    dom = changeable_domain(request, ident)
    if dom.isActive():
        return NOT_MODIFIED
    refuse_on_host(request.app.hypervisors.values(), request.hypervisor)
    return _change_state(lambda: dom.createWithFlags(flag), dom.isActive)


def stop_domain(request, ident):
    """Ask the guest to shut down; with wait=S, answer once it is shut off (408 after S s)."""
    flag = parse_flag(request, SHUTDOWN_FLAGS)
    wait = parse_seconds(request, 'wait', maximum=MAX_WAIT_SECONDS)
    dom = changeable_domain(request, ident, joins='shutdown')
    if not dom.isActive():
        return NOT_MODIFIED
    _refuse_paused(dom)
    shutdown = _to_guest(request, dom, 'shutdown', lambda: dom.shutdownFlags(flag))
    if not wait:
        try:
            return _change_state(shutdown, lambda: not dom.isActive())
        except StillRunning as late:
            return _still_running(request, late.operation, 'shutdown', 'shutoff')
    if not wait_for_state(request.hypervisor.events, request.conn, dom.UUIDString(), 'shutoff', wait,
                          shutdown, owner=request.caller, gone=request.client_gone,
                          hold=request.hold):
        raise wait_timeout(f'the shutdown of {dom.name()} was asked for, but it was not shut off '
                           f'within {wait:g} s')
    return NO_CONTENT


def destroy_domain(request, ident):
    flag = parse_flag(request, DESTROY_FLAGS)
    dom = lookup_domain(request.conn, ident)
    if not dom.isActive():
        return NOT_MODIFIED
    return _change_state(lambda: dom.destroyFlags(flag), lambda: not dom.isActive())


def restart_domain(request, ident):
    """Ask the guest to reboot; with wait=S, answer once it has (408 after S s)."""
    flag = parse_flag(request, REBOOT_FLAGS)
    wait = parse_seconds(request, 'wait', maximum=MAX_WAIT_SECONDS)
    dom = _active_domain(request, ident, joins='reboot')
    _refuse_paused(dom)
    reboot = _to_guest(request, dom, 'reboot', lambda: dom.reboot(flag))
    if not wait:
        try:
            reboot()
        except StillRunning as late:
            return _still_running(request, late.operation, 'reboot', 'running')
    elif not wait_for_restart(request.hypervisor.events, dom.UUIDString(), wait, reboot,
                              owner=request.caller, gone=request.client_gone,
                              hold=request.hold):
        raise wait_timeout(f'the reboot of {dom.name()} was asked for, but no reboot was seen '
                           f'within {wait:g} s')
    return NO_CONTENT


def delete_domain(request, ident):
    flag = parse_flag(request, UNDEFINE_FLAGS)
    dom = changeable_domain(request, ident)
    if not dom.isPersistent():
        raise HTTPError(409, f'domain {dom.name()} is transient: it has no definition to delete; '
                        'destroy it instead', 'invalid_state')
    dom.undefineFlags(flag)
    return NO_CONTENT


def set_autostart(request, ident):
    """POST /nodes/(id)/autostart?enable=1|0: whether libvirtd starts the domain when it
    starts (virsh autostart); 304 when it already does (or does not), 409 for a transient one."""
    if request.arg('enable') is None:
        raise bad_request('query parameter "enable" is required: 1 to start the domain with '
                          'libvirtd, 0 not to')
    enable = parse_bool(request, 'enable')
    dom = changeable_domain(request, ident)  # a migration carries the mark
    if not dom.isPersistent():
        raise HTTPError(409, f'domain {dom.name()} is transient: only a defined domain can be '
                        'started at boot; define it with Create first', 'invalid_state')
    if bool(dom.autostart()) == enable:
        return NOT_MODIFIED
    dom.setAutostart(int(enable))
    return NO_CONTENT


def suspend_domain(request, ident):
    parse_flag(request, NO_FLAGS)
    dom = _active_domain(request, ident)
    if _paused(dom):
        return NOT_MODIFIED
    return _change_state(dom.suspend, lambda: _paused(dom))


def resume_domain(request, ident):
    parse_flag(request, NO_FLAGS)
    dom = _active_domain(request, ident)
    if not _paused(dom):
        return NOT_MODIFIED
    return _change_state(dom.resume, lambda: dom.isActive() and not _paused(dom))


def _paused(dom):
    return dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED


def _refuse_paused(dom):
    """Stop and Restart ask the guest, which cannot act while paused: 409 on every driver.
    libxl's shutdown() and reboot() of a paused domain block 60 s, fail, and stay pending."""
    if _paused(dom):
        raise HTTPError(409, 'domain %s is paused: resume or destroy it' % dom.name(), 'invalid_state')


def _to_guest(request, dom, verb, action):
    """A request to the guest, as an operation the request waits for up to its bound: libxl's
    shutdown() and reboot() wait for the guest's acknowledgement, holding the domain (every
    call about it waits too), and right after the guest's own power-off they block 60 s. Past
    the bound the operation goes on (StillRunning carries it)."""
    def asked():
        operation, joined = request.app.operations.start(verb, request.hypervisor, dom, action,
                                                         request.caller, join=True)
        operation.within(GUEST_REQUEST_SECONDS)
        return JOINED if joined else None
    return asked


def _still_running(request, operation, verb, condition):
    """202: the guest was asked, and libvirt has yet to say how that went: the operation, and
    (as before operations) a message pointing to /wait."""
    return accepted(request.hypervisor, operation, message=(
        f"the {verb} of {operation.target['Name']} was asked for; libvirt has not returned "
        f'within {GUEST_REQUEST_SECONDS:g} s (the domain may be busy shutting down): follow '
        f'the operation, or the domain with /wait?condition={condition}'))


def _change_state(action, reached):
    """Do a state change read as needed; if libvirt refuses it and the domain is now where it was
    asked to go (a concurrent request got it there first), that is 304 like any repeat; so is
    one that joined a concurrent request's own (JOINED) once the domain is there."""
    try:
        joined = action() is JOINED
    except libvirt.libvirtError as err:
        if is_connection_error(err) or not reached():
            raise
        return NOT_MODIFIED
    return NOT_MODIFIED if joined and reached() else NO_CONTENT


def _active_domain(request, ident, joins=None):
    """The domain, which must be running (or paused) for the action: 409 otherwise."""
    dom = changeable_domain(request, ident, joins)
    if not dom.isActive():
        raise HTTPError(409, f'domain {dom.name()} is not running', 'invalid_state')
    return dom


def resize_memory(request, ident):
    size = parse_int(request, 'size', minimum=1)
    kind = parse_choice(request, 'type', MEMORY_TYPES, 'target')
    flag = parse_flag(request, AFFECT_FLAGS)
    changeable_domain(request, ident).setMemoryFlags(size, kind | flag)
    return NO_CONTENT


def resize_vcpu(request, ident):
    size = parse_int(request, 'size', minimum=1, maximum=MAX_VCPUS)
    kind = parse_choice(request, 'type', VCPU_TYPES, 'current')
    flag = parse_flag(request, AFFECT_FLAGS)
    dom = changeable_domain(request, ident)
    dom.setVcpusFlags(size, kind | (flag or _current(dom)))
    return NO_CONTENT


def _current(dom):
    """libvirt's AFFECT_CURRENT spelled out from state: libxl refuses a flag of 0 for vCPUs."""
    return libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else libvirt.VIR_DOMAIN_AFFECT_CONFIG


def attach_device(request, ident):
    """Attach one device; answers the device as the domain now reports it."""
    return _change_device(request, ident, 'attachDeviceFlags', 201)


def update_device(request, ident):
    """Change one device in place (e.g. a CD-ROM's media); answers the device as it is now."""
    return _change_device(request, ident, 'updateDeviceFlags', 200)


def detach_device(request, ident):
    """Detach one device: 204 once it is gone, 202 while the guest has yet to release it."""
    flag = parse_flag(request, AFFECT_FLAGS)
    posted = request.json()
    xml = convert.device_to_xml(posted)
    dom = changeable_domain(request, ident)
    dom.detachDeviceFlags(xml, flag)
    kind = next(iter(posted))
    still_there = [dev for dev in _devices(dom, flag, kind) if _same_device(posted[kind], dev)]
    return (202, {'message': 'the guest has yet to release the device'}) if still_there \
        else NO_CONTENT


def _change_device(request, ident, method, status):
    flag = parse_flag(request, AFFECT_FLAGS)
    posted = request.json()
    xml = convert.device_to_xml(posted)
    kind = next(iter(posted))
    dom = changeable_domain(request, ident)
    before = _devices(dom, flag, kind)
    if method == 'attachDeviceFlags' and kind == 'disk':
        _refuse_taken_target(posted[kind], before)
    getattr(dom, method)(xml, flag)
    after = _devices(dom, flag, kind)
    changed = [dev for dev in after if dev not in before]
    matching = [dev for dev in after if _same_device(posted[kind], dev)]
    device = (changed or matching or [posted[kind]])[0]
    return status, {kind: device}


def _refuse_taken_target(disk, disks):
    """409 for a disk whose target (xvdb, vda) another disk has: the QEMU and Xen drivers refuse
    a live attach of it as VIR_ERR_OPERATION_FAILED, which would be a 500."""
    target = disk.get('target') if isinstance(disk, dict) else None
    dev = target.get('@dev') if isinstance(target, dict) else None
    if dev is not None and any(isinstance(other, dict) and isinstance(other.get('target'), dict)
                               and other['target'].get('@dev') == dev for other in disks):
        raise HTTPError(409, f'the domain has a disk with target {dev} already',
                        'already_exists')


def _devices(dom, flag, kind):
    """The devices of one kind in the definition the flag affects (live, else config)."""
    live = flag & libvirt.VIR_DOMAIN_AFFECT_LIVE or (
        not flag & libvirt.VIR_DOMAIN_AFFECT_CONFIG and dom.isActive())
    xml = dom.XMLDesc(0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE)
    devices = convert.xml_to_dict(xml)['domain'].get('devices') or {}
    found = devices.get(kind) or []
    return found if isinstance(found, list) else [found]


def _same_device(posted, device):
    """Whether a reported device is the posted one: same target, else same MAC, else same source."""
    if not isinstance(posted, dict) or not isinstance(device, dict):
        return False
    for key in ('target', 'mac', 'source'):
        mine, theirs = posted.get(key), device.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            return all(theirs.get(name) == value for name, value in mine.items()
                       if name.startswith('@'))
    return False
