"""Streaming RPCs with a size limit on every message, and a clear answer to malformed ones.

hivemind's own stream transport reads whatever length a frame header announces before looking at
it, and drops the connection without a word when the bytes are not a valid protobuf. Servers are
reached by strangers, so the block server serves its streaming RPCs (on p2p streams and on direct
connections alike) through :func:`make_bounded_stream_handler` instead. It speaks the same frame
format as hivemind's ``P2P.iterate_protobuf_handler`` (a marker byte, an 8-byte length, then the
payload), read and written by :mod:`core.frames` (its asyncio face); this module adds the server's
policies. It also:

- refuses a frame longer than ``max_message_bytes`` before reading its payload, then discards that
  payload as it arrives (never holding it), so the stream stays in step and the caller gets the answer;
- closes a stream on which no complete message arrives for ``idle_timeout`` seconds (a caller that
  sends half a frame and then nothing cannot hold the server's resources), and one whose caller reads
  no answer for as long (its handler is closed, so a session gives its KV cache back);
- turns an oversized frame, an unknown marker byte, bytes that are not the expected protobuf or a
  stalled frame into an :class:`InvalidRequestError` raised inside the handler's request iterator,
  so the handler answers the caller with the reason, as it answers any other bad request;
- stops handing requests over when the handler has finished, so a caller that keeps sending after
  the server's final answer cannot park a task on the server (hivemind's reader waits on a full
  queue forever);
- closes the stream only once the caller is done sending (its end-of-stream frame or its own close),
  waiting at most ``LINGER_SECONDS`` and dropping what arrives meanwhile. Closing (or half-closing)
  earlier makes the p2p daemons reset the stream now and then, and the caller loses the final answer
  still in its buffers.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing, closing
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from google.protobuf.message import Message
from hivemind.p2p import P2P, P2PContext
from hivemind.p2p.p2p_daemon_bindings.datastructures import StreamInfo

from core import frames
from core.errors import InvalidRequestError

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
StreamHandler = Callable[[AsyncIterator[M], P2PContext], AsyncIterator[Message]]

MAX_PREFETCH = 5
"""Requests read ahead of the handler; more wait in the connection (back-pressure on the sender)."""
LINGER_SECONDS = 2.0
"""After the last answer: how long to wait for the caller to finish sending before closing the stream."""


class OversizedFrameError(InvalidRequestError):
    """A frame whose header announces more bytes than the server takes; its payload is still unread."""

    def __init__(self, message: str, length: int):
        super().__init__(message)
        self.length = length


async def read_frame(reader: asyncio.StreamReader, message_type: type[M], max_message_bytes: int) -> M | None:
    """Read one frame: the message, or ``None`` for the caller's end-of-stream frame.

    Raises :class:`InvalidRequestError` for an oversized or malformed frame and
    ``asyncio.IncompleteReadError`` when the connection closes (mid-frame or between frames).
    """
    try:
        return await frames.read_frame(reader, message_type, max_message_bytes)
    except frames.ErrorFrameError:
        return None  # hivemind callers end their stream with an (empty) error frame; any error frame ends it
    except frames.BadMarkerError as error:
        raise InvalidRequestError(
            f"malformed stream frame (marker byte {error.marker!r}); the connection is out of step") from None
    except frames.FrameTooLargeError as error:
        raise OversizedFrameError(
            f"a message of {error.length} bytes is over this server's limit of {max_message_bytes} bytes; "
            f"send fewer tokens per step or split the request into a stream of smaller parts",
            error.length,
        ) from None
    except frames.UndecodableFrameError as error:
        raise InvalidRequestError(
            f"a {error.length}-byte message is not a valid {message_type.__name__} ({error.cause}); "
            f"the request is corrupt"
        ) from None


async def _linger(
    reader: asyncio.StreamReader, message_type: type[Message], max_message_bytes: int, unread_payload: int = 0
) -> None:
    """Drop ``unread_payload`` bytes (the rest of a refused oversized frame), then read and drop the caller's
    messages until its end-of-stream frame or close; all within ``LINGER_SECONDS``."""
    try:
        await asyncio.wait_for(
            _read_until_end(reader, message_type, max_message_bytes, unread_payload), LINGER_SECONDS)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, InvalidRequestError):
        pass  # out of time, closed, or garbage: close our side now


async def _read_until_end(
    reader: asyncio.StreamReader, message_type: type[Message], max_message_bytes: int, unread_payload: int
) -> None:
    while unread_payload > 0:  # discarded as it comes, never held: the caller may claim any length
        chunk = await reader.read(min(unread_payload, 1 << 16))
        if not chunk:
            return
        unread_payload -= len(chunk)
    while await read_frame(reader, message_type, max_message_bytes) is not None:
        pass


async def read_frame_within(
    reader: asyncio.StreamReader, message_type: type[M], max_message_bytes: int, idle_timeout: float
) -> M | None:
    """:func:`read_frame`, raising :class:`InvalidRequestError` if it takes over ``idle_timeout`` seconds."""
    try:
        async with asyncio.timeout(idle_timeout):  # a deadline on this task: no extra task per frame, unlike wait_for
            return await read_frame(reader, message_type, max_message_bytes)
    except TimeoutError:
        raise InvalidRequestError(
            f"no complete message arrived for {idle_timeout:g} s; this stream is closed (open a new one)"
        ) from None


class QueuedRequests:
    """A stream's requests as its handler iterates them: read from ``queue``, where each is a message, an
    :class:`InvalidRequestError` (raised here) or ``None`` (the caller's end). A handler that merges other
    messages into the stream (the steps another server pushes into a session) may put them into ``queue``."""

    def __init__(self, queue: asyncio.Queue) -> None:
        self.queue = queue
        self._ended = False

    def __aiter__(self) -> "QueuedRequests":
        return self

    async def __anext__(self) -> Message:
        item = None if self._ended else await self.queue.get()
        if item is None:
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, InvalidRequestError):
            raise item
        return item


@dataclass(frozen=True)
class _FeedEnd:
    """How the caller's side of a stream ended: it left (closed or died), said goodbye, or sent a frame that
    was refused (``unread_payload``: bytes of a refused oversized frame still to be skipped)."""

    left: bool = False
    said_goodbye: bool = False
    unread_payload: int = 0


async def _feed(
    reader: asyncio.StreamReader, inbox: asyncio.Queue, message_type: type[Message], max_message_bytes: int,
    idle_timeout: float,
) -> _FeedEnd:
    """Read the caller's frames into ``inbox`` (waiting for room: back-pressure) until its end-of-stream frame,
    a bad frame or its disconnection; one task for the whole stream."""
    while True:
        try:
            item: Message | InvalidRequestError | None = await read_frame_within(
                reader, message_type, max_message_bytes, idle_timeout)
        except (asyncio.IncompleteReadError, OSError):  # OSError: a hang-up, or a broken TLS record (ssl.SSLError)
            return _FeedEnd(left=True)
        except InvalidRequestError as error:
            item = error
        await inbox.put(item)
        if item is None:
            return _FeedEnd(said_goodbye=True)
        if isinstance(item, InvalidRequestError):  # nothing more is read: the handler answers with the reason
            return _FeedEnd(unread_payload=item.length if isinstance(item, OversizedFrameError) else 0)


def make_bounded_stream_handler(
    p2p: P2P, name: str, handler: StreamHandler, message_type: type[Message], max_message_bytes: int,
    idle_timeout: float,
) -> Callable[[StreamInfo, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """The binary stream handler that feeds parsed, size-checked requests to ``handler``."""

    async def handle(stream_info: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        context = P2PContext(handle_name=name, local_id=p2p.peer_id, remote_id=stream_info.peer_id)
        inbox: asyncio.Queue[Message | InvalidRequestError | None] = asyncio.Queue(MAX_PREFETCH)

        async def respond() -> None:
            # aclosing: a handler stopped early (the caller left, the stream was cancelled while an answer was being
            # written) runs its cleanup now, freeing what it holds (a session's KV-cache reservation), instead of
            # whenever the garbage collector finalizes it
            async with aclosing(handler(QueuedRequests(inbox), context)) as responses:
                async for response in responses:
                    try:
                        frames.write_message(writer, response)
                        async with asyncio.timeout(idle_timeout):  # a caller that stops reading is gone too
                            await writer.drain()
                    except Exception:  # the caller went away (or reads nothing); it learns nothing more
                        logger.debug("Could not send a response on %s to %s", name, stream_info.peer_id,
                                     exc_info=True)
                        return

        with closing(writer):
            responding = asyncio.create_task(respond())
            feeding = asyncio.create_task(_feed(reader, inbox, message_type, max_message_bytes, idle_timeout))
            try:
                await asyncio.wait({responding, feeding}, return_when=asyncio.FIRST_COMPLETED)
                unread_payload = 0
                if feeding.done():
                    end = feeding.result()
                    if end.left:
                        return  # the handler is cancelled below
                    await responding  # the caller is done sending (or sent garbage): let the handler finish
                    if end.said_goodbye:
                        return
                    unread_payload = end.unread_payload
                else:  # the handler finished first: stop handing requests over
                    feeding.cancel()
                    await asyncio.gather(feeding, return_exceptions=True)
                    if not responding.cancelled() and responding.exception() is not None:  # else lost unseen
                        logger.warning("Stream %s from %s failed", name, stream_info.peer_id,
                                       exc_info=responding.exception())
                await _linger(reader, message_type, max_message_bytes, unread_payload)
            except asyncio.CancelledError:
                # the server is stopping; ending quietly keeps asyncio from logging the cancelled connection
                logger.debug("Stream %s from %s cut by the server's shutdown", name, stream_info.peer_id)
            except Exception:
                logger.warning("Stream %s from %s failed", name, stream_info.peer_id, exc_info=True)
            finally:
                for task in (feeding, responding):
                    if not task.done():
                        task.cancel()
                await asyncio.gather(feeding, responding, return_exceptions=True)

    return handle

