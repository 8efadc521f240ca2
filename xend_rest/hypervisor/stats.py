"""What libvirt reports about domains: state names, and CPU, memory, block and network counters.

The bulk stats API (one call for every domain) is used where the driver has it; where it lacks the
call or a group of statistics (Xen's libxl driver, the test driver), each missing group falls back
to its per-domain call, and a statistic the driver cannot give at all is null.  Either way the
answer has the same shape.
"""
import functools
import xml.etree.ElementTree as ElementTree

import libvirt

STATE_NAMES = ('nostate', 'running', 'blocked', 'paused', 'shutdown', 'shutoff', 'crashed',
               'pmsuspended')
STATS_GROUPS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
                | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)
BULK = 'bulk_stats'  # features' name for whether the driver has the bulk calls
# A driver may lack a call (NO_SUPPORT) or refuse it for an inactive domain or unknown device.
SKIPPED_ERRORS = {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
                  libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_INVALID_ARG}

# (our key, bulk stats key, index in the tuple of the per-device call)
BLOCK_COUNTERS = (
    ('ReadRequests', 'rd.reqs', 0), ('ReadBytes', 'rd.bytes', 1),
    ('WriteRequests', 'wr.reqs', 2), ('WriteBytes', 'wr.bytes', 3), ('Errors', 'errs', 4),
)
NET_COUNTERS = (
    ('RxBytes', 'rx.bytes', 0), ('RxPackets', 'rx.pkts', 1), ('RxErrors', 'rx.errs', 2),
    ('RxDrops', 'rx.drop', 3), ('TxBytes', 'tx.bytes', 4), ('TxPackets', 'tx.pkts', 5),
    ('TxErrors', 'tx.errs', 6), ('TxDrops', 'tx.drop', 7),
)
# The bulk record's keys for CpuTimeNs, Vcpus and the memory's CurrentKiB and MaximumKiB
DOMAIN_KEYS = ('cpu.time', 'vcpu.current', 'balloon.current', 'balloon.maximum')
GROUP_COUNTERS = {'block': BLOCK_COUNTERS, 'net': NET_COUNTERS}


def state_name(state):
    return STATE_NAMES[state] if 0 <= state < len(STATE_NAMES) else f'unknown_{state}'


def is_skipped(err):
    return err.get_error_code() in SKIPPED_ERRORS


def bulk_stats(conn, domains=None, active_only=False, features=None):
    """[(dom, raw stats)] from one bulk call; raw stats are {} when the driver has no bulk call.
    features: the connection's PerConnection, which remembers a driver without it (libxl):
    libvirtd logs an error for each call its driver lacks, so it is asked once per connection."""
    try:
        if features is not None and not features.get(conn, BULK, lambda _conn: True):
            pass  # answered VIR_ERR_NO_SUPPORT before, on this connection
        elif domains is not None:
            return conn.domainListGetStats(domains, STATS_GROUPS) if domains else []
        else:
            flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE if active_only else 0
            return conn.getAllDomainStats(STATS_GROUPS, flags)
    except libvirt.libvirtError as err:
        if not is_skipped(err):
            raise
        if err.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT and features is not None:
            features.set(conn, BULK, False)
    if domains is None:
        domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if active_only else 0)
    return [(dom, {}) for dom in domains]


def describe(dom, raw, memo=None, uuid=None):
    """One domain's statistics, from its bulk record and per-statistic calls for what it lacks;
    memo (a DomainMemo) keeps the device names read from its XML, uuid saves a lookup."""
    uuid = uuid or dom.UUIDString()
    state = raw.get('state.state')
    if state is None:
        state = dom.state()[0]
    active = state != libvirt.VIR_DOMAIN_SHUTOFF
    cpu_time, vcpus, current, maximum = map(raw.get, DOMAIN_KEYS)
    if None in (cpu_time, vcpus, current, maximum):
        cpu_time, vcpus, current, maximum = _completed(dom, cpu_time, vcpus, current, maximum)
    block, network = [], []
    if active:
        block, network = _bulk_devices(raw, 'block'), _bulk_devices(raw, 'net')
        if block is None or network is None:  # the record lacks a group: ask device by device
            disks, nics = _optional(lambda: _device_names(dom, uuid, memo)) or ((), ())
            if block is None:
                block = _called_devices(disks, dom.blockStats, BLOCK_COUNTERS)
            if network is None:
                network = _called_devices(nics, dom.interfaceStats, NET_COUNTERS)
    return {
        'Name': dom.name(),
        'Uuid': uuid,
        'Id': dom.ID() if active else None,
        'State': state_name(state),
        # Not in Inspect: a definition does not carry it (libvirt keeps a link of its own)
        'Autostart': _optional(lambda: bool(dom.autostart())),
        'CpuTimeNs': cpu_time,
        'Vcpus': vcpus,
        'Memory': {'CurrentKiB': current, 'MaximumKiB': maximum},
        'Block': block,
        'Network': network,
    }


