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


@pytest.mark.parametrize("tensor", [torch.randn(4, 3).t(), torch.randn(2, 5).to(torch.bfloat16), torch.randn(0, 4),
                                    torch.tensor([True, False]), torch.arange(6, dtype=torch.int32)],
                         ids=["transposed", "bfloat16", "empty", "bool", "int32"])
def test_hivemind_and_blossom_read_each_others_tensors(tensor):
    """Blossom writes and reads tensors itself, in hivemind's format: peers of either kind understand both,
    bfloat16 sent as float32 (hivemind's default) included; what is read is a writable copy."""
    from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor

    (ours,) = serialize_tensors([tensor])
    assert torch.equal(deserialize_torch_tensor(ours), tensor)
    for proto in (ours, serialize_torch_tensor(tensor)):
        (back,) = deserialize_tensors([proto], max_elements=100)
        assert back.dtype == tensor.dtype and torch.equal(back, tensor)
        back.zero_()  # writable, and not the message's bytes
        assert torch.equal(deserialize_tensors([proto], max_elements=100)[0], tensor)


def test_integers_that_require_grad_are_rejected():
    proto = runtime_pb2.Tensor(buffer=torch.arange(3).numpy().tobytes(), size=[3], dtype="int64", requires_grad=True)
    with pytest.raises(InvalidRequestError, match="could not be read"):
        deserialize_tensors([proto], max_elements=100)


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
