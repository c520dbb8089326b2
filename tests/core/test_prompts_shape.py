"""The deep prompts shape check that clients (before sending) and servers (on receipt) share."""
from __future__ import annotations

import pytest
import torch

from core.errors import InvalidRequestError
from core.client.inference_session import InferenceSession
from core.client.remote_sequential import RemoteSequential
from core.server.backend import SpanBackend
from core.wire import check_prompts_shape

SHAPE_ERROR = r"prompts must have shape \[num_blocks=4, batch=2, pre_seq_len<=5, 64\], got \[4, 2, 6, 64\]"


@pytest.mark.parametrize("shape", [(4, 2, 1, 64), (4, 2, 5, 64)])
def test_prompts_that_fit_pass(shape: tuple[int, ...]) -> None:
    check_prompts_shape(torch.zeros(shape), torch.zeros(2, 5, 64), num_blocks=4)


@pytest.mark.parametrize("shape", [(3, 2, 2, 64), (4, 3, 2, 64), (4, 2, 6, 64), (4, 2, 0, 64), (4, 2, 2, 32), (4, 2, 64)])
def test_prompts_that_do_not_fit_say_what_was_expected(shape: tuple[int, ...]) -> None:
    expected = rf"prompts must have shape \[num_blocks=4, batch=2, pre_seq_len<=5, 64\], got \[{', '.join(map(str, shape))}\]"
    with pytest.raises(InvalidRequestError, match=expected):
        check_prompts_shape(torch.zeros(shape), torch.zeros(2, 5, 64), num_blocks=4)


def test_clients_and_servers_refuse_the_same_prompts_the_same_way() -> None:
    manager = type("Manager", (), {"total_blocks": 6, "dht_prefix": "model"})()  # nothing is called on it
    hidden, prompts = torch.zeros(2, 5, 64), torch.zeros(4, 2, 6, 64)
    with pytest.raises(InvalidRequestError, match=SHAPE_ERROR):
        RemoteSequential(manager, hidden_size=64, start=1, end=5)(hidden, prompts)
    with pytest.raises(InvalidRequestError, match=SHAPE_ERROR):
        InferenceSession(manager, 1, 5, max_length=8).step(hidden, prompts)
    with pytest.raises(InvalidRequestError, match=SHAPE_ERROR):
        SpanBackend.check_prompts(None, prompts, hidden, 1, 5)  # uses nothing of the instance
    # each side keeps its own extra checks, in the same order as before
    with pytest.raises(InvalidRequestError, match="prompts must be a float tensor, got torch.int64"):
        RemoteSequential(manager, hidden_size=64, start=1, end=5)(hidden, torch.zeros(4, 2, 2, 64, dtype=torch.int64))
    with pytest.raises(InvalidRequestError, match="prompts must be float32, float16 or bfloat16, got torch.int64"):
        SpanBackend.check_prompts(None, torch.zeros(4, 2, 6, 64, dtype=torch.int64), hidden, 1, 5)
    with pytest.raises(InvalidRequestError, match="prompts contain NaN or Inf values"):
        SpanBackend.check_prompts(None, torch.full((4, 2, 2, 64), float("nan")), hidden, 1, 5)
