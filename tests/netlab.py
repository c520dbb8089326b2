"""A network lab of Linux namespaces: an "internet" with public hosts and home networks behind NAT.

    with Lab() as lab:
        seed = lab.add_public("seed")                     # 10.77.0.1, reachable by everyone
        home = lab.add_home("home", upnp=True)            # router: WAN 10.77.0.2, LAN 10.78.1.1/24
        pc = lab.add_host("pc", home=home)                # 10.78.1.2, default route via the router
        proc = pc.popen([sys.executable, "-c", "..."], log_path=tmp / "pc.log")
        seed.run(["ping", "-c1", home.wan_ip])

Why: most volunteers serve from a PC behind a home router that masquerades outgoing traffic and
drops unsolicited incoming connections, sometimes with UPnP-IGD port mapping. This lab rebuilds that
on one machine, as root, with ``ip netns``, veth pairs, a Linux bridge and iptables:

- the internet is a namespace holding the bridge ``br0`` (10.77.0.0/24, forwarding on); each public
  host and each router's WAN side is a veth pair into that bridge;
- a home is a router namespace (WAN 10.77.0.R, LAN 10.78.K.1/24, ``iptables -t nat MASQUERADE`` on
  its WAN, forwarding on) plus hosts on its LAN bridge (10.78.K.X, default route via 10.78.K.1);
  nothing on the internet side has a route to 10.78.x, exactly like the real internet;
- ``upnp=True`` runs Debian's miniupnpd (nftables backend) in the router. miniupnpd refuses to map
  ports when its WAN address is a private one ("Reserved / private IP address ... Port forwarding is
  impossible") and has no switch to allow it; our internet is 10.x on purpose (we never touch real
  addresses), so the lab runs a copy of the binary whose reserved-address check is neutralised (see
  ``_patched_miniupnpd``). Its mappings are real nftables DNAT + forward rules in the router.
  Clients see an IGD whose external address is 10.77.0.R; miniupnpc 2.2.4 calls an IGD with an
  RFC 1918 external address "not connected?", so ``upnpc`` needs ``-i`` here (``upnpc -i -a @ 6000
  40000 TCP`` from a home host maps 10.77.0.R:40000 to that host's port 6000; ``upnpc -i -l`` lists).

Addresses are only 10.77.0.0/24 and 10.78.0.0/16, which exist only inside the lab's namespaces.
Every namespace name starts with ``bl<pid><letter>-``; the lab removes its namespaces and kills the
processes it started (process group: SIGTERM, then SIGKILL after a bounded wait) on exit, also at
interpreter exit (atexit), and removes the leftovers of labs whose process is gone when it starts.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Iterable, Mapping, Optional, Sequence

logger = logging.getLogger(__name__)

INTERNET_PREFIX = "10.77.0"
HOME_PREFIX = "10.78"
NAME_PREFIX = "bl"
_NAME_RE = re.compile(rf"^{NAME_PREFIX}(\d+)[a-z]+-")
_lab_counter = itertools.count()
_MINIUPNPD = "/usr/sbin/miniupnpd"


def lab_unavailable_reason() -> Optional[str]:
    """Why a lab cannot be built here, or None when it can (root, ``ip``, ``iptables``, netns)."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, veth, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"the network lab needs the '{tool}' command (apt-get install -y iproute2 iptables)"
    return None


def upnp_unavailable_reason() -> Optional[str]:
    """Why ``add_home(upnp=True)`` cannot work here, or None."""
    reason = lab_unavailable_reason()
    if reason:
        return reason
    for tool in (_MINIUPNPD, "nft", "upnpc"):
        if shutil.which(tool) is None:
            return f"UPnP in the lab needs '{tool}' (apt-get install -y miniupnpd-nftables nftables miniupnpc)"
    return None


def require_lab(upnp: bool = False) -> None:
    """Skip the calling pytest test, with the reason, when the lab cannot be built here."""
    reason = upnp_unavailable_reason() if upnp else lab_unavailable_reason()
    if reason:
        import pytest

        pytest.skip(reason)


