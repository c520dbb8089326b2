"""One asyncio event loop in a background thread, with a synchronous facade for callers."""
from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Awaitable, TypeVar

T = TypeVar("T")


class EventLoopThread:
    """Runs coroutines on a dedicated loop thread; ``run`` blocks the caller until the result is ready."""

    def __init__(self, name: str = "blossom-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result (re-raising its exception)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def submit(self, coroutine: Awaitable[T]) -> "asyncio.Future[Any]":
        """Schedule ``coroutine`` without waiting; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self) -> None:
        """Cancel pending tasks, stop the loop and join its thread."""
        if self.loop.is_running():
            try:
                self.run(_cancel_other_tasks(), timeout=10)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


async def _cancel_other_tasks() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


_shared: EventLoopThread | None = None
_shared_pid: int | None = None
_shared_lock = threading.Lock()


def shared_loop() -> EventLoopThread:
    """The process-wide loop used by clients (recreated after a fork)."""
    global _shared, _shared_pid
    with _shared_lock:
        if _shared is None or _shared_pid != os.getpid():
            _shared, _shared_pid = EventLoopThread("blossom-client-loop"), os.getpid()
        return _shared
