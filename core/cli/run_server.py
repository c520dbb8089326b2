"""``blossom-server`` (``python -m core.cli.run_server``): serve blocks of a converted model to a swarm."""
from __future__ import annotations

import argparse
import logging
import sys
import threading

from core.cli.common import (
    add_exit_with_stdin_argument, add_hidden_alias, address_line, build_parser as new_parser, exit_when_stdin_closes,
    fail, interrupt, on_termination, setup_logging,
)
from core.config import QUANT_TYPES, TORCH_DTYPES, ServerConfig
from core.errors import BlossomError

logger = logging.getLogger(__name__)


def parse_block_indices(text: str) -> tuple[int, int]:
    """``'3:7'`` -> ``(3, 7)`` (blocks 3, 4, 5 and 6)."""
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:END such as 0:8, got '{text}'") from None
    return start, end


def parse_throughput(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("blossom-server", "Serve consecutive transformer blocks of a converted model to a swarm.")
    parser.add_argument("--model", default=None, metavar="FOLDER_OR_REPO",
                        help="the converted model: a folder written by blossom-convert, or a converted Hub repo "
                             "ORG/NAME (required)")
    add_hidden_alias(parser, "--converted_model_name_or_path", "model")
    parser.add_argument("--num_blocks", type=int, default=None,
                        help="how many blocks to serve; the server picks where the swarm is weakest")
    parser.add_argument("--block_indices", type=parse_block_indices, default=None,
                        help="serve exactly these blocks, START:END (END excluded), e.g. 0:8")
    parser.add_argument("--initial_peers", nargs="*", default=[], metavar="MULTIADDR",
                        help="addresses of peers already in the swarm, as printed by blossom-dht or blossom-server")
    parser.add_argument("--new_swarm", action="store_true", help="start a new swarm instead of joining one")
    parser.add_argument("--host_maddrs", nargs="+", default=None, metavar="MULTIADDR",
                        help="multiaddrs to listen on (default: every interface, /ip4/0.0.0.0/tcp/PORT)")
    parser.add_argument("--announce_maddrs", nargs="*", default=[], metavar="MULTIADDR",
                        help="public multiaddrs others should dial (e.g. your router's address with a forwarded port)")
    parser.add_argument("--port", type=int, default=None, help="TCP port to listen on (default: random)")
    parser.add_argument("--direct_port", type=int, default=0,
                        help="TCP port for direct connections (TLS, pinned to this server's announced certificate; from this "
                             "machine, local connections proven with its key): "
                             "callers that can dial it skip the p2p daemons (default 0: any free port)")
    parser.add_argument("--no_direct", action="store_true",
                        help="take no direct connections: every call goes through the p2p daemons")
    parser.add_argument("--identity_path", default=None, help="private key file that keeps this server's peer id")
    parser.add_argument("--no_relay", action="store_true",
                        help="do not relay for servers behind NAT (by default a directly reachable server does, "
                             "within limits)")
    parser.add_argument("--no_push", action="store_true",
                        help="do not pass inference outputs straight to the next server of a client's chain (nor take "
                             "them from the previous one): clients then carry every step themselves")
    parser.add_argument("--throughput", type=parse_throughput, default="auto",
                        help="announced speed in tokens/s per block, or 'auto' to measure it (cached per model/device/dtype)")
    parser.add_argument("--torch_dtype", choices=TORCH_DTYPES, default="auto",
                        help="compute dtype (auto: float32 on CPU; on a GPU the stored half dtype, else bfloat16 where "
                             "supported, else float16)")
    parser.add_argument("--quant_type", choices=QUANT_TYPES, default="none",
                        help="store linear weights in int8 or nf4 with bitsandbytes (fits more blocks)")
    parser.add_argument("--load_in_8bit", action="store_true", help="same as --quant_type int8")
    parser.add_argument("--dht_prefix", default=None, help="DHT name of the model (default: from the conversion)")
    parser.add_argument("--public_name", default="", help="a name shown to others in the swarm's status")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--use_auth_token", default=None, metavar="TOKEN", help="Hugging Face token for private converted repos")
    parser.add_argument("--max_length", type=int, default=2048, help="longest inference session accepted")
    parser.add_argument("--attn_cache_tokens", type=int, default=None,
                        help="KV-cache budget in tokens through all served blocks (default 16384)")
    parser.add_argument("--max_batch_size", type=int, default=64, help="largest batch accepted in one request")
    parser.add_argument("--max_tokens_per_request", type=int, default=8192,
                        help="largest batch x sequence length accepted in one request")
    parser.add_argument("--batch_tokens", type=int, default=512,
                        help="run the inference steps of concurrent sessions through the blocks as one batch of up to "
                             "this many tokens; longer prompts are split across batches (0: each step alone)")
    parser.add_argument("--alloc_timeout", type=float, default=5.0,
                        help="seconds a new session waits for KV-cache room before it is refused as 'server full'")
    parser.add_argument("--session_idle_timeout", type=float, default=600.0,
                        help="seconds an inference session may send nothing before it is closed and its cache freed")
    parser.add_argument("--shutdown_timeout", type=float, default=30.0,
                        help="on Ctrl-C / SIGTERM, seconds open inference sessions may run on before they are cut")
    parser.add_argument("--update_period", type=float, default=30.0,
                        help="seconds between re-announcements in the DHT (records live 2 x this + 5 s)")
    parser.add_argument("--balance_quality", type=float, default=0.75,
                        help="move to weaker blocks when the swarm's weakest block is below this fraction of what "
                             "the move would give it (0 = never move; --block_indices servers never move)")
    parser.add_argument("--mean_balance_check_period", type=float, default=60.0,
                        help="average seconds between checks of the swarm's balance (randomised)")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads for compute (default: torch's choice, about one per core)")
    add_exit_with_stdin_argument(parser, "blossom-server")
    parser.add_argument("--verbose", action="store_true", help="log every detail (debug level) on stderr")
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    host_maddrs = tuple(args.host_maddrs or [f"/ip4/0.0.0.0/tcp/{args.port or 0}"])
    return ServerConfig(
        converted_model_name_or_path=args.model,
        num_blocks=args.num_blocks,
        block_indices=args.block_indices,
        initial_peers=tuple(args.initial_peers),
        new_swarm=args.new_swarm,
        host_maddrs=host_maddrs,
        announce_maddrs=tuple(args.announce_maddrs),
        identity_path=args.identity_path,
        throughput=args.throughput,
        torch_dtype=args.torch_dtype,
        quant_type="int8" if args.load_in_8bit else args.quant_type,
        dht_prefix=args.dht_prefix,
        public_name=args.public_name,
        device=args.device,
        token=args.use_auth_token,
        max_length=args.max_length,
        attn_cache_tokens=args.attn_cache_tokens,
        torch_threads=args.num_threads,
        max_batch_size=args.max_batch_size,
        max_tokens_per_request=args.max_tokens_per_request,
        alloc_timeout=args.alloc_timeout,
        session_idle_timeout=args.session_idle_timeout,
        shutdown_timeout=args.shutdown_timeout,
        update_period=args.update_period,
        balance_quality=args.balance_quality,
        mean_balance_check_period=args.mean_balance_check_period,
        direct_port=None if args.no_direct else args.direct_port,
        relay_service=not args.no_relay,
        push=not args.no_push,
        batch_tokens=args.batch_tokens,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("pass --model: the folder written by blossom-convert, or a converted Hub repo ORG/NAME")
    setup_logging(args.verbose)
    from core.server.server import BlockServer  # heavy imports after argument errors are reported

    try:
        config = config_from_args(args)
    except (BlossomError, ValueError) as error:
        return fail(error)
    server = BlockServer(config)
    started, stopping = threading.Event(), threading.Event()
    # The first Ctrl-C / SIGTERM interrupts a start-up at once, or ends serving after a drain; a second one
    # interrupts the drain.
    on_termination(lambda: stopping.set() if started.is_set() else interrupt(), again=interrupt)
    if args.exit_with_stdin:
        exit_when_stdin_closes()
    try:
        status = server.start()
        started.set()
    except KeyboardInterrupt:
        print("Interrupted while starting; stopping.", flush=True)
        server.shutdown(drain=False)
        return 130
    except (BlossomError, ValueError) as error:
        server.shutdown(drain=False)
        return fail(error)
    except Exception as error:
        logger.debug("Start-up failed", exc_info=True)
        server.shutdown(drain=False)
        print(f"error: {type(error).__name__}: {error} (run with --verbose for details)", file=sys.stderr)
        return 1
    try:
        state = "is online" if server.is_reachable else "loaded its blocks but is NOT online"
        print(
            f"Blossom server for '{status.dht_prefix}' {state}: blocks {status.start_block}..{status.end_block - 1} "
            f"({status.end_block - status.start_block} of {status.total_blocks}), {status.torch_dtype} on "
            f"{status.device}, throughput {status.throughput:.1f} tokens/s per block",
            flush=True,
        )
        print(f"This server is {status.reachability}", flush=True)
        print("Other servers and clients can join through this server with --initial_peers:", flush=True)
        for address in status.addresses:
            print(address_line(address), flush=True)
        reported: dict = {}
        while not stopping.wait(60):
            stats = server.stats.as_dict()
            del stats["uptime"]
            if stats != reported:  # a line a minute only while something happens
                logger.info("Served %d requests (%d tokens), %d open sessions, %d errors", stats["requests"],
                            stats["tokens"], stats["sessions_open"], stats["errors"])
                reported = stats
    except KeyboardInterrupt:
        pass
    print("Shutting down: marking blocks offline (press Ctrl-C again to skip waiting for open sessions)...",
          flush=True)
    try:
        server.shutdown()
    except KeyboardInterrupt:
        print("Not waiting for open sessions.", flush=True)
        server.shutdown(drain=False)
    print("Server stopped.", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
