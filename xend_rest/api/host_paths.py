"""Host paths in a definition: what a domain, device or network definition reaches on the host
(files, directories, devices, volumes, programs' options), read from the XML libvirt is sent as
libvirt reads it. The Guard (security.py) judges what this walk finds against allowed-paths.
"""
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from urllib.parse import unquote, urlsplit

import libvirt

from xend_rest.hypervisor import convert
from xend_rest.hypervisor.libvirt_errors import is_connection_error
from .schema_paths import SCHEMA_PATHS

# Places whose values are host paths although libvirt's schema types them as plain text: found by
# defining libvirt's own test definitions and reading back what it stored (tests/
# test_schema_paths.py). Judged like the schema's own (schema_paths.SCHEMA_PATHS).
TEXT_TYPED_PATHS = {
    ('source', '@path'): 'path',  # a character device's file, device or socket (serial, channel...)
    ('source', '@master'): 'path', ('source', '@slave'): 'path',  # nmdm character devices
    ('bootloader', '#text'): 'path',  # the program Xen runs to boot a PV guest
    ('entry', '@file'): 'path',  # <sysinfo type='fwcfg'>: a file QEMU hands the guest
    ('lease', 'target', '@path'): 'path',  # a lock manager's lease file
    ('graphics', '@xauth'): 'path',  # SDL's X authority file
    ('tftp', '@root'): 'path',  # <network>: the directory dnsmasq serves over TFTP, as root
}
PATH_PLACES = {**SCHEMA_PATHS, **TEXT_TYPED_PATHS}
# Places whose values name no host file, though they may start with '/': every other value that
# does is judged as a path too, wherever it stands (a place libvirt may add after this table). A
# place starting with 'domain' is that place only, never the same names deeper down: their text
# is also left out of the text of the elements around them (see _read).
NOT_HOST_PATHS = {
    ('domain', 'resource', 'partition', '#text'),  # a cgroup partition (/machine)
    ('domain', 'os', 'cmdline', '#text'),  # the kernel's command line (root=/dev/xvda1)
    ('domain', 'description', '#text'), ('domain', 'title', '#text'),  # free text
    ('filesystem', 'target', '@dir'),  # where the guest mounts it
    ('source', '@name'),  # network disks: a name on the storage server
}
# Places that pass a program options, which may name any host file: refused while allowed-paths
# is set. libxl puts a bootloader's after its own --output and --output-directory, so pygrub
# would write what it reads from the guest's disk wherever they say.
OPTIONS = {('domain', 'bootloader_args', '#text')}
# Elements (by the names a place ends with) that hand a host device to the guest (when their
# attribute says so), with no path: refused while allowed-paths is set, unless allow-host-devices.
# A network in hostdev mode hands its guests host PCI devices (the VFs its <pf> or <address>es
# name); a PCI <address> of a forward is a host device whatever the mode says.
HOST_DEVICES = {('hostdev',): None, ('interface',): ('@type', 'hostdev'),
                ('smartcard',): ('@mode', 'host'), ('disk',): ('@type', 'nvme'),
                ('backingStore',): ('@type', 'nvme'), ('mirror',): ('@type', 'nvme'),
                ('network', 'forward'): ('@mode', 'hostdev'), ('forward', 'address'): None}
# Elements that give the guest a host directory (<source dir=...>): the guest of a writable one
# can make links and files there, which the hypervisor then follows or reads for another domain
# (a disk named before it exists): refused while allowed-paths is set, unless <readonly/>.
DIRECTORY_SHARES = ('filesystem', 'disk')
# The longest name the kernel opens, in bytes with its NUL (a longer one fails, ENAMETOOLONG): a
# longer value is refused where a path is expected, and is no path elsewhere. (This also bounds
# the time realpath takes: about 20 us a component.)
PATH_MAX = 4096
# A name without '/' (not '.' or '..'): what a consumer looks up in directories of its own.
BARE_NAME = re.compile(r'(?!\.\.?\Z)[^/\x00]+\Z')
# An ALSA device as alsa-lib names a card's PCM: a plugin that opens only sound devices, with
# card and device arguments (the file and ladspa plugins, which open host files, are not here).
ALSA_DEVICE = re.compile(r'(default|sysdefault|hw|plughw|dmix|dsnoop|front|rear|center_lfe|side'
                         r'|surround[0-9]{2}|iec958|hdmi)(:[A-Za-z0-9_=,]+)?\Z')
