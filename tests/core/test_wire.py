"""Wire format: exact round trips, and clear errors for malformed input."""
import msgpack
import pytest
import torch
from hivemind.proto import runtime_pb2

from core.errors import InvalidRequestError, SequenceTooLongError
from core.wire import (
    combine_streamed_tensors,
    deserialize_tensors,
    error_response,
    raise_if_error,
    serialize_tensors,
    split_tensors_for_streaming,
    tensor_response,
    unpack_metadata,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_round_trip_is_exact(dtype):
    tensor = (torch.randn(2, 3, 5) * 100).to(dtype)
    (back,) = deserialize_tensors(serialize_tensors([tensor]), max_elements=100)
    assert back.dtype == dtype and torch.equal(back, tensor)


def test_streaming_split_and_combine():
    tensors = [torch.randn(600, 1000), torch.randn(3)]
    parts = split_tensors_for_streaming(tensors)
    assert len(parts) > 2
    back = deserialize_tensors(combine_streamed_tensors(parts), max_elements=10**6)
    assert all(torch.equal(a, b) for a, b in zip(back, tensors))


def test_truncated_buffer_is_rejected():
    (proto,) = serialize_tensors([torch.randn(4, 4)])
    proto.buffer = proto.buffer[:-3]
    with pytest.raises(InvalidRequestError, match="truncated"):
        deserialize_tensors([proto], max_elements=100)


def test_unknown_dtype_is_rejected():
    proto = runtime_pb2.Tensor(buffer=b"\0" * 8, size=[1], dtype="object")
    with pytest.raises(InvalidRequestError, match="dtype"):
        deserialize_tensors([proto], max_elements=100)


def test_too_many_elements_are_rejected_before_reading():
    proto = runtime_pb2.Tensor(buffer=b"", size=[10**6, 10**6], dtype="float32")
    with pytest.raises(InvalidRequestError, match="limit"):
        deserialize_tensors([proto], max_elements=1000)


@pytest.mark.parametrize("raw", [b"\xc1garbage", msgpack.packb([1, 2]), msgpack.packb({1: 2})])
def test_bad_metadata_is_rejected(raw):
    with pytest.raises(InvalidRequestError):
        unpack_metadata(raw)


def test_errors_travel_with_their_type():
    response = error_response(SequenceTooLongError("too long"))
    with pytest.raises(SequenceTooLongError, match="server peer1: too long"):
        raise_if_error(response, "peer1")
    assert raise_if_error(tensor_response([torch.ones(1)], position=3), "p") == {"position": 3}
