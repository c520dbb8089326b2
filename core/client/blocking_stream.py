"""A p2p stream (or a direct TCP connection) used from the caller's thread with plain blocking socket calls.

hivemind opens every stream as its own unix-socket connection to the local p2p daemon (a direct
connection is a TCP socket to the server). Once open, :class:`BlockingStream` takes that socket away
from asyncio, so an inference step writes its frame and reads the answer directly from the thread
that asked for it: no hand-off to the event-loop thread and back, no tasks, one ``sendall`` and a
few ``recv_into`` per hop (benchmarks/README.md measures what that saves). Frames are hivemind's
(see :mod:`core.wire`).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

from google.protobuf.message import Message
from hivemind.p2p import P2P

from core.errors import RemoteCallError
from core.wire import END_OF_STREAM_FRAME, SMALL_FRAME_BYTES, M, check_frame_header, decode_frame

logger = logging.getLogger(__name__)


class BlockingStream:
    """One open stream to ``peer``; ``timeout`` bounds every send and receive (seconds)."""

    def __init__(self, sock: socket.socket, peer: str, timeout: float, pending: bytes = b"") -> None:
        self.sock, self.peer = sock, peer
        self.sock.settimeout(timeout)
        self._pending = bytearray(pending)  # bytes asyncio had already read, if any

    @classmethod
    async def detach(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                     timeout: float) -> "BlockingStream":
        """Take the socket of a just-opened asyncio stream (call on its event loop); asyncio lets go of it."""
        transport = writer.transport
        transport.pause_reading()
        pending = bytes(getattr(reader, "_buffer", b""))  # empty right after opening: the server has not answered
        sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        transport.close()  # closes asyncio's descriptor; the duplicate keeps the connection open
        return cls(sock, peer, timeout, pending)

    def write(self, message: Message) -> None:
        """Send one frame."""
        payload = message.SerializeToString()
        header = P2P.MESSAGE_MARKER + len(payload).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER)
        if len(payload) <= SMALL_FRAME_BYTES:
            self.sock.sendall(header + payload)  # one system call, one wake-up of the daemon
        else:
            self.sock.sendall(header)
            self.sock.sendall(payload)

    def read(self, message_type: type[M], max_bytes: int) -> M | None:
        """Receive one frame: the message, or ``None`` at the end of the stream. Cut-off, malformed or
        oversized answers and hivemind error frames raise :class:`RemoteCallError`."""
        header = self._receive(1 + P2P.HEADER_LEN, at_start=True)
        if header is None:
            return None
        marker = bytes(header[:1])
        payload = self._receive(check_frame_header(marker, bytes(header[1:]), self.peer, max_bytes))
        return decode_frame(marker, bytes(payload), message_type, self.peer)

    def _receive(self, size: int, at_start: bool = False) -> bytearray | None:
        """Exactly ``size`` bytes; ``None`` if the stream ended cleanly before the first of them (``at_start``)."""
        data = self._pending[:size]
        del self._pending[:size]
        buffer = bytearray(size)
        buffer[: len(data)] = data
        view, received = memoryview(buffer), len(data)
        while received < size:
            count = self.sock.recv_into(view[received:])
            if count == 0:
                if at_start and received == 0:
                    return None
                raise RemoteCallError(f"server {self.peer} closed the stream in the middle of an answer")
            received += count
        return buffer

    def close(self) -> None:
        """Say goodbye (the end-of-stream frame) and close the connection."""
        try:
            self.sock.sendall(END_OF_STREAM_FRAME)
        except OSError:
            pass  # the server is gone already
        finally:
            self.sock.close()
