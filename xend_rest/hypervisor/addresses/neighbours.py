"""dom0's neighbour table (IPv4 ARP and IPv6 neighbour discovery), read over rtnetlink.

A guest appears here only after it talked to one of dom0's own addresses on that link: a bridge
without an address of dom0's learns nobody. The kernel's answer is bounded (bytes, entries, time).
"""
import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NDA_DST, NDA_LLADDR = 1, 2
NLMSG_HEADER = struct.Struct('=IHHII')  # length, type, flags, sequence, port id
NDMSG = struct.Struct('=BxxxiHBB')  # family, (padding), interface index, state, flags, type
RTATTR = struct.Struct('=HH')  # length, type
# States in which the kernel vouches for the entry (not INCOMPLETE, FAILED or NOARP).
NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE, NUD_PERMANENT = 0x02, 0x04, 0x08, 0x10, 0x80
USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT
FAMILIES = {socket.AF_INET: 'ipv4', socket.AF_INET6: 'ipv6'}
MAX_BYTES = 8 << 20  # of the kernel's answer: ~100,000 entries, far beyond any dom0's
TIMEOUT = 2.0  # seconds for the whole dump


class Neighbour:
    """One usable entry: an IP address, the link-layer address behind it, the interface index."""
    __slots__ = ('address', 'family', 'mac', 'ifindex')

    def __init__(self, address, family, mac, ifindex):
        self.address, self.family, self.mac, self.ifindex = address, family, mac, ifindex

    def __repr__(self):
        return f'<Neighbour {self.address} at {self.mac} on {self.ifindex}>'


def neighbours(timeout=TIMEOUT):
    """Every usable IPv4 and IPv6 entry of the neighbour table of our network namespace.

    OSError when netlink is not available (a sandbox without AF_NETLINK) or does not answer."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_ROUTE) as sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        sequence = int.from_bytes(os.urandom(4), 'little')
        request = NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(request), RTM_GETNEIGH,
                                    NLM_F_REQUEST | NLM_F_DUMP, sequence, 0) + request)
        found, received = [], 0
        while True:
            data = sock.recv(1 << 16)
            received += len(data)
            if received > MAX_BYTES:
                raise OSError('the neighbour table is larger than we read')
            done, entries = parse_messages(data, sequence)
            found.extend(entries)
            if done:
                return found


def parse_messages(data, sequence):
    """(done, [Neighbour]) from one datagram of the dump; messages of another sequence are
    skipped. ValueError for a message that does not fit in the datagram."""
    entries, offset = [], 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _flags, seq, _port = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > len(data):
            raise ValueError('a netlink message longer than its datagram')
        body = data[offset + NLMSG_HEADER.size:offset + length]
        offset += _aligned(length)
        if seq != sequence:
            continue
        if kind == NLMSG_DONE:
            return True, entries
        if kind == NLMSG_ERROR:
            error = -struct.unpack_from('=i', body)[0] if len(body) >= 4 else 0
            if error:
                raise OSError(error, os.strerror(error))
            continue
        if kind == RTM_NEWNEIGH:
            entry = parse_neighbour(body)
            if entry is not None:
                entries.append(entry)
    return False, entries


def parse_neighbour(body):
    """The Neighbour an RTM_NEWNEIGH body describes; None for one we do not report (another
    family, an unusable state, no address or no link-layer address)."""
    if len(body) < NDMSG.size:
        return None
    family, ifindex, state, _flags, _kind = NDMSG.unpack_from(body)
    if family not in FAMILIES or not state & USABLE:
        return None
    attributes = dict(_attributes(body, NDMSG.size))
    dst, lladdr = attributes.get(NDA_DST), attributes.get(NDA_LLADDR)
    if dst is None or lladdr is None or len(lladdr) != 6:
        return None
    try:
        address = ipaddress.ip_address(dst)
    except ValueError:
        return None
    return Neighbour(address, FAMILIES[family], ':'.join(f'{byte:02x}' for byte in lladdr),
                     ifindex)


def _attributes(body, offset):
    while offset + RTATTR.size <= len(body):
        length, kind = RTATTR.unpack_from(body, offset)
        if length < RTATTR.size or offset + length > len(body):
            return
        yield kind, body[offset + RTATTR.size:offset + length]
        offset += _aligned(length)


def _aligned(length):
    return (length + 3) & ~3
