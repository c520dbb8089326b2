"""A server's identity: the RSA key behind its peer id, which also signs its DHT records.

Records a server announces are stored under a subkey ``<peer id>[owner:<public key>]``. hivemind's
:class:`~hivemind.dht.crypto.RSASignatureValidator` then only accepts changes to that subkey signed by
the owner's private key, and readers check that the peer id really belongs to that key
(:func:`owner_of_subkey`), so no peer can overwrite or forge another server's announcement.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import multihash
from cryptography.hazmat.primitives import serialization
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

logger = logging.getLogger(__name__)

OWNER_MARK = b"[owner:"


def ensure_identity_file(path: str | None) -> tuple[str, bool]:
    """The identity file to start the DHT with, creating it (owner-only permissions) when missing.

    With ``path=None`` a throwaway identity is created in a private temporary folder. Returns the
    path and whether the file already existed (an existing identity may be in use by another peer).
    """
    throwaway = path is None
    if throwaway:
        folder = tempfile.mkdtemp(prefix="blossom-identity-")
        path = os.path.join(folder, "identity.key")
    existed = os.path.isfile(path)
    if not existed:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_new_identity(path)
        logger.log(logging.DEBUG if throwaway else logging.INFO, "Created a new identity in %s", path)
    return path, existed


def write_new_identity(path: str) -> None:
    """Write a new RSA identity to ``path``, a file that is owner-only (0o600) from its creation.

    hivemind's ``P2P.generate_identity`` creates the file with the umask's permissions and narrows them
    afterwards, leaving a moment in which other users may open the private key.
    """
    key = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=RSAPrivateKey().to_bytes())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key.SerializeToString())


def load_private_key(identity_path: str) -> RSAPrivateKey:
    """The RSA private key stored in a libp2p identity file."""
    data = crypto_pb2.PrivateKey.FromString(Path(identity_path).read_bytes()).data
    key = RSAPrivateKey.__new__(RSAPrivateKey)
    key.__setstate__({"_private_key": data})
    return key


def record_validator(private_key: RSAPrivateKey | None = None) -> RSASignatureValidator:
    """The validator every Blossom DHT node runs: signs this node's records, checks everyone else's."""
    return RSASignatureValidator(private_key)


def owner_subkey(peer_id: PeerID, validator: RSASignatureValidator) -> bytes:
    """The subkey a server announces under: its peer id followed by its public key."""
    return peer_id.to_base58().encode() + validator.local_public_key


def peer_id_of_public_key(public_key: RSAPublicKey) -> PeerID:
    """The libp2p peer id that belongs to an RSA public key."""
    der = public_key._public_key.public_bytes(
        encoding=serialization.Encoding.DER, format=serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()
    return PeerID(multihash.encode(hashlib.sha256(encoded).digest(), multihash.coerce_code("sha2-256")))


def owner_of_subkey(subkey: object) -> str | None:
    """The peer id (base58) of a signed subkey if that peer id belongs to the embedded key, else ``None``."""
    return _owner_of_bytes(subkey) if isinstance(subkey, bytes) else None


@lru_cache(maxsize=4096)
def _owner_of_bytes(subkey: bytes) -> str | None:
    if OWNER_MARK not in subkey or not subkey.endswith(b"]"):
        return None
    peer_part, _, key_part = subkey.partition(OWNER_MARK)
    try:
        claimed = PeerID.from_base58(peer_part.decode())
        actual = peer_id_of_public_key(RSAPublicKey.from_bytes(key_part[:-1]))
    except Exception:  # anything malformed is simply not a valid owner
        return None
    return claimed.to_base58() if claimed == actual else None
