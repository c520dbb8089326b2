"""The server's side of server-to-server push (see :mod:`core.push_protocol` for what travels).

- :class:`SessionDirectory` files the inference sessions that take pushed inputs under their client-made
  ids; ``rpc_push`` hands each pushed step to its session's inbox. A push may overtake the client's
  opening message to that server (it travels client -> A -> B, the opening client -> B), so a push for an
  id not filed yet waits for it, up to :data:`SESSION_WAIT_SECONDS`.
- :class:`Pusher` keeps, per session, one open ``rpc_push`` stream to each next server and writes the
  session's outputs into it. Any failure (nobody at that address, the stream broke) is returned as a
  reason instead of raised: the session then answers ``pushed: False`` and the client forwards the
  output itself, so a push that fails costs a fallback, never the step.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Callable

import torch
from hivemind.p2p import P2P
from hivemind.proto import runtime_pb2

from core import frames
from core.direct_protocol import DirectEndpoint, direct_endpoint, may_connect_directly
from core.errors import InvalidRequestError
from core.push_protocol import PUSH_METHOD, PushTarget, route_to_wire
from core.transports import (
    DIRECT_RETRY_AFTER, RELAY_RETRY_AFTER, Stream, open_direct_stream, open_p2p_stream, open_relay_circuit,
)
from core.utils.cooldown import Cooldowns
from core.wire import pack_metadata, serialize_tensors

logger = logging.getLogger(__name__)

SESSION_WAIT_SECONDS = 10.0
"""How long a pushed step waits for the client's opening message of its session to arrive."""
INBOX_SIZE = 8
"""Steps a session holds unread (pushed or sent by its client) when its stream brings no queue of its own; a
served stream's queue (``bounded_streams.MAX_PREFETCH`` steps) is used as it is. More wait in their streams."""
PUSH_OPEN_TIMEOUT = 20.0
"""Seconds to open a push stream to the next server (a dial, or a relay circuit) before falling back."""
PUSH_WRITE_TIMEOUT = 10.0
"""Seconds one pushed step may take to leave (a stalled next server makes the session fall back)."""
REMEMBERED_ENDED = 1024


