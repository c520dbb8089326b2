"""What travels between clients and servers: tensors as hivemind protobufs, metadata as msgpack.

Nothing received is ever unpickled: tensors are raw buffers with a dtype from an allow-list, and
metadata is a msgpack map of plain values. Malformed input raises :class:`InvalidRequestError`.
Errors travel back inside a response's metadata (``{"error": {"code", "message"}}``).
Streams carry frames as hivemind writes them (marker byte, 8-byte length, payload); :mod:`core.frames`
owns that format, and clients write and read them directly (:func:`write_message`, :func:`read_message`,
re-exported here), one frame per request or answer.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import msgpack
import torch
from hivemind.proto import runtime_pb2
from hivemind.utils.streaming import combine_from_streaming, split_for_streaming

from core.errors import BlossomError, InvalidRequestError, error_from_code
from core.frames import END_OF_STREAM_FRAME, SMALL_FRAME_BYTES, read_message, write_message  # noqa: F401 (re-exported)

BLOCK_HANDLER_NAME = "BlockRequestHandler"
"""hivemind names a servicer's RPC handles after its class: ``BlockRequestHandler.rpc_inference``."""


def block_rpc_handle(method: str) -> str:
    """The p2p handle name of the block servers' RPC ``method`` (clients, relays and servers agree on it)."""
    return f"{BLOCK_HANDLER_NAME}.{method}"


WIRE_DTYPES = {name: getattr(torch, name) for name in ("float32", "float16", "bfloat16", "int64", "int32", "bool")}
"""The dtypes a tensor may travel in, by their wire name (hivemind's: torch's name without ``torch.``)."""
MAX_METADATA_BYTES = 64 * 1024


def serialize_tensors(tensors: Iterable[torch.Tensor]) -> list[runtime_pb2.Tensor]:
    """Serialize CPU tensors without compression (exact values), in hivemind's ``serialize_torch_tensor`` format:
    the raw bytes in C order, bfloat16 as its 2-byte pattern. Values only: ``requires_grad`` is always sent
    false (hivemind sends the tensor's), since whoever receives a tensor builds its own graph."""
    protos = []
    for tensor in tensors:
        tensor = tensor.detach() if tensor.device.type == "cpu" else tensor.detach().cpu()
        raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor  # numpy has no bfloat16
        protos.append(runtime_pb2.Tensor(compression=runtime_pb2.CompressionType.NONE, buffer=raw.numpy().tobytes(),
                                         size=tensor.shape, dtype=str(tensor.dtype)[len("torch."):],
                                         requires_grad=False))
    return protos


def deserialize_tensors(protos: Sequence[runtime_pb2.Tensor], max_elements: int) -> list[torch.Tensor]:
    """Deserialize received tensors, checking dtype and size before touching the buffer."""
    tensors = []
    for position, proto in enumerate(protos):
        if proto.compression != runtime_pb2.CompressionType.NONE:
            raise InvalidRequestError(f"tensor {position}: compressed tensors are not accepted; send them uncompressed")
        dtype = WIRE_DTYPES.get(proto.dtype)
        if dtype is None:
            raise InvalidRequestError(
                f"tensor {position}: dtype '{proto.dtype}' is not accepted (use one of {sorted(WIRE_DTYPES)})"
            )
        shape = list(proto.size)
        if any(dim < 0 for dim in shape):
            raise InvalidRequestError(f"tensor {position}: negative dimension in shape {shape}")
        numel = 1
        for dim in shape:
            numel *= dim
        if numel > max_elements:
            raise InvalidRequestError(
                f"tensor {position}: {numel} elements is over this server's limit of {max_elements}; send smaller batches"
            )
        itemsize = dtype.itemsize
        sent_as = dtype
        if len(proto.buffer) != numel * itemsize:
            if dtype == torch.bfloat16 and len(proto.buffer) == numel * 4:
                sent_as = torch.float32  # hivemind's legacy mode sends bfloat16 as float32
            else:
                raise InvalidRequestError(
                    f"tensor {position}: buffer holds {len(proto.buffer)} bytes but shape {shape} of {proto.dtype} "
                    f"needs {numel * itemsize}; the message is truncated or corrupt"
                )
        try:  # a writable copy of the bytes (tensors may be changed in place later); an empty buffer has no storage
            flat = torch.frombuffer(bytearray(proto.buffer), dtype=sent_as) if numel else torch.empty(0, dtype=sent_as)
            tensor = (flat if sent_as is dtype else flat.to(dtype)).view(shape)  # each torch call counts in a step
            tensors.append(tensor.requires_grad_(True) if proto.requires_grad else tensor)
        except RuntimeError as error:  # say, requires_grad on integers
            raise InvalidRequestError(f"tensor {position} could not be read: {error}") from error
    return tensors


