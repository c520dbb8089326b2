"""``blossom-dht`` (``python -m core.cli.run_dht``): a standalone, persistent bootstrap peer for a swarm."""
from __future__ import annotations

import argparse
import logging
import threading


from core.cli.common import (
    add_exit_with_stdin_argument, address_line, build_parser as new_parser, exit_when_stdin_closes, fail,
    on_termination, setup_logging,
)
from core.errors import BlossomError
from core.dht.node import create_dht
from core.server.relay import RelayService
from core.utils.event_loop import EventLoopThread

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("blossom-dht", "Run a DHT bootstrap peer that servers and clients join through.")
    parser.add_argument("--initial_peers", nargs="*", default=[], metavar="MULTIADDR",
                        help="join an existing swarm through these peers (default: start a new swarm)")
    parser.add_argument("--host_maddrs", nargs="+", default=None, metavar="MULTIADDR",
                        help="multiaddrs to listen on (default: all interfaces, --port or a random port)")
    parser.add_argument("--announce_maddrs", nargs="*", default=None, metavar="MULTIADDR",
                        help="public multiaddrs others should dial (e.g. your router's address with a forwarded port)")
    parser.add_argument("--port", type=int, default=None, help="TCP port to listen on (default: random)")
    parser.add_argument("--identity_path", default=None,
                        help="private key file; keeps this peer's id (and so its address) across restarts")
    parser.add_argument("--no_relay", action="store_true",
                        help="do not relay for servers behind NAT (by default this peer does, within limits)")
    add_exit_with_stdin_argument(parser, "blossom-dht")
    parser.add_argument("--verbose", action="store_true", help="log every detail (debug level) on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    host_maddrs = args.host_maddrs or [f"/ip4/0.0.0.0/tcp/{args.port or 0}"]
    try:
        dht = create_dht(
            args.initial_peers,
            host_maddrs=host_maddrs,
            announce_maddrs=args.announce_maddrs or (),
            identity_path=args.identity_path,
        ).dht
    except BlossomError as error:
        return fail(error)
    stop = threading.Event()
    on_termination(stop.set)
    if args.exit_with_stdin:
        exit_when_stdin_closes()
    loop = EventLoopThread("blossom-dht-loop")
    refusal = "this peer's relay service is turned off (--no_relay)" if args.no_relay else None
    relay = loop.run(_start_relay(dht, refusal), timeout=30)
    addresses = [str(addr) for addr in dht.get_visible_maddrs()]
    print("Running a DHT peer. To connect servers and clients to this swarm, pass one of these as --initial_peers:",
          flush=True)
    for address in addresses:
        print(address_line(address), flush=True)
    try:
        stop.wait()
    finally:
        try:
            loop.run(relay.p2p.shutdown(), timeout=10)
        except Exception:
            logger.debug("Could not close the P2P replica cleanly", exc_info=True)
        loop.stop()
        dht.shutdown()
        print("DHT peer stopped.", flush=True)
    return 0


async def _start_relay(dht, refusal: str | None) -> RelayService:
    """Dial-backs and relaying for servers behind NAT (core.server.relay) on this peer."""
    relay = RelayService(await dht.replicate_p2p(), lambda: refusal)
    await relay.add_p2p_handlers()
    return relay


if __name__ == "__main__":
    raise SystemExit(main())