def _sh(argv: Sequence[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _list_namespaces() -> list[str]:
    result = _sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_pids(ns: str) -> None:
    """SIGKILL every process still inside namespace ``ns`` (daemons that left our process groups)."""
    result = _sh(["ip", "netns", "pids", ns], check=False)
    for token in result.stdout.split():
        try:
            os.kill(int(token), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _delete_namespace(ns: str) -> None:
    _kill_namespace_pids(ns)
    _sh(["ip", "netns", "delete", ns], check=False)


def remove_stale_namespaces() -> list[str]:
    """Delete ``bl<pid>...-`` namespaces whose creating process is gone; returns their names."""
    removed = []
    for ns in _list_namespaces():
        match = _NAME_RE.match(ns)
        if match and not _pid_alive(int(match.group(1))):
            _delete_namespace(ns)
            removed.append(ns)
    return removed


class Host:
    """One namespace with one address: a public host, a router (``ip`` is its WAN) or a home host."""

    def __init__(self, lab: "Lab", name: str, ns: str, ip: str) -> None:
        self.lab, self.name, self.ns, self._ip = lab, name, ns, ip

    @property
    def ip(self) -> str:
        return self._ip

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ip={self.ip}, ns={self.ns})"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *map(str, argv)]

    def run(self, argv: Sequence[str], timeout: float = 20.0, check: bool = True,
            env: Optional[Mapping[str, str]] = None, input: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run a short command inside the namespace; output captured as text; raises on failure if check."""
        result = subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout,
                                env=None if env is None else dict(env), input=input)
        if check and result.returncode != 0:
            raise RuntimeError(f"[{self.name}] {' '.join(map(str, argv))} failed ({result.returncode}): "
                               f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def popen(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
              log_path: Optional[os.PathLike | str] = None, cwd: Optional[os.PathLike | str] = None,
              **kwargs) -> subprocess.Popen:
        """Start a long-running process inside the namespace in its own process group. It is killed on
        lab exit. stdout+stderr go to ``log_path`` when given (else inherited unless kwargs say)."""
        log: Optional[IO] = None
        if log_path is not None:
            log = open(log_path, "ab", buffering=0)
            kwargs.setdefault("stdout", log)
            kwargs.setdefault("stderr", subprocess.STDOUT)
        try:
            proc = subprocess.Popen(self.command(argv), env=None if env is None else dict(env), cwd=cwd,
                                    start_new_session=True, **kwargs)
        finally:
            if log is not None:
                log.close()  # the child holds its own copy
        self.lab._processes.append(proc)
        return proc

    def wait_for_port(self, port: int, timeout: float = 10.0) -> None:
        """Wait until something in this namespace listens on TCP ``port``; raise TimeoutError if not."""
        deadline = time.monotonic() + timeout
        while True:
            listening = self.run(["ss", "-ltnH"], check=False).stdout
            if re.search(rf":{int(port)}\s", listening):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {self.name}:{port} after {timeout}s")
            time.sleep(0.05)

    def tcp_connect(self, ip: str, port: int, timeout: float = 3.0) -> bool:
        """Whether a TCP connection from this host to ``ip:port`` succeeds within ``timeout``."""
        code = (f"import socket,sys\ns=socket.socket();s.settimeout({timeout})\n"
                f"try:\n s.connect(({ip!r},{int(port)}));print('ok')\nexcept OSError as e:\n print(repr(e))")
        result = self.run([_python(), "-c", code], timeout=timeout + 10, check=False)
        return result.stdout.strip() == "ok"


class Home:
    """A home network: its router (``router.ip`` is the WAN address) and the LAN 10.78.K.0/24."""

    def __init__(self, lab: "Lab", name: str, index: int, router: Host, upnp: bool) -> None:
        self.lab, self.name, self.index, self.router, self.upnp = lab, name, index, router, upnp
        self.hosts: list[Host] = []
        self._next_host = 2

    @property
    def wan_ip(self) -> str:
        return self.router.ip

    @property
    def lan_ip(self) -> str:
        return f"{HOME_PREFIX}.{self.index}.1"

    @property
    def subnet(self) -> str:
        return f"{HOME_PREFIX}.{self.index}.0/24"

    def __repr__(self) -> str:
        return f"Home({self.name!r}, wan={self.wan_ip}, lan={self.subnet}, upnp={self.upnp})"

    def port_mappings(self) -> str:
        """The router's NAT table as nft prints it (shows miniupnpd's DNAT rules, if any)."""
        return self.router.run(["nft", "list", "ruleset"], check=False).stdout


def internet_port(ip: str) -> str:
    """The name, in the internet namespace, of the veth end that leads to the host (or router WAN) ``ip``
    (the latency lab's delay switch takes these ports off the bridge)."""
    return f"p{ip.rsplit('.', 1)[1]}"


def _python() -> str:
    import sys

    return sys.executable


class Lab:
    """Context manager building namespaces on demand; see the module docstring."""

    def __init__(self, workdir: Optional[os.PathLike | str] = None) -> None:
        self.prefix = f"{NAME_PREFIX}{os.getpid()}{_letters(next(_lab_counter))}"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.internet_ns = f"{self.prefix}-net"
        self.public: list[Host] = []
        self.homes: list[Home] = []
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen] = []
        self._next_wan = 1
        self._port = itertools.count()
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "Lab":
        reason = lab_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        removed = remove_stale_namespaces()
        if removed:
            logger.info("removed stale lab namespaces: %s", removed)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        atexit.register(self.close)
        try:
            self._add_namespace(self.internet_ns)
            ns = self.internet_ns
            _sh(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
            _sh(["ip", "-n", ns, "link", "set", "br0", "up"])
            _sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process started in the lab and delete every namespace; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            atexit.unregister(self.close)
        except Exception:  # noqa: BLE001 - interpreter shutting down
            pass
        for proc in self._processes:
            _terminate(proc)
        for ns in reversed(self._namespaces):
            _delete_namespace(ns)
        # anything our prefix left behind (e.g. a namespace created just before a failure)
        for ns in _list_namespaces():
            if ns.startswith(self.prefix + "-"):
                _delete_namespace(ns)
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def namespaces(self) -> list[str]:
        """The namespaces of this lab that exist right now."""
        return [ns for ns in _list_namespaces() if ns.startswith(self.prefix + "-")]

    # ---- building --------------------------------------------------------------------------------
    def _add_namespace(self, ns: str) -> None:
        if len(ns) > 40:
            raise ValueError(f"namespace name too long: {ns}")
        self._namespaces.append(ns)
        _sh(["ip", "netns", "add", ns])
        _sh(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _attach_to_internet(self, ns: str, ifname: str) -> str:
        """A veth from ``ns`` (named ``ifname``) into the internet bridge; returns its 10.77.0.N address."""
        if self._next_wan > 250:
            raise RuntimeError("the lab's internet is full (250 addresses)")
        n = self._next_wan
        self._next_wan += 1
        ip = f"{INTERNET_PREFIX}.{n}"
        peer = internet_port(ip)
        _sh(["ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", peer,
             "netns", self.internet_ns])
        _sh(["ip", "-n", self.internet_ns, "link", "set", peer, "master", "br0", "up"])
        _sh(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifname])
        _sh(["ip", "-n", ns, "link", "set", ifname, "up"])
        return ip

    def _ns_name(self, name: str) -> str:
        if not re.fullmatch(r"[a-z0-9]{1,12}", name):
            raise ValueError(f"host names are 1-12 lowercase letters/digits, got {name!r}")
        ns = f"{self.prefix}-{name}"
        if ns in self._namespaces:
            raise ValueError(f"a host named {name!r} exists already")
        return ns

    def add_public(self, name: str) -> Host:
        """A host on the internet with address 10.77.0.N (the first one added gets 10.77.0.1)."""
        ns = self._ns_name(name)
        self._add_namespace(ns)
        host = Host(self, name, ns, self._attach_to_internet(ns, "eth0"))
        self.public.append(host)
        return host

    def add_home(self, name: str, upnp: bool = False) -> Home:
        """A home router: WAN 10.77.0.R on the internet, LAN 10.78.K.1/24, MASQUERADE on the WAN, incoming
        connections dropped unless a port is mapped; ``upnp=True`` also runs miniupnpd (UPnP-IGD and
        NAT-PMP) on the LAN side."""
        if upnp:
            reason = upnp_unavailable_reason()
            if reason:
                raise RuntimeError(reason)
        ns = self._ns_name(name)
        index = len(self.homes) + 1
        if index > 250:
            raise RuntimeError("too many homes")
        self._add_namespace(ns)
        wan_ip = self._attach_to_internet(ns, "wan0")
        router = Host(self, name, ns, wan_ip)
        home = Home(self, name, index, router, upnp)
        lan = home.lan_ip
        _sh(["ip", "-n", ns, "link", "add", "lan0", "type", "bridge"])
        _sh(["ip", "-n", ns, "addr", "add", f"{lan}/24", "dev", "lan0"])
        _sh(["ip", "-n", ns, "link", "set", "lan0", "up"])
        _sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        ipt = ["ip", "netns", "exec", ns, "iptables", "-w"]
        _sh([*ipt, "-t", "nat", "-A", "POSTROUTING", "-s", home.subnet, "-o", "wan0", "-j", "MASQUERADE"])
        # A home router's firewall: replies and LAN-originated traffic pass; new connections from the
        # WAN only where a port mapping (DNAT, marked by conntrack) says so.
        _sh([*ipt, "-P", "FORWARD", "DROP"])
        _sh([*ipt, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"])
        _sh([*ipt, "-A", "FORWARD", "-i", "lan0", "-o", "wan0", "-j", "ACCEPT"])
        _sh([*ipt, "-A", "FORWARD", "-i", "wan0", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"])
        _sh([*ipt, "-A", "INPUT", "-i", "wan0", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
             "-j", "ACCEPT"])
        _sh([*ipt, "-A", "INPUT", "-i", "wan0", "-p", "icmp", "-j", "ACCEPT"])
        _sh([*ipt, "-A", "INPUT", "-i", "wan0", "-j", "DROP"])
        self.homes.append(home)
        if upnp:
            self._start_miniupnpd(home)
        return home

    def add_host(self, name: str, home: Home) -> Host:
        """A PC on ``home``'s LAN: 10.78.K.X, default route via the router."""
        ns = self._ns_name(name)
        self._add_namespace(ns)
        x = home._next_host
        if x > 250:
            raise RuntimeError(f"home {home.name} is full")
        home._next_host += 1
        ip = f"{HOME_PREFIX}.{home.index}.{x}"
        peer = f"h{x}"
        _sh(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer,
             "netns", home.router.ns])
        _sh(["ip", "-n", home.router.ns, "link", "set", peer, "master", "lan0", "up"])
        _sh(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        _sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _sh(["ip", "-n", ns, "route", "add", "default", "via", home.lan_ip])
        host = Host(self, name, ns, ip)
        home.hosts.append(host)
        return host

    # ---- UPnP ------------------------------------------------------------------------------------
    def _start_miniupnpd(self, home: Home) -> None:
        ns = home.router.ns
        workdir = self.workdir / f"upnp-{home.name}"
        workdir.mkdir(parents=True, exist_ok=True)
        # The nftables skeleton miniupnpd 2.3.1 expects (Debian's nft_init.sh creates the same chains,
        # but with a forward policy of drop that would cut the LAN off; the iptables FORWARD chain above
        # already admits DNAT-ed connections, so our forward chain only hosts miniupnpd's rules).
        skeleton = """
table inet filter {
    chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
    chain miniupnpd { }
    chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
    chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
    chain prerouting_miniupnpd { }
    chain postrouting_miniupnpd { }
}
"""
        (workdir / "init.nft").write_text(skeleton)
        _sh(["ip", "netns", "exec", ns, "nft", "-f", str(workdir / "init.nft")])
        conf = workdir / "miniupnpd.conf"
        conf.write_text("\n".join([
            "ext_ifname=wan0",
            "listening_ip=lan0",
            "enable_natpmp=yes",
            "enable_upnp=yes",
            "secure_mode=no",
            "system_uptime=yes",
            "notify_interval=60",
            "clean_ruleset_interval=600",
            f"lease_file={workdir / 'leases'}",
            "uuid=00000000-0000-4000-8000-%012d" % home.index,
            f"allow 1024-65535 {home.subnet} 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
            "",
        ]))
        binary = _patched_miniupnpd(self.workdir)
        log = workdir / "miniupnpd.log"
        home.router.popen([binary, "-d", "-f", str(conf), "-P", str(workdir / "miniupnpd.pid")],
                          log_path=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            started = re.search(r"HTTP listening on port (\d+)", log.read_text(errors="replace"))
            if started and f":{started.group(1)} " in home.router.run(["ss", "-ltnH"], check=False).stdout:
                return
            time.sleep(0.05)
        raise RuntimeError(f"miniupnpd did not start in {home.name}: {log.read_text(errors='replace')[-2000:]}")


def _letters(n: int) -> str:
    out = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(ord("a") + r) + out
    return out


def _terminate(proc: subprocess.Popen, grace: float = 3.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # also children left in the group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        logger.warning("process %s did not die", proc.pid)


def _patched_miniupnpd(workdir: Path) -> str:
    """A copy of miniupnpd that accepts a private WAN address (see the module docstring).

    miniupnpd calls ``addr_is_reserved()`` on its WAN address and disables port forwarding when it is
    private; the function is compiled in (no switch, no symbol to interpose). It walks a table of
    ``{address, 32 - prefix length}`` pairs (host-order uint32s) of reserved ranges; in the copy the
    10.0.0.0/8 entry ``{0x0A000000, 24}`` becomes 10.78.0.0/16 ``{0x0A4E0000, 16}``: the lab's internet
    (10.77.0.0/24) counts as public, home LANs (10.78.x) stay private (miniupnpd also refuses to listen
    on a "public" LAN address), and nothing else changes.
    """
    data = bytearray(Path(_MINIUPNPD).read_bytes())
    needle = (0x0A000000).to_bytes(4, "little") + (24).to_bytes(4, "little")
    count = data.count(needle)
    if count != 1:
        raise RuntimeError(f"cannot patch {_MINIUPNPD}: expected one 10.0.0.0/8 table entry, found {count}")
    at = data.index(needle)
    data[at:at + 8] = (0x0A4E0000).to_bytes(4, "little") + (16).to_bytes(4, "little")
    target = workdir / "miniupnpd-lab"
    target.write_bytes(bytes(data))
    target.chmod(0o755)
    return str(target)


def iter_lab_namespaces(prefix: str) -> Iterable[str]:
    """Namespaces whose names start with ``prefix-`` (for checks after a lab has exited)."""
    return [ns for ns in _list_namespaces() if ns.startswith(prefix + "-")]
