"""Device/dtype choice and bitsandbytes quantization of served blocks (CPU here; GPU is mocked away)."""
import copy

import pytest
import torch
from torch import nn

from core.errors import InvalidRequestError
from core.models.registry import get_family
from core.server.placement import quantize_linear_layers, resolve_device, resolve_dtype
from tests.tiny_models import build_model


def test_auto_dtype_is_float32_on_cpu():
    assert resolve_dtype("auto", torch.device("cpu"), torch.bfloat16) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu"), torch.float32) == torch.bfloat16


def test_auto_dtype_on_gpu_keeps_half_checkpoints_and_picks_bf16_when_supported(monkeypatch):
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", cuda, torch.float16) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", cuda, torch.float32) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", cuda, torch.float32) == torch.float16


def test_missing_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(InvalidRequestError, match="no CUDA GPU"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("quant_type, max_error", [("int8", 0.1), ("nf4", 0.15)])
def test_quantized_linear_stays_close(quant_type, max_error):
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(128, 256))
    x = torch.randn(4, 128)
    expected = layer(x)
    quantized = quantize_linear_layers(copy.deepcopy(layer), quant_type, torch.device("cpu"))
    assert type(quantized[0]).__name__ == {"int8": "Linear8bitLt", "nf4": "Linear4bit"}[quant_type]
    error = (quantized[0](x) - expected).norm() / expected.norm()
    assert error < max_error


def test_int8_span_runs_and_stays_close():
    model = build_model("llama", num_layers=2, hidden=128)
    family = get_family("llama")
    blocks = [copy.deepcopy(layer) for layer in model.model.layers]
    hidden = torch.randn(1, 5, 128)
    with torch.no_grad():
        expected = family.make_span(model.config, blocks, 0)(hidden)
        quantized = [quantize_linear_layers(block, "int8", torch.device("cpu")) for block in blocks]
        output = family.make_span(model.config, quantized, 0)(hidden)
    assert ((output - expected).norm() / expected.norm()) < 0.1
