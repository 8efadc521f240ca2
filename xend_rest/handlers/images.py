"""The image endpoints: disk images are libvirt storage volumes, addressed by pool and name."""
import itertools
import logging
import posixpath
import re
import xml.etree.ElementTree as ElementTree
from urllib.parse import quote

import libvirt

from .. import convert, defaults, imagefiles, streams
from ..accesslog import printable_text
from ..bodies import Raw
from ..errors import HTTPError, bad_request, is_no_image, still_there
from ..params import (NAME_MAX, NO_FLAGS, VOL_CREATE_FLAGS, VOL_DELETE_FLAGS, VOL_RESIZE_FLAGS,
                      WIPE_ALGORITHMS, parse_bool, parse_choice, parse_flag, parse_image_format,
                      parse_size)

log = logging.getLogger(__name__)

# Whatever could make a name leave its pool's directory, or hide in it.
UNSAFE_NAME = re.compile(r'[/\\\x00-\x1f\x7f]|\A\.')
POOL_STATES = {
    libvirt.VIR_STORAGE_POOL_INACTIVE: 'inactive',
    libvirt.VIR_STORAGE_POOL_BUILDING: 'building',
    libvirt.VIR_STORAGE_POOL_RUNNING: 'running',
    libvirt.VIR_STORAGE_POOL_DEGRADED: 'degraded',
    libvirt.VIR_STORAGE_POOL_INACCESSIBLE: 'inaccessible',
}
RANGE = re.compile(r'bytes=([0-9]{0,20})-([0-9]{0,20})\Z')
NO_CONTENT = (204, None)
# A volume disk whose pool or volume is gone, or whose pool is not running, reaches no file.
VOLUME_ABSENT = (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL,
                 libvirt.VIR_ERR_OPERATION_INVALID)


def check_name(name, what='image'):
    """A pool or image name that stays inside its pool: 400 for separators, control characters,
    a leading dot (., .., hidden files) or more than NAME_MAX bytes."""
    if not name:
        raise bad_request(f'the {what} name is empty')
    if UNSAFE_NAME.search(name):
        raise bad_request(f'{what} name {name!r}: no "/", "\\", control characters or leading "."')
    if len(name.encode('utf-8', 'surrogatepass')) > NAME_MAX:
        raise bad_request(f'{what} name is longer than {NAME_MAX} bytes')
    return name


def lookup_pool(conn, name):
    return conn.storagePoolLookupByName(check_name(name, 'pool'))


def lookup_image(conn, pool_name, name):
    """(pool, volume) for an image name in a pool; 404 when either is missing."""
    check_name(name)
    pool = lookup_pool(conn, pool_name)
    return pool, pool.storageVolLookupByName(name)


class DiskUsers:
    """Which domains' disks reach which files, over every domain's live and persistent
    definitions: read once per request, whatever the number of images asked about.

    A disk reaches the file its source names, a volume's file, each file of the backing chain
    libvirt reports, and each file the image's own header names (backing files, data files)
    where this host can read it. Files are compared as imagefiles.file_keys says: as the kernel
    resolves names, and by device and inode, on this host; by normalised name for a remote one.
    """

    def __init__(self, conn):
        self.local = imagefiles.is_local(conn.getURI())
        self._conn = conn
        self._volume_paths = {}
        self._keys = {}  # (path, format) -> its file keys
        self._users = {}  # file key or (pool, volume) -> {domain names}
        for name, definitions in still_there(conn.listAllDomains(0), _definitions):
            for xml in definitions:
                for key in self._disk_keys(xml):
                    self._users.setdefault(key, set()).add(name)

    def of(self, pool_name, name, path):
        """The names of the domains whose disks reach this image."""
        keys = {(pool_name, name)} | (imagefiles.file_keys(path, self.local) if path else set())
        return sorted(set().union(*(self._users.get(key, ()) for key in keys)))

    def _disk_keys(self, xml):
        for disk in ElementTree.fromstring(xml).iterfind('devices/disk'):
            driver = disk.find('driver')
            form = driver.get('type') if driver is not None else None
            for source in disk.iter('source'):  # the disk's, then its backing chain's
                path = source.get('file') or source.get('dev')
                if source.get('pool') and source.get('volume'):
                    yield source.get('pool'), source.get('volume')
                    path = self._volume_path(source.get('pool'), source.get('volume'))
                if path:
                    yield from self._file_keys(path, form if source in disk else 'raw')

    def _file_keys(self, path, form):
        """The keys of the file and, on this host, of the files its header chains to (once per
        file and format: a running domain's two definitions mostly name the same)."""
        if (path, form) not in self._keys:
            keys = set(imagefiles.file_keys(path, self.local))
            try:
                for *_, targets in imagefiles.chain(path, form) if self.local else ():
                    for target in targets or ():
                        keys |= imagefiles.file_keys(target, self.local)
            except (imagefiles.Unjudged, OSError):
                pass  # a header we cannot follow further names no more users
            self._keys[path, form] = keys
        return self._keys[path, form]

    def _volume_path(self, pool, volume):
        if (pool, volume) not in self._volume_paths:
            vol = _lookup_volume(self._conn, pool, volume)
            self._volume_paths[pool, volume] = vol.path() if vol is not None else None
        return self._volume_paths[pool, volume]


