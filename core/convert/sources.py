"""Read-only views of an original checkpoint, one tensor at a time.

- :class:`SafetensorsSource` streams from ``.safetensors`` files (single or sharded) through
  ``safe_open``: shapes come from the headers and a tensor is read only when asked for, so the
  whole model is never in memory.
- :class:`StateDictSource` wraps tensors already in memory (GGUF via transformers, ``.bin`` files).
"""
from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open

from core.errors import ConversionError

logger = logging.getLogger(__name__)

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


class CheckpointSource(ABC):
    """The tensors of an original checkpoint, by their checkpoint key."""

    def __init__(self, description: str) -> None:
        self.description = description

    @abstractmethod
    def keys(self) -> list[str]:
        """Every tensor key in the checkpoint."""

    @abstractmethod
    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of ``key`` without reading its data where possible."""

    @abstractmethod
    def dtype(self, key: str) -> torch.dtype:
        """Dtype of ``key`` without reading its data where possible."""

    @abstractmethod
    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key`` (on CPU)."""

    def close(self) -> None:  # noqa: B027 (an optional hook: most sources hold no open files)
        """Release open files."""

    def __enter__(self) -> CheckpointSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class StateDictSource(CheckpointSource):
    """A checkpoint already loaded into memory."""

    def __init__(self, state: Mapping[str, torch.Tensor], description: str) -> None:
        super().__init__(description)
        self._state = dict(state)

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._state[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self._state[key].detach()


class SafetensorsSource(CheckpointSource):
    """Tensors streamed from one or more ``.safetensors`` files (a sharded checkpoint)."""

    def __init__(self, files: list[Path], description: str) -> None:
        super().__init__(description)
        self._stack = contextlib.ExitStack()
        self._handles: dict[str, Any] = {}
        self._file_of: dict[str, Path] = {}
        try:
            for path in files:
                handle = self._stack.enter_context(_open_safetensors(path))
                for key in handle.keys():
                    if key in self._file_of:
                        raise ConversionError(
                            f"tensor '{key}' appears in both {self._file_of[key].name} and {path.name}; "
                            f"the checkpoint's shards overlap — remove stray .safetensors files from the folder"
                        )
                    self._file_of[key] = path
                    self._handles[key] = handle
        except BaseException:
            self._stack.close()
            raise

    def keys(self) -> list[str]:
        return list(self._file_of)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handles[key].get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        name = self._handles[key].get_slice(key).get_dtype()
        if name not in SAFETENSORS_DTYPES:
            raise ConversionError(f"tensor '{key}' in {self._file_of[key].name} has unsupported dtype {name}")
        return SAFETENSORS_DTYPES[name]

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._handles[key].get_tensor(key)
        except SafetensorError as error:
            raise ConversionError(
                f"cannot read tensor '{key}' from {self._file_of[key]}: {error}. The file is corrupt; "
                f"download the checkpoint again"
            ) from error

    def close(self) -> None:
        self._stack.close()


def _open_safetensors(path: Path) -> Any:
    """``safe_open`` with an actionable error for missing, truncated or corrupt files."""
    if not path.is_file():
        raise ConversionError(f"checkpoint file {path} is missing; download the checkpoint again")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as error:
        raise ConversionError(
            f"checkpoint file {path} is truncated or corrupt ({error}); download it again"
        ) from error


def load_bin_files(files: list[Path], description: str) -> StateDictSource:
    """Load PyTorch ``.bin`` checkpoint files with ``torch.load(weights_only=True)`` (no arbitrary code)."""
    state: dict[str, torch.Tensor] = {}
    for path in files:
        logger.info("Loading %s (no safetensors in the checkpoint, so it is read whole)", path.name)
        try:
            part = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # torch.load raises many types (pickle, zip, runtime) for bad files
            raise ConversionError(
                f"cannot load checkpoint file {path} safely ({type(error).__name__}: {error}). Blossom only "
                f"reads plain tensor files; download the checkpoint again or use its safetensors version"
            ) from error
        if not isinstance(part, dict):
            raise ConversionError(f"checkpoint file {path} does not hold a state dict (found {type(part).__name__})")
        for key, value in part.items():
            if not isinstance(value, torch.Tensor):
                raise ConversionError(f"checkpoint file {path} holds a non-tensor entry '{key}'")
            if key in state:
                raise ConversionError(f"tensor '{key}' appears in more than one .bin file of the checkpoint")
            state[key] = value
    return StateDictSource(state, description)
