"""Query parameters: the flag tables of the contract, and the parsers that validate them."""
import re

import libvirt

from xend_rest.defaults import MAX_WAIT_SECONDS
from xend_rest.errors import bad_request

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
NETWORK_XML_FLAGS = (
    ('VIR_NETWORK_XML_INACTIVE', libvirt.VIR_NETWORK_XML_INACTIVE),
)

# Images (storage volumes).
VOL_CREATE_FLAGS = (
    ('VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA', libvirt.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA),
    ('VIR_STORAGE_VOL_CREATE_REFLINK', libvirt.VIR_STORAGE_VOL_CREATE_REFLINK),
)
VOL_DELETE_FLAGS = (
    ('VIR_STORAGE_VOL_DELETE_ZEROED', libvirt.VIR_STORAGE_VOL_DELETE_ZEROED),
    ('VIR_STORAGE_VOL_DELETE_WITH_SNAPSHOTS', libvirt.VIR_STORAGE_VOL_DELETE_WITH_SNAPSHOTS),
)
VOL_RESIZE_FLAGS = (
    ('VIR_STORAGE_VOL_RESIZE_ALLOCATE', libvirt.VIR_STORAGE_VOL_RESIZE_ALLOCATE),
    ('VIR_STORAGE_VOL_RESIZE_DELTA', libvirt.VIR_STORAGE_VOL_RESIZE_DELTA),
    ('VIR_STORAGE_VOL_RESIZE_SHRINK', libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK),
)
WIPE_ALGORITHMS = {
    'zero': libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO,
    'nnsa': libvirt.VIR_STORAGE_VOL_WIPE_ALG_NNSA,
    'dod': libvirt.VIR_STORAGE_VOL_WIPE_ALG_DOD,
    'bsi': libvirt.VIR_STORAGE_VOL_WIPE_ALG_BSI,
    'gutmann': libvirt.VIR_STORAGE_VOL_WIPE_ALG_GUTMANN,
    'schneier': libvirt.VIR_STORAGE_VOL_WIPE_ALG_SCHNEIER,
    'pfitzner7': libvirt.VIR_STORAGE_VOL_WIPE_ALG_PFITZNER7,
    'pfitzner33': libvirt.VIR_STORAGE_VOL_WIPE_ALG_PFITZNER33,
    'random': libvirt.VIR_STORAGE_VOL_WIPE_ALG_RANDOM,
    'trim': libvirt.VIR_STORAGE_VOL_WIPE_ALG_TRIM,
}
IMAGE_FORMATS = {'raw': 'raw', 'qcow2': 'qcow2'}

# Size suffixes as libvirt reads them: K, KiB = 1024 but KB = 1000 (case-insensitive).
SIZE_UNITS = {'': 1, 'B': 1, 'BYTES': 1}
for _power, _prefix in enumerate('KMGTPE', start=1):
    SIZE_UNITS.update({_prefix: 1024 ** _power, _prefix + 'IB': 1024 ** _power,
                       _prefix + 'B': 1000 ** _power})
MAX_SIZE = 2**63 - 1  # libvirt's sizes are unsigned long long; Python's int would not stop us
MAX_WHOLE = 2**63 - 1  # the largest whole number a count or id may be
NAME_MAX = 255  # bytes: what a file name may hold on the file systems dir pools live on


def _at_most(limit):
    """A regex for the decimal numbers from 0 to `limit` (leading zeros allowed)."""
    digits = str(limit)
    options = [f'[0-9]{{1,{len(digits) - 1}}}'] if len(digits) > 1 else []
    for i, digit in enumerate(digits):
        if digit != '0':
            rest = len(digits) - i - 1  # how many digits follow this one
            options.append(f'{digits[:i]}[0-{int(digit) - 1}]'
                           + (f'[0-9]{{{rest}}}' if rest else ''))
    alternatives = '|'.join(options + [digits])
    return f'0*(?:{alternatives})'