def _completed(dom, cpu_time, vcpus, current, maximum):
    """The domain's numbers with those its bulk record lacks (None) asked for one by one; the
    domain's info is asked for at most once."""
    info = _Lazy(dom.info)
    return (_first(cpu_time, lambda: _item(info(), 4)), _first(vcpus, lambda: _item(info(), 3)),
            _first(current, lambda: _balloon(dom, info)), _first(maximum, lambda: _item(info(), 1)))


class _Lazy:
    """A libvirt call made at most once, and only if needed; None if the driver cannot."""

    def __init__(self, call):
        self._call = call
        self._done = False
        self._value = None

    def __call__(self):
        if not self._done:
            self._value, self._done = _optional(self._call), True
        return self._value


def _optional(call):
    try:
        return call()
    except libvirt.libvirtError as err:
        if not is_skipped(err):
            raise
        return None


def _first(value, fallback):
    """The bulk value if the driver gave one, else the fallback's (None if that fails too)."""
    return value if value is not None else fallback()


def _item(values, index):
    return None if values is None else values[index]


def _balloon(dom, info):
    memory = _optional(dom.memoryStats) or {}
    return memory['actual'] if 'actual' in memory else _item(info(), 2)


def _bulk_devices(raw, group):
    """A group's devices from the bulk record; None if the record lacks the group."""
    count = raw.get(f'{group}.count')
    if count is None:
        return None
    ours, devices = _bulk_keys(group, count)
    return [dict(zip(ours, map(raw.get, bulk_keys))) for bulk_keys in devices]


@functools.lru_cache(maxsize=256)
def _bulk_keys(group, count):
    """(our keys of a device, the bulk record's keys of each of `count` devices): made once, not
    for every scrape."""
    counters = GROUP_COUNTERS[group]
    ours = ('Device', *(ours for ours, _key, _position in counters))
    return ours, tuple(_device_keys(f'{group}.{index}.', counters) for index in range(count))


def _device_keys(prefix, counters):
    """A device's keys in the bulk record: 'block.0.name', 'block.0.rd.reqs'..."""
    return (prefix + 'name', *(prefix + key for _ours, key, _position in counters))


def _called_devices(names, per_device_call, counters):
    """The devices named, each from its per-device call (left out where the driver cannot)."""
    found = []
    for name in names:
        values = _optional(lambda: per_device_call(name))
        if values is not None:
            found.append(_called_device(name, values, counters))
    return found


def _called_device(name, values, counters):
    """One device from the tuple its per-device call answered; libvirt's -1 means not known."""
    device = {'Device': name}
    for ours, _bulk_key, position in counters:
        device[ours] = values[position] if values[position] >= 0 else None
    return device


def _device_names(dom, uuid, memo):
    xml = dom.XMLDesc(0)
    return device_names(xml) if memo is None else memo.get(uuid, xml, device_names)


def device_names(xml):
    """(disk targets, interface targets) in a running domain's XML, as tuples: memoised, shared."""
    devices = ElementTree.fromstring(xml).find('devices')
    if devices is None:
        return (), ()
    disks = tuple(target.get('dev') for target in devices.findall('disk/target')
                  if target.get('dev'))
    nics = tuple(target.get('dev') for target in devices.findall('interface/target')
                 if target.get('dev'))
    return disks, nics