def _definitions(dom):
    """A domain's name and its live and persistent definitions."""
    definitions = [dom.XMLDesc(0)]
    if dom.isActive() and dom.isPersistent():
        definitions.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    return dom.name(), definitions


def judge_image(check, path, form=None, read=None, follow=True):
    """403 unless every file the image at `path` names (backing chain, data file, extents) is
    one check(where, path) allows: the hypervisor opens them along with the image. `read`
    gives its bytes (default: the file); `follow`: judge what those files name in turn."""
    try:
        for image, what, name, paths in imagefiles.chain(path, form, read, follow):
            if paths is None:
                raise HTTPError(403, f'the {what} of {image}, {name!r}, has a protocol or no '
                                'name, which allowed-paths cannot judge', 'path_not_allowed')
            for target in paths:
                check(f'the {what} of {image}', target)
    except imagefiles.Unjudged as err:
        raise HTTPError(403, f'{path}: {err}, which allowed-paths cannot judge',
                        'path_not_allowed') from None


def judge_disks(request, disks, check):
    """403 unless the images of these <disk> elements (of the XML libvirt is sent, where names
    are libvirt's) name only allowed files. Files are read on this host only; of a volume, what
    libvirt itself read of its header is judged on any host."""
    local = imagefiles.is_local(request.hypervisor.connection.uri)
    for disk in disks:
        forms = {driver.get('type') for driver in disk.iter('driver')} - {None}
        form = 'raw' if forms == {'raw'} else next(iter(forms - {'raw'}), None)
        for source in disk.iter('source'):
            for path in (source.get('file'), source.get('dev')) if local else ():
                if path is not None:
                    judge_image(check, path, form)
            if source.get('pool') is not None and source.get('volume') is not None:
                vol = _lookup_volume(request.conn, source.get('pool'), source.get('volume'))
                if vol is not None:
                    judge_volume(check, vol, form, local)


def judge_volume(check, vol, form, local):
    """judge_image for a volume: the backing file libvirt reports for it (libvirt reads the
    header of a volume it detects as qcow2, wherever it runs), and its header on this host."""
    if form == 'raw':
        return
    for backing in ElementTree.fromstring(vol.XMLDesc(0)).iterfind('backingStore/path'):
        check(f'the backing file of {vol.path()} (as libvirt reads it)', backing.text or '')
    if local:
        judge_image(check, vol.path(), form)


def _lookup_volume(conn, pool, volume):
    """A volume, or None while its pool or itself is missing or inactive."""
    try:
        return conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
    except libvirt.libvirtError as err:
        if err.get_error_code() not in VOLUME_ABSENT:
            raise
    return None


def _summary(pool, xml, users, uploads):
    """An image as listed: where it is, what it is, how large, which domains use it, and
    whether its content is all there."""
    vol = ElementTree.fromstring(xml)
    name, path = vol.findtext('name'), vol.findtext('target/path')
    form = vol.find('target/format')
    return {
        'Name': name,
        'Pool': pool.name(),
        'Path': path,
        'Type': vol.get('type'),
        'Format': form.get('type') if form is not None else None,
        'Capacity': int(vol.findtext('capacity', '0')),
        'Allocation': int(vol.findtext('allocation', '0')),
        'UsedBy': users.of(pool.name(), name, path),
        **_upload_fields(uploads.state((pool.UUIDString(), name), vol.findtext('key'),
                                       imagefiles.identity(path, users.local))),
    }


def _upload_fields(state):
    return {'Uploading': state.uploading, 'Incomplete': state.incomplete}


def _describe(request, pool, vol):
    return _summary(pool, vol.XMLDesc(0), DiskUsers(request.conn), request.hypervisor.uploads)


def _upload_state(request, pool, vol):
    return request.hypervisor.uploads.state(
        (pool.UUIDString(), vol.name()), vol.key(),
        imagefiles.identity(vol.path(), imagefiles.is_local(request.hypervisor.connection.uri)))