# Values at path places that name no host file a client chooses: (place, driver (None: any),
# (element of the place, attribute, value) it needs, or None, the form of such a value).
NAMES = [
    # libxl runs a relative interface script from Xen's script directory (/etc/xen/scripts,
    # libxl__abs_path), which only root controls
    (('interface', 'script', '@path'), 'xen', None, BARE_NAME),
    # libxl runs a bootloader without '/' from its private binary directory
    # (/usr/lib/xen-<version>/bin) if there, else from libvirtd's PATH: root's directories
    (('domain', 'bootloader', '#text'), 'xen', None, BARE_NAME),
    # an ALSA device is a name alsa-lib resolves (hw:0), not a file
    (('audio', 'input', '@dev'), None, ('audio', 'type', 'alsa'), ALSA_DEVICE),
    (('audio', 'output', '@dev'), None, ('audio', 'type', 'alsa'), ALSA_DEVICE),
]

# The most names a place of these tables has (_at looks no further).
LONGEST_PLACE = max(len(place) for table in (PATH_PLACES, NOT_HOST_PATHS, OPTIONS,
                                             [tail for tail, *_ in NAMES]) for place in table)


# The definitions whose JSON is {root: {...}}: a root element may hold a driver's namespaced
# elements at its top (qemu:commandline, dnsmasq:options) and a <metadata> libvirt never reads.
DEFINITIONS = ('domain', 'network')
UNREAD = {(root, 'metadata') for root in DEFINITIONS}


def definition_root(doc):
    """The root of a whole definition ({"domain": ...}, {"network": ...}), None for a device.
    Beside it, a network's Create takes the state Inspect answers (capitalised keys, no XML)."""
    roots = [key for key in doc if key in DEFINITIONS] if isinstance(doc, dict) else []
    return roots[0] if len(roots) == 1 else None


def sent_xml(doc):
    """The XML libvirt is sent for a JSON definition ({"domain": ...}, {"network": ...}) or one
    device, parsed back: ours, from convert (no DOCTYPE, no entities), so every spelling question
    (lists, #text, prefixes, order) is answered by the same serialisation libvirt reads. 400 for
    what convert refuses."""
    root = definition_root(doc)
    return ElementTree.fromstring(convert.dict_to_xml({root: doc[root]}, root) if root is not None
                                  else convert.device_to_xml(doc))


def read_elements(root, name):
    """The elements of a definition with this name, but those in <metadata> (never read)."""
    unread = {id(element) for metadata in (root.findall('metadata') if root.tag in DEFINITIONS
                                           else ())
              for element in metadata.iter()}
    return [element for element in root.iter(name) if id(element) not in unread]


def driver_of(uri):
    """The libvirt driver a URI names: 'xen' for xen:///system and xen+tls://dom0/system."""
    return urlsplit(uri).scheme.partition('+')[0]


def host_access(root, driver=None):
    """(where, kind, value) for what a definition (or one device) reaches on the host, read from
    the XML libvirt is sent (sent_xml) as libvirt reads it: attributes by their local names, an
    element's text as all the text inside it (XPath's string value, children's included). A
    value at a place PATH_PLACES names (kind 'path' or 'dbus') unless it is one of the NAMES the
    `driver` resolves itself, any other value starting with '/' ('absolute'), the (pool, volume)
    of a volume disk ('volume'), a host device ('device'), a program's options ('options'), a
    writable host directory ('share'). <metadata> is never read."""
    found = []
    if root.tag in DEFINITIONS:
        _read(root, (root.tag,), (root.attrib,), root.tag, driver, found)
    else:
        chain = ('domain', 'devices', _local(root.tag))
        _read(root, chain, ({}, {}, root.attrib), chain[-1], driver, found)
    return found


