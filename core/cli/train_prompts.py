"""``blossom-train`` (``python -m core.cli.train_prompts``): train prompts for a model served by a swarm; Ctrl-C stops and saves."""
from __future__ import annotations

import argparse
import logging
import signal
import threading

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from core.cli.common import add_hidden_alias, build_parser as new_parser, fail, on_termination, setup_logging
from core.errors import BlossomError
from core.tuning.config import TUNING_MODES, StepReport, TrainingConfig

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("blossom-train",
                        "Train prompts (ptune or deep_ptune) through a swarm; the servers' blocks stay frozen.")
    parser.add_argument("--model", required=True, metavar="FOLDER_OR_REPO",
                        help="the converted model: a folder written by blossom-convert, or a converted Hub repo")
    parser.add_argument("--initial_peers", nargs="+", required=True, metavar="MULTIADDR",
                        help="addresses of the swarm serving the model, as printed by blossom-dht or blossom-server")
    parser.add_argument("--dataset", required=True,
                        help='.txt (one example per line, or paragraphs) or .jsonl ({"text"} or {"prompt", "completion"})')
    parser.add_argument("--mode", choices=TUNING_MODES, default="ptune",
                        help="ptune: trained prompts in front of the input; deep_ptune: also in front of every block")
    parser.add_argument("--pre_seq_len", type=int, default=16, help="number of prompt positions")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps")
    parser.add_argument("--learning_rate", type=float, default=1e-2, help="AdamW learning rate")
    add_hidden_alias(parser, "--lr", "learning_rate", type=float)
    parser.add_argument("--batch_size", type=int, default=4, help="examples per optimizer step")
    parser.add_argument("--max_seq_len", type=int, default=128, help="examples are cut to this many tokens")
    parser.add_argument("--save_path", default=None, help="where to save the prompts (.safetensors); "
                                                          "by default they are not saved")
    add_hidden_alias(parser, "--save", "save_path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts' initialisation and the batches")
    parser.add_argument("--log_every", type=int, default=10, help="print the loss every N steps (0: never)")
    parser.add_argument("--verbose", action="store_true", help="log every detail (debug level) on stderr")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The :class:`TrainingConfig` the command line describes."""
    return TrainingConfig(
        model_path=args.model,
        initial_peers=tuple(args.initial_peers),
        dataset_path=args.dataset,
        tuning_mode=args.mode,
        pre_seq_len=args.pre_seq_len,
        steps=args.steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        save_path=args.save_path,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    config = config_from_args(args)
    if config.problems():
        return fail(ValueError("; ".join(config.problems())))
    from core.tuning.trainer import train_prompts  # heavy imports after argument errors are reported

    stop = threading.Event()

    def request_stop() -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C quits at once
        tqdm.write("Stopping after this step (Ctrl-C again to quit without saving)...")

    on_termination(request_stop)
    # log lines go above the bar instead of through it
    with logging_redirect_tqdm(), tqdm(total=config.steps, desc=f"{config.tuning_mode} x{config.pre_seq_len}",
                                       unit="step") as bar:

        def on_step(report: StepReport) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{report.loss:.4f}")
            if args.log_every and report.step % args.log_every == 0:
                tqdm.write(f"step {report.step}/{report.total_steps} loss {report.loss:.4f}")

        try:
            result = train_prompts(config, on_step=on_step, stop_event=stop)
        except (BlossomError, ValueError) as error:
            return fail(error)
    if result.losses:
        print(f"Loss: {result.losses[0]:.4f} at step 1, {result.losses[-1]:.4f} at step {result.steps_done}")
    if result.stopped:
        print(f"Stopped after {result.steps_done} of {config.steps} steps.")
    if result.saved_path:
        print(f"Saved {config.tuning_mode} prompts to {result.saved_path}")
    else:
        print("Prompts not saved (pass --save_path PATH to keep them).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
