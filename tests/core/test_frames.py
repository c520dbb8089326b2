"""Stream frames: one codec, read and written the same way by its asyncio and blocking-socket faces."""
from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from hivemind.p2p import P2P
from hivemind.proto import runtime_pb2
from hivemind.proto.p2pd_pb2 import RPCError

from core import frames, wire
from core.errors import RemoteCallError
from core.frames import END_OF_STREAM_FRAME, SMALL_FRAME_BYTES

LIMIT = 4 * SMALL_FRAME_BYTES
SMALL = runtime_pb2.ExpertRequest(uid="model.0", metadata=b"\x80")
LARGE = runtime_pb2.ExpertRequest(uid="model.1", metadata=bytes(2 * SMALL_FRAME_BYTES))  # written as header + payload


def _frame(payload: bytes, marker: bytes = P2P.MESSAGE_MARKER, length: int | None = None) -> bytes:
    """A frame built by hand, the way hivemind writes it."""
    return marker + (len(payload) if length is None else length).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER) + payload


class _Writer:
    """Collects what is written, like an asyncio StreamWriter."""

    def __init__(self) -> None:
        self.data, self.writes = bytearray(), 0

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes += 1


def _async_read(data: bytes, read, eof: bool = True):
    async def scenario():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        return await read(reader)

    return asyncio.run(scenario())


