"""What this machine can serve: GPU/CPU/RAM detection and a recommendation of blocks and precision.

Detection uses pynvml (NVIDIA GPUs) and psutil (CPU, RAM). A machine without an NVIDIA GPU or
driver is a normal case: :func:`detect_gpus` returns no GPUs and a one-line note saying why.

:func:`recommend` is a pure function of a :class:`ModelFootprint` and a :class:`HardwareReport`:
it picks the device, the compute dtype, the quantization and how many blocks fit in free memory
with room for the KV cache and headroom for the user's own programs, and explains the choice in
one line. Nothing here imports torch, so the desktop app can call it from its GUI process.
"""
from __future__ import annotations

import json
import logging
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from core.errors import InvalidRequestError

logger = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2

DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}
# Bytes per weight of the quantized linear layers, scales included (bitsandbytes int8: one fp32 scale
# per row; nf4: one absmax per 64 values).
QUANT_BYTES = {"int8": 1.05, "nf4": 0.56}
BF16_MIN_CAPABILITY = (8, 0)

DEFAULT_CACHE_TOKENS = 8192  # KV-cache tokens reserved per served block
GPU_RUNTIME_BYTES = int(0.6 * GIB)  # CUDA context and allocator slack
WORKSPACE_FRACTION = 0.1  # activations and temporary buffers, relative to a block's weights


# ---- detection -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as reported by the driver (memory in bytes)."""

    index: int
    name: str
    total_memory: int
    free_memory: int
    driver_version: str
    compute_capability: tuple[int, int]

    @property
    def supports_bf16(self) -> bool:
        """bfloat16 compute needs compute capability 8.0 (Ampere) or newer."""
        return tuple(self.compute_capability) >= BF16_MIN_CAPABILITY

    @property
    def device(self) -> str:
        """The torch device name of this GPU."""
        return f"cuda:{self.index}"


@dataclass(frozen=True)
class HostInfo:
    """The CPU and main memory (bytes)."""

    cpu_name: str
    physical_cores: int
    logical_cores: int
    total_memory: int
    available_memory: int


@dataclass(frozen=True)
class HardwareReport:
    """Everything detected; ``gpu_note`` says why no GPU is listed (empty when GPUs were found).

    With no GPU, Blossom serves on the CPU; the note is phrased to be followed by that.
    """

    gpus: tuple[GpuInfo, ...]
    host: HostInfo
    gpu_note: str = ""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def detect_gpus() -> tuple[tuple[GpuInfo, ...], str]:
    """NVIDIA GPUs seen by the driver, and a note when there are none (no driver, no GPU, error)."""
    try:
        import pynvml
    except ImportError:
        return (), "nvidia-ml-py is not installed, so GPUs cannot be detected"
    try:
        pynvml.nvmlInit()
    except Exception as error:  # pynvml.NVMLError subclasses, e.g. LibraryNotFound on machines without a driver
        logger.info("No NVIDIA driver: %s", error)
        return (), "No NVIDIA GPU driver found"
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(GpuInfo(index, _text(pynvml.nvmlDeviceGetName(handle)), int(memory.total), int(memory.free),
                                driver, (int(major), int(minor))))
    except Exception as error:
        logger.warning("Could not read the GPUs from the NVIDIA driver: %s", error)
        return (), f"The NVIDIA driver did not answer ({error})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    if not gpus:
        return (), "No NVIDIA GPU found"
    return tuple(gpus), ""


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def detect_host() -> HostInfo:
    """CPU name and cores, total and available RAM (psutil)."""
    import psutil

    memory = psutil.virtual_memory()
    logical = psutil.cpu_count(logical=True) or 1
    return HostInfo(_cpu_name(), psutil.cpu_count(logical=False) or logical, logical, int(memory.total),
                    int(memory.available))


def detect_hardware() -> HardwareReport:
    """GPUs, CPU and RAM of this machine."""
    gpus, note = detect_gpus()
    return HardwareReport(gpus, detect_host(), note)


