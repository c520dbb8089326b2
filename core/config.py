"""One frozen config object per component: :class:`ServerConfig` and :class:`ClientConfig`."""
from __future__ import annotations

from dataclasses import dataclass

from core.direct_protocol import DIRECT_POLICIES

QUANT_TYPES = ("none", "int8", "nf4")
TORCH_DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ServerConfig:
    """Everything a block server needs; built by ``core.cli.run_server`` or the app."""

    converted_model_name_or_path: str
    num_blocks: int | None = None
    block_indices: tuple[int, int] | None = None
    initial_peers: tuple[str, ...] = ()
    new_swarm: bool = False
    host_maddrs: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    announce_maddrs: tuple[str, ...] = ()
    identity_path: str | None = None
    throughput: float | str = "auto"
    torch_dtype: str = "auto"
    quant_type: str = "none"
    dht_prefix: str | None = None
    public_name: str = ""
    device: str | None = None
    token: str | None = None
    max_length: int = 2048
    max_batch_size: int = 64
    max_tokens_per_request: int = 8192
    attn_cache_tokens: int | None = None
    alloc_timeout: float = 5.0
    update_period: float = 30.0
    torch_threads: int | None = None
    session_idle_timeout: float = 600.0
    """An inference session that sends nothing for this long is closed and its KV cache freed."""
    shutdown_timeout: float = 30.0
    """On shutdown, how long open inference sessions may keep running before they are cut."""
    balance_quality: float = 0.75
    """Move to other blocks when the swarm's weakest block is below this fraction of what the move
    would give it (0 disables rebalancing; fixed ``block_indices`` never move)."""
    mean_balance_check_period: float = 60.0
    """Average seconds between rebalancing checks (randomised so servers do not all move at once)."""
    relay_service: bool = True
    """Relay for servers behind NAT while this server is itself dialable (core.server.relay)."""
    direct_port: int | None = 0
    """Also take streaming calls (inference sessions, forward, backward, pushes) on this TCP port, over TLS (from this
    machine: local connections proven with the certificate's key, core.direct_local) (0: any free one) and announce it with the certificate's fingerprint, so callers that can dial it skip the p2p
    daemons (core.server.direct); None: p2p only."""
    push: bool = True
    """Pass inference outputs straight to the next server of a client's chain (core.push_protocol) and take
    steps pushed by the previous one; announced as ``can_push``. Off: clients carry every step themselves."""
    batch_tokens: int = 512
    """Inference steps of concurrent sessions run through the blocks as one batch of up to this many tokens
    (longer prefills are split across batches); 0 runs each step alone (core.server.compute_queue)."""

    def __post_init__(self) -> None:
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got '{self.quant_type}'")
        if self.torch_dtype not in TORCH_DTYPES:
            raise ValueError(f"torch_dtype must be one of {TORCH_DTYPES}, got '{self.torch_dtype}'")
        if self.block_indices is not None:
            start, end = self.block_indices
            if not 0 <= start < end:
                raise ValueError(f"block_indices must be START:END with 0 <= START < END, got {start}:{end}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {self.num_blocks}")
        if not self.initial_peers and not self.new_swarm:
            raise ValueError("pass --initial_peers of a swarm to join, or --new_swarm to start a new one")
        if isinstance(self.throughput, str) and self.throughput != "auto":
            raise ValueError(f"throughput must be a number or 'auto', got '{self.throughput}'")
        for name in ("max_length", "max_batch_size", "max_tokens_per_request"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_tokens < 0:
            raise ValueError(f"batch_tokens must be 0 (no batching) or more, got {self.batch_tokens}")
        for name in ("alloc_timeout", "shutdown_timeout"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {getattr(self, name)}")
        if not 0 <= self.balance_quality <= 1:
            raise ValueError(f"balance_quality must be in 0..1, got {self.balance_quality}")
        if not self.mean_balance_check_period > 0:
            raise ValueError(f"mean_balance_check_period must be positive, got {self.mean_balance_check_period}")
        if not self.session_idle_timeout > 0:
            raise ValueError(f"session_idle_timeout must be a positive number of seconds, got {self.session_idle_timeout}")


@dataclass(frozen=True)
class ClientConfig:
    """How a client finds and talks to servers."""

    initial_peers: tuple[str, ...] = ()
    dht_prefix: str | None = None
    connect_timeout: float = 30.0
    """Seconds to wait for servers of missing blocks to appear before raising MissingBlocksError."""
    request_timeout: float = 60.0
    """Seconds one call to a server (or one inference step) may take."""
    lookup_timeout: float = 30.0
    """Seconds one DHT look-up may take before LookupTimeoutError."""
    max_retries: int = 3
    ban_timeout: float = 15.0
    update_period: float = 30.0
    direct_connections: str = "private"
    """Dial servers' direct ports: "private" (loopback, and private addresses on this machine's networks),
    "always" (any address), "never" (p2p only). The connection is TLS, pinned to the announced certificate, or, to
    this machine's own addresses, a local connection where the server proves it holds that certificate's key."""
    push_between_servers: bool = True
    """Inference steps go client -> A -> B -> ... -> client, each server pushing its output to the next (n + 1
    network legs per token), wherever both servers can; off: client -> A -> client -> B -> ... (2n legs)."""

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "request_timeout", "lookup_timeout", "ban_timeout", "update_period"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)}")
        if self.direct_connections not in DIRECT_POLICIES:
            raise ValueError(f"direct_connections must be one of {DIRECT_POLICIES}, got '{self.direct_connections}'")
