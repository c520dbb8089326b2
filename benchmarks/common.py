"""What every speed benchmark shares: the models, the swarm, timing by medians, the machine and the table.

Each benchmark compares the swarm with local Hugging Face transformers on the same weights, dtype
and torch thread count, in the same process and run, interleaving the two so that load from
other programs on the machine hits both alike.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

logger = logging.getLogger(__name__)

TINY_BLOCKS = 8
TINY_HIDDEN = 256
MODELS = ("tiny", "smollm2")


@dataclass
class BenchModel:
    """A model as both sides see it: the converted folder (swarm) and a local transformers model."""

    name: str
    converted: Path
    local: torch.nn.Module
    num_blocks: int
    vocab_size: int


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="which models to measure")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the local model, the client and each server (same for all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side (after warm-up); medians reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side first")
    parser.add_argument("--device", default="cpu", help="device of the servers and the local model (cpu, cuda)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="compute dtype of servers and local model")
    parser.add_argument("--transport", choices=["direct", "p2p"], default="direct",
                        help="client-server link: direct TLS connections (what default servers offer) or p2p streams "
                             "through the daemons only (servers started with --no_direct)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the tiny model (default: a temp dir)")
    parser.add_argument("--verbose", action="store_true")
    return parser


def setup(args: argparse.Namespace) -> None:
    """Logging, thread count and the temp-dir resolution hivemind's forks need."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tempfile.gettempdir()  # resolve before hivemind forks (see DESIGN.md)
    torch.set_num_threads(args.threads)


@contextlib.contextmanager
def workdir(args: argparse.Namespace) -> Iterator[Path]:
    """``--workdir`` or a temporary folder removed afterwards."""
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        yield args.workdir
        return
    with tempfile.TemporaryDirectory(prefix="blossom-bench-") as folder:
        yield Path(folder)


def prepare_tiny_llama(folder: Path, dtype: torch.dtype = torch.float32) -> BenchModel:
    """A seeded Llama of 8 blocks, hidden 256 (as tests/tiny_models.py builds), saved and converted."""
    from transformers import AutoModelForCausalLM

    from core.convert import convert_model, load_manifest
    from tests.tiny_models import save_model

    original = folder / "tiny-llama-original"
    converted = folder / "tiny-llama-8x256"
    if not (original / "config.json").exists():
        save_model("llama", original, seed=0, num_layers=TINY_BLOCKS, hidden=TINY_HIDDEN)
    try:
        load_manifest(str(converted))
    except Exception:
        convert_model(str(original), converted, progress=False, overwrite=True)
    local = AutoModelForCausalLM.from_pretrained(original, dtype=dtype).eval()
    return BenchModel("tiny Llama 8x256", converted, local, TINY_BLOCKS, local.config.vocab_size)


def prepare_smollm2(dtype: torch.dtype = torch.float32) -> BenchModel:
    """The bundled SmolLM2-135M: its conversion (made on first use) and transformers reading the same GGUF."""
    from transformers import AutoModelForCausalLM

    from core.cli.demo import ensure_demo_model
    from core.convert import find_smollm2_gguf, load_manifest

    converted = ensure_demo_model()
    gguf = find_smollm2_gguf()
    local = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype).eval()
    blocks = load_manifest(str(converted)).num_blocks
    return BenchModel("SmolLM2-135M", converted, local, blocks, local.config.vocab_size)


def converted_only(name: str, folder: Path) -> tuple[Path, int]:
    """The converted folder of model ``name`` and its number of blocks, without loading anything locally."""
    from core.cli.demo import ensure_demo_model
    from core.convert import convert_model, load_manifest
    from tests.tiny_models import save_model

    if name == "smollm2":
        converted = ensure_demo_model()
    else:
        original, converted = folder / "tiny-llama-original", folder / "tiny-llama-8x256"
        try:
            load_manifest(str(converted))
        except Exception:
            if not (original / "config.json").exists():
                save_model("llama", original, seed=0, num_layers=TINY_BLOCKS, hidden=TINY_HIDDEN)
            convert_model(str(original), converted, progress=False, overwrite=True)
    return converted, load_manifest(str(converted)).num_blocks


def prepare(name: str, folder: Path, dtype: torch.dtype = torch.float32) -> BenchModel:
    """The model called ``name`` (one of :data:`MODELS`)."""
    return prepare_tiny_llama(folder, dtype) if name == "tiny" else prepare_smollm2(dtype)


