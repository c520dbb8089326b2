"""Direct connections within one machine: no encryption; the server proves it holds its announced key.

Bytes between two programs on one machine (over loopback, or to one of the machine's own addresses)
never cross a network: the kernel carries them, and no program without root can read or change them.
TLS adds nothing there but cost: each message through Python's TLS layer takes about 20-40 µs more
on each side, and a generated token crosses it four times per two servers (benchmarks/README.md). That
is the private swarm of the demo, the app's local chat and ``blossom-api``. So a caller dialling a
direct port at one of its own machine's addresses asks for a *local* connection:

- the caller sends :func:`local_hello` with a fresh random nonce (and, at once, its usual hello);
- the server answers with :func:`local_proof`: its certificate and an ECDSA signature, made with the
  certificate's key, over the nonce and the address and port the connection reached;
- the caller checks (:func:`check_local_proof`) that the certificate is the one whose fingerprint the
  server announced in its signed DHT record, and the signature. A program answering at that address
  without the server's key cannot sign; one passing the nonce on to the real server at another address
  or port gets a proof naming those.

A server takes a local connection only from its own machine: from a loopback address, or from the very
address the connection reached (:func:`comes_from_this_machine`; the kernel gives a connection to one
of the machine's own addresses that address as its source, and drops packets from outside that claim
it). Anyone else is closed before the proof, and a caller whose local connection is closed so (or an
older server's, which speaks only TLS) dials again with TLS (:mod:`core.direct_tls`).
"""
from __future__ import annotations

import os
import struct

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from core.direct_protocol import ip_of
from core.direct_tls import ServerCertificate, fingerprint_of
from core.errors import RemoteCallError

LOCAL_PROTOCOL = b"BLOSSOM-LOCAL/1"
NONCE_BYTES = 32
MAX_LOCAL_HELLO_BYTES = len(LOCAL_PROTOCOL) + 2 + 2 * NONCE_BYTES
PROOF_HEAD = struct.Struct(">HH")  # after LOCAL_PROTOCOL and a space: the certificate's length, the signature's
PROOF_HEAD_BYTES = len(LOCAL_PROTOCOL) + 1 + PROOF_HEAD.size
MAX_PROOF_PART_BYTES = 4096


class LocalConnectionRefusedError(RemoteCallError):
    """The server closed a local connection (or answered it with something else) before any proof: it takes this
    caller with TLS only."""


def new_nonce() -> bytes:
    """A caller's fresh challenge for one connection."""
    return os.urandom(NONCE_BYTES)


def local_hello(nonce: bytes) -> bytes:
    """The line a caller opens a local connection with."""
    return LOCAL_PROTOCOL + b" " + nonce.hex().encode() + b"\n"


def nonce_of_local_hello(line: bytes) -> bytes | None:
    """The nonce of a received local hello line, or ``None`` if it is not one."""
    prefix = LOCAL_PROTOCOL + b" "
    if not line.startswith(prefix) or not line.endswith(b"\n") or len(line) != MAX_LOCAL_HELLO_BYTES:
        return None
    try:
        return bytes.fromhex(line[len(prefix):-1].decode("ascii"))
    except ValueError:
        return None


def comes_from_this_machine(caller: str, reached: str) -> bool:
    """Whether a connection from address ``caller`` to this server's address ``reached`` is from this machine."""
    caller_ip = ip_of(caller)
    return caller_ip.is_loopback or caller_ip == ip_of(reached)


def _signed_bytes(nonce: bytes, host: str, port: int) -> bytes:
    return LOCAL_PROTOCOL + b" proof " + nonce + f" {ip_of(host)} {port}".encode()


def local_proof(certificate: ServerCertificate, nonce: bytes, host: str, port: int) -> bytes:
    """What a server answers to a local hello carrying ``nonce`` on a connection that reached ``host:port``."""
    signature = certificate.key.sign(_signed_bytes(nonce, host, port), ec.ECDSA(hashes.SHA256()))
    return (LOCAL_PROTOCOL + b" " + PROOF_HEAD.pack(len(certificate.der), len(signature))
            + certificate.der + signature)


def proof_lengths(head: bytes, where: str) -> tuple[int, int]:
    """The certificate's and the signature's lengths announced by the first :data:`PROOF_HEAD_BYTES` of a proof;
    :class:`LocalConnectionRefusedError` if ``head`` is not the start of one."""
    if len(head) != PROOF_HEAD_BYTES or not head.startswith(LOCAL_PROTOCOL + b" "):
        raise LocalConnectionRefusedError(f"{where} did not answer a local connection (it sent {head[:32]!r})")
    certificate_length, signature_length = PROOF_HEAD.unpack(head[-PROOF_HEAD.size:])
    if not 0 < certificate_length <= MAX_PROOF_PART_BYTES or not 0 < signature_length <= MAX_PROOF_PART_BYTES:
        raise RemoteCallError(f"{where} announced a proof of {certificate_length} + {signature_length} bytes")
    return certificate_length, signature_length


def check_local_proof(body: bytes, certificate_length: int, fingerprint: str, nonce: bytes, host: str, port: int,
                      where: str) -> None:
    """:class:`RemoteCallError` unless ``body`` (certificate, then signature) proves that whoever answers at
    ``host:port`` (``where``) holds the key of the certificate ``fingerprint`` and was reached there."""
    der, signature = body[:certificate_length], body[certificate_length:]
    if fingerprint_of(der) != fingerprint:
        raise RemoteCallError(f"{where} showed another certificate than the one its server announced "
                              f"(someone else answers there, or the server restarted): not sending anything")
    try:
        public_key = x509.load_der_x509_certificate(der).public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise TypeError(f"a {type(public_key).__name__} key")
        public_key.verify(signature, _signed_bytes(nonce, host, port), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError) as error:
        raise RemoteCallError(f"{where} did not prove it holds its announced certificate's key at this address "
                              f"({type(error).__name__}): not sending anything") from None
