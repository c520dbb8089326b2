"""Where and in what precision a server runs its blocks."""
from __future__ import annotations

import logging

import torch
from torch import nn

from core.errors import InvalidRequestError

logger = logging.getLogger(__name__)


def resolve_device(requested: str | None) -> torch.device:
    """``requested`` if given (checked), else CUDA when available, else CPU."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(
            f"--device {requested} was asked for but no CUDA GPU is usable here (driver or CUDA build of torch "
            f"missing); leave --device out to serve on the CPU"
        )
    return device


def resolve_dtype(requested: str, device: torch.device, stored: torch.dtype) -> torch.dtype:
    """The compute dtype: ``requested`` unless ``'auto'``.

    Auto: float32 on CPU (half precision is slow there); on a GPU the stored half dtype, else
    bfloat16 where the GPU supports it and float16 otherwise.
    """
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cpu":
        return torch.float32
    if stored in (torch.float16, torch.bfloat16):
        return stored
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def quantize_linear_layers(module: nn.Module, quant_type: str, device: torch.device) -> nn.Module:
    """Replace every ``nn.Linear`` in ``module`` with a bitsandbytes int8 or nf4 layer holding the same weights."""
    if quant_type == "none":
        return module
    import bitsandbytes as bnb

    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, _quantized_copy(child, quant_type, bnb, device))
        else:
            quantize_linear_layers(child, quant_type, device)
    return module


def _quantized_copy(linear: nn.Linear, quant_type: str, bnb: object, device: torch.device) -> nn.Module:
    weight = linear.weight.data
    has_bias = linear.bias is not None
    if quant_type == "int8":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False,
                                    threshold=6.0)
        layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
    elif quant_type == "nf4":
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias, quant_type="nf4",
                                  compute_dtype=weight.dtype)
        layer.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, quant_type="nf4")
    else:
        raise ValueError(f"unknown quant_type '{quant_type}'")
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data.cpu(), requires_grad=False)
    return layer.to(device)  # moving to the device performs the quantization
