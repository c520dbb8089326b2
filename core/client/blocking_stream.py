"""A p2p stream (or a direct connection) used from the caller's thread with plain blocking socket calls.

hivemind opens every stream as its own unix-socket connection to the local p2p daemon; once open,
:class:`BlockingStream` takes that socket away from asyncio (a direct connection is made as a
blocking socket, TLS or local, in the first place: :func:`core.transports.connect_direct_blocking`). So an
inference step writes its frame and reads the answer directly from the thread that asked for it: no
hand-off to the event-loop thread and back, no tasks, one ``sendall`` and a few ``recv_into`` per hop
(benchmarks/README.md measures what that saves). Frames are hivemind's, written and read by
:mod:`core.frames` (its blocking-socket face); this class owns the socket.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

from google.protobuf.message import Message

from core.frames import END_OF_STREAM_FRAME, M, recv_message, send_message

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
        """Send one frame (a small one in one system call: one wake-up of the daemon)."""
        send_message(self.sock, message)

    def read(self, message_type: type[M], max_bytes: int) -> M | None:
        """Receive one frame: the message, or ``None`` at the end of the stream. Cut-off, malformed or
        oversized answers and hivemind error frames raise :class:`RemoteCallError`."""
        return recv_message(self.sock, message_type, self.peer, max_bytes, self._pending)

    def close(self) -> None:
        """Say goodbye (the end-of-stream frame) and close the connection."""
        try:
            self.sock.sendall(END_OF_STREAM_FRAME)
        except OSError:
            pass  # the server is gone already
        finally:
            self.sock.close()
