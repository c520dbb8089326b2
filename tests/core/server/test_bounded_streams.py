"""Stream frames are size-checked from their header and malformed ones become typed errors."""
from __future__ import annotations

import asyncio

import pytest
from hivemind.p2p import P2P
from hivemind.proto import runtime_pb2

from core.errors import InvalidRequestError
from core.server.bounded_streams import LINGER_SECONDS, make_bounded_stream_handler, read_frame, read_frame_within

LIMIT = 1000


def _frame(payload: bytes, marker: bytes = P2P.MESSAGE_MARKER, length: int | None = None) -> bytes:
    return marker + (len(payload) if length is None else length).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER) + payload


def _read(data: bytes, eof: bool = True) -> runtime_pb2.ExpertRequest | None:
    async def scenario() -> runtime_pb2.ExpertRequest | None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        return await read_frame(reader, runtime_pb2.ExpertRequest, LIMIT)

    return asyncio.run(scenario())


def test_a_valid_frame_and_the_end_of_stream_frame() -> None:
    request = runtime_pb2.ExpertRequest(uid="model.0", metadata=b"\x80")
    assert _read(_frame(request.SerializeToString())) == request
    assert _read(_frame(b"", P2P.ERROR_MARKER)) is None  # what hivemind callers send last


def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    # only the header has arrived (no EOF): reading the announced payload would wait forever
    with pytest.raises(InvalidRequestError, match=r"a message of 1001 bytes is over this server's limit of 1000"):
        _read(_frame(b"", length=LIMIT + 1), eof=False)
    with pytest.raises(InvalidRequestError, match=r"a message of 18446744073709551615 bytes"):
        _read(_frame(b"", length=2**64 - 1), eof=False)


def test_malformed_frames_are_typed_errors() -> None:
    with pytest.raises(InvalidRequestError, match=r"malformed stream frame \(marker byte b'\\x07'\)"):
        _read(b"\x07" + bytes(8))
    with pytest.raises(InvalidRequestError, match=r"a 6-byte message is not a valid ExpertRequest"):
        _read(_frame(b"\xff\xff\xff\xff\xff\xff"))


def test_truncated_frames_read_as_a_closed_connection() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        _read(_frame(b"abcdef")[:-2])
    with pytest.raises(asyncio.IncompleteReadError):
        _read(P2P.MESSAGE_MARKER + b"\x00\x00")


def test_a_stalled_frame_times_out_with_a_typed_error() -> None:
    async def scenario() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(_frame(b"abcdef")[:-3])  # half a message, then nothing
        await read_frame_within(reader, runtime_pb2.ExpertRequest, LIMIT, idle_timeout=0.2)

    with pytest.raises(InvalidRequestError, match=r"no complete message arrived for 0.2 s; this stream is closed"):
        asyncio.run(scenario())


class _Writer:
    """Collects what the handler writes, like the StreamWriter of a p2p stream."""

    def __init__(self) -> None:
        self.data, self.closed = bytearray(), False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_after_an_oversized_frame_its_payload_is_skipped_and_the_goodbye_read() -> None:
    """The caller still writing its oversized payload must not see the stream cut (the p2p daemons would
    reset it and the answer would be lost): the server answers, drops the payload, reads the goodbye, closes."""

    async def handler(requests, context):
        try:
            async for _ in requests:
                pass
        except InvalidRequestError as error:
            yield runtime_pb2.ExpertResponse(metadata=str(error).encode())

    async def scenario() -> tuple[_Writer, float, bytes]:
        p2p = type("FakeP2P", (), {"peer_id": "server"})()
        handle = make_bounded_stream_handler(p2p, "rpc", handler, runtime_pb2.ExpertRequest, LIMIT, idle_timeout=5)
        reader, writer = asyncio.StreamReader(), _Writer()
        reader.feed_data(_frame(bytes(50 * LIMIT)) + _frame(b"", P2P.ERROR_MARKER))  # no EOF: the caller waits
        started = asyncio.get_running_loop().time()
        await handle(type("Info", (), {"peer_id": "caller"})(), reader, writer)
        took = asyncio.get_running_loop().time() - started
        reader.feed_eof()
        return writer, took, await reader.read()

    writer, took, unread = asyncio.run(scenario())
    assert b"a message of 50000 bytes is over this server's limit of 1000 bytes" in writer.data
    assert writer.closed
    assert unread == b""  # payload and goodbye were both consumed, so the stream was in step when it closed
    assert took < LINGER_SECONDS  # ended by the goodbye frame, not by running out of patience


class _StuckWriter(_Writer):
    """A stream whose caller reads nothing: every write fills buffers that never empty."""

    async def drain(self) -> None:
        await asyncio.Event().wait()


def test_a_caller_that_reads_no_answers_is_let_go_and_its_handler_cleans_up() -> None:
    """Sending steps and never reading the answers must not hold a session (and its KV cache) forever."""
    cleaned_up = []

    async def handler(requests, context):
        try:
            async for _ in requests:
                yield runtime_pb2.ExpertResponse()
        finally:
            cleaned_up.append(True)

    async def scenario() -> float:
        p2p = type("FakeP2P", (), {"peer_id": "server"})()
        handle = make_bounded_stream_handler(p2p, "rpc", handler, runtime_pb2.ExpertRequest, LIMIT, idle_timeout=0.3)
        reader, writer = asyncio.StreamReader(), _StuckWriter()
        reader.feed_data(_frame(runtime_pb2.ExpertRequest(uid="step").SerializeToString()) * 3)  # no goodbye, no EOF
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(handle(type("Info", (), {"peer_id": "caller"})(), reader, writer), 10)
        return asyncio.get_running_loop().time() - started

    took = asyncio.run(scenario())
    assert cleaned_up == [True]
    assert took < 5
