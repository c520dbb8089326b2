"""Run the README's tutorial from a fresh folder and paste what each command printed into README.md.

    python docs/readme_outputs.py            # run everything, rewrite the output blocks of README.md
    python docs/readme_outputs.py --check    # run everything, only say which blocks would change

Each pasted output in README.md sits between two HTML comments::

    <!-- output: tutorial-dht -->
    ```
    ...what the command printed...
    ```
    <!-- /output -->

The command behind an output block is the nearest ``bash`` or ``python`` code block above it, read
from README.md itself, so what runs is what a newcomer copies. Shell blocks run with ``bash`` in a
fresh temporary folder that stands in for the repository root (``resources/examples`` is copied
into it); the Python blocks run one after another in one interpreter, sharing their variables as
they would in one notebook. Only the blocks named in :data:`STEPS` are rewritten; nothing else in
README.md changes.

What changes from run to run is normalised so that a rerun only changes what really changed:

- the bootstrap peer uses a fixed identity (``docs/readme_bootstrap.id``, a throwaway key made for
  this README and used nowhere else), copied to ``bootstrap.id`` as the tutorial names it, on the
  fixed port 31337, so its address stays the same;
- the temporary folder reads as ``.``, ``$BLOSSOM_HOME`` (a fresh one, so servers measure their
  speed as a newcomer's would) as ``~/.cache/blossom``, the Python install as ``/…/site-packages/``;
- a log line's time of day is dropped, and so are the lines that only say a long wait is still
  going on ("...: still at it (5 s)"); a LAN address outside the documentation range 192.0.2.0/24
  reads as one inside it.

Servers' peer ids and ports, speeds and timings are kept as printed. ``--check`` ignores them when it
compares (and the lengths of progress bars' timings), so it reports a block only when its text
changed otherwise. Every process started here is stopped at the end, also after an error or
Ctrl-C, and every wait is bounded.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
IDENTITY = REPO / "docs" / "readme_bootstrap.id"
DHT_PORT = 31337

OUTPUT_START = re.compile(r"^<!-- output: ([a-z0-9-]+) -->\n", re.MULTILINE)
OUTPUT_END = "<!-- /output -->"
FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
LOOPBACK_PEER = re.compile(r"/ip4/127\.0\.0\.1/tcp/(\d+)/p2p/(Qm[1-9A-HJ-NP-Za-km-z]{44})")
PEER_ID = re.compile(r"Qm[1-9A-HJ-NP-Za-km-z]{44}")


@dataclass(frozen=True)
class Step:
    """One output block: how its command runs and how much of what it printed is pasted."""

    name: str
    kind: str                       # "run": to the end; "serve": until `ready` is printed; "python"
    ready: str = ""                 # regex a "serve" step's output must match before it is pasted
    timeout: float = 600.0          # seconds the step may take
    head_tail: tuple[int, int] | None = None   # paste only the first and last lines, "…" between
    replace: tuple[tuple[str, str], ...] = ()  # substitutions in the command (the second server)
    stdout_only: bool = False       # paste stdout only (its log lines on stderr go to a file)


ADDRESSES_DONE = r"--initial_peers:\n(?:  /ip4/\S+.*\n)+"   # then 2 s for the rest of the list
STEPS = (
    Step("tutorial-convert", "run", timeout=1200, stdout_only=True),
    Step("tutorial-dht", "serve", ready=ADDRESSES_DONE, timeout=120),
    Step("tutorial-server-1", "serve", ready=ADDRESSES_DONE, timeout=900),
    Step("tutorial-server-2", "serve", ready=ADDRESSES_DONE, timeout=900,
         replace=(("--public_name volunteer1", "--public_name volunteer2"),)),
    Step("tutorial-status", "run", timeout=180),
    Step("tutorial-python", "python", timeout=600),
    Step("remote-blocks", "python", timeout=300),
    Step("ptune-python", "python", timeout=900),
    Step("train-python", "python", timeout=1500, head_tail=(3, 3)),
    Step("use-prompts", "python", timeout=600),
    Step("train-cli", "run", timeout=1800),
)


# ---------------------------------------------------------------- README.md: finding the blocks

@dataclass
class OutputBlock:
    """An output block of README.md: its name, where its text lies, and the command above it."""

    name: str
    start: int          # offset of the block's text (after the opening fence)
    end: int            # offset of the closing fence
    text: str
    language: str       # of the command block above: "bash" or "python"
    command: str


def find_output_blocks(readme: str) -> dict[str, OutputBlock]:
    """Every ``<!-- output: NAME -->`` block of ``readme``; raises ValueError when one is malformed."""
    blocks: dict[str, OutputBlock] = {}
    for marker in OUTPUT_START.finditer(readme):
        name = marker.group(1)
        fence = FENCE.match(readme, marker.end())
        if fence is None:
            raise ValueError(f"README.md: the output block {name!r} does not start with a ``` fence")
        if not readme.startswith(OUTPUT_END, fence.end()):
            raise ValueError(f"README.md: the output block {name!r} is not closed by {OUTPUT_END} after its fence")
        if name in blocks:
            raise ValueError(f"README.md: two output blocks are named {name!r}")
        commands = [found for found in FENCE.finditer(readme, 0, marker.start()) if found.group(1) in ("bash", "python")]
        if not commands:
            raise ValueError(f"README.md: no bash or python block above the output block {name!r}")
        command = commands[-1]
        blocks[name] = OutputBlock(name, fence.start(2), fence.end() - 4, fence.group(2),
                                   command.group(1), command.group(2))
    return blocks


def replace_blocks(readme: str, outputs: dict[str, str]) -> str:
    """``readme`` with the text of the named output blocks replaced, everything else as it was."""
    blocks = sorted(find_output_blocks(readme).values(), key=lambda block: block.start, reverse=True)
    for block in blocks:
        if block.name in outputs:
            readme = readme[:block.start] + outputs[block.name] + readme[block.end:]
    return readme


# ---------------------------------------------------------------- processes

class Process:
    """A child in its own process group whose stdout and stderr (merged) are read by a thread."""

    def __init__(self, name: str, args: list[str], cwd: Path, env: dict[str, str], stdin: str | None = None,
                 stderr_path: Path | None = None) -> None:
        self.name = name
        self.stderr_path = stderr_path
        self._text: list[str] = []
        self._lock = threading.Lock()
        stderr = open(stderr_path, "wb") if stderr_path else subprocess.STDOUT
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                      stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                      start_new_session=True)
        if stderr_path:
            stderr.close()
        if stdin is not None:
            self.popen.stdin.write(stdin.encode())
            self.popen.stdin.close()
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.popen.stdout.read1(65536), b""):
            with self._lock:
                self._text.append(chunk.decode("utf-8", "replace"))

    def text(self) -> str:
        with self._lock:
            return "".join(self._text)

    def report(self) -> str:
        """The last lines it printed, and of its log file if its stderr went to one."""
        report = tail(self.text())
        if self.stderr_path and self.stderr_path.exists():
            report += f"\nlast lines of {self.stderr_path}:\n" + tail(self.stderr_path.read_text(errors="replace"))
        return report

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The output so far once it matches ``pattern``; raises if the process ends or time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = terminal_text(self.text())
            if re.search(pattern, text):
                return text
            if self.popen.poll() is not None:
                self._reader.join(timeout=5)
                raise RuntimeError(f"{self.name} exited with code {self.popen.returncode} before it was ready:\n"
                                   + self.report())
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} was not ready within {timeout:.0f} s:\n" + self.report())

    def wait(self, timeout: float) -> str:
        """All it printed, once it exited with code 0; raises otherwise."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} did not finish within {timeout:.0f} s:\n" + self.report()) from None
        self._reader.join(timeout=10)
        if code != 0:
            raise RuntimeError(f"{self.name} exited with code {code}:\n" + self.report())
        return terminal_text(self.text())

    def interrupt(self) -> None:
        """Ctrl-C its whole process group (it runs in a session of its own, so the terminal's does not reach it)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def stop(self, deadline: float) -> None:
        """Wait for it to exit until ``deadline`` (time.monotonic), then SIGKILL whatever is left of its group."""
        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"warning: {self.name} did not stop on Ctrl-C; killing it", file=sys.stderr)
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)   # helpers (p2pd) left in the group
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"warning: {self.name} (pid {self.popen.pid}) did not exit after SIGKILL", file=sys.stderr)


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(terminal_text(text).splitlines()[-lines:])


def terminal_text(raw: str) -> str:
    """What a terminal shows: of a line rewritten with carriage returns (a progress bar), the last state."""
    lines = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        states = [state for state in line.split("\r") if state.strip()]
        lines.append(states[-1] if states else "")
    return "\n".join(lines)


# ---------------------------------------------------------------- Python blocks

PYTHON_RUNNER = r"""
import contextlib, json, sys, traceback
snippets = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for name, code in snippets:
    print("\0BEGIN " + name, flush=True)
    try:
        exec(compile(code, "README.md:" + name, "exec"), namespace)
    except BaseException:
        sys.stdout.flush()
        traceback.print_exc()
        print("\0FAILED " + name, flush=True)
        sys.exit(1)
    print("\n\0END " + name, flush=True)
