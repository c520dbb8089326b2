"""Stream frames, the one place that knows their format: a marker byte, an 8-byte length, the payload.

This is the format hivemind's stream handlers speak (``P2P.MESSAGE_MARKER`` / ``P2P.ERROR_MARKER``,
``P2P.HEADER_LEN`` bytes of big-endian length), used on p2p streams, direct connections and relayed
ones alike. A message frame carries a serialized protobuf; an error frame carries hivemind's
``RPCError``, and an empty error frame is how a caller ends its side of a stream.

Layers, from the bytes up:

- the format: :func:`encode_header`, :func:`encode_frame`, :data:`END_OF_STREAM_FRAME`;
  :func:`check_marker`, :func:`payload_length` (the size limit, checked from the header before any
  payload is read) and :func:`decode_payload` (a message, ``None`` for an end-of-stream frame, or a
  :class:`FrameError`);
- two faces over it, one per kind of I/O: asyncio streams (:func:`read_frame`, :func:`write_message`)
  and blocking sockets (:func:`recv_frame`, :func:`send_message`). Both raise the neutral
  :class:`FrameError`\\ s, :class:`StreamEndedError` when the stream closes between frames and
  ``asyncio.IncompleteReadError`` when it closes inside one;
- a client's wording of a server's broken answer as :class:`RemoteCallError` (worth retrying
  elsewhere): :func:`read_message` and :func:`recv_message`. The server words a caller's broken
  request its own way (:mod:`core.server.bounded_streams`).
"""
from __future__ import annotations

import asyncio
import socket
from typing import TypeVar

from google.protobuf.message import Message
from hivemind.p2p import P2P
from hivemind.proto.p2pd_pb2 import RPCError

from core.errors import RemoteCallError

M = TypeVar("M", bound=Message)

MESSAGE_MARKER: bytes = P2P.MESSAGE_MARKER
ERROR_MARKER: bytes = P2P.ERROR_MARKER
LENGTH_BYTES: int = P2P.HEADER_LEN
HEADER_BYTES = 1 + LENGTH_BYTES
SMALL_FRAME_BYTES = 64 * 2**10  # frames up to this size are joined into one write (one syscall, one wake-up)


# ---- the format ---------------------------------------------------------------------------------
def encode_header(length: int, marker: bytes = MESSAGE_MARKER) -> bytes:
    """The header of a frame whose payload is ``length`` bytes."""
    return marker + length.to_bytes(LENGTH_BYTES, P2P.BYTEORDER)


END_OF_STREAM_FRAME = encode_header(0, ERROR_MARKER)
"""What hivemind callers send to end their side of a stream (an empty error frame); servers read it as the end."""


def encode_frame(message: Message) -> tuple[bytes, ...]:
    """The bytes of ``message``'s frame, in the writes to make: one for a small frame, header and payload
    for a large one (never copied into one buffer)."""
    payload = message.SerializeToString()
    header = encode_header(len(payload))
    return (header + payload,) if len(payload) <= SMALL_FRAME_BYTES else (header, payload)


class FrameError(Exception):
    """A frame that breaks the format or carries the peer's error; each side words it its own way."""


class BadMarkerError(FrameError):
    """The first byte of a frame is neither marker: the stream is out of step."""

    def __init__(self, marker: bytes) -> None:
        super().__init__(f"bad frame marker {marker!r}")
        self.marker = marker


class FrameTooLargeError(FrameError):
    """A header announces more bytes than the reader takes; the payload has not been read."""

    def __init__(self, marker: bytes, length: int, limit: int) -> None:
        super().__init__(f"a frame of {length} bytes is over the limit of {limit}")
        self.marker, self.length, self.limit = marker, length, limit


class ErrorFrameError(FrameError):
    """A non-empty error frame: the peer's ``RPCError`` (hivemind's own stream handlers send these)."""

    def __init__(self, payload: bytes) -> None:
        super().__init__("error frame")
        self.payload = payload

    @property
    def message(self) -> str:
        """The peer's error message."""
        return RPCError.FromString(self.payload).message


class UndecodableFrameError(FrameError):
    """A message frame whose payload is not the expected protobuf."""

    def __init__(self, message_type: type[Message], length: int, cause: Exception) -> None:
        super().__init__(f"a {length}-byte payload is not a valid {message_type.__name__} ({cause})")
        self.message_type, self.length, self.cause = message_type, length, cause


class StreamEndedError(asyncio.IncompleteReadError):
    """The stream closed between frames (no byte of a next frame arrived): a clean end, not a cut."""

    def __init__(self, partial: bytes = b"", expected: int = HEADER_BYTES) -> None:
        super().__init__(partial, expected)


def check_marker(marker: bytes) -> None:
    """:class:`BadMarkerError` unless ``marker`` starts a message or an error frame."""
    if marker not in (MESSAGE_MARKER, ERROR_MARKER):
        raise BadMarkerError(bytes(marker))


def payload_length(marker: bytes, length_bytes: bytes, max_bytes: int) -> int:
    """The payload length a header announces; :class:`FrameTooLargeError` if it is over ``max_bytes``."""
    length = int.from_bytes(length_bytes, P2P.BYTEORDER)
    if length > max_bytes:
        raise FrameTooLargeError(bytes(marker), length, max_bytes)
    return length


