"""Nothing a peer sends and no weight file a server or client loads is ever unpickled."""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from core.launcher import PACKAGE_ROOT

UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
# The converter may read an original checkpoint that only ships PyTorch .bin files; it does so with
# torch.load(weights_only=True), PyTorch's restricted loader that builds tensors and never runs code.
ALLOWED_TORCH_LOAD = {"core/convert/sources.py"}


def _core_sources() -> list[Path]:
    return sorted((PACKAGE_ROOT / "core").rglob("*.py"))


def test_core_never_imports_an_unpickler_and_loads_only_tensors() -> None:
    torch_loads = []
    for path in _core_sources():
        relative = path.relative_to(PACKAGE_ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), relative)):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                names = set()
            assert not names & UNPICKLING_MODULES, f"{relative}:{node.lineno} imports {names & UNPICKLING_MODULES}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                torch_loads.append((relative, node))
    for relative, call in torch_loads:
        assert relative in ALLOWED_TORCH_LOAD, f"torch.load in {relative}:{call.lineno}"
        weights_only = {kw.arg: kw.value for kw in call.keywords}.get("weights_only")
        assert isinstance(weights_only, ast.Constant) and weights_only.value is True, \
            f"{relative}:{call.lineno} calls torch.load without weights_only=True"


def test_loading_a_conversion_and_reading_the_wire_never_unpickle(
    tiny_checkpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.convert import load_blocks, load_client_state, load_manifest
    from core.wire import deserialize_tensors, pack_metadata, serialize_tensors, unpack_metadata

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("something was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)

    _, converted = tiny_checkpoints["llama"]
    manifest = load_manifest(converted)
    _, blocks = load_blocks(converted, range(manifest.num_blocks), torch.float32)
    assert len(blocks) == manifest.num_blocks and load_client_state(converted)

    tensor = torch.randn(2, 3, 4)
    (received,) = deserialize_tensors(serialize_tensors([tensor]), tensor.numel())
    assert torch.equal(received, tensor)
    assert unpack_metadata(pack_metadata({"max_length": 7})) == {"max_length": 7}
