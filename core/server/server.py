"""The block server's lifecycle: join the DHT, choose and load blocks, serve RPCs, announce, shut down."""
from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass

import hivemind
import torch

from core import __version__
from core.config import ServerConfig
from core.convert import load_blocks, load_manifest
from core.dht.records import compute_spans, get_block_servers
from core.dht.schema import ServerInfo, ServerState
from core.errors import InvalidRequestError
from core.models.registry import family_for_config, get_family
from core.server.announcer import Announcer
from core.server.backend import SpanBackend, SpanLimits, kv_bytes_per_token
from core.server.block_selection import choose_best_start
from core.server.handler import BlockRequestHandler
from core.server.memory_cache import KVCacheBudget
from core.server.placement import quantize_linear_layers, resolve_device, resolve_dtype
from core.server.stats import ServingStats
from core.server.throughput import measure_throughput
from core.utils.event_loop import EventLoopThread

logger = logging.getLogger(__name__)

DEFAULT_CACHE_TOKENS = 16384  # KV budget when none is given: this many tokens through the whole span


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


class BlockServer:
    """A server holding consecutive blocks of one converted model.

    ``start()`` returns once the server is online; ``shutdown()`` marks it offline and stops it.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.dht: hivemind.DHT | None = None
        self.stats = ServingStats()
        self._loop: EventLoopThread | None = None
        self._handler: BlockRequestHandler | None = None
        self._announcer: Announcer | None = None
        self._p2p = None
        self._stopped = threading.Event()
        self.status: ServerStatus | None = None

    def start(self) -> ServerStatus:
        """Join the swarm, load the blocks and start serving; returns where and what it serves."""
        cfg = self.config
        tempfile.gettempdir()  # resolve before hivemind forks (a fork during tempfile's lock can hang)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        manifest = load_manifest(cfg.converted_model_name_or_path, token=cfg.token)
        get_family(manifest.family)  # fails early on an unsupported model
        dht_prefix = cfg.dht_prefix or manifest.dht_prefix
        total = manifest.num_blocks
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.torch_dtype, device, getattr(torch, manifest.torch_dtype))

        self.dht = hivemind.DHT(
            initial_peers=list(cfg.initial_peers),
            host_maddrs=list(cfg.host_maddrs),
            announce_maddrs=list(cfg.announce_maddrs) or None,
            identity_path=cfg.identity_path,
            start=True,
        )
        start, end = self._choose_blocks(dht_prefix, total)
        logger.info("Loading blocks %d..%d of '%s' (%s on %s)", start, end - 1, dht_prefix, dtype, device)
        model_config, blocks = load_blocks(cfg.converted_model_name_or_path, range(start, end), dtype, device,
                                           token=cfg.token)
        if cfg.quant_type != "none":
            blocks = [quantize_linear_layers(block, cfg.quant_type, device) for block in blocks]
        span = family_for_config(model_config).make_span(model_config, blocks, start).to(device)
        span.eval().requires_grad_(False)
        limits = SpanLimits(cfg.max_batch_size, cfg.max_tokens_per_request, cfg.max_length)
        backend = SpanBackend(model_config, span, start, end, dtype, device, limits)
        throughput = measure_throughput(backend) if cfg.throughput == "auto" else float(cfg.throughput)

        per_token = kv_bytes_per_token(model_config, end - start, dtype)
        cache_bytes = (cfg.attn_cache_tokens or DEFAULT_CACHE_TOKENS) * per_token
        self._loop = EventLoopThread("blossom-server-loop")
        budget = KVCacheBudget(cache_bytes)
        self._handler = BlockRequestHandler(backend, dht_prefix, budget, cfg.alloc_timeout, self.stats)
        self._loop.run(self._register_handlers())

        def make_info() -> ServerInfo:
            return ServerInfo(
                state=ServerState.ONLINE, throughput=throughput, start_block=start, end_block=end,
                public_name=cfg.public_name, version=__version__, torch_dtype=str(dtype).removeprefix("torch."),
                quant_type=cfg.quant_type, cache_tokens_left=budget.free_bytes // max(per_token, 1),
                max_length=cfg.max_length,
            )

        self._announcer = Announcer(self.dht, dht_prefix, start, end, make_info, cfg.update_period)
        self._announcer.announce()
        self._announcer.start()
        addresses = tuple(str(addr) for addr in self.dht.get_visible_maddrs())
        self.status = ServerStatus(dht_prefix, start, end, total, str(dtype).removeprefix("torch."), str(device),
                                   throughput, addresses)
        return self.status

    async def _register_handlers(self) -> None:
        assert self.dht is not None and self._handler is not None
        self._p2p = await self.dht.replicate_p2p()
        await self._handler.add_p2p_handlers(self._p2p)

    async def _unregister_handlers(self) -> None:
        if self._p2p is not None and self._handler is not None:
            await self._handler.remove_p2p_handlers(self._p2p)
            await self._p2p.shutdown()

    def _choose_blocks(self, dht_prefix: str, total: int) -> tuple[int, int]:
        cfg = self.config
        if cfg.block_indices is not None:
            start, end = cfg.block_indices
            if end > total:
                raise InvalidRequestError(f"--block_indices {start}:{end} is past the model's {total} blocks")
            return start, end
        num_blocks = min(cfg.num_blocks or total, total)
        spans = compute_spans(get_block_servers(self.dht, dht_prefix, range(total)))
        start = choose_best_start(spans, total, num_blocks)
        logger.info("Chose blocks %d..%d (%d servers already in the swarm)", start, start + num_blocks - 1, len(spans))
        return start, start + num_blocks

    def shutdown(self) -> None:
        """Mark the span offline, stop serving and leave the DHT. Safe to call more than once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        began = time.perf_counter()
        if self._announcer is not None:
            self._announcer.stop()
        if self._loop is not None:
            try:
                self._loop.run(self._unregister_handlers(), timeout=10)
            except Exception:
                logger.debug("Could not close the P2P replica cleanly", exc_info=True)
            self._loop.stop()
        if self._handler is not None:
            self._handler.shutdown()
        if self.dht is not None:
            self.dht.shutdown()
        logger.info("Server stopped in %.1f s", time.perf_counter() - began)