def list_images(request):
    """GET /images/json: the images of every active pool, or of the pool named by ?pool=."""
    wanted = request.arg('pool')
    if wanted is not None:
        pools = [lookup_pool(request.conn, wanted)]
    else:
        pools = request.conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
    users = DiskUsers(request.conn)
    uploads = request.hypervisor.uploads
    listed = []
    for pool in pools:
        images = list(still_there(pool.listAllVolumes(0), lambda vol: _summary(
            pool, vol.XMLDesc(0), users, uploads), is_no_image))
        uploads.prune(pool.UUIDString(), [image['Name'] for image in images])
        listed += images
    return 200, sorted(listed, key=lambda image: (image['Pool'], image['Name']))


def inspect_image(request, pool, name):
    """GET .../json: the volume's XML as JSON, and whether its content is all there."""
    source_pool, vol = lookup_image(request.conn, pool, name)
    return 200, {**convert.xml_to_dict(vol.XMLDesc(0)),
                 **_upload_fields(_upload_state(request, source_pool, vol))}


def create_image(request, pool):
    """POST /images/(pool)/create?name=&capacity=[&format=][&allocation=]: a new, empty image."""
    name = check_name(request.arg('name'))
    capacity = parse_size(request, 'capacity')
    allocation = parse_size(request, 'allocation', default=0)
    if allocation > capacity:
        raise bad_request(f'allocation={allocation} is larger than capacity={capacity}: '
                          'an image cannot hold more than its size')
    form = parse_image_format(request, 'raw')
    flag = parse_flag(request, VOL_CREATE_FLAGS)
    target = lookup_pool(request.conn, pool)
    _refuse_existing(target, name)
    _refuse_no_space(target, allocation, f'image {name} allocates')
    request.hypervisor.uploads.forget((target.UUIDString(), name))
    vol = target.createXML(_volume_xml(name, capacity, form, allocation), flag)
    return 201, _describe(request, target, vol)


def clone_image(request, pool, name):
    """POST .../clone?name=[&pool=][&format=]: a full copy, in the same pool unless ?pool= says.

    The clone allocates what its source does: a sparse source gives a sparse clone."""
    new_name = check_name(request.arg('name'))
    form = parse_image_format(request, None)
    flag = parse_flag(request, VOL_CREATE_FLAGS)
    source_pool, source = lookup_image(request.conn, pool, name)
    target = lookup_pool(request.conn, request.arg('pool', pool))
    state = _upload_state(request, source_pool, source)
    _refuse_uploading(state, name)
    if state.incomplete:
        raise HTTPError(409, f'image {name} is incomplete (its upload did not end): a copy '
                        'would pass for whole', 'image_incomplete')
    _judge_source(request, source)
    _refuse_existing(target, new_name)
    _type, capacity, allocation = source.info()
    allocation = min(allocation, capacity)  # a file system may hold blocks past a file's end
    _refuse_no_space(target, allocation, f'a clone of {name} allocates')
    if form is None:
        found = ElementTree.fromstring(source.XMLDesc(0)).find('target/format')
        form = found.get('type') if found is not None else 'raw'
    request.hypervisor.uploads.forget((target.UUIDString(), new_name))
    # Without <allocation> libvirt allocates the whole capacity: say what the source holds.
    vol = target.createXMLFrom(_volume_xml(new_name, capacity, form, allocation), source, flag)
    return 201, _describe(request, target, vol)


def _judge_source(request, vol):
    """With allowed-paths, 403 unless the files a clone's source names are allowed: libvirt
    copies a qcow2 with qemu-img convert, which reads its backing file into the copy."""
    if request.app.guard.allowed_paths:
        found = ElementTree.fromstring(vol.XMLDesc(0)).find('target/format')
        judge_volume(request.app.guard.check_path, vol,
                     found.get('type') if found is not None else None,
                     imagefiles.is_local(request.hypervisor.connection.uri))


def _volume_xml(name, capacity, form, allocation=None):
    doc = {'name': name, 'capacity': {'@unit': 'bytes', '#text': str(capacity)},
           'target': {'format': {'@type': form}}}
    if allocation is not None:
        doc['allocation'] = {'@unit': 'bytes', '#text': str(allocation)}
    return convert.dict_to_xml({'volume': doc}, 'volume')


def _refuse_existing(pool, name):
    # Asked first: not every driver reports a clash as VIR_ERR_STORAGE_VOL_EXIST.
    try:
        pool.storageVolLookupByName(name)
    except libvirt.libvirtError as err:
        if is_no_image(err):
            return
        raise
    raise HTTPError(409, f'image {name} already exists in pool {pool.name()}',
                    'already_exists')


