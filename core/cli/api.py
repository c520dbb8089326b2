"""``blossom-api`` (``python -m core.cli.api``): an OpenAI-compatible HTTP API in front of a swarm's model.

Without ``--initial_peers`` it starts a private swarm on this machine (a DHT peer and block servers
on 127.0.0.1, as the demo does) serving ``--model`` (by default the bundled SmolLM2 demo model).
With ``--initial_peers`` it joins that swarm as a client. Either way it then serves
``http://HOST:PORT/v1`` for any OpenAI client library or tool.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from core.cli.common import (
    add_exit_with_stdin_argument, exit_when_stdin_closes, fail, interrupt, on_termination, setup_logging,
)
from core.errors import BlossomError

logger = logging.getLogger(__name__)

PROGRAM = "blossom-api"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Serve a Blossom swarm's model through an OpenAI-compatible API (/v1/chat/completions, "
                    "/v1/completions, /v1/models, /health).")
    parser.add_argument("--model", default=None,
                        help="converted model folder or converted Hub repo (default: the bundled SmolLM2 demo model, "
                             "converted on first use)")
    parser.add_argument("--initial_peers", nargs="+", default=[],
                        help="multiaddrs of the swarm to use (default: none, start a private swarm on this machine)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 lets other machines in, then set --api_key (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on, 0 for any free one (default: 8000)")
    parser.add_argument("--api_key", default=os.environ.get("BLOSSOM_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1/ routes (default: $BLOSSOM_API_KEY, "
                             "else no key)")
    parser.add_argument("--served_name", default=None,
                        help="the model's name in the API (default: the model's name in the swarm, its dht_prefix)")
    parser.add_argument("--max_sessions", type=int, default=8,
                        help="generations at once, each an inference session through the swarm (default: 8)")
    parser.add_argument("--queue_timeout", type=float, default=60.0,
                        help="seconds a request may wait for a free session before a 503 (default: 60)")
    parser.add_argument("--token_timeout", type=float, default=300.0,
                        help="seconds a generation may go without a new token before it fails with a 503 (default: 300)")
    parser.add_argument("--context_length", type=int, default=None,
                        help="longest prompt + answer in tokens (default: the model's max_position_embeddings)")
    parser.add_argument("--servers", type=int, default=2, choices=[1, 2, 3],
                        help="block servers of the private swarm, ignored with --initial_peers (default: 2)")
    add_exit_with_stdin_argument(parser, "blossom-api")
    parser.add_argument("--verbose", action="store_true", help="debug logging and an access log (default: off)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming the first bad option."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.max_sessions < 1:
        raise ValueError(f"--max_sessions must be at least 1, got {args.max_sessions}")
    for name in ("queue_timeout", "token_timeout"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name} must be a positive number of seconds, got {getattr(args, name)}")
    if args.context_length is not None and args.context_length < 2:
        raise ValueError(f"--context_length must be at least 2, got {args.context_length}")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api_key is empty; pass a key, or leave the option out to serve without one")


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening (bound here, so a taken port is one clear line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}); another program may use "
                         f"this port: choose another --port") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/v1"


def serve(args: argparse.Namespace, sock: socket.socket, stack: list[Any]) -> None:
    """Start (or join) the swarm, load the client model and serve until a signal; ``stack`` collects what to
    stop afterwards."""
    import uvicorn
    from transformers import AutoTokenizer

    from core.api.app import create_app
    from core.api.engine import Engine
    from core.cli.demo import ensure_demo_model, split_blocks
    from core.convert import load_manifest
    from core.models.auto import AutoDistributedModelForCausalLM
    from core.utils.paths import blossom_home

    model_path = args.model or str(ensure_demo_model())
    peers = list(args.initial_peers)
    if not peers:
        from core.launcher import LocalSwarm

        if not Path(model_path).is_dir():
            raise ValueError(f"a private swarm needs a converted model folder; '{model_path}' is not one. Convert it "
                             f"with blossom-convert, or pass --initial_peers of a swarm that serves it")
        total = load_manifest(model_path).num_blocks
        print(f"Starting a private swarm: a DHT peer and {args.servers} server(s) for {total} blocks on 127.0.0.1 ...",
              flush=True)
        threads = max(1, (os.cpu_count() or 2) // args.servers)
        swarm = LocalSwarm(model_path, split_blocks(total, args.servers), log_dir=blossom_home() / "logs",
                           num_threads=threads)
        stack.append(swarm.stop)
        swarm.start()
        peers = swarm.initial_peers
    model = AutoDistributedModelForCausalLM.from_pretrained(model_path, initial_peers=peers)
    stack.append(model.shutdown)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    name = args.served_name or model.dht_prefix
    engine = Engine(model, tokenizer, name, context_length=args.context_length, sampling_timeout=args.queue_timeout)
    url = url_of(args.host, sock.getsockname()[1])
    key_header = ' -H "Authorization: Bearer $KEY"' if args.api_key else ""
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello!"}]})

    def announce() -> None:
        print(f"Blossom OpenAI-compatible API for '{name}' at {url}", flush=True)
        print(f"  try: curl {url}/chat/completions -H 'Content-Type: application/json'{key_header} -d '{body}'",
              flush=True)

    app = create_app(engine, api_key=args.api_key, max_sessions=args.max_sessions, queue_timeout=args.queue_timeout,
                     token_timeout=args.token_timeout, on_ready=announce)
    config = uvicorn.Config(app, log_level="debug" if args.verbose else "warning", timeout_graceful_shutdown=5,
                            lifespan="on", access_log=args.verbose)
    server = uvicorn.Server(config)
    for signum in (signal.SIGINT, signal.SIGTERM):  # uvicorn takes over, and re-raises to these when done
        signal.signal(signum, lambda *_: None)
    server.run(sockets=[sock])
    print("Stopping the API ...", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    for noisy in ("uvicorn.error",):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    stack: list[Any] = []
    on_termination(interrupt)  # while starting: the first Ctrl-C / SIGTERM stops at once
    if args.exit_with_stdin:
        exit_when_stdin_closes()
    try:
        check_args(args)
        sock = listening_socket(args.host, args.port)
        stack.append(sock.close)
        serve(args, sock, stack)
        code = 0
    except (BlossomError, ValueError, OSError) as error:
        code = fail(error)
    except KeyboardInterrupt:
        print("Stopped while starting.", file=sys.stderr, flush=True)
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up below is not to be interrupted
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for stop in reversed(stack):
            try:
                stop()
            except Exception as error:  # keep stopping the rest
                logger.warning("While stopping: %s", error)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
