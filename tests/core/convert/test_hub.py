"""Hub upload (one branch per block) and download (only the blocks asked for) against a fake Hub.

The Hugging Face Hub cannot be reached here, so ``huggingface_hub.HfApi`` and ``hf_hub_download``
are replaced by a fake that keeps each revision of each repo in a folder and records every call.
"""
from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import EntryNotFoundError
from safetensors.torch import load_file, save_file

from core.convert import convert_model, load_block_state, load_client_state, load_config
from core.errors import ConversionError
from tests.numerics import assert_same_computation

from .conftest import converted_logits, reference_logits

REPO = "blossom-test/tiny.llama"


class FakeHub:
    """Repos as folders ``root/<repo>/<revision>/``; records uploads, branches and downloads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tokens: list[str | None] = []
        self.repos: list[str] = []
        self.branches: list[tuple[str, str]] = []
        self.uploads: list[tuple[str, list[str]]] = []
        self.downloads: list[tuple[str, str]] = []

    def folder(self, repo_id: str, revision: str | None) -> Path:
        return self.root / repo_id.replace("/", "__") / (revision or "main")

    def api(self, token: str | None = None) -> FakeHub:
        self.tokens.append(token)
        return self

    def create_repo(self, repo_id: str, exist_ok: bool = False, **_: Any) -> None:
        self.repos.append(repo_id)
        self.folder(repo_id, "main").mkdir(parents=True, exist_ok=exist_ok)

    def create_branch(self, repo_id: str, *, branch: str, exist_ok: bool = False, **_: Any) -> None:
        self.branches.append((repo_id, branch))
        if not self.folder(repo_id, branch).exists():
            shutil.copytree(self.folder(repo_id, "main"), self.folder(repo_id, branch))

    def upload_folder(
        self, *, repo_id: str, folder_path: Path, revision: str | None = None,
        allow_patterns: list[str] | None = None, ignore_patterns: list[str] | None = None, **_: Any,
    ) -> None:
        target = self.folder(repo_id, revision)
        assert target.is_dir(), f"revision {revision} does not exist"
        files = []
        for path in sorted(Path(folder_path).rglob("*")):
            name = path.relative_to(folder_path).as_posix()
            if path.is_dir() or (allow_patterns and not any(fnmatch.fnmatch(name, p) for p in allow_patterns)):
                continue
            if ignore_patterns and any(fnmatch.fnmatch(name, p) for p in ignore_patterns):
                continue
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / name)
            files.append(name)
        self.uploads.append((revision or "main", files))

    def hf_hub_download(self, repo_id: str, filename: str, *, revision: str | None = None, **_: Any) -> str:
        self.downloads.append((filename, revision or "main"))
        path = self.folder(repo_id, revision) / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not found in {repo_id}@{revision}")
        return str(path)

    def get_hf_file_metadata(self, url: str, **_: Any) -> str:
        """The quick look-up before a download: ``url`` is ``.../<repo>/resolve/<revision>/<file>``."""
        repo_id, _, rest = url.removeprefix(f"{huggingface_hub.constants.ENDPOINT}/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        if not (self.folder(repo_id, revision) / filename).is_file():
            raise EntryNotFoundError(f"{filename} not found in {repo_id}@{revision}")
        return url


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", fake.get_hf_file_metadata)
    return fake


@pytest.fixture()
def uploaded(hub: FakeHub, tiny_llama: Path, tmp_path: Path) -> FakeHub:
    manifest = convert_model(str(tiny_llama), tmp_path / "local", output_repo=REPO, token="hf_secret", progress=False)
    assert manifest.dht_prefix == "tiny-llama"  # the repo's name, '.' replaced
    hub.downloads.clear()
    return hub


def test_upload_puts_each_block_on_its_own_branch(uploaded: FakeHub) -> None:
    assert set(uploaded.tokens) == {"hf_secret"} and uploaded.repos == [REPO]
    main_revision, main_files = uploaded.uploads[0]
    assert main_revision == "main"
    assert {"manifest.json", "config.json", "client/model.safetensors", "tokenizer.json"} <= set(main_files)
    assert not [name for name in main_files if name.startswith("block_")]
    assert uploaded.branches == [(REPO, f"block_{i}") for i in range(4)]
    for index, (revision, files) in enumerate(uploaded.uploads[1:]):
        assert revision == f"block_{index}"
        assert sorted(files) == sorted([f"block_{index}/model.safetensors", "manifest.json", "config.json"])
    assert len(uploaded.uploads) == 5


def test_server_downloads_only_its_block_from_the_block_branch(uploaded: FakeHub, tmp_path: Path) -> None:
    state = load_block_state(REPO, 2)
    weights = [d for d in uploaded.downloads if d[0].endswith(".safetensors")]
    assert weights == [("block_2/model.safetensors", "block_2")]
    assert all(revision == "block_2" for _, revision in uploaded.downloads)
    local = load_file(tmp_path / "local" / "block_2" / "model.safetensors")
    assert state.keys() == local.keys() and all(torch.equal(state[k], local[k]) for k in local)


def test_client_reads_main_and_model_runs_from_the_hub(uploaded: FakeHub, tiny_llama: Path) -> None:
    assert load_config(REPO).dht_prefix == "tiny-llama"
    assert set(load_client_state(REPO)) == {"embed_tokens.weight", "norm.weight", "lm_head.weight"}
    assert ("client/model.safetensors", "main") in uploaded.downloads
    assert_same_computation(converted_logits(REPO), reference_logits(tiny_llama), "converted vs transformers logits")
    weights = sorted(d for d in uploaded.downloads if d[0].startswith("block_"))
    assert set(weights) == {(f"block_{i}/model.safetensors", f"block_{i}") for i in range(4)}


def test_hub_errors_are_actionable(uploaded: FakeHub) -> None:
    with pytest.raises(ConversionError, match=r"block 9 does not exist.*4 blocks"):
        load_block_state(REPO, 9)
    with pytest.raises(ConversionError, match="'blossom-test/missing' is not a folder on this machine and could not be "
                                              "downloaded: the repo has no manifest.json"):
        load_block_state("blossom-test/missing", 0)
    path = uploaded.folder(REPO, "block_1") / "block_1" / "model.safetensors"
    state = load_file(path)
    state["mlp.down_proj.weight"].mul_(2)
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="sha256.*delete the cached copy"):
        load_block_state(REPO, 1)


def test_convert_from_a_hub_repo_id(tiny_bloom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        return str(tiny_bloom)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    manifest = convert_model("bigscience/tiny-bloom", tmp_path / "out", revision="abc123", token="t", progress=False)
    assert manifest.source == "bigscience/tiny-bloom@abc123" and manifest.family == "bloom"
    assert calls[0]["revision"] == "abc123" and calls[0]["token"] == "t"
    assert "*.safetensors" in calls[0]["allow_patterns"] and "*.bin" not in calls[0]["allow_patterns"]
    assert len(calls) == 1  # safetensors were found, so no .bin download
