"""The hardware recommendation (a pure function) on made-up GPUs, and detection with a faked pynvml."""
from __future__ import annotations

import sys
import types

import pytest

from core.errors import InvalidRequestError
from core.hardware import (
    GIB,
    GpuInfo,
    HardwareReport,
    HostInfo,
    ModelFootprint,
    block_bytes,
    detect_gpus,
    fits,
    recommend,
)

# Llama-2-7B-like: 32 blocks of ~202M parameters, 32 KV heads of 128 dims.
LLAMA_7B = ModelFootprint("Llama-2-7b", 32, 202_383_360, 202_375_168, 2 * 32 * 128)
SMALL = ModelFootprint("SmolLM2", 30, 3_540_096, 3_538_944, 2 * 3 * 64)
HOST = HostInfo("Test CPU", 8, 16, 32 * GIB, 24 * GIB)
SMALL_HOST = HostInfo("Tiny CPU", 2, 2, 4 * GIB, int(2.5 * GIB))


def gpu(name: str, total_gib: float, free_gib: float, capability: tuple[int, int], index: int = 0) -> GpuInfo:
    return GpuInfo(index, name, int(total_gib * GIB), int(free_gib * GIB), "550.54", capability)


def test_bf16_on_ampere_fp16_on_older_cards() -> None:
    ampere = recommend(LLAMA_7B, HardwareReport((gpu("RTX 3090", 24, 23, (8, 6)),), HOST))
    pascal = recommend(LLAMA_7B, HardwareReport((gpu("GTX 1080 Ti", 11, 10, (6, 1)),), HOST))
    assert (ampere.device, ampere.torch_dtype, ampere.quant_type) == ("cuda:0", "bfloat16", "none")
    assert (pascal.device, pascal.torch_dtype, pascal.quant_type) == ("cuda:0", "float16", "none")
    assert "RTX 3090" in ampere.explanation and "bfloat16" in ampere.explanation
    assert "6.1 has no fast bfloat16" in pascal.explanation


def test_blocks_fit_free_vram_minus_headroom_and_kv_cache() -> None:
    card = gpu("RTX 3060", 12, 10, (8, 6))
    rec = recommend(LLAMA_7B, HardwareReport((card,), HOST))
    per_block = block_bytes(LLAMA_7B, "bfloat16", "none", rec.cache_tokens)
    assert per_block > LLAMA_7B.params_per_block * 2  # the KV cache and a workspace come on top of the weights
    assert rec.headroom_bytes >= GIB
    assert rec.num_blocks * per_block <= card.free_memory - rec.headroom_bytes
    assert (rec.num_blocks + 1) * per_block > rec.budget_bytes  # and not one block fewer than fits
    assert 0 < rec.num_blocks < LLAMA_7B.num_blocks
    assert f"{rec.num_blocks} of 32 blocks" in rec.explanation
    assert "free for your programs" in rec.explanation


def test_used_vram_lowers_the_recommendation() -> None:
    idle = recommend(LLAMA_7B, HardwareReport((gpu("RTX 3060", 12, 11.5, (8, 6)),), HOST))
    gaming = recommend(LLAMA_7B, HardwareReport((gpu("RTX 3060", 12, 5, (8, 6)),), HOST))
    assert gaming.num_blocks < idle.num_blocks


def test_more_blocks_uses_int8_then_nf4_on_small_cards() -> None:
    small_card = HardwareReport((gpu("RTX 3060", 12, 10, (8, 6)),), HOST)
    plain = recommend(LLAMA_7B, small_card)
    packed = recommend(LLAMA_7B, small_card, more_blocks=True)
    assert packed.quant_type in ("int8", "nf4") and packed.num_blocks > plain.num_blocks
    assert packed.quant_type in packed.explanation

    roomy = HardwareReport((gpu("A100", 40, 18, (8, 0)),), HOST)
    int8 = recommend(LLAMA_7B, roomy, more_blocks=True)
    assert recommend(LLAMA_7B, roomy).num_blocks < 32
    assert (int8.quant_type, int8.num_blocks) == ("int8", 32)  # int8 is enough: no need for nf4

    whole = recommend(SMALL, small_card, more_blocks=True)
    assert (whole.quant_type, whole.num_blocks) == ("none", 30)  # the whole model fits: no quantization


