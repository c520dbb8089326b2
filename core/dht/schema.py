"""The DHT key schema and the record a server announces for each block it holds.

Keys: ``{dht_prefix}.{block_index}``; subkey: the server's signed subkey (peer id + public key,
see :mod:`core.dht.identity`); value: a :class:`ServerInfo` as a msgpack-friendly dict. Each server
also announces the model it serves under :data:`MODELS_KEY` (a :class:`ModelInfo`), so tools can
list every model in a swarm. Records that fail validation are skipped.
"""
from __future__ import annotations

import enum
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from core.direct_protocol import DirectEndpoint, direct_endpoint

logger = logging.getLogger(__name__)

MODELS_KEY = "blossom.models"
MAX_PINGS = 16
MAX_RELAYS = 4


class ServerState(str, enum.Enum):
    """Where a server is in its life."""

    JOINING = "joining"
    ONLINE = "online"
    OFFLINE = "offline"


def block_key(dht_prefix: str, index: int) -> str:
    """The DHT key under which servers announce block ``index``."""
    return f"{dht_prefix}.{index}"


def is_peer_address(text: str) -> bool:
    """Whether ``text`` has the shape of an initial peer: a multiaddress ending in ``/p2p/<peer id>``."""
    return text.startswith("/") and "/p2p/" in text


def block_uid_index(uid: str) -> tuple[str, int]:
    """Split ``'prefix.7'`` into ``('prefix', 7)``; raises ``ValueError`` on anything else."""
    prefix, dot, index = uid.rpartition(".")
    if not dot or not prefix or not index.isdigit():
        raise ValueError(f"'{uid}' is not a block uid of the form PREFIX.INDEX")
    return prefix, int(index)


@dataclass(frozen=True)
class ServerInfo:
    """What a server announces about itself for every block of its span."""

    state: ServerState
    throughput: float
    start_block: int
    end_block: int
    public_name: str = ""
    version: str = ""
    torch_dtype: str = ""
    quant_type: str = "none"
    cache_tokens_left: int = 0
    max_length: int = 0
    inference_rps: float = 0.0  # single-token steps per second through one block
    forward_rps: float = 0.0  # tokens per second through one block in forward passes
    network_rps: float = 0.0  # tokens per second the server's link carries (hidden states)
    next_pings: dict[str, float] = field(default_factory=dict)  # peer id -> round trip (s) to servers after this span
    claimed_at: float = 0.0  # DHT time when a JOINING server claimed this span (earlier claims win)
    direct_address: str = ""  # "host:port" taking direct connections (core.server.direct), if any
    direct_fingerprint: str = ""  # SHA-256 of the TLS certificate served there (core.direct_tls)
    announced_at: float = 0.0  # DHT time of this announcement: a newer one shows the server is (back) alive
    reachability: str = ""  # "direct" or "relayed" (core.relay_protocol.Reachability); "" from older servers
    relays: tuple[str, ...] = ()  # peer ids of relays through which clients reach a relayed server
    can_push: bool = False  # takes part in server-to-server push (core.push_protocol); older servers do not

    @property
    def direct_endpoint(self) -> DirectEndpoint | None:
        """Where this server takes direct connections and the certificate it serves them with, if it announced
        both (servers from before TLS direct ports announce no certificate and are not dialled directly)."""
        return direct_endpoint(self.direct_address, self.direct_fingerprint)

    def to_record(self) -> dict[str, Any]:
        """A msgpack-friendly dict."""
        record = asdict(self)
        record["state"] = self.state.value
        record["relays"] = list(self.relays)
        return record

    @classmethod
    def from_record(cls, record: Any) -> "ServerInfo | None":
        """Parse a record from the DHT; ``None`` (and a debug log) if it is malformed."""
        try:
            if not isinstance(record, dict):
                raise TypeError(f"expected a dict, got {type(record).__name__}")
            info = cls(
                state=ServerState(record["state"]),
                throughput=float(record["throughput"]),
                start_block=int(record["start_block"]),
                end_block=int(record["end_block"]),
                public_name=str(record.get("public_name", ""))[:64],
                version=str(record.get("version", ""))[:32],
                torch_dtype=str(record.get("torch_dtype", ""))[:16],
                quant_type=str(record.get("quant_type", "none"))[:16],
                cache_tokens_left=int(record.get("cache_tokens_left", 0)),
                max_length=int(record.get("max_length", 0)),
                inference_rps=float(record.get("inference_rps", 0.0)),
                forward_rps=float(record.get("forward_rps", 0.0)),
                network_rps=float(record.get("network_rps", 0.0)),
                next_pings=_parse_pings(record.get("next_pings", {})),
                claimed_at=float(record.get("claimed_at", 0.0)),
                direct_address=str(record.get("direct_address", ""))[:64],
                direct_fingerprint=str(record.get("direct_fingerprint", ""))[:64],
                announced_at=float(record.get("announced_at", 0.0)),
                reachability=str(record.get("reachability", ""))[:16],
                relays=tuple(str(peer)[:64] for peer in list(record.get("relays", ()))[:MAX_RELAYS]),
                can_push=record.get("can_push", False) is True,
            )
            speeds = (info.throughput, info.inference_rps, info.forward_rps, info.network_rps, info.claimed_at,
                      info.announced_at)
            if not (0 <= info.start_block < info.end_block) or not all(math.isfinite(v) and v >= 0 for v in speeds):
                raise ValueError("inconsistent span or throughput")
            return info
        except (KeyError, TypeError, ValueError) as error:
            logger.debug("Ignoring malformed server record %r: %s", record, error)
            return None


def _parse_pings(pings: Any) -> dict[str, float]:
    if not isinstance(pings, dict):
        raise TypeError("next_pings must be a dict")
    parsed = {str(peer)[:64]: float(rtt) for peer, rtt in list(pings.items())[:MAX_PINGS]}
    if not all(math.isfinite(rtt) and rtt >= 0 for rtt in parsed.values()):
        raise ValueError("pings must be finite and non-negative")
    return parsed


@dataclass(frozen=True)
class ModelInfo:
    """What a server announces about the model it serves (one record per server under :data:`MODELS_KEY`)."""

    dht_prefix: str
    num_blocks: int
    family: str = ""
    name: str = ""

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Any) -> "ModelInfo | None":
        """Parse a record from the DHT; ``None`` if it is malformed."""
        try:
            info = cls(str(record["dht_prefix"])[:128], int(record["num_blocks"]),
                       str(record.get("family", ""))[:32], str(record.get("name", ""))[:128])
            if not info.dht_prefix or not 0 < info.num_blocks <= 100_000:
                raise ValueError("bad prefix or block count")
            return info
        except (KeyError, TypeError, ValueError) as error:
            logger.debug("Ignoring malformed model record %r: %s", record, error)
            return None


@dataclass(frozen=True)
class RemoteSpanInfo:
    """A server and the blocks ``[start, end)`` it holds, as seen by a client."""

    peer_id: str
    start: int
    end: int
    server_info: ServerInfo

    @property
    def length(self) -> int:
        return self.end - self.start


def uncovered_blocks(spans: Sequence[RemoteSpanInfo], start: int, end: int) -> list[int]:
    """Blocks in ``[start, end)`` that no span holds."""
    covered = set()
    for span in spans:
        covered.update(range(max(span.start, start), min(span.end, end)))
    return [index for index in range(start, end) if index not in covered]
