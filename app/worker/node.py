"""The block server's life inside the worker process: start, pause, resume, stop, and status snapshots.

:class:`WorkerNode` is driven by one command thread (see :mod:`app.worker.__main__`) and read by a
status thread; it never touches Qt. Pausing drains the server (its blocks are announced OFFLINE,
new sessions go elsewhere, open ones may finish), shuts it down and frees its memory while the
worker and, for a private swarm, its DHT peer stay up; resuming loads the same blocks again.
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
import gc
import logging
import threading
import time
from typing import Any, Callable

from app.formatting import describe_error
from app.worker.messages import PRIVATE_HOST, ErrorEvent, Event, ServeRequest, StatusEvent, WorkerState
from core.config import ServerConfig
from core.errors import BlossomError

logger = logging.getLogger(__name__)

RATE_WINDOW = 10.0  # seconds of history for the tokens-per-second figure

RENAMED_FIELDS = {"model_path": "converted_model_name_or_path", "num_threads": "torch_threads",
                  "drain_timeout": "shutdown_timeout"}
""":class:`ServeRequest` fields whose :class:`ServerConfig` field has another name."""
WORKER_FIELDS = ("private_swarm", "host", "port")
""":class:`ServeRequest` fields the worker turns into other things: its own DHT peer, ``host_maddrs``."""


def server_config(request: ServeRequest, swarm_peers: tuple[str, ...], span: tuple[int, int] | None = None,
                  throughput: float | None = None) -> ServerConfig:
    """The block server's config for ``request``, joined through ``swarm_peers``.

    Every other request field goes to the config field of the same name (or its
    :data:`RENAMED_FIELDS` name); a request field the config lacks fails here, loudly. After a pause
    the server comes back on the same ``span`` with its measured ``throughput``.
    """
    values = {RENAMED_FIELDS.get(item.name, item.name): getattr(request, item.name)
              for item in dataclasses.fields(ServeRequest) if item.name not in WORKER_FIELDS}
    values.update(
        initial_peers=swarm_peers,
        host_maddrs=(f"/ip4/{request.host}/tcp/{request.port}",),
    )
    if span is not None:
        values.update(num_blocks=None, block_indices=span)
    if throughput is not None:
        values["throughput"] = throughput
    return ServerConfig(**values)


def release_memory() -> None:
    """Give freed memory back: collect garbage, empty the CUDA cache, trim the C heap (Linux)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # torch missing or CUDA unusable: nothing to empty
        pass
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def is_own_address(host: str) -> bool:
    """Whether ``host`` (an IPv4 address) belongs to one of this PC's network interfaces (True when unknown)."""
    try:
        import psutil

        return any(address.address == host for addresses in psutil.net_if_addrs().values() for address in addresses)
    except Exception:
        return True


