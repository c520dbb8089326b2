"""The fuzzer's requests: seeded random and mutated messages sent straight to a server's RPCs.

:class:`Fuzzer` builds valid requests and mutates them (uids, tensor shapes, dtypes, buffers,
compression, metadata, tensor counts), sends random bytes and corrupted serialized requests under
the protobuf layer (the p2p client's raw unary call), writes raw stream frames (garbage, unknown
markers, huge announced lengths, cut-off frames, over-long streams), and drives inference sessions
with mutated steps or abandons them mid-way. Servers with a direct port (default servers) get half of
the stream requests there (TLS) and half over p2p. Each request's outcome is a short string: the error
code the server answered with, ``ok``, a refusal by the p2p layer, or how the stream ended.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import AsyncIterator, Awaitable, Callable

import msgpack
import torch
from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from core.client.transports import open_direct_stream, open_p2p_stream
from core.dht.schema import RemoteSpanInfo
from core.server.handler import MAX_STREAM_MESSAGES
from core.wire import block_rpc_handle, pack_metadata, serialize_tensors, unpack_metadata

UNARY_METHODS = ("rpc_forward", "rpc_backward", "rpc_info")
STREAM_METHODS = ("rpc_forward_stream", "rpc_backward_stream", "rpc_inference")
CALL_TIMEOUT = 30.0
OVERLONG_STREAMS = 2  # streams of MAX_STREAM_MESSAGES + 1 messages (each costs thousands of frames)


def _handle(method: str) -> str:
    return block_rpc_handle(method)


def frame(payload: bytes, marker: bytes = P2P.MESSAGE_MARKER) -> bytes:
    """One frame of hivemind's stream format: marker byte, 8-byte big-endian length, payload."""
    return marker + len(payload).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER) + payload


END_OF_STREAM = frame(b"", P2P.ERROR_MARKER)


def outcome_of(response: runtime_pb2.ExpertResponse) -> str:
    """``'error:<code>'`` for a typed error answer, ``'ok'`` for a normal one."""
    try:
        error = unpack_metadata(response.metadata).get("error")
    except Exception:
        return "malformed-answer"
    return f"error:{error.get('code')}" if isinstance(error, dict) else "ok"