def _read(element, chain, owners, where, driver, found):
    """Add what `element` and its children reach to `found`; its text as libvirt reads it.
    `owners`: the attributes of each element of `chain`."""
    attributes = {_local(name): value for name, value in element.attrib.items()}
    if chain[-1] == 'source' and 'pool' in attributes and 'volume' in attributes:
        found.append((where, 'volume', (attributes['pool'], attributes['volume'])))
    for name, value in attributes.items():
        _judge(chain + ('@' + name,), owners, f'{where}.@{name}', value, driver, found)
    text = [element.text or '']
    names = [_local(child.tag) for child in element]
    repeated, seen = Counter(names), Counter()
    for child, name in zip(element, names):
        inner = chain + (name,)
        if inner not in UNREAD:
            index = f'[{seen[name]}]' if repeated[name] > 1 else ''
            seen[name] += 1
            value = _read(child, inner, owners + (child.attrib,), f'{where}.{name}{index}',
                          driver, found)
            if _at(inner + ('#text',), NOT_HOST_PATHS) is None:
                text.append(value)
        text.append(child.tail or '')
    text = ''.join(text)
    if text:
        spelt = f'{where}.#text' if attributes or len(element) else where  # as Inspect shows it
        _judge(chain + ('#text',), owners, spelt, text, driver, found)
    if chain[-1] in DIRECTORY_SHARES and 'readonly' not in names:
        found += [(where, 'share', source.get('dir')) for source in element
                  if _local(source.tag) == 'source' and source.get('dir') is not None]
    for tail, device in HOST_DEVICES.items():  # after its paths, the more telling refusal
        if chain[-len(tail):] == tail and (device is None
                                           or attributes.get(device[0][1:]) == device[1]):
            found.append((where, 'device', chain[-1]))
    return text


def _judge(place, owners, where, value, driver, found):
    """Add (where, kind, value) to `found` if the value at `place` reaches the host."""
    if _at(place, OPTIONS) is not None:
        found.append((where, 'options', value))
    elif _at(place, NOT_HOST_PATHS) is None:
        key = _at(place, PATH_PLACES)
        if key is not None:
            if not _names_no_file(place, owners, value, driver):
                found.append((where, PATH_PLACES[key], value))
        elif value.strip().startswith('/') and len(value.encode('utf-8', 'surrogatepass')) < PATH_MAX:
            found.append((where, 'absolute', value))  # (a longer text is no name the kernel opens)


def _names_no_file(place, owners, value, driver):
    """Whether the value at a path place is one of the NAMES: resolved by its consumer to no
    host file the client chooses (a script in Xen's own directory, an ALSA device)."""
    for tail, consumer, needs, form in NAMES:
        if _at(place, {tail}) is None or consumer not in (None, driver):
            continue
        owner = owners[len(place) - len(tail)]  # the attributes of the tail's first element
        if (needs is None or owner.get(needs[1]) == needs[2]) and form.match(value):
            return True
    return False


def _local(name):
    """A name's local part, as libvirt reads it: '{urn:x}file' (ElementTree's p:file) -> 'file'."""
    return name.rpartition('}')[2]


def _at(place, table):
    """The key of `table` that the place ends with (two names at least), or None. A key that
    starts with 'domain' is that place only, not a tail."""
    for length in range(2, min(len(place), LONGEST_PLACE) + 1):
        key = place[-length:]
        if key in table and (key[0] != 'domain' or length == len(place)):
            return key
    return None


def volume_path(conn, pool, volume):
    """The file a volume disk reaches, asked of the hypervisor's connection; None when libvirt
    cannot say (no such pool or volume yet, an inactive pool): nothing to judge it by."""
    try:
        return conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).path()
    except libvirt.libvirtError as err:
        if is_connection_error(err):
            raise
        return None
    except TypeError:  # a pool or volume name that is not a string
        return None


def dbus_socket(address):
    """The socket of a D-Bus address of the form unix:path=... (unescaped), else None: another
    transport, or several addresses, reach nothing the guard can judge."""
    transport, _, options = str(address).partition(':')
    if transport != 'unix' or ';' in options:
        return None
    fields = dict(option.partition('=')[::2] for option in options.split(','))
    return unquote(fields['path']) if 'path' in fields else None


def hypervisor_elements(doc):
    """Where a definition puts elements in a namespace of its own at the top of <domain> or
    <network>: a prefixed name, or a default xmlns on the root or a child. There, libvirt reads a
    driver's extensions (xen:commandline, qemu:commandline, dnsmasq:options), which no path check
    can see into."""
    root = definition_root(doc)
    top = doc[root] if root is not None else None
    if not isinstance(top, dict):
        return
    if '@xmlns' in top:
        yield f'{root}.@xmlns'
    for key, value in top.items():
        if ':' in key and not key.startswith('@'):
            yield f'{root}.{key}'
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, dict) and '@xmlns' in child:
                yield f'{root}.{key}.@xmlns'
