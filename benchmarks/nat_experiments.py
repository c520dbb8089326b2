"""Serving from home: can a public peer reach a hivemind peer behind a home NAT, how, and how fast.

    sudo python -m benchmarks.nat_experiments [--scenarios defaults upnp relay relay_late] [--calls 300]

Needs root (tests/netlab.py builds network namespaces). Each scenario builds a fresh lab: a bootstrap
peer on a public host (10.77.0.1:31337), a home router (WAN 10.77.0.3, LAN 10.78.1.0/24) with one
home peer on 10.78.1.2:31337, and a public caller (10.77.0.2). The caller is a DHT *client*, so the
home peer never learns of it and never dials it (with a DHT server caller, the home peer's DHT
refresh connects out to it within ~20 s and the caller then "reaches" the home peer through that
connection, which says nothing about reachability). The caller calls a unary handler of the home
peer once a second until it answers, then times ``--calls`` round trips and reports the median.

Scenarios (hivemind.P2P kwargs of the home peer):
- ``defaults``: nothing (nat_port_map=True, auto_nat=True by default): expected unreachable;
- ``upnp``: defaults, the router runs miniupnpd; the caller dials the mapped WAN address it sees in
  the home peer's visible maddrs;
- ``relay``: use_auto_relay=True, force_reachability="private", trusted_relays=[bootstrap]; the
  caller dials ``<bootstrap>/p2p-circuit/p2p/<home>`` explicitly;
- ``relay_late``: the same, with the caller started 190 s later (autorelay reserves a slot only after
  its 3-minute boot delay when it knows fewer than 4 relays).
The columns: first answer (seconds after the home peer started), the address of the connection the
caller used (direct through a mapping, ``p2p-circuit`` when relayed), RTT medians.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

PORT = 31337
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": dict(home={}, upnp=False, dial="none", delay=0.0, timeout=30.0),
    "upnp": dict(home={}, upnp=True, dial="external", delay=8.0, timeout=30.0),
    "relay": dict(home=dict(use_auto_relay=True, force_reachability="private", trusted_relays="BOOT"),
                  upnp=False, dial="circuit", delay=0.0, timeout=30.0),
    "relay_late": dict(home=dict(use_auto_relay=True, force_reachability="private", trusted_relays="BOOT"),
                       upnp=False, dial="circuit", delay=190.0, timeout=30.0),
}


# ---- the peer (runs inside a namespace: python -m benchmarks.nat_experiments --peer ...) ------------

def _emit(**fields: Any) -> None:
    fields["wall"] = time.time()
    print(json.dumps(fields, default=str), flush=True)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _BinaryMaddr:
    """A multiaddr for ``P2P._client.connect``: hivemind 1.1.12's Multiaddr writes /p2p/ as a CIDv1 in
    binary form, which p2pd rejects ("length greater than remaining number of bytes in buffer");
    here /p2p/ is the raw multihash, as go-multiaddr expects."""

    def __init__(self, text: str) -> None:
        from hivemind.p2p import PeerID
        from hivemind.utils.multiaddr import Multiaddr

        parts, out, i = text.strip("/").split("/"), b"", 0
        while i < len(parts):
            if parts[i] == "p2p":
                multihash = PeerID.from_base58(parts[i + 1]).to_bytes()
                out += _varint(421) + _varint(len(multihash)) + multihash
                i += 2
            elif parts[i] == "p2p-circuit":
                out += _varint(290)
                i += 1
            else:
                out += Multiaddr(f"/{parts[i]}/{parts[i + 1]}").to_bytes()
                i += 2
        self._bytes = out

    def to_bytes(self) -> bytes:
        return self._bytes


async def _peer(args: argparse.Namespace) -> None:
    from hivemind.p2p import P2P, PeerID
    from hivemind.proto import test_pb2

    kwargs = json.loads(args.kwargs)
    p2p = await P2P.create(initial_peers=args.initial or None, host_maddrs=[f"/ip4/0.0.0.0/tcp/{args.port}"],
                           **kwargs)
    _emit(ev="ready", id=p2p.peer_id.to_base58(), maddrs=[str(m) for m in await p2p.get_visible_maddrs()])
    if args.peer == "serve":
        async def ping(request: Any, context: Any) -> Any:
            return test_pb2.TestResponse(number=request.number + 1)

        await p2p.add_protobuf_handler("ping", ping, test_pb2.TestRequest)
        last = None
        while True:
            current = sorted(str(m) for m in await p2p.get_visible_maddrs(latest=True))
            if current != last:
                _emit(ev="maddrs", maddrs=current)
                last = current
            await asyncio.sleep(1)

    target = PeerID.from_base58(args.target)
    for maddr in args.dial:
        try:
            await asyncio.wait_for(p2p._client.connect(target, [_BinaryMaddr(maddr)]), 20)
            _emit(ev="dial", maddr=maddr, ok=True)
        except Exception as e:  # noqa: BLE001 - reported, not handled
            _emit(ev="dial", maddr=maddr, ok=False, error=f"{type(e).__name__}: {e}")
    deadline = time.time() + args.timeout
    request = test_pb2.TestRequest(number=1)
    while time.time() < deadline:
        try:
            await asyncio.wait_for(p2p.call_protobuf_handler(target, "ping", request, test_pb2.TestResponse), 20)
            break
        except Exception as e:  # noqa: BLE001
            _emit(ev="call", ok=False, error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(1)
    else:
        _emit(ev="done", ok=False)
        return
    _emit(ev="call", ok=True)
    rtts = []
    for i in range(args.calls):
        start = time.perf_counter()
        await p2p.call_protobuf_handler(target, "ping", test_pb2.TestRequest(number=i), test_pb2.TestResponse)
        rtts.append((time.perf_counter() - start) * 1000)
    connection = [str(a) for peer in await p2p.list_peers() if peer.peer_id == target for a in peer.addrs]
    _emit(ev="done", ok=True, rtt_median_ms=statistics.median(rtts), connection=connection)
    await p2p.shutdown()


# ---- the driver --------------------------------------------------------------------------------

def _events(path: Path) -> list[dict]:
    events = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def _wait(path: Path, ev: str, proc: Any, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [e for e in _events(path) if e.get("ev") == ev]
        if found:
            return found[0]
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"no '{ev}' from {path}: {path.read_text(errors='replace')[-2000:]}")


def run_scenario(name: str, calls: int, logs: Path) -> dict[str, Any]:
    from tests.netlab import Lab

    spec = SCENARIOS[name]
    logs.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, "-m", "benchmarks.nat_experiments", "--peer"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    with Lab(logs / "lab") as lab:
        boot_host = lab.add_public("boot")
        caller_host = lab.add_public("caller")
        home = lab.add_home("home", upnp=spec["upnp"])
        pc = lab.add_host("pc", home=home)
        boot_log = logs / "boot.log"
        proc = boot_host.popen([*me, "serve", "--port", str(PORT)], env=env, log_path=boot_log)
        boot = f"/ip4/{boot_host.ip}/tcp/{PORT}/p2p/{_wait(boot_log, 'ready', proc)['id']}"
        kwargs = {k: ([boot] if v == "BOOT" else v) for k, v in spec["home"].items()}
        home_log = logs / "home.log"
        started = time.time()
        proc = pc.popen([*me, "serve", "--port", str(PORT), "--initial", boot, "--kwargs", json.dumps(kwargs)],
                        env=env, log_path=home_log)
        home_id = _wait(home_log, "ready", proc)["id"]
        time.sleep(spec["delay"])
        maddrs = [e for e in _events(home_log) if e["ev"] in ("ready", "maddrs")][-1]["maddrs"]
        dial = []
        if spec["dial"] == "circuit":
            dial = [f"{boot}/p2p-circuit/p2p/{home_id}"]
        elif spec["dial"] == "external":
            dial = [m for m in maddrs if m.startswith(f"/ip4/{home.wan_ip}/")]
        caller_log = logs / "caller.log"
        argv = [*me, "call", "--target", home_id, "--initial", boot, "--kwargs", json.dumps({"dht_mode": "client"}),
                "--timeout", str(spec["timeout"]), "--calls", str(calls)]
        for maddr in dial:
            argv += ["--dial", maddr]
        caller_host.popen(argv, env=env, log_path=caller_log).wait(spec["timeout"] + 120)
        events = _events(caller_log)
        first = next((e["wall"] - started for e in events if e["ev"] == "call" and e["ok"]), None)
        done = next((e for e in events if e["ev"] == "done"), {})
        errors = [e.get("error") for e in events if e.get("error")]
        return dict(scenario=name, first_answer_s=first, rtt_median_ms=done.get("rtt_median_ms"),
                    connection=done.get("connection"), visible_maddrs=maddrs,
                    dials=[(e["maddr"], e["ok"], e.get("error")) for e in events if e["ev"] == "dial"],
                    last_error=errors[-1] if errors else None)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--calls", type=int, default=300, help="timed round trips once the home peer answers")
    parser.add_argument("--logs", type=Path, default=None, help="where peers' logs go (default: a temp dir)")
    parser.add_argument("--peer", choices=["serve", "call"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--initial", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=30, help=argparse.SUPPRESS)
    parser.add_argument("--dial", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tempfile.gettempdir()  # before hivemind forks (see DESIGN.md)
    if args.peer:
        asyncio.run(_peer(args))
        return

    from tests.netlab import lab_unavailable_reason

    reason = lab_unavailable_reason()
    if reason:
        sys.exit(reason)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="nat-experiments-"))
    print(f"logs: {logs}")
    print(f"{'scenario':<12} {'first answer':>13} {'RTT median':>11}  connection / last error")
    for name in args.scenarios:
        result = run_scenario(name, args.calls, logs / name)
        first = "never" if result["first_answer_s"] is None else f"{result['first_answer_s']:.1f} s"
        rtt = "-" if result["rtt_median_ms"] is None else f"{result['rtt_median_ms']:.2f} ms"
        how = result["connection"] or result["last_error"]
        print(f"{name:<12} {first:>13} {rtt:>11}  {how}")
        print(f"{'':<12} visible maddrs of the home peer: {result['visible_maddrs']}")
        for maddr, ok, error in result["dials"]:
            print(f"{'':<12} dial {maddr}: {'ok' if ok else error}")


if __name__ == "__main__":
    main()