"""


def python_outputs(text: str) -> dict[str, str]:
    """What each Python block printed, from the runner's output."""
    found = {}
    for match in re.finditer(r"\0BEGIN (\S+)\n(.*?)\n\0END \1\n", text, re.DOTALL):
        found[match.group(1)] = match.group(2)
    return found


# ---------------------------------------------------------------- normalising

class Normaliser:
    """Turns what a command printed into what README.md shows (see the module docstring)."""

    def __init__(self, folder: Path, blossom_home: Path) -> None:
        self.folders = sorted({str(folder), str(folder.resolve())}, key=len, reverse=True)
        self.homes = sorted({str(blossom_home), str(blossom_home.resolve())}, key=len, reverse=True)
        self.lan: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        for home in self.homes:
            text = text.replace(home, "~/.cache/blossom")
        for folder in self.folders:
            text = text.replace(folder + "/", "./").replace(folder, ".")
        text = re.sub(r"/\S*?/site-packages/", "/…/site-packages/", text)
        text = re.sub(r"\d\d:\d\d:\d\d (?=(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) )", "", text)
        text = re.sub(r"(?m)^.*: still at it \(\d+ s\)\n", "", text)
        text = re.sub(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])", self._address, text)
        lines = [line.rstrip() for line in text.strip("\n").split("\n")]
        return "\n".join(lines) + "\n"

    def _address(self, match: re.Match[str]) -> str:
        text = match.group(1)
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            return text
        documentation = ipaddress.IPv4Network("192.0.2.0/24")
        if address in documentation or not address.is_private or address.is_loopback or address.is_unspecified:
            return text
        return self.lan.setdefault(text, f"192.0.2.{len(self.lan) + 2}")


