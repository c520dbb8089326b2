"""The most of this PC that Blossom may use: VRAM, a share of the RAM, CPU threads, and a GPU power cap.

Why the hardware report is limited instead of the recommendation: :func:`core.hardware.recommend`
already turns free memory into blocks, KV-cache tokens and an explanation. Showing it a PC that
has at most the allowed memory spare (:func:`limited_hardware`) makes every number it derives
respect the limit, and the server serves exactly what the recommendation says. Threads go to the
server as ``torch_threads`` (:func:`app.settings.build_serve_request`'s ``num_threads``).

A GPU power cap is the driver's setting for the whole card, not Blossom's: NVML lets only
administrators change it on most systems, so :func:`set_power_cap` says plainly when that is the
case and how to do it by hand. No Qt here.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from core.hardware import GIB, GPU_RUNTIME_BYTES, HardwareReport, gpu_headroom, ram_headroom

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """0 (or 100 %) means no limit."""

    max_vram_gib: float = 0.0
    ram_percent: int = 100
    cpu_threads: int = 0
    gpu_power_watts: int = 0

    @classmethod
    def of(cls, settings: object) -> Limits:
        """The limits among the app's settings (fields of the same names)."""
        return cls(**{item.name: getattr(settings, item.name, item.default) for item in dataclasses.fields(cls)})


def limited_hardware(report: HardwareReport, limits: Limits) -> HardwareReport:
    """``report`` with at most the allowed VRAM and RAM spare for Blossom (after the usual headroom)."""
    gpus = report.gpus
    if limits.max_vram_gib > 0:
        allowed = int(limits.max_vram_gib * GIB)
        gpus = tuple(dataclasses.replace(gpu, free_memory=min(gpu.free_memory,
                                                              allowed + gpu_headroom(gpu) + GPU_RUNTIME_BYTES))
                     for gpu in gpus)
    host = report.host
    if 0 < limits.ram_percent < 100:
        allowed = host.total_memory * limits.ram_percent // 100
        host = dataclasses.replace(host, available_memory=min(host.available_memory, allowed + ram_headroom(host)))
    return dataclasses.replace(report, gpus=gpus, host=host)


def describe_limits(limits: Limits) -> str:
    """The limits in force as one line for the recommendation ("" when none)."""
    parts = []
    if limits.max_vram_gib > 0:
        parts.append(f"at most {limits.max_vram_gib:g} GiB of VRAM")
    if 0 < limits.ram_percent < 100:
        parts.append(f"at most {limits.ram_percent} % of the RAM")
    if limits.cpu_threads > 0:
        parts.append(f"{limits.cpu_threads} CPU thread{'s' if limits.cpu_threads != 1 else ''}")
    return "Your limits: " + ", ".join(parts) if parts else ""


def set_power_cap(watts: int) -> str:
    """Cap every NVIDIA GPU at ``watts`` (0: leave the driver's limit alone); returns what happened, for a person."""
    if watts <= 0:
        return ""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return "No NVIDIA GPU or driver found: there is no GPU power cap to set on this PC"
    try:
        results = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            low, high = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
            milliwatts = max(low, min(high, watts * 1000))
            try:
                pynvml.nvmlDeviceSetPowerManagementLimit(handle, milliwatts)
            except pynvml.NVMLError as error:
                if "permission" in str(error).lower() or "NoPermission" in type(error).__name__:
                    return (f"The NVIDIA driver lets only administrators cap the GPU's power: run "
                            f"'nvidia-smi -pl {milliwatts // 1000}' as administrator (root), or leave the cap at 0")
                if "not supported" in str(error).lower() or "NotSupported" in type(error).__name__:
                    return "This GPU's driver does not allow a power cap"
                raise
            results.append(f"GPU {index} capped at {milliwatts // 1000} W"
                           + (f" (its range is {low // 1000}–{high // 1000} W)" if milliwatts != watts * 1000 else ""))
        return "; ".join(results)
    except Exception as error:
        logger.warning("Setting the GPU power cap failed", exc_info=True)
        return f"Could not cap the GPU's power: {error}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
