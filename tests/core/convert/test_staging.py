"""A conversion that runs out of disk, is interrupted or killed never leaves output that looks complete,
and a re-run starts cleanly."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from core.convert import convert_model, load_manifest
from core.convert import converter as converter_module
from core.convert import staging
from core.errors import ConversionError
from tests.numerics import assert_same_computation

from .conftest import converted_logits, reference_logits


def _fail_at_block(monkeypatch: pytest.MonkeyPatch, index: int, error: BaseException) -> list[str]:
    """Make the converter's file writer write real files until block ``index``, then raise ``error``."""
    real_write = converter_module.write_tensors
    written: list[str] = []

    def write_then_fail(folder: Path, relative_path: str, tensors: dict) -> object:
        if relative_path.startswith(f"block_{index}/"):
            (folder / relative_path).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative_path).write_bytes(b"\0" * 100)  # half a file, as a full disk leaves it
            raise error
        written.append(relative_path)
        return real_write(folder, relative_path, tensors)

    monkeypatch.setattr(converter_module, "write_tensors", write_then_fail)
    return written


def _assert_nothing_left(folder: Path) -> None:
    assert sorted(path.name for path in folder.iterdir()) == [], "a partial conversion was left behind"


def test_disk_full_midway_says_so_and_keeps_nothing(tiny_llama: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    written = _fail_at_block(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device"))
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"the disk holding .* is full \(No space left on device\); nothing "
                                              r"was kept\. The conversion needs about [\d.]+ MiB and .* is free now"):
        convert_model(str(tiny_llama), out, progress=False)
    assert written == ["client/model.safetensors", "block_0/model.safetensors", "block_1/model.safetensors"]
    _assert_nothing_left(tmp_path)
    with pytest.raises(ConversionError, match="is not a folder on this machine"):
        load_manifest(out)

    monkeypatch.undo()  # space was freed: the same command now completes
    convert_model(str(tiny_llama), out, progress=False)
    assert_same_computation(converted_logits(out), reference_logits(tiny_llama), "converted vs transformers logits")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_too_little_free_space_is_refused_before_writing(tiny_llama: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "free_bytes", lambda folder: 1000)
    with pytest.raises(ConversionError, match=r"not enough disk space in .*: the conversion needs about [\d.]+ MiB "
                                              r"but only 1000 B is free; free at least [\d.]+ MiB"):
        convert_model(str(tiny_llama), tmp_path / "out", progress=False)
    _assert_nothing_left(tmp_path)


def test_ctrl_c_midway_keeps_nothing_and_a_rerun_completes(tiny_llama: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_at_block(monkeypatch, 1, KeyboardInterrupt())
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert_model(str(tiny_llama), out, progress=False)
    _assert_nothing_left(tmp_path)
    monkeypatch.undo()
    manifest = convert_model(str(tiny_llama), out, progress=False)
    assert load_manifest(out) == manifest


def test_rerun_after_a_killed_conversion_removes_its_leftovers(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # what `kill -9` during a conversion leaves: a staging folder (even one with a manifest) and no output
    for leftover in (tmp_path / "out.tmp-dead1234", tmp_path / "out.old-dead5678"):
        (leftover / "block_0").mkdir(parents=True)
        (leftover / "block_0" / "model.safetensors").write_bytes(b"partial")
        (leftover / "manifest.json").write_text("{}")
    unrelated = tmp_path / "other.tmp-keepme"
    unrelated.mkdir()
    with pytest.raises(ConversionError, match="is not a folder on this machine"):
        load_manifest(out)
    convert_model(str(tiny_llama), out, progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.tmp-keepme", "out"]
    assert_same_computation(converted_logits(out), reference_logits(tiny_llama), "converted vs transformers logits")


def test_two_conversions_into_one_output_do_not_mix(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staging.staging_lock(out):  # another converter is busy writing `out`
        with pytest.raises(ConversionError, match=r"another conversion into .*out is running"):
            convert_model(str(tiny_llama), out, progress=False)
    assert not out.exists()
    convert_model(str(tiny_llama), out, progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_required_bytes_matches_the_written_files(tiny_llama: Path, tiny_bloom: Path, tmp_path: Path) -> None:
    for source, dtype in ((tiny_llama, "float32"), (tiny_bloom, "bfloat16")):
        out = tmp_path / f"{source.name}-{dtype}"
        convert_model(str(source), out, torch_dtype=dtype, progress=False)
        tensor_bytes = sum(path.stat().st_size for path in out.rglob("*.safetensors"))
        from core.convert.checkpoint import open_checkpoint
        from core.convert.plan import plan_conversion

        with open_checkpoint(str(source)) as checkpoint:
            plan = plan_conversion(checkpoint.source, checkpoint.family, checkpoint.config)
            estimate = staging.required_bytes(checkpoint.source, plan, getattr(torch, dtype))
        payload = estimate - staging.METADATA_ALLOWANCE
        # the files hold the tensors plus small safetensors headers
        assert payload <= tensor_bytes <= payload + 64 * 1024, (source.name, dtype, payload, tensor_bytes)
