"""Step-by-step inference through a chain of servers, each keeping the KV cache of its blocks.

One stream is held open per server for the whole session; every step sends only the new tokens'
hidden states. Each hop remembers what it was sent, so if a server fails the lost blocks are
routed to other servers and the history is replayed to rebuild their cache before continuing.
"""
from __future__ import annotations

import asyncio
import logging
import uuid

import torch
from hivemind.proto import runtime_pb2

from core.client.blocking_stream import BlockingStream
from core.client.sequence_manager import MAX_RESPONSE_BYTES, RemoteSequenceManager, is_retriable
from core.dht.schema import RemoteSpanInfo
from core.errors import BlossomError, InvalidRequestError, RemoteCallError, SequenceTooLongError, SessionExpiredError
from core.push_protocol import PushTarget, route_to_wire
from core.wire import check_prompts_shape, deserialize_tensors, pack_metadata, raise_if_error, serialize_tensors

logger = logging.getLogger(__name__)

LAST_WORD_TIMEOUT = 2.0
"""Seconds to wait for a closed stream's last answer after a send to it failed."""
REPLAY_WINDOW_BYTES = 128 * 1024
"""Hidden states a replay writes ahead of the server's answers: small enough that the unread answers
and the unread requests fit in the sockets' buffers, so neither side blocks the other."""