class SessionDirectory:
    """Inboxes of the open sessions that take pushed steps, by session id (one per server)."""

    def __init__(self) -> None:
        self._inboxes: dict[str, asyncio.Queue] = {}
        self._ended: collections.deque[str] = collections.deque(maxlen=REMEMBERED_ENDED)
        self._waiting: dict[str, list[asyncio.Future]] = {}  # pushes that came before their session was opened

    def register(self, session_id: str, inbox: asyncio.Queue | None = None) -> asyncio.Queue:
        """File ``inbox`` (default: a new one) under ``session_id``; :class:`InvalidRequestError` if that id is in
        use."""
        if session_id in self._inboxes or session_id in self._ended:
            raise InvalidRequestError("this session_id is already used on this server; make a new one per session")
        if inbox is None:
            inbox = asyncio.Queue(INBOX_SIZE)
        self._inboxes[session_id] = inbox
        for waiter in self._waiting.pop(session_id, []):
            if not waiter.done():
                waiter.set_result(None)
        return inbox

    def unregister(self, session_id: str) -> None:
        self._inboxes.pop(session_id, None)
        self._ended.append(session_id)

    async def deliver(self, session_id: str, request: runtime_pb2.ExpertRequest) -> None:
        """Put a pushed step into its session's inbox, waiting (bounded) for the session to be opened and for
        room in its inbox; :class:`InvalidRequestError` saying which wait ran out."""
        if session_id not in self._inboxes:
            if session_id in self._ended:
                raise InvalidRequestError(f"session {session_id} has ended on this server")
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(session_id, []).append(waiter)
            try:
                await asyncio.wait_for(waiter, SESSION_WAIT_SECONDS)
            except asyncio.TimeoutError:
                raise InvalidRequestError(f"no session {session_id} was opened on this server within "
                                          f"{SESSION_WAIT_SECONDS:g} s of a step pushed to it") from None
            finally:
                waiters = self._waiting.get(session_id, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._waiting.pop(session_id, None)
        inbox = self._inboxes.get(session_id)
        if inbox is None:
            raise InvalidRequestError(f"session {session_id} has ended on this server")
        try:
            async with asyncio.timeout(PUSH_WRITE_TIMEOUT):  # no extra task per step, unlike wait_for
                await inbox.put(request)
        except TimeoutError:
            raise InvalidRequestError(f"session {session_id} took no new step for {PUSH_WRITE_TIMEOUT:g} s") from None


class Pusher:
    """Writes sessions' outputs into the next servers' sessions; one stream per (session, next session)."""

    def __init__(self, get_p2p: Callable[[], P2P | None]) -> None:
        self._get_p2p = get_p2p
        self._streams: dict[tuple[str, str, str], Stream] = {}
        self._relay_failures: Cooldowns[str] = Cooldowns(RELAY_RETRY_AFTER)  # relays that failed: tried last
        self._direct_failures: Cooldowns[DirectEndpoint] = Cooldowns(DIRECT_RETRY_AFTER)  # direct ports: skipped

    async def push(self, owner: str, target: PushTarget, rest: list[PushTarget], output: torch.Tensor,
                   position: int) -> str | None:
        """Send ``output`` (the step starting at ``position``) to ``target`` with the ``rest`` of the route;
        ``None`` once it is written, else why it could not be."""
        key = (owner, target.peer_id, target.session_id)
        metadata = {"session_id": target.session_id, "start_from_position": position}
        if rest:
            metadata["route"] = route_to_wire(rest)
        message = runtime_pb2.ExpertRequest(tensors=serialize_tensors([output]), metadata=pack_metadata(metadata))
        try:
            stream = self._streams.get(key)
            if stream is not None and _is_broken(stream):
                self._close(key)
                stream = None
            if stream is None:
                stream = await asyncio.wait_for(self._open(target), PUSH_OPEN_TIMEOUT)
                self._streams[key] = stream
            _, writer = stream
            frames.write_message(writer, message)
            if writer.transport.get_write_buffer_size() or writer.is_closing():  # not all of it left at once
                async with asyncio.timeout(PUSH_WRITE_TIMEOUT):
                    await writer.drain()
            return None
        except Exception as error:
            self._close(key)
            reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            logger.info("Could not push to %s (the client will forward instead): %s", target.peer_id, reason)
            return reason

    async def _open(self, target: PushTarget) -> Stream:
        """Direct when the next server's direct port is on this machine or its networks, else through its
        relays, else p2p."""
        endpoint = direct_endpoint(target.direct_address, target.direct_fingerprint)
        if endpoint is not None and may_connect_directly(endpoint.host, "private") \
                and not self._direct_failures.cooling(endpoint):
            try:
                return await open_direct_stream(endpoint, target.peer_id, PUSH_METHOD)
            except Exception as error:
                logger.debug("No direct push to %s at %s: %s", target.peer_id, endpoint, error)
                self._direct_failures.failed(endpoint)
        p2p = self._get_p2p()
        if p2p is None:
            raise ConnectionError("this server has no p2p node to push through")
        for relay in sorted(target.relays, key=self._relay_failures.cooling):
            try:
                return await open_relay_circuit(p2p, relay, target.peer_id, PUSH_METHOD)
            except Exception as error:
                logger.debug("Relay %s did not take a push to %s: %s", relay, target.peer_id, error)
                self._relay_failures.failed(relay)
        return await open_p2p_stream(p2p, target.peer_id, PUSH_METHOD)

    def close(self, owner: str) -> None:
        """End every push stream of session ``owner`` (its next servers' sessions go on with their clients)."""
        for key in [key for key in self._streams if key[0] == owner]:
            self._close(key)

    def _close(self, key: tuple[str, str, str]) -> None:
        stream = self._streams.pop(key, None)
        if stream is not None:
            _, writer = stream
            try:
                writer.write(frames.END_OF_STREAM_FRAME)
            except Exception:
                pass
            writer.close()


def _is_broken(stream: Stream) -> bool:
    """Whether the next server ended a push stream or answered on it (it answers only to refuse)."""
    reader, writer = stream
    return reader.at_eof() or bool(getattr(reader, "_buffer", b"")) or writer.is_closing()
