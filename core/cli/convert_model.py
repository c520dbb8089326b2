"""``blossom-convert`` (``python -m core.cli.convert_model``): convert a checkpoint into Blossom's per-block format.

Example::

    blossom-convert --model bigscience/bloom-560m --output_path ./bloom-560m \\
        --torch_dtype bfloat16 --output_repo my-org/bloom-560m-blossom --use_auth_token hf_...
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.cli.common import build_parser as new_parser, fail, setup_logging
from core.convert import TORCH_DTYPE_CHOICES, Manifest, convert_model
from core.errors import BlossomError
from core.utils.units import format_bytes

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = new_parser(
        "blossom-convert",
        "Convert a Hugging Face checkpoint or a GGUF file into per-block shards + manifest.json, "
        "optionally uploading it to the Hub with one branch per block.",
    )
    parser.add_argument("--model", required=True, metavar="FOLDER_REPO_OR_GGUF",
                        help="the original model: a Hub repo id, a local Hugging Face folder, or a .gguf file")
    parser.add_argument(
        "--output_path", help="folder to write (default: ./NAME when --output_repo ORG/NAME is given)"
    )
    parser.add_argument(
        "--torch_dtype", choices=TORCH_DTYPE_CHOICES, default="auto",
        help="dtype of the stored tensors (auto: keep the checkpoint's; float32 for GGUF)",
    )
    parser.add_argument("--dht_prefix", help="model name in the swarm (default: the output's name)")
    parser.add_argument("--output_repo", metavar="ORG/NAME", help="also upload to this Hub repo")
    parser.add_argument("--use_auth_token", metavar="TOKEN", help="Hugging Face token (gated models, uploads)")
    parser.add_argument("--revision", help="revision of the source model on the Hub (default: main)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output_path")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="log every detail (debug level) on stderr")
    return parser


def _total_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def summary(manifest: Manifest, output: Path, output_repo: str | None) -> str:
    """The lines printed after a successful conversion."""
    lines = [
        f"converted {manifest.source}",
        f"  family:      {manifest.family} ({manifest.model_type})",
        f"  blocks:      {manifest.num_blocks}",
        f"  dtype:       {manifest.torch_dtype}",
        f"  dht_prefix:  {manifest.dht_prefix}",
        f"  output:      {output}",
        f"  total size:  {format_bytes(_total_size(output))}",
    ]
    if output_repo:
        last = manifest.num_blocks - 1
        lines.append(f"  uploaded:    https://huggingface.co/{output_repo} (branches block_0..block_{last})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the converter; returns the process exit code (2 on a Blossom error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.output_path is None:
        if args.output_repo is None:
            parser.error("--output_path is required (or give --output_repo ORG/NAME to write ./NAME)")
        args.output_path = args.output_repo.rsplit("/", 1)[-1]
    try:
        manifest = convert_model(
            args.model,
            args.output_path,
            torch_dtype=args.torch_dtype,
            dht_prefix=args.dht_prefix,
            output_repo=args.output_repo,
            token=args.use_auth_token,
            revision=args.revision,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except BlossomError as error:
        return fail(error)
    print(summary(manifest, Path(args.output_path).expanduser().absolute(), args.output_repo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