class _ServerSession:
    """An open inference stream to one server for blocks ``[span.start, span.end)``.

    The stream is opened once (a direct TLS connection when the server offers one, else a p2p stream),
    then written and read from the caller's thread with blocking socket calls
    (:class:`BlockingStream`): a step costs one round trip, nothing more. A session with ``takes_pushes``
    is opened under a fresh ``session_id`` so that the server before it in the chain can push steps
    into it (:mod:`core.push_protocol`); its answers still come back on this stream.
    """

    def __init__(self, manager: RemoteSequenceManager, span: RemoteSpanInfo, max_length: int,
                 takes_pushes: bool = False) -> None:
        self.manager, self.span, self.max_length = manager, span, max_length
        self.takes_pushes = takes_pushes
        self.session_id = uuid.uuid4().hex
        self.history: list[torch.Tensor] = []  # every input this server computed, for replay elsewhere
        self.prompts: torch.Tensor | None = None  # deep prompts sent with the first input, replayed with it
        self.position = 0  # tokens this server's cache holds (the inputs of ``history``)
        self.uid = manager.span_uid(span.start, span.end)
        self._stream: BlockingStream | None = None
        self._opened = False  # the first message (max_length...) went out
        self._push_target: PushTarget | None = None

    async def _open(self) -> BlockingStream:
        return await self.manager.open_blocking_stream(self.span, "rpc_inference")  # direct if offered

    def connect(self, batch_size: int) -> None:
        """Open the stream if needed; a session taking pushes also says so (with the cache's size) right away,
        so that the previous server's first push finds it."""
        if self._stream is None:
            timeout = self.manager.config.request_timeout
            self._stream = self.manager.loop.run(asyncio.wait_for(self._open(), timeout), timeout=timeout + 5)
        if self.takes_pushes and not self._opened:
            self._write({"max_length": self.max_length, "batch_size": batch_size, "session_id": self.session_id}, [])
            self._opened = True

    @property
    def push_target(self) -> PushTarget:
        """How the server before this one reaches this session to push into it (worked out once per session)."""
        if self._push_target is None:
            self._push_target = self.manager.push_target(self.span, self.session_id)
        return self._push_target

    def step(self, hidden: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Send one step's hidden states (deep ``prompts`` with the first) and return the blocks' outputs."""
        self.send(hidden, prompts)
        output, _ = self.receive(hidden)
        return output

    def _last_word(self, error: OSError) -> BaseException:
        """Why the server closed the stream a send just failed on: the answer it sent before closing (e.g.
        :class:`SessionExpiredError` for an idle session), else the send's own error."""
        try:
            self._stream.sock.settimeout(LAST_WORD_TIMEOUT)  # the server is gone: its answer is buffered or never
            response = self._stream.read(runtime_pb2.ExpertResponse, MAX_RESPONSE_BYTES)
            if response is not None:
                raise_if_error(response, self.span.peer_id)
        except BlossomError as reason:
            return reason
        except Exception:
            pass
        return error

    def replay(self, steps: list[torch.Tensor], prompts: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Send another session's ``steps`` exactly as they were sent (``prompts`` with the first) and
        return each step's outputs.

        Step by step rather than as one long pass: the server then computes the KV cache with the same
        kernels as the original steps did, so the tokens generated afterwards are identical (one pass
        sums in another order and may flip a near-tie). Up to :data:`REPLAY_WINDOW_BYTES` of steps are
        written ahead of the answers, so a long history costs about one round trip, not one per step.
        """
        outputs: list[torch.Tensor] = []
        in_flight: list[torch.Tensor] = []
        for number, hidden in enumerate(steps):
            while in_flight and sum(t.numel() * t.element_size() for t in in_flight) + \
                    hidden.numel() * hidden.element_size() > REPLAY_WINDOW_BYTES:
                outputs.append(self.receive(in_flight.pop(0))[0])
            self.send(hidden, prompts if number == 0 else None,
                      start_position=self.position + sum(t.shape[1] for t in in_flight))
            in_flight.append(hidden)
        outputs.extend(self.receive(hidden)[0] for hidden in in_flight)
        return outputs

    def send(self, hidden: torch.Tensor, prompts: torch.Tensor | None = None, start_position: int | None = None,
             route: list[PushTarget] | None = None) -> None:
        """Write one step starting at ``start_position`` (default: where this session stands); with a ``route``
        the server pushes its output on along it."""
        self.connect(hidden.shape[0])
        fields: dict = {"start_from_position": self.position if start_position is None else start_position}
        if not self._opened:
            fields["max_length"] = self.max_length
            self._opened = True
        if prompts is not None:
            fields["prompts"] = True  # deep prompts follow the hidden states, added to this step's first positions
        if route:
            fields["route"] = route_to_wire(route)
        self._write(fields, [hidden] if prompts is None else [hidden, prompts.contiguous()])
        if prompts is not None and not self.history:
            self.prompts = prompts

    def _write(self, fields: dict, tensors: list[torch.Tensor]) -> None:
        request = runtime_pb2.ExpertRequest(uid=self.uid, tensors=serialize_tensors(tensors),
                                            metadata=pack_metadata(fields))
        try:
            self._stream.write(request)
        except OSError as error:
            raise self._last_word(error) from error

    def receive(self, hidden: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The answer (outputs, metadata) to the step whose input was ``hidden`` (sent by the client or pushed by
        the previous server); ``hidden`` joins the history. Answers to a step computed twice (pushed, and sent
        again after a failure upstream) are read once: the older copy is skipped by its position."""
        expected = self.position + hidden.shape[1]
        while True:
            response = self._stream.read(runtime_pb2.ExpertResponse, MAX_RESPONSE_BYTES)
            if response is None:
                raise RemoteCallError(f"server {self.span.peer_id} closed the session")
            metadata = raise_if_error(response, self.span.peer_id)
            position = metadata.get("position")
            if not isinstance(position, int) or position >= expected:
                break
        (output,) = deserialize_tensors(list(response.tensors), hidden.numel() * 4)
        self.history.append(hidden)  # only answered steps: a failed one is sent again after the replay
        self.position = expected
        return output, metadata

    def close(self) -> None:
        """End the session: say goodbye (the server frees the cache) and close the stream."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()


class InferenceSession:
    """A KV-cached session over blocks ``[start, end)``; use ``with ... as session: session.step(h)``.

    Where two consecutive servers of the chain both push (``ClientConfig.push_between_servers`` and their
    records' ``can_push``), a step travels client -> A -> B -> ... -> client: the client sends to the first
    server of each pushing run and reads every server's answer (each hop's output: the next hop's input,
    kept for replay). Elsewhere, and for steps carrying deep prompts, the client carries the output to the
    next server itself. A server that cannot push says so in its answer; the client then carries that link's
    steps for a while (:meth:`RemoteSequenceManager.push_failed`; logged, and counted in ``hops_sent``).
    """

    def __init__(self, manager: RemoteSequenceManager, start: int, end: int, max_length: int) -> None:
        if max_length < 1:
            raise InvalidRequestError(f"max_length must be positive, got {max_length}")
        self.manager, self.start, self.end, self.max_length = manager, start, end, max_length
        self.position = 0
        self.hops_pushed = 0  # steps a server received from the previous server
        self.hops_sent = 0  # steps the client sent to a server itself
        self._sessions: list[_ServerSession] | None = None
        self._closed = False

    def __enter__(self) -> "InferenceSession":
        return self

    @property
    def route(self) -> list[RemoteSpanInfo]:
        """The servers this session uses now, in order (empty before the first step)."""
        return [session.span for session in self._sessions or []]

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def step(self, hidden_states: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Send the next tokens' hidden states ``[batch, new_tokens, hidden]``; returns the blocks' outputs.

        ``prompts`` ``[num_blocks, batch, pre_seq_len, hidden]`` (deep prompt tuning, first step only):
        block ``start + i`` gets ``prompts[i]`` added to its input's first ``pre_seq_len`` positions.
        """
        if self._closed:
            raise InvalidRequestError("this inference session is closed; open a new one")
        if hidden_states.dim() != 3:
            raise InvalidRequestError(f"hidden states must be [batch, new_tokens, hidden], got {list(hidden_states.shape)}")
        new_tokens = hidden_states.shape[1]
        if self.position + new_tokens > self.max_length:
            raise SequenceTooLongError(
                f"the session holds {self.position} tokens and {new_tokens} more would pass its max_length="
                f"{self.max_length}; open a session with a larger max_length"
            )
        dtype, device = hidden_states.dtype, hidden_states.device
        hidden = hidden_states.detach().cpu()
        if prompts is not None:
            prompts = self._check_prompts(prompts, hidden).detach().cpu().to(hidden.dtype)
        if self._sessions is None:
            self._sessions = self._open(self.start, self.end)
        index, failures, reopenings = 0, 0, 0
        while True:
            hidden, index, error = self._run_hops(hidden, prompts, index)
            if error is None:
                break
            if isinstance(error, SessionExpiredError) and reopenings < len(self._sessions):
                reopenings += 1  # the session sat idle too long: not a fault, so neither a ban nor a failure
                self._replace(index, error)
                continue
            failures += 1
            if not is_retriable(error):
                raise error
            if failures > self.manager.config.max_retries:
                if isinstance(error, BlossomError):
                    raise error  # keep the server's typed reason (e.g. ServerFullError)
                span = self._sessions[index].span
                raise RemoteCallError(f"blocks {span.start}..{span.end - 1} failed repeatedly: {error}") from error
            self._replace(index, error)
        self.position += new_tokens
        return hidden.to(device=device, dtype=dtype)

    def _run_hops(
        self, hidden: torch.Tensor, prompts: torch.Tensor | None, index: int
    ) -> tuple[torch.Tensor, int, Exception | None]:
        """Send ``hidden`` through hops ``index..``; returns the output, the hop reached and its error (if any).

        The client sends to hop ``index`` with the route of the hops it pushes on to, then reads their answers
        in order; a hop that did not push hands the client its output to send on itself."""
        sessions = self._sessions
        self._connect_in_parallel(sessions[index:])
        while index < len(sessions):
            last = index
            if prompts is None:  # deep prompts go from the client to each server: not pushed
                while last + 1 < len(sessions) and self._pushes(last):
                    last += 1
            for hop in range(index + 1, last + 1):
                try:
                    sessions[hop].connect(hidden.shape[0])  # opened before the first push can reach it
                except Exception as error:  # met again, and blamed on that hop, when the client sends to it
                    logger.debug("Could not open hop %d ahead of a push: %s", hop, error)
                    last = hop - 1
                    break
            session = sessions[index]
            span = session.span
            try:
                route = [s.push_target for s in sessions[index + 1 : last + 1]]
                hop_prompts = None if prompts is None else prompts[span.start - self.start : span.end - self.start]
                session.send(hidden, hop_prompts, route=route)
                self.hops_sent += 1
            except Exception as error:
                return hidden, index, error
            for hop in range(index, last + 1):
                try:
                    output, answer = sessions[hop].receive(hidden)
                except Exception as error:
                    return hidden, hop, error
                hidden, index = output, hop + 1
                if hop < last:
                    if answer.get("pushed") is not True:
                        self._push_failed(hop, str(answer.get("push_error", "the server does not push")))
                        break  # the client sends the output on itself
                    self.hops_pushed += 1
        return hidden, index, None

    def _pushes(self, hop: int) -> bool:
        """Whether hop ``hop`` pushes its outputs to the next hop."""
        return self._link_pushes(self._sessions[hop], self._sessions[hop + 1])

    def _link_pushes(self, here: _ServerSession, there: _ServerSession) -> bool:
        return (there.takes_pushes and here.span.server_info.can_push
                and self.manager.may_push(here.span.peer_id, there.span.peer_id))

    def _push_failed(self, hop: int, reason: str) -> None:
        here, there = self._sessions[hop].span, self._sessions[hop + 1].span
        self.manager.push_failed(here.peer_id, there.peer_id)
        logger.info("Server %s (blocks %d..%d) could not push to %s: %s; the client carries that link's steps "
                    "for a while", here.peer_id, here.start, here.end - 1, there.peer_id, reason)

    def _connect_in_parallel(self, sessions: list[_ServerSession]) -> None:
        """Open the streams still closed at once (one round trip for the chain, not one per server); a failure
        is left for that hop's own :meth:`_ServerSession.connect` to meet again and report."""
        closed = [session for session in sessions if session._stream is None]
        if len(closed) < 2:
            return
        timeout = self.manager.config.request_timeout

        async def open_all() -> list:
            return await asyncio.gather(*(asyncio.wait_for(s._open(), timeout) for s in closed), return_exceptions=True)

        try:
            streams = self.manager.loop.run(open_all(), timeout=timeout + 5)
        except Exception:
            logger.debug("Opening streams in parallel failed", exc_info=True)
            return
        for session, stream in zip(closed, streams):
            if isinstance(stream, BlockingStream):
                session._stream = stream

    def _check_prompts(self, prompts: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        if self.position != 0:
            raise InvalidRequestError("deep prompts can only be sent with the first step of a session")
        check_prompts_shape(prompts, hidden, self.end - self.start)
        return prompts

    def _open(self, start: int, end: int) -> list[_ServerSession]:
        route = self.manager.make_route(start, end, mode="latency")
        push = getattr(self.manager.config, "push_between_servers", False)
        # the chain's first server gets every step from the client: it pushes, but takes no pushes
        sessions = [_ServerSession(self.manager, span, self.max_length,
                                   push and span.server_info.can_push and span.start != self.start)
                    for span in route]
        links = ["push" if self._link_pushes(a, b) else "via client" for a, b in zip(sessions, sessions[1:])]
        logger.info("Inference route for blocks %d..%d: %s", start, end - 1, "".join(
            f"{s.span.peer_id[-6:]}[{s.span.start}..{s.span.end - 1}]" + (f" -{link}-> " if link else "")
            for s, link in zip(sessions, [*links, ""])))
        return sessions

    def _replace(self, index: int, error: Exception) -> None:
        """Swap the failed hop for other servers and replay its history into them."""
        failed = self._sessions[index]
        if not isinstance(error, SessionExpiredError):
            self.manager.ban(failed.span.peer_id, error)
        failed.close()
        for _ in range(self.manager.config.max_retries + 1):
            replacements = self._open(failed.span.start, failed.span.end)
            try:
                steps = failed.history
                for replacement in replacements:
                    if steps:
                        prompts = None if failed.prompts is None else failed.prompts[
                            replacement.span.start - failed.span.start : replacement.span.end - failed.span.start]
                        steps = replacement.replay(steps, prompts)
            except Exception as replay_error:
                if not is_retriable(replay_error):
                    raise
                self.manager.ban(replacement.span.peer_id, replay_error)
                for session in replacements:
                    session.close()
                continue
            logger.info("Blocks %d..%d reopened on %d server(s) (%s); %d tokens replayed", failed.span.start,
                        failed.span.end - 1, len(replacements), type(error).__name__, self.position)
            self._sessions[index : index + 1] = replacements
            return
        raise RemoteCallError(f"no server could take over blocks {failed.span.start}..{failed.span.end - 1}: {error}")

    def close(self) -> None:
        """End the session on every server (frees their KV cache)."""
        if self._closed:
            return
        self._closed = True
        for session in self._sessions or []:
            try:
                session.close()
            except Exception:
                logger.debug("Error closing a server session", exc_info=True)

