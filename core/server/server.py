"""The block server's lifecycle: join the DHT, choose and load blocks, serve RPCs, announce, move, shut down."""
from __future__ import annotations

import dataclasses
import logging
import random
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import hivemind
import torch
from hivemind.utils import get_dht_time

from core import __version__
from core.config import ServerConfig
from core.convert import load_blocks, load_manifest
from core.convert.manifest import Manifest
from core.dht.identity import owner_subkey
from core.dht.node import create_dht
from core.dht.records import compute_spans, get_block_servers
from core.dht.schema import ModelInfo, RemoteSpanInfo, ServerInfo, ServerState
from core.direct_protocol import DIRECT_METHODS
from core.direct_tls import make_server_certificate
from core.errors import InvalidRequestError
from core.relay_protocol import MAX_RELAYS_ANNOUNCED, Reachability
from core.models.registry import family_for_config, get_family
from core.server.announcer import Announcer
from core.server.backend import SpanBackend, SpanLimits, kv_bytes_per_token
from core.server.block_selection import choose_best_start, claim_is_contested
from core.server.direct import DirectListener, direct_hosts
from core.server.handler import BlockRequestHandler
from core.server.memory_cache import KVCacheBudget
from core.network import measure_upload, ping_many
from core.server.placement import quantize_linear_layers, resolve_device, resolve_dtype
from core.server.reachability import ReachabilityKeeper, ReachabilityStatus, helpers_are_local, peer_ids_of
from core.server.rebalancer import Rebalancer
from core.server.relay import RelayService
from core.server.stats import ServingStats
from core.server.throughput import Throughput, ThroughputCache, combine, compute_speed, network_rps
from core.utils.event_loop import EventLoopThread
from core.utils.heartbeat import still_working
from core.utils.paths import blossom_home

logger = logging.getLogger(__name__)

DEFAULT_CACHE_TOKENS = 16384  # KV budget when none is given: this many tokens through the whole span
CLAIM_SETTLE_SECONDS = (1.0, 1.5)  # how long a JOINING claim waits for rival claims (random in this range)
MAX_CLAIM_ROUNDS = 4
ACTIVE_STATES = frozenset({ServerState.ONLINE, ServerState.JOINING})


@dataclass(frozen=True)
class ServerStatus:
    """A snapshot of a running server."""

    dht_prefix: str
    start_block: int
    end_block: int
    total_blocks: int
    torch_dtype: str
    device: str
    throughput: float
    addresses: tuple[str, ...]
    peer_id: str = ""
    reachability: str = ""
    """How clients reach this server, in one line (:meth:`ReachabilityStatus.describe`)."""


