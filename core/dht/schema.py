"""The DHT key schema and the record a server announces for each block it holds.

Keys: ``{dht_prefix}.{block_index}``; subkey: the server's peer id (base58); value: a
:class:`ServerInfo` as a msgpack-friendly dict. Records that fail validation are skipped.
"""
from __future__ import annotations

import enum
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)


class ServerState(str, enum.Enum):
    """Where a server is in its life."""

    JOINING = "joining"
    ONLINE = "online"
    OFFLINE = "offline"


def block_key(dht_prefix: str, index: int) -> str:
    """The DHT key under which servers announce block ``index``."""
    return f"{dht_prefix}.{index}"


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

    def to_record(self) -> dict[str, Any]:
        """A msgpack-friendly dict."""
        record = asdict(self)
        record["state"] = self.state.value
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
            )
            if not (0 <= info.start_block < info.end_block) or not math.isfinite(info.throughput) or info.throughput < 0:
                raise ValueError("inconsistent span or throughput")
            return info
        except (KeyError, TypeError, ValueError) as error:
            logger.debug("Ignoring malformed server record %r: %s", record, error)
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
