"""Keeps a client's view of which servers hold which blocks, and makes the calls to them.

Route choice is delegated to :mod:`core.client.routing` (pure); this module adds the DHT look-ups,
bans of failing servers and the forward/backward RPCs with streaming for large tensors.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Sequence

import hivemind
import torch
from hivemind.p2p import P2P
from hivemind.proto import runtime_pb2

from core.client.routing import RouteMode, make_route, uncovered_blocks
from core.client.blocking_stream import BlockingStream
from core.transports import (
    DIRECT_RETRY_AFTER,
    RELAY_RETRY_AFTER,
    Stream,
    connect_direct_blocking,
    open_direct_stream,
    open_p2p_stream,
    open_relay_circuit,
)
from core.config import ClientConfig
from core.dht.node import p2p_replica
from core.dht.records import compute_spans, get_block_servers
from core.dht.schema import RemoteSpanInfo, block_key
from core.direct_protocol import DirectEndpoint, may_connect_directly
from core.errors import (
    BlossomError,
    MissingBlocksError,
    RemoteCallError,
    ServerFullError,
    SessionExpiredError,
    UnknownBlocksError,
)
from core.network import call_unary, ping_many
from core.push_protocol import PushTarget
from core.relay_protocol import Reachability
from core.utils.cooldown import Cooldowns
from core.utils.event_loop import shared_loop
from core.wire import (
    END_OF_STREAM_FRAME,
    deserialize_tensors,
    pack_metadata,
    raise_if_error,
    read_message,
    serialize_tensors,
    should_stream,
    write_message,
)

logger = logging.getLogger(__name__)

MAX_RESPONSE_ELEMENTS = 2**31
MAX_RESPONSE_BYTES = 2**31  # protobuf's own limit on one message
PING_TIMEOUT = 3.0
WAIT_NOTICE_PERIOD = 5.0  # seconds between the lines that say a route waits for missing blocks
UNREACHABLE_COST = 10.0  # seconds charged for a hop to a server that did not answer a ping
PUSH_RETRY_AFTER = 300.0
"""Seconds a client carries a link's steps itself after its first server could not push to the next one."""


def is_retriable(error: BaseException) -> bool:
    """Failures worth trying on another server: lost connections, timeouts, full servers, server faults,
    servers that no longer hold the blocks (they moved; the client's view of the swarm was stale),
    and sessions a server closed for idleness (replayed, on the same server if it is still best).

    Errors a server returned about the request itself (bad shapes, too long...) are not: another
    server would say the same.
    """
    if isinstance(error, BlossomError):
        return type(error) in (RemoteCallError, ServerFullError, SessionExpiredError, UnknownBlocksError, BlossomError)
    return isinstance(error, Exception)


