"""Limits: the recommendation sees at most the allowed VRAM and RAM, threads reach the server's request, and a GPU
power cap says plainly when the driver refuses it (only pynvml is faked: there is no NVIDIA GPU here)."""
from __future__ import annotations

import sys
import types

import pytest

from app.limits import Limits, describe_limits, limited_hardware, set_power_cap
from app.settings import AppSettings, build_serve_request
from core.hardware import GIB, GpuInfo, HardwareReport, HostInfo, ModelFootprint, recommend

GPU = GpuInfo(0, "RTX 4090", 24 * GIB, 22 * GIB, "550.54", (8, 9))
HOST = HostInfo("cpu", 8, 16, 64 * GIB, 48 * GIB)


def footprint(blocks: int = 80) -> ModelFootprint:
    """A 70B-like model: 0.8 G parameters per block, grouped-query KV cache."""
    return ModelFootprint("big", blocks, 800_000_000, 790_000_000, 2 * 8 * 128)


def test_vram_and_ram_limits_lower_what_is_recommended() -> None:
    report = HardwareReport(gpus=(GPU,), host=HOST)
    free = recommend(footprint(), report)
    capped = recommend(footprint(), limited_hardware(report, Limits(max_vram_gib=4)))
    assert capped.device == "cuda:0" and 0 < capped.num_blocks < free.num_blocks
    assert capped.budget_bytes <= 4 * GIB
    cpu_only = HardwareReport(gpus=(), host=HOST)
    whole = recommend(footprint(), cpu_only)
    tenth = recommend(footprint(), limited_hardware(cpu_only, Limits(ram_percent=10)))
    assert tenth.budget_bytes <= HOST.total_memory // 10 and tenth.num_blocks < whole.num_blocks
    assert limited_hardware(report, Limits()) == report  # no limits, nothing changes
    assert describe_limits(Limits(max_vram_gib=4, ram_percent=50, cpu_threads=1)) == (
        "Your limits: at most 4 GiB of VRAM, at most 50 % of the RAM, 1 CPU thread")


def test_threads_reach_the_request_and_the_dashboard_shows_the_limits(qtbot, make_window, tiny_checkpoints) -> None:
    settings = AppSettings(cpu_threads=3)
    assert build_serve_request(settings, "/m", None, num_threads=settings.cpu_threads).num_threads == 3
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted), ram_percent=20, cpu_threads=1)
    window.controller.begin()
    qtbot.waitUntil(lambda: window.controller.recommendation is not None, timeout=60_000)
    explanation = window.controller.recommendation.explanation
    assert explanation.endswith("Your limits: at most 20 % of the RAM, 1 CPU thread")
    box = window.settings.limits_box
    assert box.ram_percent.value() == 20 and box.cpu_threads.value() == 1
    box.ram_percent.setValue(100)
    window.settings.apply_button.click()
    assert window.controller.recommendation.explanation.endswith("Your limits: 1 CPU thread")


def fake_pynvml(refuse: type[Exception] | None) -> types.ModuleType:
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NoPermission(NVMLError):  # noqa: N801 (pynvml's name)
        pass

    module.NVMLError, module.NVMLError_NoPermission = NVMLError, NVMLError_NoPermission
    module.nvmlInit = module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: 1
    module.nvmlDeviceGetHandleByIndex = lambda index: "gpu0"
    module.nvmlDeviceGetPowerManagementLimitConstraints = lambda handle: (100_000, 450_000)
    module.set_to: list[int] = []

    def set_limit(handle: object, milliwatts: int) -> None:
        if refuse is not None:
            raise NVMLError_NoPermission("Insufficient Permissions")
        module.set_to.append(milliwatts)

    module.nvmlDeviceSetPowerManagementLimit = set_limit
    return module


def test_power_cap_is_set_or_refused_in_plain_words(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set_power_cap(0) == ""
    assert set_power_cap(200).startswith("No NVIDIA GPU or driver found")  # this machine
    allowed = fake_pynvml(None)
    monkeypatch.setitem(sys.modules, "pynvml", allowed)
    assert set_power_cap(200) == "GPU 0 capped at 200 W" and allowed.set_to == [200_000]
    assert set_power_cap(50) == "GPU 0 capped at 100 W (its range is 100–450 W)"
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(PermissionError))
    assert set_power_cap(200) == ("The NVIDIA driver lets only administrators cap the GPU's power: run "
                                  "'nvidia-smi -pl 200' as administrator (root), or leave the cap at 0")