class Fuzzer:
    """Sends seeded random and mutated requests to the servers of ``spans`` through ``p2p``."""

    def __init__(self, p2p: P2P, spans: list[RemoteSpanInfo], dht_prefix: str, hidden_size: int, seed: int) -> None:
        self.p2p, self.spans, self.prefix, self.hidden = p2p, spans, dht_prefix, hidden_size
        self.rng = random.Random(seed)
        self.torch_rng = torch.Generator().manual_seed(seed)
        self.outcomes: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.messages = 0
        self.direct_streams = 0
        self.overlong_left = OVERLONG_STREAMS

    async def _open_stream(self, span: RemoteSpanInfo,
                           method: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw stream to ``method``: over the server's direct port for half of the calls when it has one."""
        endpoint = span.server_info.direct_endpoint
        if endpoint is not None and self.rng.random() < 0.5:
            self.direct_streams += 1
            return await open_direct_stream(endpoint, span.peer_id, method)
        return await open_p2p_stream(self.p2p, span.peer_id, method)

    # ---- valid material to mutate -------------------------------------------------------------
    def _span(self) -> RemoteSpanInfo:
        return self.rng.choice(self.spans)

    def _uid(self, span: RemoteSpanInfo) -> str:
        start = self.rng.randrange(span.start, span.end)
        end = self.rng.randrange(start + 1, span.end + 1)
        return " ".join(f"{self.prefix}.{index}" for index in range(start, end))

    def _tensor(self, batch: int, seq: int, dtype: torch.dtype = torch.float32) -> runtime_pb2.Tensor:
        values = torch.randn(batch, seq, self.hidden, generator=self.torch_rng).to(dtype)
        return serialize_tensors([values])[0]

    def _valid_request(self, span: RemoteSpanInfo, method: str) -> runtime_pb2.ExpertRequest:
        batch, seq = self.rng.randint(1, 3), self.rng.randint(1, 6)
        dtype = self.rng.choice([torch.float32, torch.float32, torch.float16, torch.bfloat16])
        count = 2 if method.startswith("rpc_backward") else 1
        tensors = [self._tensor(batch, seq, dtype) for _ in range(count)]
        return runtime_pb2.ExpertRequest(uid=self._uid(span), tensors=tensors)

    # ---- mutations --------------------------------------------------------------------------------
    def _random_bytes(self, low: int = 0, high: int = 600) -> bytes:
        return self.rng.randbytes(self.rng.randint(low, high))

    def _bad_uid(self, uid: str) -> str:
        parts = uid.split()
        choices: list[Callable[[], str]] = [
            lambda: "",
            lambda: self._random_bytes(1, 40).decode("latin-1"),
            lambda: f"{self.prefix}.x",
            lambda: f"other-model.{self.rng.randint(0, 3)}",
            lambda: f"{self.prefix}.{self.rng.randint(4, 10**6)}",
            lambda: f"{self.prefix}.{'9' * self.rng.randint(20, 5000)}",
            lambda: " ".join(reversed(parts)) + f" {self.prefix}.0",
            lambda: " ".join(parts + parts),
            lambda: " ".join(f"{self.prefix}.{index}" for index in range(self.rng.randint(0, 3), 3000)),
            lambda: uid.replace(".", "\u2024"),
            lambda: uid + "\x00",
        ]
        return self.rng.choice(choices)()

    def _mutate_tensor(self, tensor: runtime_pb2.Tensor) -> None:
        choice = self.rng.randrange(9)
        if choice == 0:
            tensor.dtype = self.rng.choice(["float64", "int8", "complex64", "", "float32\x00", "torch.float32",
                                            "uint8", "bool", "int64", self._random_bytes(1, 12).hex()])
        elif choice == 1:
            del tensor.size[:]
            tensor.size.extend(self.rng.choice([
                [], [0], [self.rng.randint(0, 2**32 - 1)], [1, 2**31, self.hidden], [2**32 - 1] * 3,
                [self.rng.randint(0, 9) for _ in range(self.rng.randint(1, 6))], [1, 1, self.hidden, 1],
            ]))
        elif choice == 2:
            tensor.buffer = tensor.buffer[: self.rng.randrange(len(tensor.buffer) + 1)]
        elif choice == 3:
            tensor.buffer = tensor.buffer + self._random_bytes(1, 64)
        elif choice == 4:  # right length, random bits: NaN, Inf and huge values turn up
            tensor.buffer = self.rng.randbytes(len(tensor.buffer))
        elif choice == 5:
            data = bytearray(tensor.buffer)
            for _ in range(self.rng.randint(1, 8)):
                if data:
                    data[self.rng.randrange(len(data))] = 0xFF
            tensor.buffer = bytes(data)
        elif choice == 6:
            tensor.compression = self.rng.choice([1, 2, 3, 4, 5, 77, 2**31 - 1])
        elif choice == 7:
            tensor.requires_grad = True
        else:
            tensor.chunks = self.rng.randint(0, 2**31 - 1)

    def _bad_metadata(self) -> bytes:
        choices: list[Callable[[], bytes]] = [
            lambda: self._random_bytes(1, 200),
            lambda: b"\xc1",
            lambda: msgpack.packb([1, 2, 3]),
            lambda: msgpack.packb({1: 2}),
            lambda: msgpack.packb({"max_length": self.rng.choice(["7", -1, 0, 2**40, 1.5, True, None, [3]])}),
            lambda: msgpack.packb({"start_from_position": self.rng.choice([-1, 10**9, "0", True, 2.0])}),
            lambda: msgpack.packb({"prompts": self.rng.choice([True, 1, "yes", {"a": 1}])}),
            lambda: msgpack.packb({"error": {"code": "server_full"}}),
            lambda: msgpack.packb({"graph_id": self.rng.choice(["0" * 32, "", [1], {"a": 1}, 7, None])}),
            lambda: msgpack.packb({"k" * 10: "v" * self.rng.randint(0, 70_000)}),
            lambda: b"\x91" * 5000 + b"\x90",  # deeply nested arrays
            lambda: msgpack.packb(msgpack.ExtType(5, b"\x80\x04K\x01."), use_bin_type=True),  # pickle bytes in an ext
        ]
        return self.rng.choice(choices)()

    def _mutate_request(self, request: runtime_pb2.ExpertRequest) -> None:
        for _ in range(self.rng.randint(1, 3)):
            choice = self.rng.randrange(5)
            if choice == 0:
                request.uid = self._bad_uid(request.uid)
            elif choice == 1 and request.tensors:
                self._mutate_tensor(self.rng.choice(request.tensors))
            elif choice == 2:
                request.metadata = self._bad_metadata()
            elif choice == 3:
                if request.tensors and self.rng.random() < 0.5:
                    del request.tensors[self.rng.randrange(len(request.tensors))]
                else:
                    request.tensors.append(self._tensor(self.rng.randint(1, 2), self.rng.randint(1, 3)))
            else:
                values = torch.randn(1, 2, self.hidden, generator=self.torch_rng)
                values[0, 0, self.rng.randrange(self.hidden)] = self.rng.choice([float("nan"), float("inf")])
                if request.tensors:
                    request.tensors[0].CopyFrom(serialize_tensors([values])[0])

    # ---- request kinds ----------------------------------------------------------------------------
    async def unary_mutated(self) -> str:
        span, method = self._span(), self.rng.choice(UNARY_METHODS)
        request = self._valid_request(span, method)
        self._mutate_request(request)
        return await self._raw_unary(span, method, request.SerializeToString())

    async def unary_garbage(self) -> str:
        return await self._raw_unary(self._span(), self.rng.choice(UNARY_METHODS), self._random_bytes())

    async def unary_bitflip(self) -> str:
        span, method = self._span(), self.rng.choice(UNARY_METHODS[:2])
        data = bytearray(self._valid_request(span, method).SerializeToString())
        if self.rng.random() < 0.5:
            del data[self.rng.randrange(len(data)):]
        for _ in range(self.rng.randint(1, 6)):
            if data:
                data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        return await self._raw_unary(span, method, bytes(data))

    async def _raw_unary(self, span: RemoteSpanInfo, method: str, payload: bytes) -> str:
        self.messages += 1
        try:
            answer = await self.p2p._client.call_unary_handler(PeerID.from_base58(span.peer_id), _handle(method),
                                                                payload)
        except Exception as error:  # the p2p layer's answer to bytes that are not a request at all
            return f"refused:{type(error).__name__}"
        return outcome_of(runtime_pb2.ExpertResponse.FromString(answer))

    async def stream_frames(self) -> str:
        """A raw stream to a streaming RPC: valid or mutated requests, then something malformed."""
        span, method = self._span(), self.rng.choice(STREAM_METHODS)
        frames = []
        for _ in range(self.rng.randint(0, 3)):
            request = self._valid_request(span, method)
            if method == "rpc_inference":
                request.metadata = pack_metadata({"max_length": self.rng.randint(1, 64)})
            if self.rng.random() < 0.5:
                self._mutate_request(request)
            frames.append(frame(request.SerializeToString()))
        ending = self.rng.randrange(6)
        if ending == 0:
            frames.append(self._random_bytes(1, 300))  # not a frame at all
        elif ending == 1:
            frames.append(frame(self._random_bytes(1, 300)))  # a frame whose payload is not a protobuf
        elif ending == 2:  # a header announcing far more than the server takes, then a few bytes
            frames.append(P2P.MESSAGE_MARKER + self.rng.randint(2**24, 2**63).to_bytes(8, "big") + b"xyz")
        elif ending == 3:
            frames.append(bytes([self.rng.randint(2, 255)]) + frame(b"")[1:])  # unknown marker byte
        elif ending == 4:
            frames.append(frame(self._valid_request(span, method).SerializeToString())[:-5])  # cut short
        else:
            frames.append(END_OF_STREAM)
        close_early = ending == 4 or self.rng.random() < 0.2
        outcome = await self._raw_stream(span, method, frames, close_early)
        if outcome == "closed-without-answer" and method == "rpc_inference" and frames == [END_OF_STREAM]:
            return "nothing-asked"  # a session ended before its first step: nothing to answer
        return outcome

    async def overlong_stream(self) -> str:
        span, method = self._span(), self.rng.choice(STREAM_METHODS[:2])
        tiny = frame(runtime_pb2.ExpertRequest(uid=self._uid(span)).SerializeToString())
        return await self._raw_stream(span, method, [tiny] * (MAX_STREAM_MESSAGES + 2) + [END_OF_STREAM], False)

    async def _raw_stream(self, span: RemoteSpanInfo, method: str, frames: list[bytes], close_early: bool) -> str:
        reader, writer = await self._open_stream(span, method)
        try:
            for chunk in frames:
                writer.write(chunk)
                self.messages += 1
            await writer.drain()
            if close_early:
                return "closed-by-fuzzer"
            outcomes = []
            async for outcome in _read_answers(reader):
                outcomes.append(outcome)
                if outcome != "ok":
                    break  # the server has ended this stream with its reason; like a real client, stop here
        finally:
            writer.close()
        errors = [outcome for outcome in outcomes if outcome != "ok"]
        return errors[0] if errors else ("ok" if outcomes else "closed-without-answer")

    async def session(self) -> str:
        """An inference session over a raw stream: a valid opening, then valid or mutated steps; it ends with a
        goodbye, by closing the connection mid-session, or by going past max_length."""
        span = self._span()
        uid = self._uid(span)
        max_length, batch = self.rng.randint(2, 24), self.rng.randint(1, 2)
        reader, writer = await self._open_stream(span, "rpc_inference")
        answers = _read_answers(reader)
        result = "ok"
        try:
            opening = runtime_pb2.ExpertRequest(uid=uid, tensors=[self._tensor(batch, self.rng.randint(1, 3))],
                                                metadata=pack_metadata({"max_length": max_length}))
            steps = [opening] + [
                runtime_pb2.ExpertRequest(tensors=[self._tensor(batch, 1)]) for _ in range(self.rng.randint(0, 30))
            ]
            for request in steps:
                if self.rng.random() < 0.15:
                    self._mutate_request(request)
                writer.write(frame(request.SerializeToString()))
                self.messages += 1
                if self.rng.random() < 0.05:
                    return "abandoned-mid-session"  # the finally closes the connection without END
                try:
                    outcome = await anext(answers)
                except StopAsyncIteration:
                    return "closed-without-answer"
                if outcome != "ok":
                    return outcome  # the server ended the session with its reason; the finally closes our side
            writer.write(END_OF_STREAM)
            async for outcome in answers:
                result = outcome if outcome != "ok" else result
            return result
        finally:
            writer.close()
            await answers.aclose()

    # ---- driver -------------------------------------------------------------------------------------
    def _pick(self) -> tuple[str, Callable[[], Awaitable[str]]]:
        if self.overlong_left and self.rng.random() < 0.002:
            self.overlong_left -= 1
            return "overlong-stream", self.overlong_stream
        kinds = [("unary-mutated", self.unary_mutated, 35), ("unary-garbage", self.unary_garbage, 10),
                 ("unary-bitflip", self.unary_bitflip, 15), ("stream-frames", self.stream_frames, 20),
                 ("session", self.session, 20)]
        name, method, _ = self.rng.choices(kinds, weights=[weight for *_, weight in kinds])[0]
        return name, method

    async def run(self, total: int, deadline: float, concurrency: int) -> None:
        """Send ``total`` requests (fewer if ``deadline``, a ``time.monotonic()`` value, comes first)."""
        planned = [self._pick() for _ in range(total)]  # drawn in order: the same seed gives the same requests
        queue: asyncio.Queue = asyncio.Queue()
        for item in planned:
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty() and time.monotonic() < deadline:
                name, method = queue.get_nowait()
                self.kinds[name] += 1
                try:
                    outcome = await asyncio.wait_for(method(), CALL_TIMEOUT)
                except asyncio.TimeoutError:
                    outcome = "timeout"
                except (ConnectionError, asyncio.IncompleteReadError, OSError) as error:
                    outcome = f"connection:{type(error).__name__}"
                self.outcomes[outcome] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _read_answers(reader: asyncio.StreamReader) -> AsyncIterator[str]:
    """Outcomes of the server's answer frames until it closes the stream."""
    while True:
        try:
            marker = await reader.readexactly(1)
            length = int.from_bytes(await reader.readexactly(P2P.HEADER_LEN), P2P.BYTEORDER)
            payload = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        if marker != P2P.MESSAGE_MARKER:
            yield "refused:RPCError"
            continue
        yield outcome_of(runtime_pb2.ExpertResponse.FromString(payload))
