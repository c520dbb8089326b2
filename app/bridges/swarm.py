"""The swarm's servers and block coverage, read from the DHT in a background thread every few seconds.

:class:`SwarmBridge` keeps one client-mode DHT node joined through the current initial peers and
emits ``updated`` with a :class:`SwarmSnapshot` (``core.dht.swarm_status.ModelSwarm`` per model
announced in the swarm). Only one look-up runs at a time; a slow swarm never piles them up.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.formatting import describe_error

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 15


@dataclass(frozen=True)
class SwarmSnapshot:
    """What the swarm looked like at ``fetched_at`` (``time.time()``)."""

    models: tuple[Any, ...]  # core.dht.swarm_status.ModelSwarm
    fetched_at: float
    initial_peers: tuple[str, ...] = field(default=())


class SwarmBridge(QObject):
    """Periodic swarm status for the swarm tab (and the dashboard's peer count)."""

    updated = Signal(object)  # SwarmSnapshot
    failed = Signal(str)
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None, period: float = REFRESH_SECONDS) -> None:
        super().__init__(parent)
        self.initial_peers: tuple[str, ...] = ()
        self.last: SwarmSnapshot | None = None
        self._dht: Any = None
        self._dht_peers: tuple[str, ...] = ()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.timer = QTimer(self)
        self.timer.setInterval(int(period * 1000))
        self.timer.timeout.connect(self.refresh)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_peers(self, initial_peers: tuple[str, ...] | list[str]) -> None:
        """Watch the swarm reachable through ``initial_peers`` (empty: stop watching)."""
        peers = tuple(initial_peers)
        if peers == self.initial_peers:
            return
        self.initial_peers = peers
        if peers:
            self.refresh()
        elif not self.busy:
            threading.Thread(target=self._close_idle_dht, name="blossom-swarm-close", daemon=True).start()

    def start(self) -> None:
        """Refresh now and then periodically."""
        self.timer.start()
        self.refresh()

    def pause(self) -> None:
        """Stop the periodic refresh (a running look-up still reports)."""
        self.timer.stop()

    def refresh(self) -> bool:
        """Start a look-up unless one is running or there is no swarm; returns whether one started."""
        if self.busy or not self.initial_peers or self._closed:
            return False
        self._thread = threading.Thread(target=self._fetch, args=(self.initial_peers,), name="blossom-swarm",
                                        daemon=True)
        self.busy_changed.emit(True)
        self._thread.start()
        return True

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop refreshing and leave the swarm; a look-up still running after ``timeout`` s closes the node itself."""
        self._closed = True
        self.timer.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._lock.acquire(timeout=0.1):
            try:
                self._close_dht()
            finally:
                self._lock.release()

    # ---- background thread --------------------------------------------------------------------
    def _fetch(self, peers: tuple[str, ...]) -> None:
        try:
            with self._lock:
                from core.dht.swarm_status import fetch_swarm_status

                dht = self._connect(peers)
                try:
                    models = fetch_swarm_status(dht)
                finally:
                    if self._closed:
                        self._close_dht()
            snapshot = SwarmSnapshot(tuple(models), time.time(), peers)
            self.last = snapshot
            self.updated.emit(snapshot)
        except Exception as error:
            logger.info("Could not read the swarm's status: %s", describe_error(error))
            with self._lock:
                self._close_dht()
            self.failed.emit(describe_error(error))
        finally:
            self.busy_changed.emit(False)

    def _close_idle_dht(self) -> None:
        with self._lock:
            self._close_dht()

    def _connect(self, peers: tuple[str, ...]) -> Any:
        if self._dht is not None and self._dht_peers == peers:
            return self._dht
        self._close_dht()
        from core.dht.node import create_dht

        self._dht = create_dht(peers, client_mode=True).dht
        self._dht_peers = peers
        return self._dht

    def _close_dht(self) -> None:
        dht, self._dht = self._dht, None
        if dht is not None:
            try:
                from core.dht.node import shutdown_client_dht

                shutdown_client_dht(dht)
            except Exception:
                logger.debug("The swarm view's DHT node did not shut down cleanly", exc_info=True)