def resident_memory() -> int:
    """This process's resident memory in bytes (0 when unknown)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return 0


class WorkerNode:
    """One block server (and, for a private swarm, its DHT peer) owned by the worker process.

    ``emit`` sends events to the GUI; it must be thread-safe. ``done`` turns true when the worker
    should exit (stopped, or failed to start or resume).
    """

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self.emit = emit
        self.state = WorkerState.STOPPED
        self.detail = ""
        self.request: ServeRequest | None = None
        self.server: Any = None  # core.server.server.BlockServer while serving
        self.bootstrap: Any = None  # core.dht.node.DHTNode of a private swarm
        self.swarm_peers: tuple[str, ...] = ()
        self.span: tuple[int, int] | None = None
        self.total_blocks = 0
        self.throughput: float | None = None
        self.status_info: Any = None
        self.peers = 0
        self.done = False
        self._done_requests = 0
        self._done_tokens = 0
        self._done_sessions = 0
        self._done_training = 0
        self._done_seconds = 0.0  # serving time before the last pause, so uptime survives a resume
        self._serving_since = 0.0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._own_address: dict[str, bool] = {}
        self._lock = threading.RLock()

    # ---- state --------------------------------------------------------------------------------
    def _set_state(self, state: WorkerState, detail: str = "") -> None:
        with self._lock:
            self.state, self.detail = state, detail
        logger.info("%s%s", state.value.capitalize(), f": {detail}" if detail else "")
        self.emit(self.snapshot())

    def _fail(self, error: BaseException, doing: str) -> None:
        reason = describe_error(error)
        logger.error("Could not %s: %s", doing, reason, exc_info=not isinstance(error, BlossomError))
        self._close_server()
        self._close_bootstrap()
        self.done = True
        self._set_state(WorkerState.ERROR, reason)
        self.emit(ErrorEvent(f"Could not {doing}: {reason}", fatal=True))

    # ---- commands -----------------------------------------------------------------------------
    def start(self, request: ServeRequest) -> None:
        """Join (or create) the swarm and serve the requested blocks."""
        if self.request is not None:
            self.emit(ErrorEvent("already started; stop the worker first"))
            return
        self.request = request
        self._set_state(WorkerState.STARTING, "Joining the swarm" if not request.private_swarm
                        else "Starting a private swarm on this PC")
        try:
            if request.private_swarm:
                self._start_bootstrap()
            else:
                self.swarm_peers = tuple(request.initial_peers)
            self._start_server()
        except Exception as error:
            self._fail(error, "start serving")
            return
        self._set_state(WorkerState.SERVING)

    def pause(self) -> None:
        """Stop taking new work, let open sessions finish (up to the request's ``drain_timeout``), free the memory."""
        if self.state != WorkerState.SERVING:
            self.emit(ErrorEvent(f"cannot pause while {self.state.value}"))
            return
        self._set_state(WorkerState.PAUSING, "Finishing open sessions")
        before = resident_memory()
        self._close_server()  # the server drains first: OFFLINE, no new sessions, open ones may finish
        after = resident_memory()
        freed = f"; released {(before - after) / 2**20:.0f} MiB" if before and after and before > after else ""
        blocks = f"blocks {self.span[0]}–{self.span[1] - 1}"
        if self.request is not None and self.request.private_swarm:  # nobody else serves a swarm of this PC
            self._set_state(WorkerState.PAUSED, f"The chat waits until you resume{freed}")
        else:
            self._set_state(WorkerState.PAUSED, f"Other servers take over {blocks}{freed}")

    def resume(self) -> None:
        """Serve the same blocks as before the pause."""
        if self.state != WorkerState.PAUSED:
            self.emit(ErrorEvent(f"cannot resume while {self.state.value}"))
            return
        self._set_state(WorkerState.RESUMING, f"Loading blocks {self.span[0]}–{self.span[1] - 1} again")
        try:
            self._start_server()
        except Exception as error:
            self._fail(error, "resume serving")
            return
        self._set_state(WorkerState.SERVING)

    def stop(self) -> None:
        """Stop serving and leave the swarm (the worker exits afterwards)."""
        if self.state not in (WorkerState.STOPPED, WorkerState.ERROR):
            self._set_state(WorkerState.STOPPING, "Finishing open sessions and leaving the swarm")
            self._close_server()
            self._close_bootstrap()
        self.done = True
        self._set_state(WorkerState.STOPPED)

    # ---- server -------------------------------------------------------------------------------
    def _start_bootstrap(self) -> None:
        from core.dht.node import create_dht

        self.bootstrap = create_dht((), host_maddrs=(f"/ip4/{PRIVATE_HOST}/tcp/0",))
        self.swarm_peers = tuple(str(addr) for addr in self.bootstrap.dht.get_visible_maddrs())
        logger.info("Private swarm's DHT peer: %s", self.swarm_peers[0])

    def _start_server(self) -> None:
        from core.server.server import BlockServer

        server = BlockServer(server_config(self.request, self.swarm_peers, self.span, self.throughput))
        with self._lock:
            self.server = server
        try:
            status = server.start()
        except BaseException:
            self._close_server()
            raise
        with self._lock:
            self.status_info = status
            self.span = (status.start_block, status.end_block)
            self.total_blocks = status.total_blocks
            self.throughput = status.throughput
            self._serving_since = time.monotonic()
            self._samples.clear()
        logger.info("Serving blocks %d–%d of '%s' (%s on %s); measured capacity %.0f tokens/s per block",
                    status.start_block, status.end_block - 1, status.dht_prefix, status.torch_dtype, status.device,
                    status.throughput)

    def _close_server(self) -> None:
        with self._lock:
            server, self.server = self.server, None
        if server is None:
            return
        stats = server.stats
        try:
            server.shutdown()
        except Exception:
            logger.warning("The server did not shut down cleanly", exc_info=True)
        with self._lock:
            self._done_requests += stats.requests
            self._done_tokens += stats.tokens
            self._done_sessions += stats.inference_sessions
            self._done_training += stats.training_requests
            if self._serving_since:
                self._done_seconds += time.monotonic() - self._serving_since
                self._serving_since = 0.0
        del server, stats
        release_memory()

    def _close_bootstrap(self) -> None:
        bootstrap, self.bootstrap = self.bootstrap, None
        if bootstrap is not None:
            try:
                bootstrap.dht.shutdown()
            except Exception:
                logger.debug("The private swarm's DHT peer did not shut down cleanly", exc_info=True)

    # ---- status -------------------------------------------------------------------------------
    def refresh_peers(self) -> None:
        """Count the other servers of this model in the swarm (a DHT look-up; call off the command thread)."""
        server = self.server
        if server is None or self.state != WorkerState.SERVING:
            return
        try:
            spans = server.swarm_spans()
        except Exception:
            logger.debug("Could not read the swarm's servers", exc_info=True)
            return
        own = getattr(self.status_info, "peer_id", "")
        self.peers = len({span.peer_id for span in spans if span.peer_id != own})

    def _reachability(self, server: Any) -> dict[str, Any]:
        """The server's reachability as StatusEvent fields (read each time: the server's keeper updates it)."""
        status = getattr(server, "reachability", None)
        if status is None:
            return {}
        address = status.address
        host = address.rsplit(":", 1)[0]
        if host and host not in self._own_address:
            self._own_address[host] = is_own_address(host)
        return dict(reachability=status.reachability.value, reachability_detail=status.describe(),
                    reachability_address=address, reachability_reason=status.reason,
                    reachability_via_router=bool(host) and not self._own_address[host])

    def snapshot(self) -> StatusEvent:
        """The current status; safe to call from any thread."""
        with self._lock:
            server, info = self.server, self.status_info
            requests, tokens, sessions = self._done_requests, self._done_tokens, 0
            served, training = self._done_sessions, self._done_training
            if server is not None and self.state == WorkerState.SERVING:
                requests += server.stats.requests
                tokens += server.stats.tokens
                sessions = server.stats.sessions_open
                served += server.stats.inference_sessions
                training += server.stats.training_requests
            now = time.monotonic()
            uptime = self._done_seconds
            if self.state == WorkerState.SERVING and self._serving_since:
                uptime += now - self._serving_since
            self._samples.append((now, tokens))
            while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
                self._samples.popleft()
            first_time, first_tokens = self._samples[0]
            rate = (tokens - first_tokens) / (now - first_time) if now - first_time > 0.5 else 0.0
            req = self.request
            span = self.span or (0, 0)
            return StatusEvent(
                state=self.state,
                detail=self.detail,
                model_name=getattr(info, "dht_prefix", ""),
                start_block=span[0],
                end_block=span[1],
                total_blocks=self.total_blocks,
                peers=self.peers,
                requests=requests,
                tokens=tokens,
                sessions_open=sessions,
                inference_sessions=served,
                training_requests=training,
                uptime=uptime,
                throughput=self.throughput or 0.0,
                tokens_per_second=max(rate, 0.0),
                torch_dtype=getattr(info, "torch_dtype", ""),
                quant_type=req.quant_type if req else "none",
                device=getattr(info, "device", ""),
                peer_id=getattr(info, "peer_id", "") if self.state == WorkerState.SERVING else "",
                swarm_peers=self.swarm_peers,
                **(self._reachability(server) if server is not None and self.state == WorkerState.SERVING else {}),
            )

