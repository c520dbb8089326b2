"""``blossom --self-test`` (or ``python -m app --self-test``): prove that this installation of Blossom works.

It needs no display and no network beyond 127.0.0.1. In order, it checks that hivemind's ``p2pd``
daemon is present and executable, prepares the bundled SmolLM2-135M demo model (converted once into
``$BLOSSOM_HOME/models``), starts a private swarm on this PC (a DHT peer and two block servers as
child processes), generates a few tokens through it, and, when PySide6 is installed, opens Qt's
offscreen platform and draws the app's icon. It prints one line per step and exits 0 when every
step passed, 1 otherwise. Nothing here imports Qt unless the Qt step runs.
"""
from __future__ import annotations

import argparse
import importlib.resources
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.cli.common import add_hidden_alias, build_parser
from core.launcher import LocalSwarm

logger = logging.getLogger(__name__)

PROMPT = "What is the capital of France?"
EXPECTED_WORD = "Paris"


@dataclass
class SelfTestContext:
    """What the steps hand to each other."""

    max_new_tokens: int
    servers: int
    model_path: Path | None = None
    initial_peers: list[str] = field(default_factory=list)
    swarm: LocalSwarm | None = None


@dataclass(frozen=True)
class StepResult:
    """One line of the report."""

    name: str
    ok: bool
    detail: str
    seconds: float


def describe_install() -> str:
    """Which Blossom this is: a frozen bundle or a Python installation, and where."""
    kind = "frozen bundle" if getattr(sys, "frozen", False) else "Python install"
    return (f"{kind}: {sys.executable} (Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()})")


def check_p2pd(context: SelfTestContext) -> str:
    """hivemind's libp2p daemon binary, found the way hivemind finds it."""
    try:
        location = importlib.resources.files("hivemind.hivemind_cli") / "p2pd"
    except ModuleNotFoundError as error:
        raise RuntimeError(f"hivemind is not installed ({error})") from error
    path = Path(str(location))
    if not path.is_file():
        raise RuntimeError(f"hivemind's p2pd binary is missing (expected at {path})")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"hivemind's p2pd binary at {path} is not executable")
    return f"{path} ({path.stat().st_size / 2**20:.1f} MiB)"


def prepare_model(context: SelfTestContext) -> str:
    """The bundled demo model, converted on first use."""
    from core.cli.demo import DEMO_MODEL_NAME, ensure_demo_model
    from core.convert import load_manifest

    context.model_path = ensure_demo_model()
    blocks = load_manifest(str(context.model_path)).num_blocks
    return f"{DEMO_MODEL_NAME}, {blocks} blocks, in {context.model_path}"