def test_best_gpu_is_chosen() -> None:
    report = HardwareReport((gpu("GTX 1650", 4, 3.5, (7, 5), 0), gpu("RTX 4090", 24, 22, (8, 9), 1)), HOST)
    rec = recommend(LLAMA_7B, report)
    assert rec.device == "cuda:1" and rec.torch_dtype == "bfloat16"


def test_cpu_without_gpu_uses_float32_and_ram() -> None:
    rec = recommend(SMALL, HardwareReport((), HOST, "No NVIDIA GPU driver found"))
    assert (rec.device, rec.torch_dtype, rec.quant_type, rec.num_blocks) == ("cpu", "float32", "none", 30)
    assert rec.explanation.startswith("No NVIDIA GPU driver found, so serving on CPU")
    limited = recommend(LLAMA_7B, HardwareReport((), SMALL_HOST, "No NVIDIA GPU found"), more_blocks=True)
    assert limited.quant_type == "none" and limited.torch_dtype == "float32"
    assert limited.num_blocks == 0 and "close some programs" in limited.explanation


def test_card_too_small_for_one_block_falls_back_to_cpu() -> None:
    rec = recommend(LLAMA_7B, HardwareReport((gpu("GT 710", 2, 1, (3, 5)),), HOST))
    assert rec.device == "cpu" and rec.torch_dtype == "float32" and rec.num_blocks > 0
    assert "GT 710 has only 1.0 GiB" in rec.explanation


def test_fits_and_block_bytes_checks() -> None:
    assert fits(SMALL, 30 * block_bytes(SMALL, "float32"), 30, "float32", "none")
    assert not fits(SMALL, 29 * block_bytes(SMALL, "float32"), 30, "float32", "none")
    assert block_bytes(LLAMA_7B, "float16", "nf4") < block_bytes(LLAMA_7B, "float16", "int8") < block_bytes(
        LLAMA_7B, "float16")
    with pytest.raises(InvalidRequestError, match="torch_dtype"):
        block_bytes(SMALL, "float8")
    with pytest.raises(InvalidRequestError, match="quant_type"):
        block_bytes(SMALL, "float16", "int2")


def test_footprint_from_converted_folder(tiny_checkpoints) -> None:
    _, converted = tiny_checkpoints["llama"]
    footprint = ModelFootprint.from_converted_folder(converted)
    hidden, inter = 64, 128
    # q, o: hidden^2; k, v: hidden * hidden / 2 (2 of 4 heads); gate, up, down: hidden * inter; two norms.
    assert footprint.params_per_block == 2 * hidden * hidden + 2 * hidden * hidden // 2 + 3 * hidden * inter + 2 * hidden
    assert footprint.linear_params_per_block == footprint.params_per_block - 2 * hidden
    assert footprint.num_blocks == 4 and footprint.kv_values_per_token == 2 * 2 * 16
    with pytest.raises(InvalidRequestError, match="not a converted Blossom model"):
        ModelFootprint.from_converted_folder(converted / "block_0")


def fake_pynvml(gpus: list[GpuInfo], fail_init: bool = False) -> types.ModuleType:
    """A stand-in for the nvidia-ml-py module answering like a driver with ``gpus``."""
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init() -> None:
        if fail_init:
            raise NVMLError("NVML Shared Library Not Found")

    module.NVMLError = NVMLError
    module.nvmlInit = init
    module.nvmlShutdown = lambda: None
    module.nvmlSystemGetDriverVersion = lambda: gpus[0].driver_version if gpus else ""
    module.nvmlDeviceGetCount = lambda: len(gpus)
    module.nvmlDeviceGetHandleByIndex = lambda index: gpus[index]
    module.nvmlDeviceGetName = lambda handle: handle.name.encode()  # older bindings return bytes
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(
        total=handle.total_memory, free=handle.free_memory, used=handle.total_memory - handle.free_memory)
    module.nvmlDeviceGetCudaComputeCapability = lambda handle: handle.compute_capability
    return module


def test_detect_gpus_reads_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    cards = [gpu("RTX 3060", 12, 10, (8, 6)), gpu("GTX 1080", 8, 7.5, (6, 1), 1)]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(cards))
    found, note = detect_gpus()
    assert found == tuple(cards) and note == ""


def test_no_driver_is_a_normal_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], fail_init=True))
    assert detect_gpus() == ((), "No NVIDIA GPU driver found")
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([]))
    assert detect_gpus() == ((), "No NVIDIA GPU found")
