"""Starting and stopping hivemind DHT nodes the Blossom way: every node signs its own records and checks
others'. The one owner of a DHT node's life: servers, ``run_dht`` and clients all start theirs here."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import signal
import socket
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Sequence

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.p2p import P2P
from hivemind.p2p.p2p_daemon_bindings.utils import P2PDaemonError

from core.dht.identity import ensure_identity_file, load_private_key, record_validator
from core.dht.schema import is_peer_address
from core.errors import InvalidRequestError, PortInUseError, SwarmJoinError
from core.utils.event_loop import shared_loop

logger = logging.getLogger(__name__)


PARENT_CHECK_PERIOD = 1.0
"""Seconds between a DHT process's checks that the program that started it still runs."""


class _FollowingDHT(hivemind.DHT):
    """hivemind's DHT process, in a process group of its own and ending with the program that started it.

    Its own group (which the p2p daemon it starts joins) keeps a Ctrl-C in the terminal away from it:
    only the program gets it and stops the DHT in order. Otherwise the daemon got the Ctrl-C too and quit
    first (a go-libp2p ERROR line), and the DHT, its daemon gone, had to be killed after a grace period.
    A watchdog ends the group once the parent is gone, even killed, so no DHT or daemon is left behind.
    """

    def run(self) -> None:
        if hasattr(os, "setpgid"):  # POSIX
            os.setpgid(0, 0)
            threading.Thread(target=_end_with_parent, args=(os.getppid(),), name="blossom-parent-watch",
                             daemon=True).start()
        super().run()


def _end_with_parent(parent_pid: int) -> None:
    """SIGKILL this process group (the DHT and its daemon) once ``parent_pid`` has exited."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_PERIOD)
    os.killpg(0, signal.SIGKILL)


@dataclass
class DHTNode:
    """A started DHT and the validator that signs this node's records."""

    dht: hivemind.DHT
    validator: RSASignatureValidator
    identity_path: str | None


def create_dht(
    initial_peers: Sequence[str] = (),
    *,
    client_mode: bool = False,
    host_maddrs: Sequence[str] = ("/ip4/0.0.0.0/tcp/0",),
    announce_maddrs: Sequence[str] = (),
    identity_path: str | None = None,
    persistent_identity: bool = False,
) -> DHTNode:
    """Start a DHT node joined through ``initial_peers``.

    Nodes that announce records (``persistent_identity`` or a given ``identity_path``) get an identity
    file whose RSA key signs what they store; a throwaway identity is made when none is given.
    Client nodes only read, so they use hivemind's process-wide key.
    """
    tempfile.gettempdir()  # resolve before hivemind forks its helper process (see DESIGN.md)
    kwargs: dict = {}
    if client_mode and identity_path is None and not persistent_identity:
        validator = record_validator()
    else:
        identity_path, existed = ensure_identity_file(identity_path)
        validator = record_validator(load_private_key(identity_path))
        kwargs["identity_path"] = identity_path
        kwargs["check_if_identity_free"] = existed
    refuse_taken_ports(host_maddrs)
    for address in initial_peers:
        if not is_peer_address(str(address)):
            raise SwarmJoinError(f"'{address}' is not a peer address: pass one that run_dht or run_server printed, "
                                 f"like /ip4/203.0.113.5/tcp/31337/p2p/QmXyz...")
    try:
        dht = _FollowingDHT(
            initial_peers=list(initial_peers),
            client_mode=client_mode,
            host_maddrs=list(host_maddrs),
            announce_maddrs=list(announce_maddrs) or None,
            record_validators=[validator],
            start=True,
            **kwargs,
        )
    except P2PDaemonError as error:
        raise _join_error(error, initial_peers) from None
    return DHTNode(dht, validator, identity_path)


_TCP_LISTEN_ADDRESS = re.compile(r"^/ip([46])/([^/]+)/tcp/(\d+)")


def refuse_taken_ports(host_maddrs: Sequence[str]) -> None:
    """Raise :class:`PortInUseError` when a fixed TCP port of ``host_maddrs`` is taken.

    libp2p listens with ``SO_REUSEPORT``, so a second Blossom peer on the same port would start without
    a word and share it with the first (a client dialling the port could reach either). A plain bind,
    without that option, fails while anyone listens there: try one first.
    """
    for maddr in host_maddrs:
        match = _TCP_LISTEN_ADDRESS.match(str(maddr))
        if match is None or int(match[3]) == 0:
            continue
        family = socket.AF_INET if match[1] == "4" else socket.AF_INET6
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a recently closed port is free
            try:
                probe.bind((match[2], int(match[3])))
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise SwarmJoinError(f"cannot listen on {maddr}: {error.strerror}") from None
                raise PortInUseError(int(match[3])) from None


def _join_error(error: P2PDaemonError, initial_peers: Sequence[str]) -> SwarmJoinError:
    """The p2p daemon's start-up failure in words a person can act on."""
    reason = str(error)
    if "failed to connect to bootstrap peers" in reason:
        return SwarmJoinError(f"could not reach any of --initial_peers ({', '.join(map(str, initial_peers))}). Check that "
                              f"the peer is running and printed that address (its peer id changes unless it keeps "
                              f"--identity_path), and that this machine can connect to it")
    return SwarmJoinError(f"the p2p daemon could not start: {reason.removeprefix('Daemon failed to start: ')}")


def client_dht(initial_peers: Sequence[str]) -> hivemind.DHT:
    """A read-only DHT node joined to a swarm: what scripts pass as ``dht=`` to Blossom's client classes.
    Stop it with :func:`shutdown_client_dht`."""
    if not initial_peers:
        raise InvalidRequestError("pass initial_peers=[...] (a multiaddr printed by run_dht or run_server) or dht=")
    return create_dht(initial_peers, client_mode=True).dht


_replica_locks: "weakref.WeakKeyDictionary[hivemind.DHT, tuple[asyncio.AbstractEventLoop, asyncio.Lock]]" = \
    weakref.WeakKeyDictionary()


async def p2p_replica(dht: hivemind.DHT) -> P2P:
    """The DHT's P2P replica in this process (what streams and calls go through), made once per DHT.

    hivemind's ``replicate_p2p`` looks for its replica before it awaits making one, so callers that
    asked at the same time (several models sharing a DHT, first used from several threads) each made
    one, and all but the last were never closed: a daemon connection and two tasks each, until exit.
    """
    loop = asyncio.get_running_loop()
    owner, lock = _replica_locks.get(dht, (None, None))
    if owner is not loop or lock is None:  # a lock serves one loop (after a fork, clients run on a new one)
        lock = asyncio.Lock()
        _replica_locks[dht] = (loop, lock)
    async with lock:
        return await dht.replicate_p2p()


def shutdown_client_dht(dht: hivemind.DHT) -> None:
    """Close the DHT's P2P replica on the client loop it was made on, then stop the DHT.

    hivemind keeps one replica per DHT; left to the garbage collector it is torn down outside
    any event loop and raises.
    """
    replica = getattr(dht, "_p2p_replica", None)
    if replica is not None:
        try:
            shared_loop().run(replica.shutdown(), timeout=10)
        except Exception:
            logger.debug("Could not close the P2P replica cleanly", exc_info=True)
        dht._p2p_replica = None
    dht.shutdown()