class BlockServer:
    """A server holding consecutive blocks of one converted model.

    ``start()`` returns once the server is online; ``shutdown()`` marks it offline and stops it.
    Unless its blocks were fixed with ``block_indices``, a rebalancer moves it to weaker blocks
    when that makes the swarm meaningfully stronger (see :mod:`core.server.rebalancer`).
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.dht: hivemind.DHT | None = None
        self.stats = ServingStats()
        # known once start() has read the model's manifest and joined the DHT
        self.manifest: Manifest | None = None
        self.dht_prefix = ""
        self.total_blocks = 0
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self.peer_id = ""
        self._speed_cache: ThroughputCache | None = None
        self._speed_key = ""
        self._kv_per_token = 0
        self._budget: KVCacheBudget | None = None
        self._loop: EventLoopThread | None = None
        self._handler: BlockRequestHandler | None = None
        self._announcer: Announcer | None = None
        self._rebalancer: Rebalancer | None = None
        self._p2p = None
        self._stopped = threading.Event()
        self._closed = False
        self._move_lock = threading.Lock()
        self.status: ServerStatus | None = None
        self._state = ServerState.JOINING
        self._span = (0, 0)
        self._throughput = Throughput(1.0, 0.0, 0.0, 0.0)
        self._next_pings: dict[str, float] = {}
        self._claimed_at = 0.0
        self._direct: DirectListener | None = None
        self._direct_address = self._direct_fingerprint = ""
        self._relay: RelayService | None = None
        self._keeper: ReachabilityKeeper | None = None
        self.reachability = ReachabilityStatus(Reachability.UNREACHABLE, reason="not checked yet")

    # ---- start -----------------------------------------------------------------------------
    def start(self) -> ServerStatus:
        """Join the swarm, load the blocks and start serving; returns where and what it serves."""
        cfg = self.config
        tempfile.gettempdir()  # resolve before hivemind forks (a fork during tempfile's lock can hang)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        manifest = load_manifest(cfg.converted_model_name_or_path, token=cfg.token)
        get_family(manifest.family)  # fails early on an unsupported model
        self.manifest = manifest
        self.dht_prefix = cfg.dht_prefix or manifest.dht_prefix
        self.total_blocks = manifest.num_blocks
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.torch_dtype, self.device, getattr(torch, manifest.torch_dtype))

        dht_started_at = time.monotonic()
        node = create_dht(cfg.initial_peers, host_maddrs=cfg.host_maddrs, announce_maddrs=cfg.announce_maddrs,
                          identity_path=cfg.identity_path, persistent_identity=True)
        self.dht = node.dht
        self.peer_id = self.dht.peer_id.to_base58()
        self._speed_cache = ThroughputCache(_cache_path()) if cfg.throughput == "auto" else None
        self._speed_key = ThroughputCache.key(self.dht_prefix, self.device, self.dtype, cfg.quant_type)
        if self._speed_cache is not None and (cached := self._speed_cache.get(self._speed_key)) is not None:
            self._throughput = combine(cached, None)
        elif cfg.throughput != "auto":
            self._throughput = Throughput(float(cfg.throughput), 0.0, 0.0, 0.0)
        model = ModelInfo(self.dht_prefix, self.total_blocks, manifest.family, manifest.source[:128])
        self._announcer = Announcer(self.dht, self.dht_prefix, owner_subkey(self.dht.peer_id, node.validator),
                                    self._make_info, model, cfg.update_period, refresh=self._refresh_pings)

        start, end = self._choose_blocks()
        backend = self._load_backend(start, end)
        if cfg.block_indices is None and (moved := self._recheck_claim()) is not None:
            start, end = moved  # a rival's earlier claim became visible while loading
            backend = self._load_backend(start, end)
        self._measure_speed(backend)
        self._loop = EventLoopThread("blossom-server-loop")
        self._kv_per_token = kv_bytes_per_token(backend.config, end - start, self.dtype)
        self._budget = KVCacheBudget((cfg.attn_cache_tokens or DEFAULT_CACHE_TOKENS) * self._kv_per_token)
        self._handler = BlockRequestHandler(backend, self.dht_prefix, self._budget, cfg.alloc_timeout, self.stats,
                                            session_idle_timeout=cfg.session_idle_timeout, push=cfg.push,
                                            batch_tokens=cfg.batch_tokens)
        self._loop.run(self._register_handlers())
        self._measure_network(backend.hidden_size)
        self._refresh_pings()
        self._learn_reachability(dht_started_at)

        self._state = self._serving_state()
        self._announcer.announce()
        self._announcer.start()
        if cfg.block_indices is None and cfg.balance_quality > 0:
            self._rebalancer = Rebalancer(self.peer_id, self.total_blocks, self.swarm_spans, self.move_to,
                                          cfg.mean_balance_check_period, cfg.balance_quality)
            self._rebalancer.start()
        addresses = tuple(str(addr) for addr in self.dht.get_visible_maddrs())
        self.status = ServerStatus(self.dht_prefix, start, end, self.total_blocks, str(self.dtype).removeprefix("torch."),
                                   str(self.device), self._throughput.throughput, addresses, self.peer_id,
                                   self.reachability.describe())
        return self.status

    # ---- reachability (core.server.reachability) ---------------------------------------------
    @property
    def is_reachable(self) -> bool:
        return self.reachability.reachability != Reachability.UNREACHABLE

    def _serving_state(self) -> ServerState:
        """ONLINE once clients can reach this server; JOINING (never online) while they cannot."""
        return ServerState.ONLINE if self.is_reachable else ServerState.JOINING

    def _learn_reachability(self, dht_started_at: float) -> None:
        """Ask other peers to dial this server back, else reserve relays; then keep that up in the background."""
        cfg = self.config
        if not cfg.initial_peers:  # the first peer of a new swarm: whoever joins dials it
            self.reachability = ReachabilityStatus(Reachability.DIRECT, reason="not checked: this server started the swarm")
            return
        if helpers_are_local(cfg.initial_peers):  # a swarm on this machine (127.0.0.1): it dials us on loopback
            self.reachability = ReachabilityStatus(Reachability.DIRECT, reason="not checked: the swarm is on this machine")
            return
        self._keeper = ReachabilityKeeper(self._p2p, self._loop, self._relay_candidates, dht_started_at,
                                          self._on_reachability_change)
        self.reachability = self._keeper.check()
        self._keeper.start()

    def _relay_candidates(self) -> list[str]:
        """Peers that may dial back and relay: the initial peers, then servers that are directly reachable."""
        peers = peer_ids_of(self.config.initial_peers)
        try:
            peers += [span.peer_id for span in self.swarm_spans()
                      if span.server_info.reachability == Reachability.DIRECT.value]
        except Exception:
            logger.debug("Could not read the swarm's servers", exc_info=True)
        return [peer for peer in dict.fromkeys(peers) if peer != self.peer_id]

    def _on_reachability_change(self, status: ReachabilityStatus) -> None:
        self.reachability = status
        if self.status is not None:
            self.status = dataclasses.replace(self.status, reachability=status.describe())
        if self._announcer is None or self._stopped.is_set():
            return  # still starting: start() announces with the outcome
        if self._state != ServerState.OFFLINE:
            self._state = self._serving_state()
        self._announcer.announce()

    def _relay_refusal(self) -> str | None:
        """Why this server does not relay for others right now (None: it does)."""
        if not self.config.relay_service:
            return "this peer's relay service is turned off"
        if self.reachability.reachability != Reachability.DIRECT:
            return "this peer cannot be dialled itself"
        return None

    def _make_info(self) -> ServerInfo:
        cfg = self.config
        start, end = self._span
        budget = self._budget
        cache_tokens_left = budget.free_bytes // max(self._kv_per_token, 1) if budget is not None else 0
        return ServerInfo(
            state=self._state, throughput=self._throughput.throughput, start_block=start, end_block=end,
            public_name=cfg.public_name, version=__version__, torch_dtype=str(self.dtype).removeprefix("torch."),
            quant_type=cfg.quant_type, cache_tokens_left=cache_tokens_left,
            max_length=cfg.max_length, inference_rps=self._throughput.inference_rps,
            forward_rps=self._throughput.forward_rps, network_rps=self._throughput.network_rps,
            next_pings=dict(self._next_pings), claimed_at=self._claimed_at, direct_address=self._direct_address,
            direct_fingerprint=self._direct_fingerprint,
            reachability=self.reachability.reachability.value, relays=self.reachability.relays[:MAX_RELAYS_ANNOUNCED],
            can_push=cfg.push,
        )

    def _load_backend(self, start: int, end: int) -> SpanBackend:
        cfg = self.config
        with still_working(f"Loading blocks {start}..{end - 1} of '{self.dht_prefix}' ({self.dtype} on {self.device})",
                           logger):
            model_config, blocks = load_blocks(cfg.converted_model_name_or_path, range(start, end), self.dtype,
                                               self.device, token=cfg.token)
        if cfg.quant_type != "none":
            blocks = [quantize_linear_layers(block, cfg.quant_type, self.device) for block in blocks]
        span = family_for_config(model_config).make_span(model_config, blocks, start).to(self.device)
        span.eval().requires_grad_(False)
        limits = SpanLimits(cfg.max_batch_size, cfg.max_tokens_per_request, cfg.max_length)
        return SpanBackend(model_config, span, start, end, self.dtype, self.device, limits)

    def _measure_speed(self, backend: SpanBackend) -> None:
        if self.config.throughput != "auto":
            return
        with still_working("Measuring this device's compute speed (once per model, device and dtype)", logger):
            speed = compute_speed(backend, self._speed_cache, self._speed_key)
        self._throughput = combine(speed, self._throughput.network_rps or None)

    def _measure_network(self, hidden_size: int) -> None:
        """Upload speed to another server of the swarm (if there is one): caps the announced throughput."""
        if self.config.throughput != "auto":
            return
        peers = [span.peer_id for span in self.swarm_spans() if span.peer_id != self.peer_id]
        if not peers:
            return
        bytes_per_second = self._loop.run(measure_upload(self._p2p, random.choice(peers)), timeout=60)
        if bytes_per_second:
            rps = network_rps(bytes_per_second, hidden_size)
            logger.info("Measured upload: %.0f MB/s (%.0f tokens/s of hidden states)", bytes_per_second / 1e6, rps)
            speed = self._throughput
            self._throughput = Throughput(min(speed.forward_rps, rps) if speed.forward_rps else speed.throughput,
                                          speed.inference_rps, speed.forward_rps, rps)

    def _refresh_pings(self) -> None:
        """Round trips to the servers holding the block right after this span (clients route with them)."""
        start, end = self._span
        if self._loop is None or self._p2p is None or end >= self.total_blocks:
            self._next_pings = {}
            return
        (servers,) = get_block_servers(self.dht, self.dht_prefix, [end])
        peers = [peer for peer, info in servers.items() if info.state == ServerState.ONLINE and peer != self.peer_id]
        self._next_pings = self._loop.run(ping_many(self._p2p, peers[:16]), timeout=30) if peers else {}

    async def _register_handlers(self) -> None:
        assert self.dht is not None and self._handler is not None
        self._p2p = await self.dht.replicate_p2p()
        await self._handler.add_p2p_handlers(self._p2p)
        self._relay = RelayService(self._p2p, self._relay_refusal)
        await self._relay.add_p2p_handlers()
        if self.config.direct_port is not None:
            bind, announced = direct_hosts(self.config.host_maddrs, self.config.announce_maddrs,
                                           [str(maddr) for maddr in await self._p2p.get_visible_maddrs()])
            handles = {method: self._handler.stream_handles[method] for method in DIRECT_METHODS}
            certificate = make_server_certificate()
            self._direct = DirectListener(handles, self.peer_id, certificate)
            port = await self._direct.start(bind, self.config.direct_port)
            self._direct_address, self._direct_fingerprint = f"{announced}:{port}", certificate.fingerprint
            logger.info("Taking direct connections (TLS, certificate %s...) at %s", certificate.fingerprint[:16],
                        self._direct_address)

    async def _unregister_handlers(self) -> None:
        if self._direct is not None:
            await self._direct.stop()
        if self._relay is not None:
            await self._relay.remove_p2p_handlers()
        if self._p2p is not None and self._handler is not None:
            await self._handler.remove_p2p_handlers(self._p2p)
            await self._p2p.shutdown()

    # ---- block choice ----------------------------------------------------------------------
    def swarm_spans(self) -> list[RemoteSpanInfo]:
        """Every online or joining server of this model, as announced in the DHT now."""
        servers = get_block_servers(self.dht, self.dht_prefix, range(self.total_blocks))
        return compute_spans(servers, states=ACTIVE_STATES)

    def _choose_blocks(self) -> tuple[int, int]:
        """Fixed ``block_indices``, or the weakest window of the swarm claimed so that servers starting
        together end up on different blocks (see :func:`claim_is_contested`)."""
        cfg = self.config
        if cfg.block_indices is not None:
            start, end = cfg.block_indices
            if end > self.total_blocks:
                raise InvalidRequestError(f"--block_indices {start}:{end} is past the model's {self.total_blocks} blocks")
            self._span = (start, end)
            return start, end
        num_blocks = min(cfg.num_blocks or self.total_blocks, self.total_blocks)
        if cfg.num_blocks and cfg.num_blocks > self.total_blocks:
            logger.warning("--num_blocks %d is more than the model has: serving all %d blocks", cfg.num_blocks,
                           self.total_blocks)
        others = [span for span in self.swarm_spans() if span.peer_id != self.peer_id]
        start = choose_best_start(others, self.total_blocks, num_blocks)
        for _ in range(MAX_CLAIM_ROUNDS):
            self._claim(start, start + num_blocks)
            time.sleep(random.uniform(*CLAIM_SETTLE_SECONDS))
            spans = self.swarm_spans()
            if not claim_is_contested(spans, self.peer_id, start, start + num_blocks, self._claimed_at):
                break
            others = [span for span in spans if span.peer_id != self.peer_id]
            new_start = choose_best_start(others, self.total_blocks, num_blocks)
            if new_start == start:
                break
            logger.info("Blocks %d..%d were claimed by another joining server; trying %d..%d", start,
                        start + num_blocks - 1, new_start, new_start + num_blocks - 1)
            start = new_start
        logger.info("Chose blocks %d..%d (%d other servers in the swarm)", start, start + num_blocks - 1, len(others))
        return start, start + num_blocks

    def _recheck_claim(self) -> tuple[int, int] | None:
        """Look once more (after loading, when slow rivals' claims are visible); the new span if this one lost."""
        start, end = self._span
        spans = self.swarm_spans()
        if not claim_is_contested(spans, self.peer_id, start, end, self._claimed_at):
            return None
        others = [span for span in spans if span.peer_id != self.peer_id]
        new_start = choose_best_start(others, self.total_blocks, end - start)
        if new_start == start:
            return None
        logger.info("Blocks %d..%d were claimed earlier by another server; taking %d..%d instead", start, end - 1,
                    new_start, new_start + end - start - 1)
        self._claim(new_start, new_start + end - start)
        return self._span

    def _claim(self, start: int, end: int) -> None:
        """Announce ``[start, end)`` as JOINING now, withdrawing (OFFLINE) a different span claimed before, so
        the swarm never sees this server on both."""
        if self._claimed_at and self._span != (start, end):
            self._announcer.announce(ServerState.OFFLINE)
        self._span, self._claimed_at = (start, end), get_dht_time()
        self._announcer.announce(ServerState.JOINING)

    # ---- moving ----------------------------------------------------------------------------
    def move_to(self, start: int) -> None:
        """Serve blocks ``[start, start + span length)`` instead of the current ones.

        The old span is announced OFFLINE and the new one JOINING; open inference sessions get up to
        ``shutdown_timeout`` to finish (after that their clients replay them elsewhere); then the new
        blocks are loaded, swapped in and announced ONLINE.
        """
        with self._move_lock:
            if self._stopped.is_set() or self._handler is None:
                return
            old_start, old_end = self._span
            new_span = (start, start + (old_end - old_start))
            logger.info("Moving from blocks %d..%d to %d..%d to strengthen the swarm", old_start, old_end - 1,
                        new_span[0], new_span[1] - 1)
            self._state = ServerState.JOINING
            self._claim(*new_span)
            self._handler.begin_draining()
            self._loop.run(self._handler.wait_for_sessions(self.config.shutdown_timeout),
                           timeout=self.config.shutdown_timeout + 5)
            backend = self._load_backend(*new_span)
            self._handler.swap_backend(backend)  # sessions still on the old blocks end with a retriable error
            self._state = self._serving_state()
            self._refresh_pings()
            self._announcer.announce()
            if self.status is not None:
                self.status = dataclasses.replace(self.status, start_block=new_span[0], end_block=new_span[1])

    # ---- stop ------------------------------------------------------------------------------
    def drain(self, timeout: float) -> bool:
        """Refuse new inference sessions with a retriable "server full" error so clients route elsewhere, mark
        the span OFFLINE and stop announcing, and wait up to ``timeout`` seconds for open sessions to finish.
        Returns whether they all did; forward and backward requests are served meanwhile."""
        if self._rebalancer is not None:
            self._rebalancer.stop()  # first: a move in progress would end by taking sessions again
        if self._handler is not None:
            self._handler.begin_draining()  # before the OFFLINE record: whoever reads it is refused already
        if self._announcer is not None:
            self._announcer.stop()
        if self._handler is None or self._loop is None:
            return True
        open_sessions = self.stats.sessions_open
        if open_sessions == 0:
            return True
        logger.info("Waiting up to %.0f s for %d open inference session(s) to finish", timeout, open_sessions)
        try:
            finished = self._loop.run(self._handler.wait_for_sessions(timeout), timeout=timeout + 5)
        except Exception:
            logger.debug("Could not wait for open sessions", exc_info=True)
            finished = False
        if not finished:
            logger.warning("%d inference session(s) still open after %.0f s; closing them (their clients will "
                           "move to other servers)", self.stats.sessions_open, timeout)
        return finished

    def shutdown(self, drain: bool = True) -> None:
        """Drain (see :meth:`drain`, up to ``config.shutdown_timeout``; not with ``drain=False``), stop serving
        and leave the DHT. Safe to call more than once, at any point of :meth:`start`, and again with
        ``drain=False`` after a drain was interrupted (a second Ctrl-C)."""
        if self._closed:
            return
        first = not self._stopped.is_set()
        self._stopped.set()
        began = time.perf_counter()
        if self._keeper is not None:
            self._keeper.stop()
        if drain and first:
            self.drain(self.config.shutdown_timeout)
        elif self._announcer is not None:
            self._announcer.stop()
        self._closed = True
        if self._loop is not None:
            try:
                self._loop.run(self._unregister_handlers(), timeout=10)
            except Exception:
                logger.debug("Could not close the P2P replica cleanly", exc_info=True)
            self._loop.stop()
        if self._handler is not None:
            self._handler.shutdown()
        if self.dht is not None:  # nothing to report when the start failed before joining the swarm
            self.dht.shutdown()
            logger.info("Server stopped in %.1f s", time.perf_counter() - began)


def _cache_path() -> Path:
    return blossom_home() / "throughput.json"
