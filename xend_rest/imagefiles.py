"""Image files as the host's kernel and the hypervisor see them: which names are one file, and
which other files an image's own header makes the hypervisor open (a qcow2 backing file, say).

Standard library only; the callers bring the names (from libvirt) and the policy.
"""
import contextlib
import os
import posixpath
import re
import stat
import struct
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ('localhost', '127.0.0.1', '::1')
# How far into an image its header's names may lie: the largest qcow2 cluster (names lie within
# the first one). An image whose names lie further is not judged, it is refused.
HEAD = 2 << 20
FAR = 1 << 62  # an offset no file reaches
MAX_CHAIN = 16  # backing files followed from one image; QEMU gives up well before loops matter
QCOW_MAGIC = b'QFI\xfb'  # qcow (version 1) and qcow2 (2, 3)
QED_MAGIC = b'QED\x00'
VMDK_SPARSE_MAGICS = (b'KDMV', b'COWD')  # VMDK 4 and VMDK 3 (VMFS) sparse images
QED_F_BACKING_FILE = 0x01
QCOW2_EXT_BACKING_FORMAT = 0xe2792aca
QCOW2_EXT_DATA_FILE = 0x44415441  # "DATA": the external data file's name
QCOW2_EXT_END = 0
# VMDK, read as QEMU 7.2's block/vmdk.c reads it. The parent: the first "parentFileNameHint"
# anywhere in the first VMDK_DESC_SIZE bytes of the descriptor (up to a NUL), its name from two
# characters after the key to the next '"' (vmdk_parent_open). Extents: each line of the
# descriptor (up to VMDK_DESC_MAX bytes and a NUL) as sscanf("%10s %ld %10s \"%511[^\n\r\"]\"
# %ld") reads it, with its rules (see _scan_extent), for access RW (vmdk_parse_extents).
VMDK_PARENT_KEY = b'parentFileNameHint'
VMDK_NAME = re.compile(rb'[^"\0]*')  # a parent's name: up to a '"' (or a NUL, which QEMU refuses)
PATH_MAX = 4096  # QEMU refuses a longer parent name
VMDK_DESC_SIZE = 20 * 512
VMDK_DESC_MAX = (1 << 20) - 1
# "%10s %ld %10s \"%511[^\n\r\"]\" %ld", directive by directive ('%[': the bracket)
EXTENT_LINE = ('%s', ' ', '%d', ' ', '%s', ' ', '"', '%[', '"', ' ', '%d')
SCANF_SPACE = b' \t\n\v\f\r'  # what sscanf's ' ' and conversions skip (isspace)
SCANF_NUMBER = re.compile(rb'[+-]?[0-9]+')  # %ld
INT64 = (-1 << 63, (1 << 63) - 1)  # where %ld saturates
# Extent types QEMU opens: their data (raw), or a sparse file, whose header may hold a
# descriptor naming more extents (VMDK_SPARSE: read as one).
VMDK_EXTENTS = {b'FLAT': 'raw', b'VMFS': 'raw', b'SESPARSE': 'raw', b'SPARSE': 'vmdk-sparse',
                b'VMFSSPARSE': 'vmdk-sparse'}
VMDK_SPARSE = 'vmdk-sparse'
# A VMDK descriptor as QEMU probes one (in its first PROBE_SIZE bytes): comments and blank lines,
# then version=1, 2 or 3. (This accepts a little more than QEMU does: tabs, empty lines.)
VMDK_VERSION = re.compile(rb'\A(?:[ \t]*(?:#[^\n]*)?\r?\n)*[ \t]*version=[123]\r?\n')
PROBE_SIZE = 512  # QEMU 7.2's BLOCK_PROBE_BUF_SIZE
# QEMU takes a name with ':' before any '/' or '\' to start with a protocol (nbd:, file:, json:).
PROTOCOL = re.compile(r'[^:/\\]*:')


class Unjudged(Exception):
    """An image whose names cannot be read in the bytes at hand: refused rather than guessed."""


def is_local(uri):
    """Whether a libvirt URI's hypervisor runs on this host (no host name, or a loopback one)."""
    host = urlsplit(uri).hostname
    return host is None or host in LOOPBACK_HOSTS


def file_keys(path, local=True):
    """What identifies the file a name reaches, as a set: two names are one file when their
    sets meet. On this host: where the file can be seen, its device and inode (for a device
    node, the device it opens), which hard links and bind mounts share; else the name resolved
    as the kernel resolves it (links, '..', '//'). For a remote host only the spelling can be
    normalised ('//', '.', and '..' taken lexically): what the remote host's links make of a
    name cannot be known from here."""
    if not path.startswith('/'):
        return {path}
    if not local:
        return {'/' + posixpath.normpath(path).lstrip('/')}
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # not there, or hidden from the daemon (its sandbox)
        return {os.path.realpath(path)}
    if stat.S_ISBLK(info.st_mode) or stat.S_ISCHR(info.st_mode):
        return {('device', stat.S_IFMT(info.st_mode), info.st_rdev)}
    return {('inode', info.st_dev, info.st_ino)}


