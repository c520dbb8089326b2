"""``python -m core.cli.swarm_status --initial_peers ...``: which servers hold which blocks of each model."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from core.cli.common import fail, setup_logging
from core.dht.swarm_status import ModelSwarm, get_swarm_status
from core.errors import BlossomError

logger = logging.getLogger(__name__)

BAR_WIDTH = 40


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Show the servers of a Blossom swarm and the blocks they hold.")
    parser.add_argument("--initial_peers", nargs="+", required=True, help="multiaddrs of any peers of the swarm")
    parser.add_argument("--model", dest="dht_prefix", default=None,
                        help="DHT prefix of one model (default: every model servers announce)")
    parser.add_argument("--num_blocks", type=int, default=None,
                        help="block count of --model, needed only when no server announces it")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def coverage_bar(start: int, end: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[....####....]``: where ``[start, end)`` lies among ``total`` blocks, scaled to ``width``."""
    cells = min(width, total)
    return "[" + "".join(
        "#" if start * cells < (cell + 1) * total and cell * total < end * cells else "." for cell in range(cells)
    ) + "]"


def describe_ranges(indices: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``'0..2, 5'``."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in runs)


def format_model(model: ModelSwarm) -> str:
    """A human-readable table for one model."""
    coverage = "all blocks covered" if model.is_complete else f"UNCOVERED blocks: {describe_ranges(model.uncovered)}"
    lines = [f"Model '{model.dht_prefix}': {model.total_blocks} blocks, {len(model.servers)} server(s), {coverage}"]
    for row in model.servers:
        name = f" {row.public_name}" if row.public_name else ""
        quant = f"/{row.quant_type}" if row.quant_type != "none" else ""
        lines.append(
            f"  {row.peer_id[-8:]} {coverage_bar(row.start_block, row.end_block, model.total_blocks)} "
            f"{row.start_block:>3}..{row.end_block - 1:<3} {row.state:<7} {row.throughput:>9.1f} tok/s/block "
            f"{row.torch_dtype}{quant} v{row.version} {'push' if row.can_push else 'no push'}{name}"
        )
    weakest = min(model.block_throughputs, default=0.0)
    lines.append(f"  weakest block throughput: {weakest:.1f} tokens/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        models = get_swarm_status(args.initial_peers, args.dht_prefix, args.num_blocks)
    except (BlossomError, ValueError) as error:
        return fail(error)
    if args.json:
        print(json.dumps([dataclasses.asdict(model) for model in models], indent=1))
    elif not models:
        print("No models are served in this swarm right now.")
    else:
        print("\n\n".join(format_model(model) for model in models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
