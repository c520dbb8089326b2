"""API speed: tokens/s through ``blossom-api`` (HTTP, streamed and not) vs ``generate`` in this process.

    python -m benchmarks.bench_api [--models tiny smollm2] [--threads 1] [--repeats 5] [--new_tokens 64]

One swarm (a DHT peer and two servers, half the blocks each, on 127.0.0.1), two clients of it: the
model in this process, timed with ``model.generate``, and a ``python -m core.cli.api`` process,
timed from here over plain HTTP (``/v1/completions``, greedy, the same prompt text, once with
``stream: true`` read event by event and once as one JSON answer). Both clients run with the same
torch thread count. The sides alternate; every side must give the same text (checked).
Target: API tokens/s >= 0.95 x generate's.

On a machine shared with other work, wall times swing by tens of percent from run to run, so the
table also gives each client's own CPU time per token (this process during ``generate``; the API
process, HTTP and all, during a request): what the API itself costs, whatever the load.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import time
from typing import Callable

import psutil
import torch
from transformers import AutoTokenizer

from benchmarks.common import (
    base_parser, each_model, interleaved, local_swarm, median, met, print_table, setup, spread, swarm_client,
    torch_dtype,
)
from core.launcher import ChildProcess

TARGET = 0.95
NEW_TOKENS = 64
PROMPT = "A swarm of volunteers can run a large language model together because"


def start_api(converted: str, initial_peers: list[str], threads: int) -> tuple[ChildProcess, str, int]:
    """A blossom-api process joined to the swarm; its host and port once it serves."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the API's client computes with as many threads as ours
    try:
        process = ChildProcess("api", ["-m", "core.cli.api", "--model", converted, "--initial_peers",
                                       *initial_peers, "--port", "0"])
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    try:
        process.wait_for_line("Blossom OpenAI-compatible API", 600)
    except BaseException:
        process.stop()
        raise
    line = next(line for line in process.lines if "Blossom OpenAI-compatible API" in line)
    host, port = re.search(r"http://([^:/]+):(\d+)/v1", line).groups()
    return process, host, int(port)


def complete(host: str, port: int, body: dict) -> tuple[str, int]:
    """The answer's text and its completion-token count, streamed (SSE read event by event) or not."""
    connection = http.client.HTTPConnection(host, port, timeout=600)
    try:
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"the API answered {response.status}: {response.read()[:500]!r}")
        if not body.get("stream"):
            answer = json.loads(response.read())
            return answer["choices"][0]["text"], answer["usage"]["completion_tokens"]
        pieces, tokens = [], 0
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if event["choices"]:
                pieces.append(event["choices"][0]["text"])
        return "".join(pieces), tokens
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=NEW_TOKENS)
    args = parser.parse_args(argv)
    setup(args)
    dtype = torch_dtype(args.dtype)
    rows = []
    for _, model in each_model(args):
        tokenizer = AutoTokenizer.from_pretrained(model.converted)
        prompt_ids = torch.tensor([tokenizer(PROMPT).input_ids])
        with local_swarm(model, args) as swarm, swarm_client(model, swarm, dtype) as client:
            process, host, port = start_api(str(model.converted), swarm.initial_peers, args.threads)
            try:
                name = json.loads(_get(host, port, "/v1/models"))["data"][0]["id"]
                body = {"model": name, "prompt": PROMPT, "max_tokens": args.new_tokens, "temperature": 0}
                results: dict[str, tuple[str, int]] = {}

                def run_generate() -> None:
                    with torch.no_grad():
                        output = client.generate(prompt_ids, max_new_tokens=args.new_tokens, eos_token_id=client.config
                                                 .eos_token_id, pad_token_id=client.config.pad_token_id)
                    new = output[0, prompt_ids.shape[1]:]
                    results["generate"] = tokenizer.decode(new, skip_special_tokens=True), new.numel()

                def run_stream() -> None:
                    results["stream"] = complete(host, port, {**body, "stream": True,
                                                              "stream_options": {"include_usage": True}})

                def run_json() -> None:
                    results["json"] = complete(host, port, body)

                api_process = psutil.Process(process.process.pid)
                cpu: dict[str, list[float]] = {"generate": [], "stream": [], "json": []}

                def own_cpu() -> float:
                    return time.process_time()

                def api_cpu() -> float:
                    used = api_process.cpu_times()
                    return used.user + used.system

                def with_cpu(side: str, run: Callable[[], None], clock: Callable[[], float]) -> Callable[[], None]:
                    def measured() -> None:
                        began = clock()
                        run()
                        cpu[side].append(clock() - began)
                    return measured

                times = interleaved({"generate": with_cpu("generate", run_generate, own_cpu),
                                     "stream": with_cpu("stream", run_stream, api_cpu),
                                     "json": with_cpu("json", run_json, api_cpu)}, args.repeats, args.warmup)
            finally:
                process.stop()
        tokens = results["generate"][1]
        same = results["stream"] == results["json"] == results["generate"]
        base_tps = tokens / median(times["generate"])
        base_cpu = 1000 * median(cpu["generate"]) / tokens
        for side, label in (("stream", "API, streamed (SSE)"), ("json", "API, one JSON answer")):
            tps = tokens / median(times[side])
            rows.append([model.name, label, tokens, f"{base_tps:.1f}", f"{tps:.1f}", f"{tps / base_tps:.3f}",
                         f">= {TARGET}", met(tps / base_tps >= TARGET), spread(times["generate"]), spread(times[side]),
                         f"{base_cpu:.2f}", f"{1000 * median(cpu[side]) / tokens:.2f}", "yes" if same else "NO"])
        del model
    print_table(
        f"API: '/v1/completions', greedy, up to {args.new_tokens} new tokens, through a blossom-api process vs "
        f"model.generate in this process, both clients of the same two-server swarm on 127.0.0.1; medians of "
        f"{args.repeats} runs after {args.warmup} warm-up",
        ["model", "API side", "tokens", "generate tok/s", "API tok/s", "ratio", "target", "verdict",
         "generate run ms", "API run ms", "generate CPU ms/token", "API CPU ms/token", "same text"],
        rows, args)
    return 0


def _get(host: str, port: int, path: str) -> bytes:
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.request("GET", path)
        return connection.getresponse().read()
    finally:
        connection.close()


if __name__ == "__main__":
    raise SystemExit(main())