def start_swarm(context: SelfTestContext) -> str:
    """A DHT peer and ``context.servers`` block servers on 127.0.0.1."""
    import tempfile

    from core.cli.demo import split_blocks
    from core.convert import load_manifest
    from core.utils.paths import blossom_home

    assert context.model_path is not None
    tempfile.gettempdir()  # resolve before hivemind forks (a fork holding tempfile's lock can hang the child)
    blocks = load_manifest(str(context.model_path)).num_blocks
    threads = max(1, (os.cpu_count() or 2) // context.servers)
    swarm = LocalSwarm(context.model_path, split_blocks(blocks, context.servers),
                       log_dir=blossom_home() / "logs" / "self-test", num_threads=threads)
    context.swarm = swarm
    context.initial_peers = swarm.start()
    return f"a DHT peer and {context.servers} server(s) on 127.0.0.1; initial peer {context.initial_peers[0]}"


def generate(context: SelfTestContext) -> str:
    """Greedy tokens for :data:`PROMPT` through the swarm; the answer must name :data:`EXPECTED_WORD`."""
    import torch
    from transformers import AutoTokenizer

    from core.cli.demo import build_prompt
    from core.models.auto import AutoDistributedModelForCausalLM

    assert context.model_path is not None
    model = AutoDistributedModelForCausalLM.from_pretrained(str(context.model_path),
                                                           initial_peers=context.initial_peers)
    try:
        tokenizer = AutoTokenizer.from_pretrained(context.model_path)
        input_ids = tokenizer(build_prompt(tokenizer, [{"role": "user", "content": PROMPT}]), return_tensors="pt",
                              add_special_tokens=False).input_ids
        started = time.monotonic()
        with torch.no_grad():
            output = model.generate(input_ids, max_new_tokens=context.max_new_tokens)
        seconds = time.monotonic() - started
    finally:
        model.shutdown()
    new_tokens = output.shape[1] - input_ids.shape[1]
    answer = tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()
    if new_tokens <= 0:
        raise RuntimeError("the swarm generated no tokens")
    if EXPECTED_WORD not in answer:
        raise RuntimeError(f"asked {PROMPT!r}, the answer {answer!r} does not mention {EXPECTED_WORD}")
    return f"{new_tokens} tokens in {seconds:.1f} s ({new_tokens / seconds:.1f} tokens/s): {answer!r}"


def stop_swarm(context: SelfTestContext) -> None:
    """Stop every process the swarm step started (also after a failure)."""
    if context.swarm is not None:
        context.swarm.stop()
        context.swarm = None


def check_qt(context: SelfTestContext) -> str:
    """Qt's offscreen platform opens and the app's icon draws; lists the platform plugins found."""
    try:
        from PySide6.QtCore import QLibraryInfo
        from PySide6.QtWidgets import QApplication
    except ImportError:
        return "skipped: PySide6 is not installed (pip install 'blossom[app]' for the window)"
    from app.icons import app_icon

    application = QApplication.instance() or QApplication([sys.argv[0], "-platform", "offscreen"])
    pixmap = app_icon().pixmap(64, 64)
    if pixmap.isNull():
        raise RuntimeError("the app icon rendered empty")
    plugins_dir = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms"
    plugins = sorted(path.stem.removeprefix("lib").removeprefix("q") for path in plugins_dir.iterdir()
                     if path.suffix in (".so", ".dll", ".dylib"))
    platform_name = QApplication.platformName()
    del application
    return f"drew the app icon on Qt's {platform_name} platform; platform plugins here: {', '.join(plugins)}"


STEPS: list[tuple[str, Callable[[SelfTestContext], str]]] = [
    ("p2pd", check_p2pd),
    ("model", prepare_model),
    ("swarm", start_swarm),
    ("generate", generate),
    ("qt", check_qt),
]


def run_steps(context: SelfTestContext, report: Callable[[StepResult], None]) -> list[StepResult]:
    """Run every step in order; after a failure the remaining steps are reported as skipped."""
    results: list[StepResult] = []
    failed = False
    try:
        for name, step in STEPS:
            if failed:
                result = StepResult(name, False, "skipped after the failure above", 0.0)
            else:
                started = time.monotonic()
                try:
                    if name == "qt":
                        stop_swarm(context)  # Qt only after every child process is gone
                    detail, ok = step(context), True
                except Exception as error:  # noqa: BLE001 — every failure becomes a line of the report
                    logger.debug("Self-test step %s failed", name, exc_info=True)
                    detail, ok = f"{type(error).__name__}: {error}", False
                    failed = True
                result = StepResult(name, ok, detail, time.monotonic() - started)
            results.append(result)
            report(result)
    finally:
        stop_swarm(context)
    return results


def print_result(result: StepResult) -> None:
    status = "ok  " if result.ok else "FAIL"
    print(f"  {result.name:<9} {status} {result.seconds:6.1f} s  {result.detail}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser("blossom --self_test", "Check that this Blossom works: a private swarm with the demo model.")
    parser.add_argument("--max_new_tokens", type=int, default=8, help="how many tokens to generate")
    add_hidden_alias(parser, "--max-new-tokens", "max_new_tokens", type=int)
    parser.add_argument("--servers", type=int, default=2, choices=[1, 2, 3], help="block servers to start")
    parser.add_argument("--verbose", action="store_true", help="log every step's details on stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the self-test and print its report; 0 when every step passed."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    started = time.monotonic()
    print("Blossom self-test", flush=True)
    print(f"  {describe_install()}", flush=True)
    results = run_steps(SelfTestContext(args.max_new_tokens, args.servers), print_result)
    passed = all(result.ok for result in results)
    print(f"Self-test {'passed' if passed else 'FAILED'} in {time.monotonic() - started:.1f} s", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