def _refuse_no_space(pool, allocating, what):
    """507 when a new image would allocate more than the pool has free (as the pool last counted
    it: read before the call, so libvirt never gets to refuse). Capacity is not checked: a sparse
    image larger than the free space is legal where the pool allows it. An inactive pool is left
    to libvirt, which answers 409 for it."""
    state, _capacity, _allocation, available = pool.info()
    if state == libvirt.VIR_STORAGE_POOL_RUNNING and allocating > available:
        raise HTTPError(507, f'{what} {allocating} bytes; pool {pool.name()} has {available} '
                        'bytes free', 'insufficient_space')


def _refuse_uploading(state, name):
    if state.uploading:
        raise HTTPError(409, f'image {name} is being uploaded', 'upload_in_progress')


def _refuse_in_use(request, pool, vol, action):
    """409 while a defined domain's disk is this image, unless ?force=1."""
    if parse_bool(request, 'force'):
        return
    users = DiskUsers(request.conn).of(pool.name(), vol.name(), vol.path())
    if users:
        raise HTTPError(409, f"image {vol.name()} is used by {', '.join(users)}: "
                        f'{action} it with force=1 only if you mean it', 'image_in_use')


def resize_image(request, pool, name):
    """POST .../resize?capacity=[&flag=]: grow; shrinking needs flag 4 (and force=1 while used)."""
    capacity = parse_size(request, 'capacity')
    flag = parse_flag(request, VOL_RESIZE_FLAGS)
    parse_bool(request, 'force')
    source_pool, vol = lookup_image(request.conn, pool, name)
    _refuse_uploading(request.hypervisor.uploads.state((source_pool.UUIDString(), name)), name)
    _type, current, allocation = vol.info()
    shrink = flag & libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK
    if flag & libvirt.VIR_STORAGE_VOL_RESIZE_DELTA:
        wanted = current - capacity if shrink else current + capacity
    else:
        wanted = capacity
    if wanted < current:
        if not shrink:
            raise bad_request(f'capacity {wanted} is below the current {current}: shrinking loses '
                              'data, ask for it with flag=4 (VIR_STORAGE_VOL_RESIZE_SHRINK)')
        _refuse_in_use(request, source_pool, vol, 'shrink')
    if flag & libvirt.VIR_STORAGE_VOL_RESIZE_ALLOCATE:  # libvirt allocates up to the new size
        _refuse_no_space(source_pool, wanted - allocation,
                         f'growing {name} to {wanted} bytes allocates')
    vol.resize(capacity, flag)
    return NO_CONTENT


def delete_image(request, pool, name):
    """POST .../delete[?force=1][&flag=]: 409 while a defined domain uses the image."""
    flag = parse_flag(request, VOL_DELETE_FLAGS)
    source_pool, vol = lookup_image(request.conn, pool, name)
    state = _upload_state(request, source_pool, vol)
    _refuse_uploading(state, name)
    if not state.incomplete:  # half an image is of no use to the domains that name it
        _refuse_in_use(request, source_pool, vol, 'delete')
    vol.delete(flag)
    request.hypervisor.uploads.forget((source_pool.UUIDString(), name))
    return NO_CONTENT


def wipe_image(request, pool, name):
    """POST .../wipe[?algorithm=][&force=1]: overwrite the content; 409 while used."""
    algorithm = parse_choice(request, 'algorithm', WIPE_ALGORITHMS, 'zero')
    parse_flag(request, NO_FLAGS)
    source_pool, vol = lookup_image(request.conn, pool, name)
    _refuse_uploading(request.hypervisor.uploads.state((source_pool.UUIDString(), name)), name)
    _refuse_in_use(request, source_pool, vol, 'wipe')
    vol.wipePattern(algorithm, 0)
    return NO_CONTENT


def upload_image(request, pool, name):
    """PUT .../upload[?capacity=]: a new image holding the body; gone again if the upload fails."""
    check_name(name)
    check_name(pool, 'pool')  # before the body's checks: a bad name is a bad name, whatever else
    length = request.content_length()
    if not length:
        raise bad_request('the body is empty: use create for an empty image')
    capacity = parse_size(request, 'capacity', default=length)
    if capacity < length:
        raise HTTPError(413, f'the body ({length} bytes) is larger than capacity={capacity}',
                        'too_large')
    target = lookup_pool(request.conn, pool)
    _refuse_existing(target, name)
    _refuse_no_space(target, length, 'the body is')
    chunks = request.body_chunks(streams.CHUNK)
    if request.app.guard.allowed_paths:
        chunks = _judged_body(request, target, name, chunks, length)
    local = imagefiles.is_local(request.hypervisor.connection.uri)
    with request.hypervisor.uploads.holding((target.UUIDString(), name), Pool=target.name(),
                                            Name=name, Length=length) as upload:
        vol = target.createXML(_volume_xml(name, capacity, 'raw', 0), 0)
        upload.created(vol, imagefiles.identity(vol.path(), local))
        try:
            streams.upload(request.conn, vol, chunks, length)
        except BaseException:
            if _delete_quietly(vol):  # half an image must not pass for a whole one
                upload.ended()
            raise
        upload.ended()
    return 201, _describe(request, target, vol)


