"""Typed messages between the GUI and the server worker process, one JSON object per line.

Commands (GUI -> worker): :class:`StartCommand`, :class:`PauseCommand`, :class:`ResumeCommand`,
:class:`StopCommand`. Events (worker -> GUI): :class:`StatusEvent`, :class:`LogEvent`,
:class:`ErrorEvent`. :func:`encode` and :func:`decode` turn them into lines and back; a line that
is not a known message raises :class:`core.errors.InvalidRequestError`.

This module imports neither Qt nor torch: both processes use it.
"""
from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from typing import Any, Union

from core.errors import InvalidRequestError


class WorkerState(str, enum.Enum):
    """Where the worker's block server is in its life."""

    STARTING = "starting"
    SERVING = "serving"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"

    @property
    def busy(self) -> bool:
        """A transition is under way (buttons wait for it to end)."""
        return self in (WorkerState.STARTING, WorkerState.PAUSING, WorkerState.RESUMING, WorkerState.STOPPING)


PRIVATE_HOST = "127.0.0.1"
PUBLIC_HOST = "0.0.0.0"


@dataclass(frozen=True)
class ServeRequest:
    """What the worker serves and where: the block server's settings that the GUI decides.

    ``private_swarm``: start a swarm of this PC's own (a DHT peer on 127.0.0.1 that lives as long as
    the worker) instead of joining ``initial_peers``; such a request always listens on
    :data:`PRIVATE_HOST`, any free port, and joins no one (the constructor makes it so, whatever it
    is given). ``block_indices`` pins the blocks; otherwise ``num_blocks`` (or all blocks) go where
    the swarm is weakest. On pause and stop, open inference sessions get up to ``drain_timeout``
    seconds to finish.

    Fields with the name of a :class:`core.config.ServerConfig` field mean the same and have the
    same default; the worker maps the others (:func:`app.worker.node.server_config`).
    """

    model_path: str
    private_swarm: bool = True
    initial_peers: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 0
    public_name: str = ""
    num_blocks: int | None = None
    block_indices: tuple[int, int] | None = None
    torch_dtype: str = "auto"
    quant_type: str = "none"
    device: str | None = None
    attn_cache_tokens: int | None = None
    num_threads: int | None = None
    throughput: float | str = "auto"
    identity_path: str | None = None
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.private_swarm:  # the swarm of this PC only: never reachable from the network
            object.__setattr__(self, "host", PRIVATE_HOST)
            object.__setattr__(self, "port", 0)
            object.__setattr__(self, "initial_peers", ())


@dataclass(frozen=True)
class StartCommand:
    """Start serving ``request``."""

    request: ServeRequest


@dataclass(frozen=True)
class PauseCommand:
    """Stop taking new work; free the memory once open sessions end (at most the request's ``drain_timeout``)."""


@dataclass(frozen=True)
class ResumeCommand:
    """Serve the same blocks again after a pause."""


@dataclass(frozen=True)
class StopCommand:
    """Stop serving, leave the swarm and exit the worker."""


@dataclass(frozen=True)
class StatusEvent:
    """A snapshot of the worker, sent on every change and about once a second while serving.

    ``swarm_peers`` are the multiaddrs clients (the chat, tuning and swarm tabs) join through;
    ``peers`` counts the other servers of this model seen in the swarm.

    The counters (``requests`` = computing steps, ``tokens``, ``inference_sessions``,
    ``training_requests``) and ``uptime`` (seconds spent serving) add up over pauses for as long as
    this worker lives; the app keeps lifetime totals of its own (:mod:`app.credit`).

    How others reach this server (while serving; empty otherwise), as the server last learned it
    (:class:`core.server.reachability.ReachabilityStatus`): ``reachability`` is ``"direct"``,
    ``"relayed"`` or ``"unreachable"``; ``reachability_detail`` its one technical line;
    ``reachability_address`` the ``host:port`` others dialled (direct); ``reachability_reason`` why
    there is no direct connection (relayed, unreachable); ``reachability_via_router`` is true when
    that address is not one of this PC's own (a port the home router maps to it).
    """

    state: WorkerState
    detail: str = ""
    model_name: str = ""
    start_block: int = 0
    end_block: int = 0
    total_blocks: int = 0
    peers: int = 0
    requests: int = 0
    tokens: int = 0
    sessions_open: int = 0
    inference_sessions: int = 0
    training_requests: int = 0
    uptime: float = 0.0
    throughput: float = 0.0
    tokens_per_second: float = 0.0
    torch_dtype: str = ""
    quant_type: str = "none"
    device: str = ""
    peer_id: str = ""
    swarm_peers: tuple[str, ...] = ()
    reachability: str = ""
    reachability_detail: str = ""
    reachability_address: str = ""
    reachability_reason: str = ""
    reachability_via_router: bool = False

    @property
    def num_blocks(self) -> int:
        return self.end_block - self.start_block


@dataclass(frozen=True)
class LogEvent:
    """One log line from the worker."""

    level: str
    text: str


@dataclass(frozen=True)
class ErrorEvent:
    """Something went wrong; ``fatal`` errors end the worker (the GUI offers a restart)."""

    message: str
    fatal: bool = False


Command = Union[StartCommand, PauseCommand, ResumeCommand, StopCommand]
Event = Union[StatusEvent, LogEvent, ErrorEvent]
Message = Union[Command, Event]

_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (StartCommand, PauseCommand, ResumeCommand, StopCommand, StatusEvent, LogEvent, ErrorEvent)
}


def encode(message: Message) -> str:
    """One line of JSON (no trailing newline)."""
    name = type(message).__name__
    if name not in _TYPES:
        raise InvalidRequestError(f"{name} is not a worker message")
    payload = dataclasses.asdict(message)
    if isinstance(message, StatusEvent):
        payload["state"] = message.state.value
    return json.dumps({"type": name, **payload}, separators=(",", ":"))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def _build(cls: type, data: dict[str, Any]) -> Any:
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise InvalidRequestError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return cls(**{key: _tuples(value) for key, value in data.items()})


def decode(line: str | bytes) -> Message:
    """Parse a line written by :func:`encode`."""
    try:
        data = json.loads(line)
        name = data.pop("type")
        cls = _TYPES[name]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise InvalidRequestError(f"not a worker message: {line[:200]!r} ({error!r})") from None
    try:
        if cls is StartCommand:
            return StartCommand(_build(ServeRequest, data["request"]))
        if cls is StatusEvent:
            data["state"] = WorkerState(data["state"])
        return _build(cls, data)
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidRequestError(f"malformed {name} message: {error}") from None


__all__ = [
    "PRIVATE_HOST", "PUBLIC_HOST",
    "Command", "ErrorEvent", "Event", "LogEvent", "Message", "PauseCommand", "ResumeCommand", "ServeRequest",
    "StartCommand", "StatusEvent", "StopCommand", "WorkerState", "decode", "encode",
]
