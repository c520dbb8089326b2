"""``python -m core.cli.convert_model`` end to end: summary on success, exit code 2 on bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.cli.convert_model import main
from core.convert import load_manifest
from tests.numerics import assert_same_computation

from .conftest import converted_logits, reference_logits

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_cli_converts_and_prints_a_summary(
    tiny_bloom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bloom-out"
    code = main(["--model", str(tiny_bloom), "--output_path", str(out), "--torch_dtype", "float32",
                 "--dht_prefix", "bloom_tiny", "--no_progress"])
    printed = capsys.readouterr().out
    assert code == 0
    for expected in ("bloom", "blocks:      4", "float32", "bloom_tiny", str(out), "KiB"):
        assert expected in printed
    assert load_manifest(out).dht_prefix == "bloom_tiny"
    assert_same_computation(converted_logits(out), reference_logits(tiny_bloom), "converted vs transformers logits")


def test_cli_reports_errors_with_exit_code_2(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--model", str(tmp_path / "nothing.gguf"), "--output_path", str(tmp_path / "out")])
    assert code == 2 and capsys.readouterr().err.startswith("error: GGUF file")
    assert main(["--model", str(tiny_llama), "--output_path", str(tmp_path / "out"), "--no_progress"]) == 0
    capsys.readouterr()
    code = main(["--model", str(tiny_llama), "--output_path", str(tmp_path / "out"), "--torch_dtype", "float16"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    code = main(["--model", str(tiny_llama), "--output_path", str(tmp_path / "out"), "--torch_dtype", "float16",
                 "--overwrite", "--no_progress"])
    assert code == 0 and load_manifest(tmp_path / "out").torch_dtype == "float16"


def test_cli_runs_as_a_module(tiny_llama: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "core.cli.convert_model", "--model", str(tiny_llama), "--output_path",
         str(tmp_path / "x"), "--dht_prefix", "bad.prefix"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "error: DHT prefix 'bad.prefix'" in result.stderr
    assert not (tmp_path / "x").exists()
