"""Running generations in worker threads for the asyncio web server, and noticing clients that leave.

The web server's event loop must never block on the swarm, so each request's generation runs in
a thread of its own (one inference session each; at most ``max_sessions`` at once, later requests
wait for a slot up to ``queue_timeout``). The thread reports through an :class:`asyncio.Queue`:
text pieces, then the result or the error.

A client that disconnects sets the run's ``cancelled`` event; the generation's streamer raises at
the next token, ``generate`` unwinds and closes its session, and the servers free its cache.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Union

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.api.engine import Engine, GenerationJob, GenerationResult
from core.api.errors import QueueTimeoutError
from core.errors import RemoteCallError

logger = logging.getLogger(__name__)

Event = tuple[str, Union[str, GenerationResult, BaseException]]  # ("text", str) | ("done", result) | ("error", e)


class Run:
    """One generation in progress, as seen from the event loop."""

    def __init__(self, token_timeout: float) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.token_timeout = token_timeout
        self._held: Event | None = None  # an event read ahead by next_merged

    async def next(self) -> Event:
        """The next event; an error event if the swarm sends nothing for ``token_timeout`` seconds."""
        if self._held is not None:
            event, self._held = self._held, None
            return event
        try:
            return await asyncio.wait_for(self.events.get(), self.token_timeout)
        except asyncio.TimeoutError:
            self.cancelled.set()
            return "error", RemoteCallError(f"the swarm produced no token within {self.token_timeout:g} s")

    async def next_merged(self) -> Event:
        """:meth:`next`, with the text pieces already waiting joined into one: a busy event loop then sends
        fewer, larger chunks instead of falling behind the tokens."""
        kind, value = await self.next()
        if kind != "text":
            return kind, value
        pieces = [value]
        while not self.events.empty():
            event = self.events.get_nowait()
            if event[0] != "text":
                self._held = event
                break
            pieces.append(event[1])
        return "text", "".join(pieces)

    async def result(self) -> GenerationResult:
        """Wait for the whole answer (text pieces are already part of it); raise its error if it failed."""
        while True:
            kind, value = await self.next()
            if kind == "done":
                assert isinstance(value, GenerationResult)
                return value
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value


class Runner:
    """Starts :class:`Run` s on a pool of ``max_sessions`` threads."""

    def __init__(self, engine: Engine, max_sessions: int, queue_timeout: float, token_timeout: float) -> None:
        self.engine, self.max_sessions = engine, max_sessions
        self.queue_timeout, self.token_timeout = queue_timeout, token_timeout
        self.executor = ThreadPoolExecutor(max_sessions, thread_name_prefix="blossom-api-generate")
        self._slots: asyncio.Semaphore | None = None
        self._runs: set[Run] = set()

    @property
    def running(self) -> int:
        """Generations in progress now."""
        return len(self._runs)

    async def start(self, job: GenerationJob) -> Run:
        """Begin generating ``job`` in a worker thread once a slot is free."""
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_sessions)
        slots = self._slots
        try:
            await asyncio.wait_for(slots.acquire(), self.queue_timeout)
        except asyncio.TimeoutError:
            raise QueueTimeoutError(f"one of {self.max_sessions} generation slots", self.queue_timeout) from None
        run = Run(self.token_timeout)
        self._runs.add(run)

        def post(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(run.events.put_nowait, event)
            except RuntimeError:  # the event loop closed (the API is shutting down)
                pass

        def release() -> None:
            self._runs.discard(run)
            slots.release()

        def work() -> None:
            try:
                post(("done", self.engine.generate(job, lambda text: post(("text", text)), run.cancelled)))
            except BaseException as error:  # reported to the client, not raised in a pool thread
                post(("error", error))
            finally:
                try:
                    loop.call_soon_threadsafe(release)
                except RuntimeError:
                    pass

        try:
            self.executor.submit(work)
        except BaseException:
            release()
            raise
        return run

    def shutdown(self) -> None:
        """Stop taking work and end the running generations at their next token."""
        for run in list(self._runs):
            run.cancelled.set()
        self.executor.shutdown(wait=False, cancel_futures=True)


async def until_disconnected(receive: Receive) -> None:
    """Return when the HTTP client disconnects (the request body must already have been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def wait_or_cancel(run: Run, receive: Receive) -> GenerationResult:
    """:meth:`Run.result`, cancelling the generation if the client disconnects first."""
    watcher = asyncio.ensure_future(until_disconnected(receive))
    waiter = asyncio.ensure_future(run.result())
    try:
        await asyncio.wait({watcher, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            run.cancelled.set()
            logger.info("Client disconnected; its generation ends at the next token")
        return await waiter
    finally:
        watcher.cancel()
        if not waiter.done():
            waiter.cancel()


class EventStreamResponse(StreamingResponse):
    """Server-sent events that stop at once when the client disconnects, whatever ASGI version the server
    speaks (Starlette otherwise notices a departed client only at the next write), and then run ``on_close``."""

    def __init__(self, content: Any, on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        logger.info("Client disconnected during a stream")
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await until_disconnected(receive)
                group.cancel_scope.cancel()
        finally:
            self.on_close()


async def first_event(run: Run) -> Event:
    """The first event of a run: an error before any text is answered with its HTTP status, not as a stream."""
    kind, value = await run.next()
    if kind == "error":
        assert isinstance(value, BaseException)
        raise value
    return kind, value