def shorten(text: str, head_tail: tuple[int, int] | None) -> str:
    if head_tail is None:
        return text
    head, tail_count = head_tail
    lines = text.rstrip("\n").split("\n")
    if len(lines) <= head + tail_count + 1:
        return text
    return "\n".join(lines[:head] + ["…"] + lines[-tail_count:]) + "\n"


def volatile_masked(text: str, stable_ids: set[str]) -> str:
    """``text`` with what is expected to change between runs masked: speeds, timings, other peers' ids."""
    text = PEER_ID.sub(lambda m: m.group(0) if m.group(0) in stable_ids else "<peer>", text)
    text = re.sub(r"(?m)^  \S{8} \[", "  <id> [", text)                       # status: short peer ids
    text = re.sub(r"/tcp/(\d+)", lambda m: m.group(0) if m.group(1) == str(DHT_PORT) else "/tcp/<port>", text)
    text = re.sub(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+s/\w+", "[<time>", text)     # tqdm's timings
    units = r"(?:ms|s|MB/s|GB/s|tokens/s|tok/s/block|tokens/s per block|s/step|it/s)\b"
    return re.sub(r"\d+(?:\.\d+)?( ?)(?=" + units + ")", r"<n>\1", text)


# ---------------------------------------------------------------- running the tutorial

@dataclass
class Run:
    """The tutorial in progress: its folder, environment, and every process started."""

    folder: Path
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    bootstrap: str = ""          # the loopback address blossom-dht printed

    def command(self, block: OutputBlock, step: Step) -> str:
        command = block.command
        for old, new in step.replace:
            if old not in command:
                raise ValueError(f"README.md: the command above {step.name!r} has no {old!r}")
            command = command.replace(old, new)
        if self.bootstrap:
            command = LOOPBACK_PEER.sub(self.bootstrap, command)
        return command

    def start(self, name: str, args: list[str], **kwargs: object) -> Process:
        process = Process(name, args, self.folder, self.env, **kwargs)
        self.processes.append(process)
        return process

    def stop_all(self, grace: float = 45.0) -> None:
        """Ctrl-C every process at once (servers drain, then leave the DHT); SIGKILL what is left after ``grace`` s."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)      # a second Ctrl-C must not cut this short
        try:
            for process in reversed(self.processes):
                process.interrupt()
            deadline = time.monotonic() + grace
            for process in reversed(self.processes):
                process.stop(deadline)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def run_tutorial(blocks: dict[str, OutputBlock], folder: Path, log: Path) -> dict[str, str]:
    """Run every step of :data:`STEPS` in ``folder``; what each printed, before normalising."""
    for console_script in ("blossom-convert", "blossom-dht", "blossom-server", "blossom-status", "blossom-train"):
        if shutil.which(console_script) is None:
            raise SystemExit(f"error: {console_script} is not on PATH; install Blossom first (pip install -e .)")
    shutil.copytree(REPO / "resources" / "examples", folder / "resources" / "examples")
    shutil.copyfile(IDENTITY, folder / "bootstrap.id")
    os.chmod(folder / "bootstrap.id", 0o600)
    env = dict(os.environ, BLOSSOM_HOME=str(folder / ".blossom-home"), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("COLUMNS", None)
    run = Run(folder, env)
    outputs: dict[str, str] = {}
    python_steps = [step for step in STEPS if step.kind == "python"]
    try:
        for step in STEPS:
            if step.kind == "python":
                if step is python_steps[0]:
                    outputs.update(run_python(run, blocks, python_steps, log))
                continue
            block = blocks[step.name]
            if block.language != "bash":
                raise ValueError(f"README.md: the command above {step.name!r} is not a bash block")
            command = run.command(block, step)
            started = time.monotonic()
            print(f"[{step.name}] {command.strip().splitlines()[-1].strip()[:100]}", flush=True)
            script = "set -e\n" + command
            if step.kind == "serve":     # bash becomes the server, so stopping it stops the server
                script = re.sub(r"^(\s*)(blossom-\S+)", r"\1exec \2", command.strip(), count=1, flags=re.MULTILINE)
            stderr_log = run.folder / f"{step.name}.log" if step.stdout_only else None
            process = run.start(step.name, ["bash", "-c", script], stderr_path=stderr_log)
            if step.kind == "serve":
                text = process.wait_for(step.ready, step.timeout)
                time.sleep(2)           # a line printed right after the addresses belongs to the block too
                text = terminal_text(process.text())
            else:
                text = process.wait(step.timeout)
            outputs[step.name] = text
            print(f"[{step.name}] done in {time.monotonic() - started:.0f} s:\n{text.rstrip()}\n", flush=True)
            if step.name == "tutorial-dht":
                found = LOOPBACK_PEER.search(text)
                if found is None or found.group(1) != str(DHT_PORT):
                    raise RuntimeError(f"blossom-dht printed no loopback address on port {DHT_PORT}:\n{text}")
                run.bootstrap = found.group(0)
        return outputs
    finally:
        print("Stopping every process started...", flush=True)
        run.stop_all()


def run_python(run: Run, blocks: dict[str, OutputBlock], steps: list[Step], log: Path) -> dict[str, str]:
    snippets = []
    for step in steps:
        block = blocks[step.name]
        if block.language != "python":
            raise ValueError(f"README.md: the command above {step.name!r} is not a python block")
        snippets.append((step.name, run.command(block, step)))
    print(f"[python] {', '.join(name for name, _ in snippets)} (logs in {log})", flush=True)
    started = time.monotonic()
    process = run.start("python blocks", [sys.executable, "-c", PYTHON_RUNNER], stdin=json.dumps(snippets),
                        stderr_path=log)
    deadline = sum(step.timeout for step in steps)
    process.wait(deadline)
    found = python_outputs(process.text())
    missing = [name for name, _ in snippets if name not in found]
    if missing:
        raise RuntimeError(f"the Python blocks {missing} printed no end marker:\n" + tail(process.text()))
    printed = "\n".join(f"({name})\n{found[name].rstrip()}" for name, _ in snippets)
    print(f"[python] done in {time.monotonic() - started:.0f} s:\n{printed}\n", flush=True)
    return found


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/readme_outputs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only report which output blocks would change (beyond speeds and timings); "
                             "exit code 1 if any would")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args(argv)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    readme = README.read_text()
    blocks = find_output_blocks(readme)
    unknown = sorted(set(blocks) - {step.name for step in STEPS})
    absent = [step.name for step in STEPS if step.name not in blocks]
    if unknown or absent:
        print(f"error: README.md's output blocks {unknown} have no step here; steps {absent} have no block there",
              file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="blossom-readme-"))
    log = folder / "python-blocks.log"
    print(f"Running the README's tutorial in {folder}", flush=True)
    try:
        raw = run_tutorial(blocks, folder, log)
    except KeyboardInterrupt:
        print("Interrupted; every process started was stopped. README.md is unchanged.", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError, ValueError, OSError) as error:
        print(f"error: {error}\nREADME.md is unchanged.", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    normalise = Normaliser(folder, folder / ".blossom-home")
    outputs = {step.name: shorten(normalise(raw[step.name]), step.head_tail) for step in STEPS}
    stable = set(PEER_ID.findall(LOOPBACK_PEER.search(outputs["tutorial-dht"]).group(0)))
    readme = README.read_text()           # re-read: others may have edited README.md meanwhile
    blocks = find_output_blocks(readme)
    changed = [name for name, text in outputs.items()
               if volatile_masked(text, stable) != volatile_masked(blocks[name].text, stable)]
    for name, text in outputs.items():
        print(f"\n--- {name}{' (changed)' if name in changed else ''}\n{text}", end="")
    print()
    if args.check:
        print(f"Blocks that would change beyond speeds and timings: {', '.join(changed) or 'none'}")
        return 1 if changed else 0
    README.write_text(replace_blocks(readme, outputs))
    print(f"Rewrote {len(outputs)} output blocks of README.md; changed beyond speeds and timings: "
          f"{', '.join(changed) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