def _size_pattern():
    """Every size parse_size accepts, as one regex (OpenAPI's pattern is this very text): per
    unit, the numbers whose bytes do not pass MAX_SIZE; units in either case."""
    by_factor = {}
    for unit, factor in SIZE_UNITS.items():
        by_factor.setdefault(factor, []).append(''.join(f'[{c}{c.lower()}]' for c in unit))
    numbers = [f"{_at_most(MAX_SIZE // factor)}(?:{'|'.join(units)})"
               for factor, units in sorted(by_factor.items())]
    return f"^(?:{'|'.join(numbers)})$"


SIZE_PATTERN = _size_pattern()
SIZE = re.compile(SIZE_PATTERN)
SIZE_PARTS = re.compile(r'([0-9]+)([A-Za-z]*)\Z')

# A number as JSON writes it, and as Python and C print one: 5, 0.5, .5, 5., 1e1, 1E-05, -0.
NUMBER = re.compile(r'-?([0-9]{1,20}\.?[0-9]{0,20}|\.[0-9]{1,20})([eE][-+]?[0-9]{1,3})?\Z')

BOOLEANS = {'1': True, 'True': True, 'true': True, '0': False, 'False': False, 'false': False}


def flag_values(table):
    """Every valid `flag` of a table: each OR of its bits (the tables are small)."""
    values = {0}
    for _name, bit in table:
        values |= {value | bit for value in values}
    return sorted(values)


def parse_flag(request, table):
    """The `flag` query parameter: 0 by default, else an OR of the bits in `table`."""
    value = request.arg('flag')
    if value is None:
        return 0
    mask = 0
    for _name, bit in table:
        mask |= bit
    if not is_whole(value) or int(value) & ~mask:
        allowed = ', '.join(f'{bit} ({name})' for name, bit in table) or 'only 0'
        raise bad_request(f'flag={value} is not a combination of {allowed}')
    return int(value)


def parse_bool(request, name, default=False):
    value = request.arg(name)
    if value is None:
        return default
    if value not in BOOLEANS:
        raise bad_request(f'{name}={value}: expected one of 1, True, true, 0, False, false')
    return BOOLEANS[value]


def parse_int(request, name, minimum=0, maximum=2**63 - 1):
    """A required whole-number query parameter within [minimum, maximum]."""
    value = request.arg(name)
    if value is None:
        raise bad_request(f'query parameter "{name}" is required')
    if not is_whole(value) or not minimum <= int(value) <= maximum:
        raise bad_request(f'{name}={value}: expected a whole number from {minimum} to {maximum}')
    return int(value)


def parse_size(request, name, default=None):
    """A size in bytes, written as a number with an optional unit: 10G, 512MiB, 1000000."""
    value = request.arg(name)
    if value is None:
        if default is None:
            raise bad_request(f'query parameter "{name}" is required')
        return default
    if not SIZE.match(value):
        raise bad_request(f'{name}={value}: expected a size such as 1073741824, 512M, 10G or 10GiB '
                          '(K, M, G, T, P, E, KiB... are powers of 1024; KB, MB, GB... of 1000)')
    number, unit = SIZE_PARTS.match(value).groups()
    return int(number) * SIZE_UNITS[unit.upper()]


def parse_image_format(request, default):
    """An image's `format` (create and clone alike): raw or qcow2; `default` when absent."""
    return parse_choice(request, 'format', IMAGE_FORMATS, default)


def is_whole(value):
    """A decimal whole number of at most 20 digits (no sign, no spaces)."""
    return value.isascii() and value.isdigit() and len(value) <= 20


def parse_choice(request, name, choices, default):
    """A query parameter that names one key of `choices`; answers that key's value. When absent:
    the value of the key `default`, or None for None. Present but empty is no key: 400."""
    value = request.arg(name)
    if value is None and default is None:
        return None
    value = default if value is None else value
    if value not in choices:
        raise bad_request(f"{name}={value}: expected one of {', '.join(choices)}")
    return choices[value]


def parse_seconds(request, name, default=None, maximum=MAX_WAIT_SECONDS):
    """A duration in seconds from 0 to `maximum`, written as any JSON or decimal number (5, 0.5,
    .5, 5., 1e1, -0); `default` when absent."""
    value = request.arg(name)
    if value is None:
        return default
    if not NUMBER.match(value) or not 0 <= float(value) <= maximum:
        raise bad_request(f'{name}={value}: expected a number of seconds from 0 to {maximum}')
    return float(value) + 0.0  # -0 is 0