def pack_metadata(metadata: dict[str, Any]) -> bytes:
    """Encode a metadata map."""
    return msgpack.packb(metadata, use_bin_type=True)


def unpack_metadata(raw: bytes) -> dict[str, Any]:
    """Decode a metadata map, rejecting anything that is not a small msgpack map with string keys."""
    if not raw:
        return {}
    if len(raw) > MAX_METADATA_BYTES:
        raise InvalidRequestError(f"metadata of {len(raw)} bytes is over the limit of {MAX_METADATA_BYTES}")
    try:
        metadata = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as error:
        raise InvalidRequestError(f"metadata is not valid msgpack: {error}") from error
    if not isinstance(metadata, dict) or not all(isinstance(key, str) for key in metadata):
        raise InvalidRequestError("metadata must be a msgpack map with string keys")
    return metadata


def check_prompts_shape(prompts: torch.Tensor, hidden: torch.Tensor, num_blocks: int) -> None:
    """Raise :class:`InvalidRequestError` unless deep ``prompts`` fit ``num_blocks`` blocks and the
    ``[batch, seq_len, hidden]`` states ``hidden``: ``[num_blocks, batch, pre_seq_len <= seq_len, hidden]``
    with at least one prompt position. Clients check before sending, servers on receipt."""
    batch, seq_len, hidden_size = hidden.shape
    if (
        prompts.dim() != 4
        or prompts.shape[0] != num_blocks
        or prompts.shape[1] != batch
        or not 1 <= prompts.shape[2] <= seq_len
        or prompts.shape[3] != hidden_size
    ):
        raise InvalidRequestError(
            f"prompts must have shape [num_blocks={num_blocks}, batch={batch}, pre_seq_len<={seq_len}, "
            f"{hidden_size}], got {list(prompts.shape)}"
        )


def error_response(error: BlossomError) -> runtime_pb2.ExpertResponse:
    """A response that carries ``error`` back to the caller."""
    return runtime_pb2.ExpertResponse(metadata=pack_metadata({"error": {"code": error.code, "message": str(error)}}))


def tensor_response(tensors: Iterable[torch.Tensor], **metadata: Any) -> runtime_pb2.ExpertResponse:
    """A successful response carrying ``tensors``."""
    return runtime_pb2.ExpertResponse(
        tensors=serialize_tensors(tensors), metadata=pack_metadata(metadata) if metadata else b""
    )


def raise_if_error(response: runtime_pb2.ExpertResponse, peer: str) -> dict[str, Any]:
    """Return a response's metadata, re-raising the server's error if it carries one."""
    metadata = unpack_metadata(response.metadata)
    error = metadata.get("error")
    if isinstance(error, dict):
        raise error_from_code(str(error.get("code")), f"server {peer}: {error.get('message')}")
    return metadata


STREAM_CHUNK_BYTES = 2**20
UNARY_LIMIT_BYTES = 2 * 2**20  # hivemind's unary messages are capped at 4 MiB; stream anything larger
STREAM_ABOVE_BYTES = 64 * 2**10
"""Requests larger than this go over a stream: hivemind's unary path costs about twice a stream's round
trip per byte, and above this size that outweighs opening a stream (benchmarks/README.md)."""


def split_tensors_for_streaming(tensors: Iterable[torch.Tensor]) -> list[runtime_pb2.Tensor]:
    """Serialize tensors and cut them into chunks; each tensor's first chunk carries its dtype."""
    parts: list[runtime_pb2.Tensor] = []
    for proto in serialize_tensors(tensors):
        parts.extend(split_for_streaming(proto, STREAM_CHUNK_BYTES))
    return parts


def combine_streamed_tensors(parts: Iterable[runtime_pb2.Tensor]) -> list[runtime_pb2.Tensor]:
    """Reassemble tensors cut by :func:`split_tensors_for_streaming`."""
    tensors: list[list[runtime_pb2.Tensor]] = []
    for part in parts:
        if part.dtype or not tensors:
            tensors.append([])
        tensors[-1].append(part)
    return [combine_from_streaming(chunks) for chunks in tensors]


def nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Total payload size of ``tensors``."""
    return sum(t.numel() * t.element_size() for t in tensors)


def should_stream(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether a request carrying ``tensors`` goes faster (or must go, past the unary limit) as a stream."""
    return nbytes(tensors) > STREAM_ABOVE_BYTES
