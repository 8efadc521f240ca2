"""libvirt's own test definitions, taken from its Debian source package at test time (never
committed): the upstream tarball of the installed libvirt0's version, checked against the .dsc's
SHA-256, and only the directories of domain XML below kept, in
${XDG_CACHE_HOME:-~/.cache}/xend-rest-libvirt/<upstream version>/.
"""
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

# Where Debian keeps source packages: the main archive, then security updates.
POOLS = ('https://deb.debian.org/debian/pool/main', 'https://deb.debian.org/debian-security/pool/updates/main')
# Domain definitions the QEMU, Xen (xl and libxl), LXC and generic parsers are tested with.
DIRECTORIES = ('qemuxml2argvdata', 'qemuxml2xmloutdata', 'xlconfigdata', 'libxlxml2domconfigdata',
               'xmconfigdata', 'lxcxml2xmldata', 'genericxml2xmlindata', 'domainschemadata')
TIMEOUT = 120


class Unavailable(Exception):
    """The test data cannot be had here (no dpkg, no network, no such version on the mirrors)."""


def cache_root():
    base = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
    return Path(base) / 'xend-rest-libvirt'


def source_version():
    """(source package, version without epoch) of the installed libvirt0."""
    try:
        out = subprocess.run(['dpkg-query', '-W', '-f', '${source:Package} ${source:Version}',
                              'libvirt0'], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise Unavailable(f'cannot ask dpkg for libvirt0: {err}') from None
    package, version = out.split()
    return package, version.partition(':')[2] or version


def definitions():
    """The directory holding DIRECTORIES, downloading and unpacking them once."""
    package, version = source_version()
    target = cache_root() / version.rpartition('-')[0]  # the upstream version: the tarball's
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix='.fetch-'))
    try:
        tarball = _download(package, version, tmp)
        _unpack(tarball, tmp / 'tree')
        os.replace(tmp / 'tree', target)  # whole, or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _download(package, version, into):
    """The upstream tarball named by the source package's .dsc, its SHA-256 checked."""
    prefix = package[:4] if package.startswith('lib') else package[0]
    errors = []
    for pool in POOLS:
        base = f'{pool}/{prefix}/{package}'
        try:
            dsc = _fetch(f'{base}/{package}_{version}.dsc').decode()
        except OSError as err:
            errors.append(f'{base}: {err}')
            continue
        found = re.search(r'^ ([0-9a-f]{64}) \d+ (\S+\.orig\.tar\.\w+)$', dsc.split('Checksums-Sha256:')[1], re.M)
        if not found:
            raise Unavailable(f'{base}: no upstream tarball in {package}_{version}.dsc')
        digest, name = found.groups()
        data = _fetch(f'{base}/{name}')
        if hashlib.sha256(data).hexdigest() != digest:
            raise Unavailable(f'{base}/{name}: SHA-256 differs from the .dsc')
        (into / name).write_bytes(data)
        return into / name
    raise Unavailable('; '.join(errors))


def _fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.read()
    except OSError as err:
        raise Unavailable(f'{url}: {err}') from None


def _unpack(tarball, target):
    """Only the .xml files of DIRECTORIES, as regular files, under target/<directory>/."""
    with tarfile.open(tarball) as tar:
        for member in tar:
            parts = member.name.split('/')
            if (len(parts) == 4 and parts[1] == 'tests' and parts[2] in DIRECTORIES
                    and parts[3].endswith('.xml') and member.isfile()):
                path = target / parts[2] / parts[3]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tar.extractfile(member).read())
