"""The xenstore client's bounds, against a stand-in xenstored speaking the wire format over a unix
socket. This proves only how untrusted answers are parsed; the Xen tier (tests/xen) proves the
client against the real xenstored and a guest that writes its own keys."""
import socket
import struct
import threading

import pytest

from xend_rest.hypervisor.addresses import xenstore

HEADER = struct.Struct('=IIII')
XS_DIRECTORY, XS_READ, XS_ERROR = 1, 2, 16
HOME = '/local/domain/7'
BACKEND = '/local/domain/0/backend/vif/7'  # dom0's: which vif has which MAC
MAC0, MAC1, MAC2 = '00:16:3e:00:00:a0', '00:16:3e:00:00:a1', '00:16:3e:00:00:a2'
VIFS = {f'{BACKEND}/0/mac': MAC0, f'{BACKEND}/1/mac': MAC1.upper(), f'{BACKEND}/2/mac': MAC2}


class FakeXenstored:
    """Answers XS_READ and XS_DIRECTORY from a dict of paths; `answer` may be replaced to
    misbehave. Records every path asked."""

    def __init__(self, path, store):
        self.store, self.asked = store, []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def answer(self, kind, request_id, path):
        if kind == XS_READ and path in self.store:
            return HEADER.pack(XS_READ, request_id, 0, len(self.store[path])) + self.store[path]
        children = sorted({key[len(path) + 1:].split('/')[0] for key in self.store
                           if key.startswith(path + '/')})
        if kind == XS_DIRECTORY and children:
            payload = b''.join(name.encode() + b'\0' for name in children)
            return HEADER.pack(XS_DIRECTORY, request_id, 0, len(payload)) + payload
        return HEADER.pack(XS_ERROR, request_id, 0, 7) + b'ENOENT\0'

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                while True:
                    head = conn.recv(HEADER.size, socket.MSG_WAITALL)
                    if len(head) < HEADER.size:
                        break
                    kind, request_id, _tx, length = HEADER.unpack(head)
                    path = conn.recv(length, socket.MSG_WAITALL).rstrip(b'\0').decode()
                    self.asked.append(path)
                    conn.sendall(self.answer(kind, request_id, path))

    def close(self):
        self.listener.close()


@pytest.fixture
def xenstored(tmp_path):
    servers = []

    def start(store):
        server = FakeXenstored(tmp_path / 'socket', {key: value.encode() if isinstance(value, str)
                                                    else value for key, value in store.items()})
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.close()


def published(tmp_path, macs=(MAC0,)):
    return {mac: [(str(address), family) for address, family in found]
            for mac, found in xenstore.published(7, set(macs), str(tmp_path / 'socket')).items()}


def test_the_agents_keys_are_read_for_the_vifs_asked(xenstored, tmp_path):
    server = xenstored({**VIFS, f'{HOME}/attr/vif/0/ipv4/0': '10.0.0.5',
                        f'{HOME}/attr/vif/0/ipv4/1': '10.0.0.6',
                        f'{HOME}/attr/vif/0/ipv6/0': '2001:db8::5',
                        f'{HOME}/attr/vif/1/ipv4/0': '10.1.0.5',
                        f'{HOME}/attr/vif/2/ipv4/0': '10.2.0.5',
                        f'{HOME}/attr/vif/3/ipv4/0': '10.3.0.5',  # no such vif in dom0
                        '/local/domain/8/attr/vif/0/ipv4/0': '10.8.0.5'})
    assert published(tmp_path, (MAC0, MAC1)) == {
        MAC0: [('10.0.0.5', 'ipv4'), ('10.0.0.6', 'ipv4'), ('2001:db8::5', 'ipv6')],
        MAC1: [('10.1.0.5', 'ipv4')]}
    # dom0's backend entries, then only that domain's own keys for the vifs asked
    assert all(path.startswith((BACKEND, f'{HOME}/attr/vif/0/', f'{HOME}/attr/vif/1/'))
               for path in server.asked)


def test_what_is_not_an_address_of_its_family_is_skipped(xenstored, tmp_path):
    base = f'{HOME}/attr/vif/0'
    xenstored({**VIFS, f'{base}/ipv4/0': '10.0.0.5 ', f'{base}/ipv4/1': 'not an address',
               f'{base}/ipv4/2': '2001:db8::1', f'{base}/ipv4/3': b'\xff\xfe',
               f'{base}/ipv4/4': '1' * 200, f'{base}/ipv4/x': '10.0.0.9',
               f'{base}/ipv4/-1': '10.0.0.10', f'{base}/ipv6/0': '10.0.0.11',
               f'{base}/ipv6/1': 'fe80::1%eth0', f'{base}/ipv4/12345': '10.0.0.12'})
    assert published(tmp_path) == {MAC0: [('10.0.0.5', 'ipv4'), ('fe80::1%eth0', 'ipv6')]}


def test_at_most_sixteen_slots_are_read(xenstored, tmp_path):
    server = xenstored({**VIFS, **{f'{HOME}/attr/vif/0/ipv4/{slot}': f'10.0.0.{slot}'
                                   for slot in range(40)}})
    assert [address for address, _ in published(tmp_path)[MAC0]] == [f'10.0.0.{slot}'
                                                                     for slot in range(16)]
    assert len([path for path in server.asked if '/ipv4/' in path]) == 16


def test_a_guest_without_backend_vifs_is_asked_nothing_more(xenstored, tmp_path):
    server = xenstored({f'{HOME}/attr/vif/0/ipv4/0': '10.0.0.5'})
    assert published(tmp_path) == {}
    assert server.asked == [BACKEND]


def test_an_answer_longer_than_the_protocol_allows_is_refused(xenstored, tmp_path):
    server = xenstored({})
    server.answer = lambda kind, request_id, path: HEADER.pack(kind, request_id, 0, 1 << 20)
    with pytest.raises(xenstore.XenstoreError, match='more than its protocol allows'):
        published(tmp_path)


def test_an_answer_to_another_request_is_refused(xenstored, tmp_path):
    server = xenstored({})
    server.answer = lambda kind, request_id, path: HEADER.pack(kind, request_id + 1, 0, 0)
    with pytest.raises(xenstore.XenstoreError, match='another request'):
        published(tmp_path)


def test_a_silent_xenstored_costs_the_timeout(xenstored, tmp_path):
    server = xenstored({})
    server.answer = lambda kind, request_id, path: b''
    with pytest.raises(OSError):
        xenstore.published(7, (0,), str(tmp_path / 'socket'), timeout=0.3)


def test_no_xenstored_is_an_oserror(tmp_path):
    with pytest.raises(OSError):
        published(tmp_path)