# ---- model size ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFootprint:
    """How big one transformer block of a model is.

    ``linear_params_per_block`` are the weights that int8/nf4 quantization shrinks; the rest (norms,
    biases) stay in the compute dtype. ``kv_values_per_token`` counts keys and values of one token
    in one block (``2 * kv_heads * head_dim``).
    """

    name: str
    num_blocks: int
    params_per_block: int
    linear_params_per_block: int
    kv_values_per_token: int

    @classmethod
    def from_converted_folder(cls, path: str | Path) -> "ModelFootprint":
        """Read ``manifest.json`` and ``config.json`` of a converted model folder (JSON only, no torch)."""
        folder = Path(path)
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InvalidRequestError(
                f"'{folder}' is not a converted Blossom model ({error}); convert it with blossom-convert"
            ) from error
        return cls.from_manifest(manifest, config)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], config: dict[str, Any]) -> "ModelFootprint":
        """Sizes from a manifest's tensor shapes (the largest block counts) and the model config's attention."""
        try:
            blocks = manifest["blocks"]
            total, linear = 0, 0
            for block in blocks:
                sizes = {name: math.prod(info["shape"]) for name, info in block["tensors"].items()}
                block_total = sum(sizes.values())
                if block_total > total:
                    total = block_total
                    linear = sum(size for name, info in block["tensors"].items()
                                 if len(info["shape"]) == 2 and (size := sizes[name]))
            heads = int(config.get("num_attention_heads") or config.get("n_head"))
            hidden = int(config.get("hidden_size") or config.get("n_embed"))
            kv_heads = int(config.get("num_key_value_heads") or heads)
            head_dim = int(config.get("head_dim") or hidden // heads)
            name = str(manifest.get("dht_prefix") or "model")
            return cls(name, int(manifest["num_blocks"]), total, linear, 2 * kv_heads * head_dim)
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidRequestError(f"the model's manifest or config is incomplete ({error!r}); re-convert it") from error


def block_bytes(footprint: ModelFootprint, torch_dtype: str, quant_type: str = "none",
                cache_tokens: int = DEFAULT_CACHE_TOKENS) -> int:
    """Memory one served block needs: weights, a workspace, and ``cache_tokens`` tokens of KV cache."""
    if torch_dtype not in DTYPE_BYTES:
        raise InvalidRequestError(f"torch_dtype must be one of {sorted(DTYPE_BYTES)}, got '{torch_dtype}'")
    if quant_type not in ("none", *QUANT_BYTES):
        raise InvalidRequestError(f"quant_type must be none, int8 or nf4, got '{quant_type}'")
    element = DTYPE_BYTES[torch_dtype]
    other = footprint.params_per_block - footprint.linear_params_per_block
    if quant_type == "none":
        weights = footprint.params_per_block * element
    else:
        weights = footprint.linear_params_per_block * QUANT_BYTES[quant_type] + other * element
    workspace = footprint.params_per_block * element * WORKSPACE_FRACTION
    cache = cache_tokens * footprint.kv_values_per_token * element
    return int(math.ceil(weights + workspace + cache))


# ---- recommendation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    """What to serve: ``num_blocks`` blocks on ``device`` in ``torch_dtype`` (+ ``quant_type``), and why."""

    device: str
    torch_dtype: str
    quant_type: str
    num_blocks: int
    total_blocks: int
    bytes_per_block: int
    budget_bytes: int
    headroom_bytes: int
    cache_tokens: int
    explanation: str

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


def gpu_headroom(gpu: GpuInfo) -> int:
    """VRAM left to the user's own programs (games, browser): 10 % of the card, at least 1 GiB."""
    return max(GIB, gpu.total_memory // 10)


def ram_headroom(host: HostInfo) -> int:
    """RAM left to the user's own programs: a quarter of it, at least 2 GiB."""
    return max(2 * GIB, host.total_memory // 4)


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / MIB:.0f} MiB"


def _fit(budget: int, per_block: int, total: int) -> int:
    return max(0, min(total, budget // per_block)) if per_block > 0 else total


def recommend(
    footprint: ModelFootprint,
    hardware: HardwareReport,
    more_blocks: bool = False,
    cache_tokens: int = DEFAULT_CACHE_TOKENS,
) -> Recommendation:
    """The blocks and precision to serve ``footprint`` on this hardware.

    On the GPU with the most free memory: bfloat16 where it is supported (compute capability 8.0+),
    float16 otherwise; with ``more_blocks`` and a card too small for the whole model, int8 or nf4
    weights fit more blocks. Without a usable GPU: float32 on the CPU. Free memory minus headroom
    for the user's programs (and the CUDA runtime) is divided by the memory one block needs,
    KV cache for ``cache_tokens`` tokens included.
    """
    best: Recommendation | None = None
    for gpu in hardware.gpus:
        candidate = _recommend_gpu(footprint, gpu, more_blocks, cache_tokens)
        if best is None or (candidate.num_blocks, candidate.budget_bytes) > (best.num_blocks, best.budget_bytes):
            best = candidate
    if best is not None and best.num_blocks > 0:
        return best
    if hardware.gpus:
        largest = max(hardware.gpus, key=lambda gpu: gpu.free_memory)
        reason = f"{largest.name} has only {_gib(largest.free_memory)} of free VRAM, too little for one block"
    else:
        reason = hardware.gpu_note or "No NVIDIA GPU found"
    return _recommend_cpu(footprint, hardware.host, cache_tokens, reason)


def _recommend_gpu(footprint: ModelFootprint, gpu: GpuInfo, more_blocks: bool, cache_tokens: int) -> Recommendation:
    total = footprint.num_blocks
    dtype = "bfloat16" if gpu.supports_bf16 else "float16"
    headroom = gpu_headroom(gpu)
    budget = max(0, gpu.free_memory - headroom - GPU_RUNTIME_BYTES)
    quant = "none"
    per_block = block_bytes(footprint, dtype, quant, cache_tokens)
    blocks = _fit(budget, per_block, total)
    if more_blocks and blocks < total:
        for option in ("int8", "nf4"):
            quant = option
            per_block = block_bytes(footprint, dtype, quant, cache_tokens)
            blocks = _fit(budget, per_block, total)
            if blocks == total:
                break
    precision = dtype if quant == "none" else f"{quant} weights, {dtype} compute"
    capability = f"compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
    why = f"{capability} supports it" if gpu.supports_bf16 else f"{capability} has no fast bfloat16"
    if quant != "none":
        why = f"{quant} to fit more blocks"
    explanation = (f"{gpu.name} ({_gib(gpu.free_memory)} free): {blocks} of {total} blocks in {precision} ({why}), "
                   f"{_gib(per_block)} each with KV cache, keeping {_gib(headroom)} free for your programs")
    return Recommendation(gpu.device, dtype, quant, blocks, total, per_block, budget, headroom, cache_tokens,
                          explanation)


def _recommend_cpu(footprint: ModelFootprint, host: HostInfo, cache_tokens: int, reason: str) -> Recommendation:
    total = footprint.num_blocks
    headroom = ram_headroom(host)
    budget = max(0, host.available_memory - headroom)
    per_block = block_bytes(footprint, "float32", "none", cache_tokens)
    blocks = _fit(budget, per_block, total)
    if blocks:
        explanation = (f"{reason}, so serving on CPU: {blocks} of {total} blocks in float32 (half precision is slow "
                       f"on CPUs), {_gib(per_block)} each with KV cache, keeping {_gib(headroom)} of RAM for your "
                       f"programs")
    else:
        explanation = (f"{reason}, and serving on CPU needs {_gib(per_block)} per block but only {_gib(budget)} of "
                       f"RAM is spare after {_gib(headroom)} for your programs; close some programs or choose a "
                       f"smaller model")
    return Recommendation("cpu", "float32", "none", blocks, total, per_block, budget, headroom, cache_tokens,
                          explanation)


def fits(footprint: ModelFootprint, budget_bytes: int, num_blocks: int, torch_dtype: str, quant_type: str,
         cache_tokens: int = DEFAULT_CACHE_TOKENS) -> bool:
    """Whether ``num_blocks`` blocks in this precision fit in ``budget_bytes`` (to warn about overrides)."""
    return num_blocks * block_bytes(footprint, torch_dtype, quant_type, cache_tokens) <= budget_bytes


def format_memory(size: int) -> str:
    """``12.0 GiB`` / ``512 MiB``: sizes for the hardware panel."""
    return _gib(size)


def summarize_gpus(gpus: Sequence[GpuInfo]) -> list[str]:
    """One line per GPU: name, memory, driver and compute capability."""
    return [
        f"GPU {gpu.index}: {gpu.name}, {_gib(gpu.total_memory)} ({_gib(gpu.free_memory)} free), driver "
        f"{gpu.driver_version}, compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
        for gpu in gpus
    ]
