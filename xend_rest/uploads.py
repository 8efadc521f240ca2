"""Image uploads: those running now, and a durable marker for each until it has ended, so that an
image whose upload the daemon's death cut off is still known as incomplete after a restart.

A marker is a small JSON file, <state-dir>/uploads/<connection>/<pool UUID>/<image name>,
written before the image is created and removed once the upload has ended (the image complete,
or deleted again). Its upload holds an flock on it while it runs: the kernel releases that when
the process dies, however it dies, so a marker nobody holds is an upload nobody will finish.
libvirt cannot carry the mark itself (a volume has no metadata, and cannot be renamed, so it
cannot be uploaded under a temporary name either); a state file, unlike an xattr on the image,
works for every pool type and for remote hosts, and an admin can read it (cat) and clear it (rm).
"""
import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections import namedtuple

from .accesslog import printable_text
from .errors import HTTPError

log = logging.getLogger(__name__)

DIRECTORY_MODE = 0o700
MARKER_MODE = 0o600


class State(namedtuple('State', 'uploading incomplete')):
    """An image's upload state: being uploaded now (by this daemon, or another process on the
    same state directory), and incomplete (an upload began and has not ended)."""



class Uploads:
    """The uploads of one hypervisor connection, keyed by (pool UUID, image name): no other
    request may read, change or delete an image until its upload has finished or been cleaned
    up. With a directory, each has a durable marker there (see above); without, only this
    process knows of them."""

    def __init__(self, directory=None):
        self.directory = directory
        self._keys = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def holding(self, key, **facts):
        """An Upload of the image `key`, held for the block; 409 while another one runs. The
        marker stays only if the block created the image (Upload.created) and did not end it."""
        with self._lock:
            if key in self._keys:
                raise HTTPError(409, f'image {key[1]} is being uploaded', 'upload_in_progress')
            self._keys.add(key)
        try:
            upload = Upload(self._marker(key), facts)
            try:
                yield upload
            finally:
                upload.close()
        finally:
            with self._lock:
                self._keys.discard(key)

    def state(self, key, vol_key=None, identity=None):
        """The State of an image. `vol_key` (libvirt's key for it) and `identity` (its file's
        device and inode, where seen) tell a marker left for another image of the same name,
        deleted and created again outside this API: that one is removed."""
        uploading = key in self._keys
        marker = self._marker(key)
        if marker is None:
            return State(uploading, uploading)
        try:
            fd = os.open(marker, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return State(uploading, uploading)
        except OSError as err:
            log.warning('cannot read the upload marker %s: %s', printable_text(marker),
                        printable_text(err))
            return State(uploading, uploading)
        with os.fdopen(fd, 'rb') as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return State(True, True)  # its upload is running, here or in another process
            if _names(f, vol_key, identity):
                return State(uploading, True)
            os.unlink(marker)  # another image's, or none's
        return State(uploading, uploading)

    def forget(self, key):
        """Remove a marker nobody holds for an image that does not exist (it is being created
        anew, or is gone): what it said is no longer true."""
        marker = self._marker(key)
        if marker is None or key in self._keys:
            return
        with contextlib.suppress(FileNotFoundError, BlockingIOError):  # held: running elsewhere
            with open(marker, 'rb') as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(marker)

    def prune(self, pool_uuid, names):
        """Forget the markers of a pool's images that are no longer there."""
        if self.directory is None:
            return
        try:
            marked = os.listdir(os.path.join(self.directory, pool_uuid))
        except OSError:
            return
        for name in set(marked) - set(names):
            self.forget((pool_uuid, name))

    def _marker(self, key):
        if self.directory is None:
            return None
        pool_uuid, name = key
        return os.path.join(self.directory, pool_uuid, name)


class Upload:
    """One running upload and its marker (None: kept in memory only)."""

    def __init__(self, marker, facts):
        self.marker, self._facts = marker, dict(facts, Started=_now(), Pid=os.getpid())
        self._file, self._keep = None, False
        if marker is None:
            return
        try:
            os.makedirs(os.path.dirname(marker), DIRECTORY_MODE, exist_ok=True)
            self._file = _locked(marker)
            self._write()
        except OSError as err:
            if self._file is not None:
                self._file.close()
            if isinstance(err, BlockingIOError) or err.errno == errno.EWOULDBLOCK:
                raise HTTPError(409, f'image {os.path.basename(marker)} is being uploaded by '
                                'another process', 'upload_in_progress') from None
            raise HTTPError(500, f'cannot record the upload in {marker}: {err.strerror}; '
                            'check state-dir', 'state_unwritable') from None

    def created(self, vol, identity=None):
        """The image now exists: if this upload does not end, it is incomplete. `identity`:
        its file's device and inode, where this host sees it."""
        self._keep = True
        self._facts.update(Key=vol.key(), Path=vol.path(), File=identity)
        if self._file is not None:
            self._write()

    def ended(self):
        """The image is complete, or gone again: nothing incomplete is left."""
        self._keep = False

    def close(self):
        if self._file is None:
            return
        try:
            if not self._keep:
                os.unlink(self.marker)
        except OSError as err:
            log.error('cannot remove the upload marker %s: %s', printable_text(self.marker),
                      printable_text(err))
        finally:
            self._file.close()  # and with it the lock

    def _write(self):
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps(self._facts, sort_keys=True).encode() + b'\n')
        self._file.flush()
        os.fsync(self._file.fileno())


def _locked(marker):
    """The marker, created if need be and locked; BlockingIOError while another holds it. A
    marker removed between our open and our lock (its upload ended) is opened again."""
    while True:
        f = os.fdopen(os.open(marker, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, MARKER_MODE), 'r+b')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(f.fileno()), os.stat(marker)):
                return f
        except FileNotFoundError:
            pass
        except BaseException:
            f.close()
            raise
        f.close()


def _names(f, vol_key, identity):
    """Whether the marker read from f is this image's: the same libvirt key, and the same file
    where both were seen. A marker written before the image was created names the image."""
    try:
        facts = json.loads(f.read() or b'{}')
    except ValueError:
        return True  # half written as the daemon died: before the image existed, or just after
    if 'Key' not in facts:
        return True
    if vol_key is not None and facts['Key'] != vol_key:
        return False
    recorded = facts.get('File')
    return recorded is None or identity is None or list(identity) == recorded


def _now():
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
