"""A peer's identity file (its private key) is readable by its owner only, from the moment it exists."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hivemind.p2p import PeerID

from core.dht.identity import ensure_identity_file, load_private_key


def test_new_identity_is_created_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = os.umask(0)  # the most permissive umask: whatever the file gets, it gets at creation
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)  # no narrowing afterwards either
    try:
        path, existed = ensure_identity_file(str(tmp_path / "keys" / "server.id"))
    finally:
        os.umask(previous)
    assert not existed and Path(path).parent == tmp_path / "keys"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = Path(path).read_bytes()
    assert PeerID.from_identity(data) and load_private_key(path).get_public_key()


def test_existing_identity_is_kept(tmp_path: Path) -> None:
    path, _ = ensure_identity_file(str(tmp_path / "server.id"))
    before = Path(path).read_bytes()
    again, existed = ensure_identity_file(path)
    assert existed and again == path and Path(path).read_bytes() == before


def test_throwaway_identity_lives_in_a_private_folder() -> None:
    path, existed = ensure_identity_file(None)
    try:
        assert not existed
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700  # mkdtemp: owner-only folder
    finally:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