def _socket_read(data: bytes, read, pending: bytes = b"", close: bool = True):
    """``read(sock, pending)`` on one end of a socketpair after ``data`` was sent on the other."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(5)
        sender = threading.Thread(target=theirs.sendall, args=(data,))  # large frames exceed the socket buffer
        sender.start()
        try:
            if close:
                sender.join()
                theirs.shutdown(socket.SHUT_WR)
            return read(ours, bytearray(pending))
        finally:
            sender.join()


def test_the_format_is_hivemind_s() -> None:
    assert frames.encode_frame(SMALL) == (_frame(SMALL.SerializeToString()),)  # one write for a small frame
    assert frames.encode_frame(LARGE) == (_frame(b"", length=LARGE.ByteSize()), LARGE.SerializeToString())
    assert _frame(b"", P2P.ERROR_MARKER) == END_OF_STREAM_FRAME
    assert wire.END_OF_STREAM_FRAME is END_OF_STREAM_FRAME and wire.read_message is frames.read_message
    assert wire.write_message is frames.write_message  # old import paths keep working


@pytest.mark.parametrize("message", [SMALL, LARGE], ids=["small", "large"])
def test_round_trip_through_the_asyncio_face(message: runtime_pb2.ExpertRequest) -> None:
    writer = _Writer()
    frames.write_message(writer, message)
    frames.write_message(writer, SMALL)
    assert writer.writes == (1 if message is SMALL else 2) + 1
    data = bytes(writer.data) + END_OF_STREAM_FRAME

    async def read_all(reader):
        return [await frames.read_message(reader, runtime_pb2.ExpertRequest, "peer", LIMIT) for _ in range(4)]

    assert _async_read(data, read_all) == [message, SMALL, None, None]  # then the goodbye, then the close


@pytest.mark.parametrize("message", [SMALL, LARGE], ids=["small", "large"])
def test_round_trip_through_the_socket_face(message: runtime_pb2.ExpertRequest) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(5)
        sender = threading.Thread(target=lambda: (frames.send_message(theirs, message), frames.send_message(theirs, SMALL),
                                                  theirs.sendall(END_OF_STREAM_FRAME), theirs.shutdown(socket.SHUT_WR)))
        sender.start()
        pending = bytearray()
        got = [frames.recv_message(ours, runtime_pb2.ExpertRequest, "peer", LIMIT, pending) for _ in range(4)]
        sender.join()
    assert got == [message, SMALL, None, None]


def test_the_faces_read_each_other() -> None:
    writer = _Writer()
    frames.write_message(writer, LARGE)
    got = _socket_read(bytes(writer.data), lambda sock, pending: frames.recv_frame(
        sock, runtime_pb2.ExpertRequest, LIMIT, pending))
    assert got == LARGE


def test_bytes_read_before_the_socket_was_taken_over_come_first() -> None:
    data = _frame(SMALL.SerializeToString())
    got = _socket_read(data[5:], lambda sock, pending: (
        frames.recv_frame(sock, runtime_pb2.ExpertRequest, LIMIT, pending), bytes(pending)), pending=data[:5])
    assert got == (SMALL, b"")


def test_an_oversized_header_is_refused_before_its_payload_is_read() -> None:
    header = _frame(b"", length=LIMIT + 1)  # no payload and no EOF: reading it would wait forever

    async def read(reader):
        return await frames.read_frame(reader, runtime_pb2.ExpertRequest, LIMIT)

    with pytest.raises(frames.FrameTooLargeError) as refused:
        _async_read(header, read, eof=False)
    assert (refused.value.length, refused.value.limit) == (LIMIT + 1, LIMIT)
    with pytest.raises(frames.FrameTooLargeError):
        _socket_read(header, lambda sock, pending: frames.recv_frame(
            sock, runtime_pb2.ExpertRequest, LIMIT, pending), close=False)
    with pytest.raises(RemoteCallError, match=rf"server peer sent a malformed frame \(marker b'\\x00', {LIMIT + 1} bytes\)"):
        _socket_read(header, lambda sock, pending: frames.recv_message(
            sock, runtime_pb2.ExpertRequest, "peer", LIMIT, pending), close=False)


def test_an_error_frame_is_decoded_as_the_error() -> None:
    data = _frame(RPCError(message="handler exploded").SerializeToString(), P2P.ERROR_MARKER)
    with pytest.raises(frames.ErrorFrameError) as raised:
        frames.decode_payload(data[:1], data[9:], runtime_pb2.ExpertResponse)
    assert raised.value.message == "handler exploded"
    with pytest.raises(RemoteCallError, match="server peer failed: handler exploded"):
        _async_read(data, lambda reader: frames.read_message(reader, runtime_pb2.ExpertResponse, "peer", LIMIT))
    with pytest.raises(RemoteCallError, match="server peer failed: handler exploded"):
        _socket_read(data, lambda sock, pending: frames.recv_message(
            sock, runtime_pb2.ExpertResponse, "peer", LIMIT, pending))


def test_end_of_stream_frame_and_clean_close_versus_a_cut() -> None:
    assert frames.decode_payload(END_OF_STREAM_FRAME[:1], b"", runtime_pb2.ExpertResponse) is None

    async def raw(reader):
        return await frames.read_frame(reader, runtime_pb2.ExpertResponse, LIMIT)

    assert _async_read(END_OF_STREAM_FRAME, raw) is None
    with pytest.raises(frames.StreamEndedError):  # closed between frames: a clean end
        _async_read(b"", raw)
    with pytest.raises(asyncio.IncompleteReadError) as cut:  # closed inside one
        _async_read(_frame(b"abcdef")[:-2], raw)
    assert not isinstance(cut.value, frames.StreamEndedError)
    with pytest.raises(frames.StreamEndedError):
        _socket_read(b"", lambda sock, pending: frames.recv_frame(sock, runtime_pb2.ExpertResponse, LIMIT, pending))
    for truncated in (_frame(b"abcdef")[:-2], P2P.MESSAGE_MARKER + b"\x00\x00"):
        with pytest.raises(RemoteCallError, match="closed the stream in the middle of an answer"):
            _socket_read(truncated, lambda sock, pending: frames.recv_message(
                sock, runtime_pb2.ExpertResponse, "peer", LIMIT, pending))
        with pytest.raises(RemoteCallError, match="closed the stream in the middle of an answer"):
            _async_read(truncated, lambda reader: frames.read_message(
                reader, runtime_pb2.ExpertResponse, "peer", LIMIT))


def test_malformed_frames_are_typed_errors() -> None:
    async def raw(reader):
        return await frames.read_frame(reader, runtime_pb2.ExpertRequest, LIMIT)

    with pytest.raises(frames.BadMarkerError):
        _async_read(b"\x07", raw, eof=False)  # refused from the marker alone
    with pytest.raises(frames.UndecodableFrameError, match="a 6-byte payload is not a valid ExpertRequest"):
        _async_read(_frame(b"\xff" * 6), raw)
    with pytest.raises(RemoteCallError, match="server peer sent an answer that is not a valid ExpertRequest"):
        _socket_read(_frame(b"\xff" * 6), lambda sock, pending: frames.recv_message(
            sock, runtime_pb2.ExpertRequest, "peer", LIMIT, pending))
    with pytest.raises(RemoteCallError, match=r"server peer sent a malformed frame \(marker b'\\x07'"):
        _socket_read(b"\x07" + bytes(8), lambda sock, pending: frames.recv_message(
            sock, runtime_pb2.ExpertRequest, "peer", LIMIT, pending))
