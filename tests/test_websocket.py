"""The WebSocket handshake check and frame codec (RFC 6455), without a socket."""
import os
import struct

import pytest

from xend_rest.consoles import websocket
from xend_rest.consoles.websocket import (BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, Decoder,
                                          Frame, ProtocolError, encode)
from xend_rest.errors import HTTPError

MASK = b'\x37\xfa\x21\x3d'
KEY = 'dGhlIHNhbXBsZSBub25jZQ=='  # the example of RFC 6455 section 1.3


def client_frame(opcode, payload=b'', fin=True, mask=MASK, rsv=0):
    """A frame as a client sends it (masked), with the FIN and RSV bits under the test's control."""
    frame = bytearray(encode(opcode, payload, mask=mask) if mask else encode(opcode, payload))
    if not fin:
        frame[0] &= 0x7F
    frame[0] |= rsv
    return bytes(frame)


def upgrade_environ(**headers):
    environ = {'REQUEST_METHOD': 'GET', 'HTTP_CONNECTION': 'keep-alive, Upgrade',
               'HTTP_UPGRADE': 'websocket', 'HTTP_SEC_WEBSOCKET_VERSION': '13',
               'HTTP_SEC_WEBSOCKET_KEY': KEY}
    environ.update(headers)
    return {key: value for key, value in environ.items() if value is not None}


def test_the_accept_key_of_the_rfc_example():
    assert websocket.accept_key(KEY) == 's3pPLMBiTxaQ9kYGzzhZRbK+xOo='


def test_a_handshake_answers_the_accept_key():
    headers = dict(websocket.handshake(upgrade_environ()))
    assert headers == {'Upgrade': 'websocket', 'Connection': 'Upgrade',
                       'Sec-WebSocket-Accept': 's3pPLMBiTxaQ9kYGzzhZRbK+xOo='}


def test_the_binary_subprotocol_is_chosen_when_offered():
    headers = dict(websocket.handshake(upgrade_environ(HTTP_SEC_WEBSOCKET_PROTOCOL='base64, binary')))
    assert headers['Sec-WebSocket-Protocol'] == 'binary'
    assert 'Sec-WebSocket-Protocol' not in dict(websocket.handshake(
        upgrade_environ(HTTP_SEC_WEBSOCKET_PROTOCOL='chat')))


@pytest.mark.parametrize('headers', [
    {'REQUEST_METHOD': 'HEAD'},
    {'HTTP_UPGRADE': None},
    {'HTTP_CONNECTION': None},
    {'HTTP_CONNECTION': 'keep-alive'},
    {'HTTP_UPGRADE': 'h2c'},
])
def test_a_request_without_the_upgrade_is_426_naming_websocket(headers):
    with pytest.raises(HTTPError) as raised:
        websocket.handshake(upgrade_environ(**headers))
    assert raised.value.status == 426
    assert raised.value.code == 'upgrade_required'
    assert ('Upgrade', 'websocket') in raised.value.headers


def test_another_version_is_426_naming_version_13():
    with pytest.raises(HTTPError) as raised:
        websocket.handshake(upgrade_environ(HTTP_SEC_WEBSOCKET_VERSION='8'))
    assert raised.value.status == 426
    assert ('Sec-WebSocket-Version', '13') in raised.value.headers


@pytest.mark.parametrize('key', [None, '', 'not base64!', 'c2hvcnQ=', KEY + ', ' + KEY])
def test_a_bad_key_is_400(key):
    with pytest.raises(HTTPError) as raised:
        websocket.handshake(upgrade_environ(HTTP_SEC_WEBSOCKET_KEY=key))
    assert (raised.value.status, raised.value.code) == (400, 'bad_handshake')


@pytest.mark.parametrize('length', [0, 1, 125, 126, 65535, 65536, 1 << 20])
def test_binary_frames_of_every_length_encoding_round_trip(length):
    payload = os.urandom(length)
    assert Decoder().feed(client_frame(BINARY, payload)) == [Frame(BINARY, payload)]


def test_server_frames_are_unmasked_with_the_shortest_length():
    assert encode(BINARY, b'hi') == b'\x82\x02hi'
    assert encode(BINARY, b'x' * 126)[:4] == b'\x82\x7e\x00\x7e'
    assert encode(BINARY, b'x' * 65536)[:10] == b'\x82\x7f' + struct.pack('!Q', 65536)


def test_frames_arriving_a_byte_at_a_time_come_out_whole_and_in_order():
    stream = client_frame(TEXT, 'héllo'.encode()) + client_frame(PING, b'p') + client_frame(BINARY, b'\0\1')
    decoder, frames = Decoder(), []
    for i in range(len(stream)):
        frames += decoder.feed(stream[i:i + 1])
    assert frames == [Frame(TEXT, 'héllo'.encode()), Frame(PING, b'p'), Frame(BINARY, b'\0\1')]


