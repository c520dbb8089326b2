"""Encryption for direct connections: each server's own TLS certificate, pinned by clients through the DHT.

A server makes a fresh key and self-signed certificate every time it starts (nothing is written to
disk beyond the moment of loading it) and announces the certificate's SHA-256 fingerprint with its
direct address in its DHT record. That record is signed with the server's peer identity
(:mod:`core.dht.identity`), so a client that reads it knows which certificate belongs to that peer id
and accepts a direct connection only from it: no certificate authority is needed, and a program that
answers at the announced address without the server's key cannot read or change the hidden states.
Servers pushing to the next server (:mod:`core.server.push`) pin the fingerprint the client passed them.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.errors import RemoteCallError

FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{64}")
"""A certificate's fingerprint as announced: SHA-256 of its DER bytes, 64 lowercase hex digits."""


@dataclass(frozen=True)
class ServerCertificate:
    """What a server's direct port serves TLS with, the fingerprint it announces, and the certificate (DER) and
    key it proves itself with to callers on its own machine (:mod:`core.direct_local`)."""

    context: ssl.SSLContext
    fingerprint: str
    der: bytes
    key: ec.EllipticCurvePrivateKey


def make_server_certificate() -> ServerCertificate:
    """A new P-256 key and a self-signed certificate for it, loaded into a TLS 1.3 server context."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blossom-direct")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.num_tickets = 0  # connections are long-lived; no session resumption to offer
    with tempfile.TemporaryDirectory(prefix="blossom-tls-") as folder:  # owner-only folder, gone once loaded
        cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        with open(cert_path, "wb") as file:
            file.write(certificate.public_bytes(serialization.Encoding.PEM))
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        context.load_cert_chain(cert_path, key_path)
    der = certificate.public_bytes(serialization.Encoding.DER)
    return ServerCertificate(context, fingerprint_of(der), der, key)


def fingerprint_of(der: bytes) -> str:
    """The fingerprint of a certificate given as DER bytes."""
    return hashlib.sha256(der).hexdigest()


def is_fingerprint(text: object) -> bool:
    """Whether ``text`` is a fingerprint as servers announce them."""
    return isinstance(text, str) and FINGERPRINT_PATTERN.fullmatch(text) is not None


@lru_cache(maxsize=1)
def client_context() -> ssl.SSLContext:
    """The TLS 1.3 context callers connect with. The certificate is checked by its pinned fingerprint
    (:func:`check_certificate`), not by a certificate authority or a host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def check_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, fingerprint: str, where: str) -> None:
    """:class:`RemoteCallError` unless the TLS peer of ``ssl_object`` showed the certificate ``fingerprint``."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if der is None or fingerprint_of(der) != fingerprint:
        raise RemoteCallError(f"{where} showed another certificate than the one its server announced "
                              f"(someone else answers there, or the server restarted): not sending anything")
