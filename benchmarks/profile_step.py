"""Where a single-token inference step's time goes: py-spy samples of the client and a server while they step.

    python -m benchmarks.profile_step [--seconds 20] [--out DIR] [--threads 1]

One server holds all blocks of the tiny Llama (8 x 256); this process opens a session and steps
one token at a time for ``--seconds`` while ``py-spy record`` (``pip install py-spy``) samples
this process and the server (idle threads left out). Collapsed stacks are written to ``--out``;
the table lists, per process, the functions with the largest share of samples (inclusive), so
you can see the split between compute, (de)serialization, event loops and hivemind's transport.
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import time
from pathlib import Path

import torch

from benchmarks.common import (
    base_parser, local_swarm, prepare_tiny_llama, print_table, setup, swarm_client, torch_dtype, workdir,
)


def record(pid: int, seconds: float, output: Path) -> subprocess.Popen:
    """Start ``py-spy record`` on ``pid`` (and its threads) writing collapsed stacks to ``output``."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return subprocess.Popen([py_spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "500", "-f", "raw",
                             "-o", str(output), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(collapsed: Path, top: int) -> tuple[int, list[tuple[str, float]]]:
    """Total samples and the ``top`` functions by inclusive share (each counted once per stack)."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = {frame.split(" (")[0] + " (" + frame.split(" (")[-1].split("/")[-1] for frame in stack.split(";")}
        for frame in frames:
            inclusive[frame] += count
    return total, [(name, count / max(total, 1)) for name, count in inclusive.most_common(top)]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("profile-step"))
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    setup(args)
    dtype = torch_dtype(args.dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    steps = 0
    with workdir(args) as folder:
        model = prepare_tiny_llama(folder, dtype)
        with local_swarm(model, args, spans=[(0, model.num_blocks)]) as swarm, \
                swarm_client(model, swarm, dtype) as client:
            hidden = torch.randn(1, 1, model.local.config.hidden_size, dtype=dtype)
            server_pid = swarm.servers[0].process.pid
            recorders = [record(os.getpid(), args.seconds, args.out / "client.txt"),
                         record(server_pid, args.seconds, args.out / "server.txt")]
            began = time.perf_counter()
            while time.perf_counter() - began < args.seconds + 1:
                with client.transformer_blocks.inference_session(512) as session:
                    for _ in range(500):
                        session.step(hidden)
                        steps += 1
            elapsed = time.perf_counter() - began
            for recorder in recorders:
                recorder.wait(60)
    rows = []
    for name in ("client", "server"):
        total, functions = summarize(args.out / f"{name}.txt", args.top)
        rows.extend([name, f"{share:.1%}", function] for function, share in functions)
    print_table(f"py-spy of single-token steps through one server (tiny Llama 8x256): {steps} steps in "
                f"{elapsed:.1f} s = {1000 * elapsed / steps:.2f} ms/step; inclusive share of samples",
                ["process", "share", "function"], rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