class RemoteSequenceManager:
    """Routes and calls for blocks ``[0, total_blocks)`` of the model named ``dht_prefix``."""

    def __init__(self, dht: hivemind.DHT, dht_prefix: str, total_blocks: int, config: ClientConfig) -> None:
        self.dht, self.dht_prefix, self.total_blocks, self.config = dht, dht_prefix, total_blocks, config
        self.loop = shared_loop()
        self._spans: list[RemoteSpanInfo] = []
        self._updated_at = 0.0
        self._banned_until: dict[str, float] = {}
        self._ban_counts: dict[str, int] = {}
        self._failed_records: dict[str, float] = {}  # peer id -> announced_at of its record when it failed
        self._view_is_stale = False  # a server failed: read the swarm again before choosing another
        self._lock = threading.Lock()
        self._p2p: P2P | None = None
        self.pings: dict[str, float] = {}  # peer id -> measured round trip (s), refreshed with the spans
        self.direct_failures: Cooldowns[DirectEndpoint] = Cooldowns(DIRECT_RETRY_AFTER)  # direct ports: p2p meanwhile
        self.relay_failures: Cooldowns[str] = Cooldowns(RELAY_RETRY_AFTER)  # relay peer ids: tried last meanwhile
        self.push_failures: Cooldowns[tuple[str, str]] = Cooldowns(PUSH_RETRY_AFTER)  # (server, next): not pushed

    # ---- swarm view -------------------------------------------------------------------------
    def update(self) -> list[RemoteSpanInfo]:
        """Read every block's servers from the DHT now (bounded by ``lookup_timeout``)."""
        servers = get_block_servers(self.dht, self.dht_prefix, range(self.total_blocks),
                                    timeout=self.config.lookup_timeout)
        spans = compute_spans(servers)
        with self._lock:
            self._spans, self._updated_at, self._view_is_stale = spans, time.monotonic(), False
        self._forget_recovered(spans)
        self._measure_pings(spans)
        return spans

    def _measure_pings(self, spans: list[RemoteSpanInfo]) -> None:
        """Round trips to the servers in ``spans`` (in parallel), through their relays for relayed ones;
        unreachable ones get a prohibitive cost."""
        relayed = {span.peer_id: span for span in spans if self.is_relayed(span)}
        peers = sorted({span.peer_id for span in spans} - set(relayed))
        if not peers and not relayed:
            return
        try:
            measured = self.loop.run(self._ping(peers, list(relayed.values())), timeout=2 * PING_TIMEOUT + 5)
        except Exception:
            logger.debug("Measuring pings failed", exc_info=True)
            return
        self.pings = {peer: measured.get(peer, UNREACHABLE_COST) for peer in [*peers, *relayed]}

    async def _ping(self, peers: list[str], relayed: list[RemoteSpanInfo]) -> dict[str, float]:
        direct, *through_relays = await asyncio.gather(
            ping_many(await self.get_p2p(), peers, timeout=PING_TIMEOUT),
            *(self._ping_relayed(span) for span in relayed))
        direct.update({span.peer_id: rtt for span, rtt in zip(relayed, through_relays) if rtt is not None})
        return direct

    async def _ping_relayed(self, span: RemoteSpanInfo) -> float | None:
        """Round trip of one step's worth of talk with a relayed server over an open circuit (what each
        inference step costs through the relay), or ``None`` if no relay took us there."""
        try:
            async with asyncio.timeout(2 * PING_TIMEOUT):
                reader, writer = await self.open_relayed_stream(span, "rpc_info_stream")
                try:
                    best = None
                    for _ in range(2):
                        began = time.perf_counter()
                        write_message(writer, runtime_pb2.ExpertRequest())
                        await writer.drain()
                        if await read_message(reader, runtime_pb2.ExpertResponse, span.peer_id, 2**20) is None:
                            return None
                        best = min(best or float("inf"), time.perf_counter() - began)
                    writer.write(END_OF_STREAM_FRAME)
                    return best
                finally:
                    writer.close()
        except Exception as error:
            logger.debug("No ping through the relays of %s: %s", span.peer_id, error)
            return None

    def spans(self) -> list[RemoteSpanInfo]:
        """The known spans, refreshed when older than ``update_period`` or after a server failed."""
        if self._view_is_stale or not self._spans or time.monotonic() - self._updated_at > self.config.update_period:
            return self.update()
        return self._spans

    def banned(self) -> set[str]:
        """Servers to avoid now: banned ones, and failed ones whose record was not announced again since.

        A server killed without notice leaves its record in the DHT until it expires; once its ban runs
        out, only a newer announcement (the server is back) makes it a first choice again.
        """
        return self._banned_now() | set(self._failed_records)

    def _banned_now(self) -> set[str]:
        now = time.monotonic()
        return {peer for peer, until in self._banned_until.items() if until > now}

    def ban(self, peer_id: str, reason: BaseException | str) -> None:
        """Avoid ``peer_id`` for a while (repeated failures double the time) and read the swarm again
        before the next choice, so that servers that joined meanwhile are candidates."""
        count = self._ban_counts.get(peer_id, 0) + 1
        self._ban_counts[peer_id] = count
        duration = self.config.ban_timeout * 2 ** (count - 1)
        self._banned_until[peer_id] = time.monotonic() + duration
        with self._lock:
            announced = [span.server_info.announced_at for span in self._spans if span.peer_id == peer_id]
            self._failed_records[peer_id] = max(announced, default=0.0)
            self._view_is_stale = True
        logger.warning("Avoiding server %s for %.0f s: %s", peer_id, duration, reason)

    def _forget_recovered(self, spans: list[RemoteSpanInfo]) -> None:
        """Failed servers that announced themselves again (or vanished from the DHT) are judged afresh."""
        announced: dict[str, float] = {}
        for span in spans:
            announced[span.peer_id] = max(announced.get(span.peer_id, 0.0), span.server_info.announced_at)
        with self._lock:
            for peer_id, seen in list(self._failed_records.items()):
                if peer_id not in announced or announced[peer_id] > seen:
                    del self._failed_records[peer_id]

    def make_route(self, start: int, end: int, mode: RouteMode = "throughput") -> list[RemoteSpanInfo]:
        """A chain of servers for blocks ``[start, end)``; waits up to ``connect_timeout`` for missing blocks.

        ``mode="latency"`` for inference sessions (fewest seconds per token, using measured pings),
        ``"throughput"`` for forward/backward (load spread by throughput); see :mod:`core.client.routing`.
        """
        deadline = time.monotonic() + self.config.connect_timeout
        spans = self.spans()
        delay, next_notice = 0.25, time.monotonic()
        push = mode == "latency" and self.config.push_between_servers
        while True:
            try:
                return make_route(spans, start, end, banned=self.banned(), dht_prefix=self.dht_prefix, mode=mode,
                                  pings=self.pings, push=push)
            except MissingBlocksError as error:
                if self.banned() and not uncovered_blocks(spans, start, end):
                    if time.monotonic() - self._updated_at > 1.0:
                        spans = self.update()  # servers may have joined since the view was read
                        continue
                    logger.info("Only recently failed servers hold blocks %d..%d; trying them again", start, end - 1)
                    try:  # those whose ban ran out first, then any
                        return make_route(spans, start, end, banned=self._banned_now(), dht_prefix=self.dht_prefix,
                                          mode=mode, pings=self.pings, push=push)
                    except MissingBlocksError:
                        return make_route(spans, start, end, dht_prefix=self.dht_prefix, mode=mode, pings=self.pings,
                                          push=push)
                if time.monotonic() >= deadline:
                    usable = [s for s in spans if s.peer_id not in self.banned()]
                    raise MissingBlocksError(uncovered_blocks(usable, start, end), self.dht_prefix,
                                             self.config.connect_timeout) from None
                if time.monotonic() >= next_notice:  # a wait a person sees, even where logging is not set up
                    waited = self.config.connect_timeout - (deadline - time.monotonic())
                    logger.warning("Waiting for servers (%.0f s of at most %.0f s): %s", waited,
                                   self.config.connect_timeout, error)
                    next_notice = time.monotonic() + WAIT_NOTICE_PERIOD
                time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 2, 5.0)
                spans = self.update()

    # ---- calls ------------------------------------------------------------------------------
    async def get_p2p(self) -> P2P:
        if self._p2p is None:
            self._p2p = await p2p_replica(self.dht)
        return self._p2p

    @staticmethod
    def is_relayed(span: RemoteSpanInfo) -> bool:
        """Whether clients reach ``span``'s server only through its relays (it announced so)."""
        return span.server_info.reachability == Reachability.RELAYED.value and bool(span.server_info.relays)

    def span_uid(self, start: int, end: int) -> str:
        return " ".join(block_key(self.dht_prefix, index) for index in range(start, end))

    def may_push(self, peer_id: str, next_peer_id: str) -> bool:
        """Whether to ask ``peer_id`` to push to ``next_peer_id`` (not if it could not, lately)."""
        return not self.push_failures.cooling((peer_id, next_peer_id))

    def push_failed(self, peer_id: str, next_peer_id: str) -> None:
        """Carry that link's steps for a while: every session would otherwise wait for the push to fail again."""
        self.push_failures.failed((peer_id, next_peer_id))

    def push_target(self, span: RemoteSpanInfo, session_id: str) -> PushTarget:
        """How the server before ``span`` in a chain reaches ``span``'s session ``session_id`` to push into it: the
        direct endpoint it announced (unless this client dials no direct ports; the pushing server decides whether
        it can dial it), its relays if it is relayed, else p2p."""
        endpoint = span.server_info.direct_endpoint
        if self.config.direct_connections == "never" or self.is_relayed(span):
            endpoint = None
        return PushTarget(span.peer_id, session_id, str(endpoint) if endpoint else "",
                          tuple(span.server_info.relays) if self.is_relayed(span) else (),
                          endpoint.fingerprint if endpoint else "")

    # ---- direct connections (servers' direct ports: core.server.direct, core.direct_protocol) ---------
    def direct_endpoint(self, span: RemoteSpanInfo) -> DirectEndpoint | None:
        """Where to reach ``span``'s server directly, if it offers it, can be dialled (it is not relayed), did not
        fail us there before and this client's policy allows it."""
        endpoint = span.server_info.direct_endpoint
        if endpoint is None or self.is_relayed(span) or self.direct_failures.cooling(endpoint) \
                or not may_connect_directly(endpoint.host, self.config.direct_connections):
            return None
        return endpoint

    def direct_failed(self, span: RemoteSpanInfo, endpoint: DirectEndpoint, error: BaseException) -> None:
        """Use p2p for this server for a while (or until it announces another endpoint)."""
        logger.info("No direct connection to %s at %s (%s: %s); using p2p for %.0f s", span.peer_id, endpoint,
                    type(error).__name__, error, DIRECT_RETRY_AFTER)
        self.direct_failures.failed(endpoint)

    async def open_call_stream(self, span: RemoteSpanInfo, method: str) -> Stream:
        """A stream to ``span``'s server's ``method``: direct when offered and allowed, else (or if that fails)
        through its relays when it is relayed, else p2p (see :mod:`core.client.transports`)."""
        endpoint = self.direct_endpoint(span)
        if endpoint is not None:
            try:
                return await open_direct_stream(endpoint, span.peer_id, method)
            except (OSError, asyncio.TimeoutError, RemoteCallError) as error:
                self.direct_failed(span, endpoint, error)
        return await self._open_daemon_stream(span, method)

    async def open_blocking_stream(self, span: RemoteSpanInfo, method: str) -> BlockingStream:
        """:meth:`open_call_stream` for a caller that then writes and reads with blocking calls from its own
        thread (an inference session): a direct connection is made in a worker thread, a daemon stream is
        opened on the event loop and its socket taken from asyncio."""
        timeout = self.config.request_timeout
        endpoint = self.direct_endpoint(span)
        if endpoint is not None:
            connecting = asyncio.ensure_future(
                asyncio.to_thread(connect_direct_blocking, endpoint, span.peer_id, method))
            try:
                return BlockingStream(await asyncio.shield(connecting), span.peer_id, timeout)
            except asyncio.CancelledError:
                connecting.add_done_callback(_close_unclaimed)  # the thread still runs: close what it brings
                raise
            except (OSError, RemoteCallError) as error:
                self.direct_failed(span, endpoint, error)
        reader, writer = await self._open_daemon_stream(span, method)
        return await BlockingStream.detach(reader, writer, span.peer_id, timeout)

    async def _open_daemon_stream(self, span: RemoteSpanInfo, method: str) -> Stream:
        """Through the p2p daemons: via the server's relays if it is relayed, else a p2p stream."""
        if self.is_relayed(span):
            return await self.open_relayed_stream(span, method)
        return await open_p2p_stream(await self.get_p2p(), span.peer_id, method)

    async def open_relayed_stream(self, span: RemoteSpanInfo, method: str) -> Stream:
        """A circuit to ``span``'s server through the first of its relays that takes us there."""
        reasons = []
        relays = sorted(span.server_info.relays, key=self.relay_failures.cooling)
        for relay in relays:
            try:
                return await open_relay_circuit(await self.get_p2p(), relay, span.peer_id, method)
            except Exception as error:
                logger.info("Relay %s did not take us to %s: %s", relay, span.peer_id, error)
                self.relay_failures.failed(relay)
                reasons.append(f"{relay}: {error or type(error).__name__}")
        raise RemoteCallError(f"server {span.peer_id} is reachable only through relays, and none took us there: "
                              + "; ".join(reasons))

    async def _call(
        self, span: RemoteSpanInfo, method: str, tensors: Sequence[torch.Tensor], metadata: dict[str, Any] | None = None
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        uid = self.span_uid(span.start, span.end)
        timeout = self.config.request_timeout
        packed = pack_metadata(metadata) if metadata else b""
        request = runtime_pb2.ExpertRequest(uid=uid, tensors=serialize_tensors(tensors), metadata=packed)
        if should_stream(tensors) or self.direct_endpoint(span) is not None or self.is_relayed(span):
            # one request frame, one answer frame (see BlockRequestHandler.rpc_forward_stream)
            reader, writer = await self.open_call_stream(span, f"{method}_stream")
            try:
                write_message(writer, request)
                writer.write(END_OF_STREAM_FRAME)
                await writer.drain()
                async with asyncio.timeout(timeout):
                    response = await read_message(reader, runtime_pb2.ExpertResponse, span.peer_id, MAX_RESPONSE_BYTES)
            finally:
                writer.close()
            if response is None:
                raise RemoteCallError(f"server {span.peer_id} closed the stream without answering {method}")
        else:
            response = await call_unary(await self.get_p2p(), span.peer_id, method, request, timeout)
        answered = raise_if_error(response, span.peer_id)
        return deserialize_tensors(list(response.tensors), MAX_RESPONSE_ELEMENTS), answered

    def call(
        self, span: RemoteSpanInfo, method: str, tensors: Sequence[torch.Tensor], metadata: dict[str, Any] | None = None
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Call ``rpc_forward`` / ``rpc_backward`` of ``span``'s server and wait for the answer: every tensor
        answered and the answer's metadata (e.g. ``{"graph_id": ...}``). ``metadata`` goes with the request
        (e.g. ``{"prompts": True}``). The one way to call a server: the transport (a unary p2p call for small
        tensors, else a stream: direct, through a relay, or p2p) is chosen here. Connection failures become
        :class:`RemoteCallError`; a server's typed error is raised as that type."""
        try:
            return self.loop.run(self._call(span, method, tensors, metadata), timeout=self.config.request_timeout + 5)
        except BlossomError:
            raise
        except Exception as error:
            raise RemoteCallError(f"server {span.peer_id} (blocks {span.start}..{span.end - 1}) failed: "
                                  f"{type(error).__name__}: {error}") from error


def _close_unclaimed(connecting: asyncio.Future) -> None:
    """Close the socket a direct connect made for a caller that stopped waiting for it."""
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().close()