def identity(path, local=True):
    """[device, inode] of the file at path on this host, or None where it cannot be seen."""
    try:
        info = os.stat(path) if local and path else None
    except (OSError, ValueError):
        return None
    return [info.st_dev, info.st_ino] if info else None


@contextlib.contextmanager
def opened(path):
    """read(offset, length) over a regular file or block device on this host, or None where
    there is none to read (missing, hidden from the daemon, or a FIFO, which would block)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        yield None
        return
    try:
        mode = os.fstat(fd).st_mode
        # (an offset from a header may be any 64-bit number: past any file's end)
        yield (lambda offset, length: os.pread(fd, length, offset) if offset < FAR else b'') if (
            stat.S_ISREG(mode) or stat.S_ISBLK(mode)) else None
    finally:
        os.close(fd)


def bytes_reader(head, complete):
    """read(offset, length) over the first bytes of an image (all of it if `complete`)."""
    def read(offset, length):
        if offset + length > len(head) and not complete:
            raise Unjudged(f'its header names something beyond its first {len(head)} bytes')
        return head[offset:offset + length]
    return read


def references(read, form=None):
    """[(what, name, its format or None)]: the files an image's header names, which the hypervisor
    opens along with it: qcow and qcow2 backing files, a qcow2 external data file, a QED backing
    file, a VMDK parent and extents. `form` is the format the image is declared as: 'raw' has
    none; None is told by magic, as QEMU and libvirt probe; 'vmdk' reads any other file as a
    VMDK descriptor, as QEMU does; VMDK_SPARSE is a sparse extent of a VMDK descriptor. Raises
    Unjudged where a name lies out of reach."""
    return [found for found in _references(read, form) if found[1]]  # '': none, as for QEMU


def _references(read, form):
    if form == 'raw':
        return []
    head = read(0, 512)
    if form == VMDK_SPARSE:  # QEMU opens it as a sparse VMDK, or not at all
        return _vmdk_sparse(read, head) if head[:4] in VMDK_SPARSE_MAGICS else []
    if head.startswith(QCOW_MAGIC):
        return _qcow(read, head)
    if head.startswith(QED_MAGIC):
        return _qed(read, head)
    if head[:4] in VMDK_SPARSE_MAGICS:
        # the parent lies in the descriptor after the header, whatever the header says
        return _vmdk_parent(read(512, VMDK_DESC_SIZE)) + _vmdk_sparse(read, head)
    if form == 'vmdk' or VMDK_VERSION.search(read(0, PROBE_SIZE)):
        return _vmdk_parent(read(0, VMDK_DESC_SIZE)) + _vmdk_extents(read(0, VMDK_DESC_MAX))
    return []


def _qcow(read, head):
    if len(head) < 72:
        return []
    version, backing_offset, backing_size = struct.unpack_from('>IQI', head, 4)
    backing, backing_format, found = None, None, []
    if backing_offset:
        backing = _name(read(backing_offset, min(backing_size, 4096)))
    if version >= 2:  # qcow2: header extensions, up to the backing file's name or one cluster
        cluster = 1 << min(struct.unpack_from('>I', head, 20)[0], 21)
        offset = struct.unpack_from('>I', head, 100)[0] if version >= 3 and len(head) >= 104 else 72
        end = min(backing_offset or cluster, cluster)
        while offset + 8 <= end:
            kind, length = struct.unpack('>II', read(offset, 8).ljust(8, b'\0'))
            if kind == QCOW2_EXT_END or offset + 8 + length > end:  # QEMU stops there too
                break
            if kind == QCOW2_EXT_BACKING_FORMAT:
                backing_format = _name(read(offset + 8, length))
            elif kind == QCOW2_EXT_DATA_FILE:
                found.append(('data file', _name(read(offset + 8, length)), 'raw'))
            offset += 8 + (length + 7) // 8 * 8
    if backing is not None:
        found.insert(0, ('backing file', backing, backing_format))
    return found


def _qed(read, head):
    if len(head) < 64:
        return []
    features, = struct.unpack_from('<Q', head, 16)
    offset, size = struct.unpack_from('<II', head, 56)
    if not features & QED_F_BACKING_FILE:
        return []
    return [('backing file', _name(read(offset, min(size, 4096))), None)]


def _vmdk_sparse(read, head):
    """The extents of a sparse VMDK 4 image of no capacity: a descriptor, embedded at its
    desc_offset (vmdk_open_vmdk4). Other sparse images hold their own data."""
    if head[:4] != b'KDMV' or len(head) < 36:
        return []
    capacity, _grain, desc = struct.unpack_from('<QQQ', head, 12)
    return _vmdk_extents(read(desc * 512, VMDK_DESC_MAX)) if desc and not capacity else []


def _vmdk_parent(descriptor):
    """The parent a descriptor names, found as vmdk_parent_open finds it: [] for none, and for a
    name QEMU refuses (no closing '"', too long), which makes it open nothing."""
    buffer = descriptor.ljust(VMDK_DESC_SIZE + 3, b'\0')  # QEMU's: zeroed past what was read
    at = _c_string(buffer).find(VMDK_PARENT_KEY)
    if at < 0:
        return []
    start = at + len(VMDK_PARENT_KEY) + 2  # past the key and two characters, whatever they are
    end = VMDK_NAME.match(buffer, start).end()
    if buffer[end:end + 1] != b'"' or end - start >= PATH_MAX:
        return []
    return [('parent', _name(buffer[start:end]), 'vmdk')]  # QEMU opens a parent as VMDK


def _vmdk_extents(descriptor):
    """The extents a descriptor names, each line read as vmdk_parse_extents reads it: an RW
    line of a known type and positive size is opened; a FLAT line without an offset, or another
    with one (VMFS too), ends the reading (QEMU gives up on the image there)."""
    text, found, start = _c_string(descriptor), [], 0
    while start < len(text):
        matches, access, sectors, kind, name, offset = _scan_extent(text, start)
        start = text.find(b'\n', start) + 1 or len(text)
        if matches < 4 or access != b'RW':
            continue
        if (kind == b'FLAT' and (matches != 5 or offset < 0)
                or kind != b'FLAT' and matches != 4):
            break
        if sectors > 0 and kind in VMDK_EXTENTS:
            found.append(('extent', _name(name), VMDK_EXTENTS[kind]))
    return found


def _scan_extent(text, at):
    """(matches, access, sectors, type, name, offset) as glibc's sscanf(text + at, EXTENT_LINE)
    reads them: a conversion skips blanks and newlines first (a line may go on on the next), ' '
    matches any run of them, even none ("4FLAT"), %ld takes a sign ("+4") and saturates, %10s
    stops after 10 characters and %511[ after 511 (the rest stays unread: QEMU opens the name
    cut short). `matches` counts the conversions made before the first that fails."""
    fields, position = [], at
    for directive in EXTENT_LINE:
        if directive in ('%s', '%d', ' '):
            while position < len(text) and text[position] in SCANF_SPACE:
                position += 1
        if directive == '"':
            if text[position:position + 1] != b'"':
                break
            position += 1
        elif directive == '%d':
            number = SCANF_NUMBER.match(text, position)
            if number is None:
                break
            fields.append(min(max(int(number.group()), INT64[0]), INT64[1]))
            position = number.end()
        elif directive != ' ':
            width, stops = (10, SCANF_SPACE) if directive == '%s' else (511, b'\n\r"')
            end = position
            while end < len(text) and end - position < width and text[end] not in stops:
                end += 1
            if end == position:
                break
            fields.append(text[position:end])
            position = end
    return (len(fields), *fields, *[None] * (5 - len(fields)))


def _c_string(data):
    """What C reads of a buffer as a string: up to its first NUL."""
    return data.split(b'\0', 1)[0]


def _name(raw):
    return raw.split(b'\0', 1)[0].decode('utf-8', 'surrogateescape')


def resolve(what, name, image_path):
    """The host paths a referenced name may open, or None for a name with a protocol (nbd:,
    json:, file:...), which no path check can judge. A relative backing file, parent or extent
    is taken from the image's directory as the image was named (as QEMU does: an extent's name
    is appended to that directory, so it never has a protocol); a relative data file from
    QEMU's working directory (/) and, in case, the image's directory too."""
    if not name or what != 'extent' and PROTOCOL.match(name):
        return None
    if name.startswith('/'):
        return [name]
    base = posixpath.dirname(image_path)
    paths = [posixpath.join(base, name)]
    if what == 'data file':
        paths.append('/' + name)
    return paths


def chain(path, form=None, read=None, follow=True, depth=0, top=None):
    """(image, what, name, host paths or None) for each file the image at `path` names, and, if
    `follow`, for each file those name in turn, as far as this host can read them. `read`
    gives the image's bytes (default: the file at `path`); `form` is its declared format;
    `top`: for a sparse extent, the VMDK descriptor whose directory its own extents are in."""
    if form == 'raw':
        return
    with contextlib.nullcontext(read) if read else opened(path) as read:
        found = references(read, form) if read else []
    for what, name, next_form in found:
        targets = resolve(what, name, top or path)
        yield path, what, name, targets
        inner = (top or path) if next_form == VMDK_SPARSE else None
        for target in targets or () if follow and depth < MAX_CHAIN else ():
            yield from chain(target, next_form, follow=follow, depth=depth + 1, top=inner)
