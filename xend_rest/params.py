"""Query parameters: the flag tables of the contract, and the parsers that validate them."""
import libvirt

from .errors import bad_request

# Each table lists the (name, bit) pairs the contract documents; `flag` may be any OR of them.
DOMAIN_XML_FLAGS = (
    ('VIR_DOMAIN_XML_SECURE', libvirt.VIR_DOMAIN_XML_SECURE),
    ('VIR_DOMAIN_XML_INACTIVE', libvirt.VIR_DOMAIN_XML_INACTIVE),
    ('VIR_DOMAIN_XML_UPDATE_CPU', libvirt.VIR_DOMAIN_XML_UPDATE_CPU),
    ('VIR_DOMAIN_XML_MIGRATABLE', libvirt.VIR_DOMAIN_XML_MIGRATABLE),
)
START_FLAGS = (
    ('VIR_DOMAIN_START_PAUSED', 1),
    ('VIR_DOMAIN_START_AUTODESTROY', 2),
    ('VIR_DOMAIN_START_BYPASS_CACHE', 4),
    ('VIR_DOMAIN_START_FORCE_BOOT', 8),
    ('VIR_DOMAIN_START_VALIDATE', 16),
)
SHUTDOWN_FLAGS = (
    ('VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN', 1),
    ('VIR_DOMAIN_SHUTDOWN_GUEST_AGENT', 2),
    ('VIR_DOMAIN_SHUTDOWN_INITCTL', 4),
    ('VIR_DOMAIN_SHUTDOWN_SIGNAL', 8),
    ('VIR_DOMAIN_SHUTDOWN_PARAVIRT', 16),
)
REBOOT_FLAGS = (
    ('VIR_DOMAIN_REBOOT_ACPI_POWER_BTN', 1),
    ('VIR_DOMAIN_REBOOT_GUEST_AGENT', 2),
    ('VIR_DOMAIN_REBOOT_INITCTL', 4),
    ('VIR_DOMAIN_REBOOT_SIGNAL', 8),
    ('VIR_DOMAIN_REBOOT_PARAVIRT', 16),
)
DESTROY_FLAGS = (
    ('VIR_DOMAIN_DESTROY_GRACEFUL', 1),
)
UNDEFINE_FLAGS = (
    ('VIR_DOMAIN_UNDEFINE_MANAGED_SAVE', 1),
    ('VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA', 2),
    ('VIR_DOMAIN_UNDEFINE_NVRAM', 4),
)
AFFECT_FLAGS = (
    ('VIR_DOMAIN_AFFECT_LIVE', libvirt.VIR_DOMAIN_AFFECT_LIVE),
    ('VIR_DOMAIN_AFFECT_CONFIG', libvirt.VIR_DOMAIN_AFFECT_CONFIG),
)
NO_FLAGS = ()

BOOLEANS = {'1': True, 'True': True, 'true': True, '0': False, 'False': False, 'false': False}


def parse_flag(request, table):
    """The `flag` query parameter: 0 by default, else an OR of the bits in `table`."""
    value = request.arg('flag')
    if value is None:
        return 0
    mask = 0
    for _name, bit in table:
        mask |= bit
    if not _is_whole(value) or int(value) & ~mask:
        allowed = ', '.join('%d (%s)' % (bit, name) for name, bit in table) or 'only 0'
        raise bad_request('flag=%s is not a combination of %s' % (value, allowed))
    return int(value)


def parse_bool(request, name, default=False):
    value = request.arg(name)
    if value is None:
        return default
    if value not in BOOLEANS:
        raise bad_request('%s=%s: expected one of 1, True, true, 0, False, false' % (name, value))
    return BOOLEANS[value]


def parse_int(request, name, minimum=0, maximum=2**63 - 1):
    """A required whole-number query parameter within [minimum, maximum]."""
    value = request.arg(name)
    if value is None:
        raise bad_request('query parameter "%s" is required' % name)
    if not _is_whole(value) or not minimum <= int(value) <= maximum:
        raise bad_request('%s=%s: expected a whole number from %d to %d'
                          % (name, value, minimum, maximum))
    return int(value)


def _is_whole(value):
    return value.isascii() and value.isdigit() and len(value) <= 20


def parse_choice(request, name, choices, default):
    """A query parameter that names one key of `choices`; answers that key's value."""
    value = request.arg(name, default)
    if value not in choices:
        raise bad_request('%s=%s: expected one of %s' % (name, value, ', '.join(choices)))
    return choices[value]
