"""A small client of xenstored's socket protocol, for the addresses Xen guest agents publish.

xe-guest-utilities and xen-guest-agent both write each address of a guest's vif N under that
guest's own home, /local/domain/<id>/attr/vif/<N>/ipv4/<slot> and .../ipv6/<slot>. The guest
writes those keys: we read only its own, at its current id, a bounded number of small values,
and keep only what parses as an address. Which vif is which comes from dom0's backend entries.
"""
import ipaddress
import os
import socket
import struct
import time

SOCKET = '/run/xenstored/socket'  # xenstored's, on dom0 (Debian's xen-utils)
XS_DIRECTORY, XS_READ, XS_ERROR = 1, 2, 16  # xen/include/public/io/xs_wire.h
HEADER = struct.Struct('=IIII')  # type, request id, transaction id, payload length
PAYLOAD_MAX = 4096  # XENSTORE_PAYLOAD_MAX: xenstored sends nothing larger
MAX_SLOTS = 16  # addresses read per vif and family (the agents use 10)
MAX_VIFS = 64  # network interfaces of one domain
MAX_VALUE = 64  # characters of an address (an IPv6 one with a zone fits)
TIMEOUT = 1.0  # seconds for all the questions of one look
FAMILIES = ('ipv4', 'ipv6')


class XenstoreError(OSError):
    """xenstored answered an error (its errno name, 'ENOENT') or something we do not read."""


class Xenstore:
    """One connection to xenstored, asking reads and directory listings outside transactions."""

    def __init__(self, path=SOCKET, timeout=TIMEOUT):
        self.deadline = time.monotonic() + timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.request_id = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()

    def read(self, path):
        """The value at path, as bytes; None when there is none."""
        return self._ask(XS_READ, path)

    def directory(self, path):
        """The names of path's children; [] when path does not exist."""
        payload = self._ask(XS_DIRECTORY, path)
        return [] if payload is None else [name.decode('ascii', 'replace')
                                           for name in payload.split(b'\0') if name]

    def _ask(self, kind, path):
        self.request_id += 1
        body = path.encode('ascii') + b'\0'
        self.sock.settimeout(max(0.001, self.deadline - time.monotonic()))
        self.sock.sendall(HEADER.pack(kind, self.request_id, 0, len(body)) + body)
        answer, request_id, _tx, length = HEADER.unpack(self._exactly(HEADER.size))
        if length > PAYLOAD_MAX:
            raise XenstoreError(f'xenstored sent {length} bytes, more than its protocol allows')
        payload = self._exactly(length)
        if request_id != self.request_id:
            raise XenstoreError('xenstored answered another request')
        if answer == XS_ERROR:
            name = payload.rstrip(b'\0').decode('ascii', 'replace')
            if name == 'ENOENT':
                return None
            raise XenstoreError(f'xenstored: {name}')
        if answer != kind:
            raise XenstoreError(f'xenstored answered a message of type {answer}')
        return payload

    def _exactly(self, size):
        data = b''
        while len(data) < size:
            self.sock.settimeout(max(0.001, self.deadline - time.monotonic()))
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise XenstoreError('xenstored closed the connection')
            data += chunk
        return data


def published(domid, macs, path=SOCKET, timeout=TIMEOUT):
    """{mac: [(ip address, family)]} that domain `domid` published for its vifs of these MACs,
    as the guest agents write them. OSError when xenstored cannot be asked.

    Which vif number has which MAC is read from dom0's own backend entries (the guest cannot
    write there), not from anything the guest wrote."""
    found = {}
    with Xenstore(path, timeout) as store:
        for vif, mac in _vifs(store, domid).items():
            if mac not in macs:
                continue
            for family in FAMILIES:
                base = f'/local/domain/{int(domid)}/attr/vif/{int(vif)}/{family}'
                for slot in _slots(store.directory(base)):
                    address = _address(store.read(f'{base}/{slot}'), family)
                    if address is not None:
                        found.setdefault(mac, []).append((address, family))
    return found


def _vifs(store, domid):
    """{vif number: MAC} of the domain's network backends in dom0 (at most MAX_VIFS)."""
    base = f'/local/domain/0/backend/vif/{int(domid)}'
    vifs = {}
    for vif in _numbers(store.directory(base))[:MAX_VIFS]:
        mac = store.read(f'{base}/{vif}/mac')
        if mac is not None and len(mac) <= MAX_VALUE:
            vifs[vif] = mac.decode('ascii', 'replace').strip().lower()
    return vifs


def _slots(names):
    """The first MAX_SLOTS numeric slot names, in order; other names the guest wrote: skipped."""
    return _numbers(names)[:MAX_SLOTS]


def _numbers(names):
    return sorted(int(name) for name in names if name.isascii() and name.isdigit()
                  and len(name) <= 4)


def _address(value, family):
    """The address a guest wrote, if it is one of that family; None for anything else."""
    if value is None or len(value) > MAX_VALUE:
        return None
    try:
        address = ipaddress.ip_address(value.decode('ascii').strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return address if FAMILIES[address.version == 6] == family else None


def available(path=SOCKET):
    """Whether this host has xenstored's socket (a Xen dom0)."""
    return os.path.exists(path)