def test_a_fragmented_message_is_assembled_around_a_control_frame():
    stream = (client_frame(TEXT, b'ab', fin=False) + client_frame(PING, b'x')
              + client_frame(CONTINUATION, b'cd', fin=False) + client_frame(CONTINUATION, b'ef'))
    assert Decoder().feed(stream) == [Frame(PING, b'x'), Frame(TEXT, b'abcdef')]


def test_a_character_split_across_fragments_is_valid_text():
    euro = '€'.encode()
    stream = client_frame(TEXT, euro[:1], fin=False) + client_frame(CONTINUATION, euro[1:])
    assert Decoder().feed(stream) == [Frame(TEXT, euro)]


@pytest.mark.parametrize('stream, code', [
    (client_frame(BINARY, b'x', mask=None), 1002),  # unmasked
    (client_frame(BINARY, b'x', rsv=0x40), 1002),  # reserved bit without an extension
    (client_frame(0x3, b'x'), 1002),  # reserved data opcode
    (client_frame(0xB, b'x'), 1002),  # reserved control opcode
    (client_frame(PING, b'x', fin=False), 1002),  # fragmented control frame
    (client_frame(PING, b'x' * 126), 1002),  # control frame over 125 bytes
    (client_frame(CONTINUATION, b'x'), 1002),  # nothing to continue
    (client_frame(TEXT, b'a', fin=False) + client_frame(BINARY, b'b'), 1002),  # interleaved
    (client_frame(TEXT, b'\xff'), 1007),
    (client_frame(TEXT, b'\xe2\x82'), 1007),  # a character cut at the end of the message
    (client_frame(TEXT, b'ok', fin=False) + client_frame(CONTINUATION, b'\xc0\xaf'), 1007),
])
def test_protocol_violations_close_with_their_code(stream, code):
    with pytest.raises(ProtocolError) as raised:
        Decoder().feed(stream)
    assert raised.value.code == code


def test_a_message_over_the_limit_is_1009_before_its_payload_arrives():
    head = client_frame(BINARY, b'x' * 2000)[:8]  # the length is known from the head alone
    with pytest.raises(ProtocolError) as raised:
        Decoder(max_message=1000).feed(head)
    assert raised.value.code == 1009


def test_the_limit_counts_every_fragment_of_a_message():
    decoder = Decoder(max_message=1000)
    assert decoder.feed(client_frame(BINARY, b'x' * 600, fin=False)) == []
    with pytest.raises(ProtocolError) as raised:
        decoder.feed(client_frame(CONTINUATION, b'x' * 600))
    assert raised.value.code == 1009


def test_the_default_limit_is_one_mebibyte():
    assert Decoder().feed(client_frame(BINARY, b'x' * (1 << 20)))[0].data == b'x' * (1 << 20)
    with pytest.raises(ProtocolError) as raised:
        Decoder().feed(client_frame(BINARY, b'x' * ((1 << 20) + 1))[:14])
    assert raised.value.code == 1009


def test_close_frames_carry_a_code_and_a_reason():
    frame = websocket.close_frame(1001, 'going away')
    assert frame == b'\x88\x0c\x03\xe9going away'
    payload = Decoder().feed(client_frame(CLOSE, frame[2:]))[0].data
    assert websocket.parse_close(payload) == (1001, 'going away')
    assert websocket.parse_close(b'') == (None, '')


def test_a_long_reason_is_cut_to_fit_a_control_frame_on_a_character_boundary():
    frame = websocket.close_frame(1000, 'é' * 100)
    assert len(frame) == 2 + 125 - 1  # 61 two-byte characters after the code
    assert websocket.parse_close(frame[2:])[1] == 'é' * 61


@pytest.mark.parametrize('payload, code', [
    (b'\x03', 1002),
    (struct.pack('!H', 999), 1002),
    (struct.pack('!H', 1005), 1002),  # "no code": never sent in a frame
    (struct.pack('!H', 1006), 1002),
    (struct.pack('!H', 2000), 1002),
    (struct.pack('!H', 5000), 1002),
    (struct.pack('!H', 1000) + b'\xff', 1007),
])
def test_bad_close_frames_are_protocol_errors(payload, code):
    with pytest.raises(ProtocolError) as raised:
        websocket.parse_close(payload)
    assert raised.value.code == code


def test_pong_frames_are_handed_over_like_pings():
    assert Decoder().feed(client_frame(PONG, b'x')) == [Frame(PONG, b'x')]