def decode_payload(marker: bytes, payload: bytes, message_type: type[M]) -> M | None:
    """A frame's message; ``None`` for an end-of-stream frame; :class:`ErrorFrameError` for an error frame
    with a payload, :class:`UndecodableFrameError` for a payload that is not a ``message_type``."""
    if marker == ERROR_MARKER:
        if not payload:
            return None
        raise ErrorFrameError(payload)
    try:
        return message_type.FromString(payload)
    except Exception as error:  # protobuf raises DecodeError and others on bytes that are not the message
        raise UndecodableFrameError(message_type, len(payload), error) from error


# ---- asyncio face -------------------------------------------------------------------------------
async def read_frame(reader: asyncio.StreamReader, message_type: type[M], max_bytes: int) -> M | None:
    """Read one frame (see :func:`decode_payload`). The marker is checked as soon as it arrives and the
    size from the header alone, before any payload is read."""
    try:
        marker = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        raise StreamEndedError() from None
    check_marker(marker)
    length = payload_length(marker, await reader.readexactly(LENGTH_BYTES), max_bytes)
    return decode_payload(marker, await reader.readexactly(length), message_type)


def write_message(writer: asyncio.StreamWriter, message: Message) -> None:
    """Queue one message frame (see :func:`encode_frame`); the caller drains when it wants to wait."""
    for part in encode_frame(message):
        writer.write(part)


# ---- blocking-socket face -----------------------------------------------------------------------
def recv_frame(sock: socket.socket, message_type: type[M], max_bytes: int, pending: bytearray) -> M | None:
    """Receive one frame (see :func:`decode_payload`): the header in one go, then the payload.

    ``pending`` holds bytes already read from ``sock`` (by asyncio, before the socket was taken over);
    they are used first and consumed.
    """
    header = _recv_exactly(sock, HEADER_BYTES, pending, at_start=True)
    marker = bytes(header[:1])
    check_marker(marker)
    length = payload_length(marker, bytes(header[1:]), max_bytes)
    return decode_payload(marker, bytes(_recv_exactly(sock, length, pending)), message_type)


def send_message(sock: socket.socket, message: Message) -> None:
    """Send one message frame (see :func:`encode_frame`)."""
    for part in encode_frame(message):
        sock.sendall(part)


def _recv_exactly(sock: socket.socket, size: int, pending: bytearray, at_start: bool = False) -> bytearray:
    """Exactly ``size`` bytes, ``pending`` first; :class:`StreamEndedError` if the stream ended before the
    first of them (``at_start``), ``asyncio.IncompleteReadError`` if it ended after some."""
    data = pending[:size]
    del pending[:size]
    buffer = bytearray(size)
    buffer[: len(data)] = data
    view, received = memoryview(buffer), len(data)
    while received < size:
        count = sock.recv_into(view[received:])
        if count == 0:
            if at_start and received == 0:
                raise StreamEndedError()
            raise asyncio.IncompleteReadError(bytes(buffer[:received]), size)
        received += count
    return buffer


# ---- a client reading a server's answers ----------------------------------------------------------
def answer_error(error: FrameError | asyncio.IncompleteReadError, peer: str) -> RemoteCallError:
    """How a client words a broken answer from server ``peer`` (a :class:`RemoteCallError`: retry elsewhere)."""
    if isinstance(error, ErrorFrameError):
        return RemoteCallError(f"server {peer} failed: {error.message}")
    if isinstance(error, UndecodableFrameError):
        return RemoteCallError(f"server {peer} sent an answer that is not a valid {error.message_type.__name__}")
    if isinstance(error, FrameTooLargeError):
        return RemoteCallError(f"server {peer} sent a malformed frame (marker {error.marker!r}, {error.length} bytes)")
    if isinstance(error, BadMarkerError):
        return RemoteCallError(f"server {peer} sent a malformed frame (marker {error.marker!r})")
    return RemoteCallError(f"server {peer} closed the stream in the middle of an answer")


async def read_message(reader: asyncio.StreamReader, message_type: type[M], peer: str, max_bytes: int) -> M | None:
    """Read one answer frame (asyncio); ``None`` at the end of the stream (closed, or its end-of-stream frame).

    An answer that is cut off, malformed or over ``max_bytes``, and an error frame from hivemind's own
    stream handlers, raise :class:`RemoteCallError` (worth retrying elsewhere).
    """
    try:
        return await read_frame(reader, message_type, max_bytes)
    except StreamEndedError:
        return None
    except (FrameError, asyncio.IncompleteReadError) as error:
        raise answer_error(error, peer) from error


def recv_message(
    sock: socket.socket, message_type: type[M], peer: str, max_bytes: int, pending: bytearray
) -> M | None:
    """:func:`read_message` on a blocking socket (see :func:`recv_frame` for ``pending``)."""
    try:
        return recv_frame(sock, message_type, max_bytes, pending)
    except StreamEndedError:
        return None
    except (FrameError, asyncio.IncompleteReadError) as error:
        raise answer_error(error, peer) from error
