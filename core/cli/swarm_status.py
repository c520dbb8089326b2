"""``blossom-status --initial_peers ...`` (``python -m core.cli.swarm_status``): which servers hold which blocks
of each model."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from core.cli.common import build_parser as new_parser, fail, setup_logging
from core.dht.swarm_status import ModelSwarm, get_swarm_status
from core.errors import BlossomError

logger = logging.getLogger(__name__)

BAR_WIDTH = 40


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is not None and args.dht_prefix is not None:
        parser.error("pass --model or --dht_prefix, not both")
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("blossom-status", "Show the servers of a Blossom swarm and the blocks they hold.")
    parser.add_argument("--initial_peers", nargs="+", required=True, metavar="MULTIADDR",
                        help="addresses of any peers of the swarm, as printed by blossom-dht or blossom-server")
    parser.add_argument("--model", default=None, metavar="FOLDER_OR_REPO",
                        help="show only this converted model (a folder written by blossom-convert, or a converted Hub "
                             "repo); its block count is then known even when no server holds any (default: every "
                             "model servers announce)")
    parser.add_argument("--dht_prefix", default=None,
                        help="show only the model of this name in the swarm (what blossom-server prints in quotes)")
    parser.add_argument("--num_blocks", type=int, default=None,
                        help="block count of --dht_prefix, needed only when no server announces it")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.add_argument("--verbose", action="store_true", help="log every detail (debug level) on stderr")
    return parser


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
        if args.model is not None:  # one meaning of --model in every tool: the model itself
            from core.convert import load_manifest

            try:
                manifest = load_manifest(args.model)
            except BlossomError as error:
                return fail(BlossomError(f"{error} (to choose a model by its name in the swarm, pass --dht_prefix "
                                         f"{args.model})"))
            args.dht_prefix, args.num_blocks = manifest.dht_prefix, manifest.num_blocks
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