def _judged_body(request, pool, name, chunks, length):
    """The body's chunks, once the files its image header names are judged by allowed-paths,
    before anything is created: whatever format the image is later declared as, or libvirt
    detects it as, its names stay inside. The first imagefiles.HEAD bytes are read for it."""
    head = b''
    for chunk in chunks:
        head += chunk
        if len(head) >= imagefiles.HEAD:
            break
    directory = ElementTree.fromstring(pool.XMLDesc(0)).findtext('target/path') or ''
    judge_image(request.app.guard.check_path, posixpath.join(directory, name), 'vmdk',
                imagefiles.bytes_reader(head, complete=len(head) == length),
                follow=imagefiles.is_local(request.hypervisor.connection.uri))
    return itertools.chain([head], chunks)


def _delete_quietly(vol):
    """Delete a half-written image: whether it is gone. A failure here is logged (the image
    stays marked incomplete); the error that led here is the answer."""
    try:
        vol.delete(0)
    except libvirt.libvirtError as err:
        if not is_no_image(err):
            log.error('could not delete the incomplete image %s: %s', printable_text(vol.path()),
                      printable_text(err.get_error_message()))
            return False
    return True


def download_image(request, pool, name):
    """GET .../download: the image's bytes as stored (the whole file, or one Range)."""
    source_pool, vol = lookup_image(request.conn, pool, name)
    _refuse_uploading(request.hypervisor.uploads.state((source_pool.UUIDString(), name)), name)
    size = _stored_size(vol.XMLDesc(0))
    status, offset, length, headers = _byte_range(request.environ.get('HTTP_RANGE'), size)
    headers += [('Accept-Ranges', 'bytes'),
                ('Content-Disposition', "attachment; filename*=UTF-8''" + quote(name))]
    body = Raw(streams.Download(request.conn, vol, offset, length), defaults.OCTETS, length)
    return status, body, headers


def _stored_size(xml):
    """The bytes a download yields: the file's size (<physical>), else the capacity."""
    vol = ElementTree.fromstring(xml)
    return int(vol.findtext('physical') or vol.findtext('capacity', '0'))


def _byte_range(header, size):
    """(status, offset, length, headers) for a Range header of one byte range.

    Several ranges, or a header we cannot read, are ignored (RFC 9110 allows it): the whole image.
    """
    found = RANGE.match(header.strip()) if header else None
    if found is None or found.groups() == ('', ''):
        return 200, 0, size, []
    first, last = found.groups()
    if first == '':  # bytes=-N: the last N bytes (N = 0 is unsatisfiable)
        first, last = max(size - int(last), 0), size - 1
    else:
        first, last = int(first), min(int(last or size - 1), size - 1)
        if found.group(2) and int(found.group(2)) < first:
            return 200, 0, size, []
    if first >= size or last < first:
        raise HTTPError(416, f'the image has {size} bytes; {header} is outside it',
                        'range_not_satisfiable', [('Content-Range', f'bytes */{size}')])
    return 206, first, last - first + 1, [('Content-Range', f'bytes {first}-{last}/{size}')]


def list_pools(request):
    """GET /pools/json: every storage pool, with its state, size and free space."""
    return 200, sorted((_pool_summary(pool) for pool in request.conn.listAllStoragePools(0)),
                       key=lambda pool: pool['Name'])


def _pool_summary(pool):
    state, capacity, allocation, available = pool.info()
    xml = ElementTree.fromstring(pool.XMLDesc(0))
    return {
        'Name': pool.name(),
        'Uuid': pool.UUIDString(),
        'Type': xml.get('type'),
        'Path': xml.findtext('target/path'),
        'State': POOL_STATES.get(state, 'unknown'),
        'Capacity': capacity,
        'Allocation': allocation,
        'Available': available,
        'Persistent': bool(pool.isPersistent()),
        'Autostart': bool(pool.autostart()),
    }


def inspect_pool(request, pool):
    return 200, convert.xml_to_dict(lookup_pool(request.conn, pool).XMLDesc(0))