def each_model(args: argparse.Namespace) -> Iterator[tuple[str, BenchModel]]:
    """``(name, model)`` for each of ``--models``, one at a time: built in the work folder with ``--dtype``,
    its local transformers copy on ``--device``. Delete your reference before asking for the next."""
    with workdir(args) as folder:
        for name in args.models:
            model = prepare(name, folder, torch_dtype(args.dtype))
            model.local.to(args.device)
            yield name, model
            del model


def halves(num_blocks: int) -> list[tuple[int, int]]:
    """Two servers' spans: the first half of the blocks and the rest."""
    middle = num_blocks // 2
    return [(0, middle), (middle, num_blocks)]


@contextlib.contextmanager
def local_swarm(model: BenchModel, args: argparse.Namespace, spans: Sequence[tuple[int, int]] | None = None,
                extra_server_args: Sequence[str] = ()) -> Iterator["object"]:
    """A DHT peer and servers on 127.0.0.1 (default: two, half the blocks each), stopped on exit."""
    from core.launcher import LocalSwarm

    server_args = ["--throughput", "100", "--device", args.device, "--torch_dtype", args.dtype, *extra_server_args]
    if args.transport == "p2p":
        server_args.append("--no_direct")
    with LocalSwarm(model.converted, spans or halves(model.num_blocks), server_args=server_args,
                    num_threads=args.threads, start_timeout=600) as swarm:  # a busy machine starts servers slowly
        yield swarm


@contextlib.contextmanager
def swarm_client(model: BenchModel, swarm: "object", dtype: torch.dtype = torch.float32,
                 **kwargs: object) -> Iterator[torch.nn.Module]:
    """The distributed model of ``model`` joined to ``swarm``; shut down on exit."""
    from core.models.auto import AutoDistributedModelForCausalLM

    client = AutoDistributedModelForCausalLM.from_pretrained(
        str(model.converted), initial_peers=swarm.initial_peers, torch_dtype=dtype, **kwargs)
    try:
        yield client
    finally:
        client.shutdown()


def timed(function: Callable[[], object]) -> float:
    """Seconds one call of ``function`` takes."""
    began = time.perf_counter()
    function()
    return time.perf_counter() - began


def interleaved(sides: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Time each side ``repeats`` times after ``warmup`` untimed calls, alternating sides every round."""
    for _ in range(warmup):
        for function in sides.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, function in sides.items():
            times[name].append(timed(function))
    return times


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """``min..max`` of ``values`` in milliseconds, for the table."""
    return f"{1000 * min(values):.1f}..{1000 * max(values):.1f}"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what the platform says)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_line(args: argparse.Namespace) -> str:
    """One line describing the machine, the software and its load right now."""
    import hivemind
    import psutil
    import transformers

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"{cpu_model()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; "
            f"torch {torch.__version__}, transformers {transformers.__version__}, hivemind {hivemind.__version__}; "
            f"threads {args.threads}, device {args.device}, dtype {args.dtype}, "
            f"transport {getattr(args, 'transport', 'p2p')}; load average {load}")


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], args: argparse.Namespace,
                notes: Sequence[str] = ()) -> None:
    """Print the benchmark's one table (markdown, so it pastes into the README as is)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print(f"({machine_line(args)})\n")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
    for note in notes:
        print(f"\n{note}")


def time_ratio_row(name: str, tokens: int, times: dict[str, list[float]], target: float,
                   difference: float) -> list[str]:
    """A table row comparing timed ``local`` and ``swarm`` runs of ``tokens`` tokens each: tokens/s, the time
    ratio against ``target``, both spreads, and the largest difference between their results."""
    ratio = median(times["swarm"]) / median(times["local"])
    return [name, f"{tokens / median(times['local']):.0f}", f"{tokens / median(times['swarm']):.0f}", f"{ratio:.3f}",
            f"<= {target}", met(ratio <= target), spread(times["local"]), spread(times["swarm"]), f"{difference:.1e}"]


def torch_dtype(name: str) -> torch.dtype:
    """``'bfloat16'`` -> ``torch.bfloat16``."""
    return getattr(torch, name)


def met(ok: bool) -> str:
    """The table's verdict on a target."""
    return "met" if ok else "NOT met"
