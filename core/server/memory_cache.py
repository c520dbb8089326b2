"""The KV-cache memory budget: sessions reserve bytes before they start and give them back at the end."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from core.errors import ServerFullError
from core.utils.units import format_bytes

logger = logging.getLogger(__name__)


class KVCacheBudget:
    """A byte budget shared by all inference sessions of one server (used from one event loop)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._changed = asyncio.Condition()

    @property
    def free_bytes(self) -> int:
        return self.max_bytes - self.used_bytes

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, timeout: float) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the duration of the block.

        Waits up to ``timeout`` seconds for other sessions to finish; raises
        :class:`ServerFullError` if the request can never fit or does not fit in time.
        """
        if nbytes > self.max_bytes:
            raise ServerFullError(
                f"a session needing {format_bytes(nbytes)} of KV cache is larger than this server's whole budget "
                f"({format_bytes(self.max_bytes)}); use a smaller max_length or batch size"
            )
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.free_bytes >= nbytes), timeout)
            except asyncio.TimeoutError:
                raise ServerFullError(
                    f"server full: {format_bytes(nbytes)} of KV cache needed, {format_bytes(self.free_bytes)} "
                    f"free after waiting {timeout:.0f} s; try another server or later"
                ) from None
            self.used_bytes += nbytes
        try:
            yield
        finally:
            await self.give_back(nbytes)

    def take_now(self, nbytes: int) -> bool:
        """Hold ``nbytes`` at once if they are free (no waiting); ``True`` if taken.
        Give them back with :meth:`give_back`."""
        if nbytes > self.free_bytes:
            return False
        self.used_bytes += nbytes
        return True

    async def give_back(self, nbytes: int) -> None:
        """Return held bytes, waking sessions that wait for room.

        The bytes are back at once; the waking (which may wait for the condition's lock) is shielded, so a caller
        cancelled meanwhile (a session cut while it ends) neither keeps the bytes nor leaves the waiters asleep.
        """
        self.used_bytes -= nbytes
        await asyncio.shield(self._wake_waiters())

    async def _wake_waiters(self) -> None:
        async with self._changed:
            self._changed.notify_all()
