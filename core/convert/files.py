"""Write and verify the safetensors files of a conversion against their manifest entries.

Writers hash the exact bytes they write and fsync them; readers (converter's final check, servers,
clients) re-hash the file on disk and compare tensor names, shapes and dtypes with the manifest.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from core.convert.manifest import FileEntry, TensorInfo, sha256_file
from core.convert.sources import SAFETENSORS_DTYPES
from core.errors import ConversionError


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def unshare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no two sharing storage (safetensors refuses shared tensors)."""
    seen: set[int] = set()
    result: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        tensor = tensor.contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add(pointer)
        result[name] = tensor
    return result


def write_tensors(folder: Path, relative_path: str, tensors: Mapping[str, torch.Tensor]) -> FileEntry:
    """Write ``tensors`` to ``folder/relative_path`` (fsynced) and describe them for the manifest."""
    data = save(unshare(tensors), metadata={"format": "pt"})
    path = folder / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    infos = {name: TensorInfo(tuple(t.shape), dtype_name(t.dtype)) for name, t in tensors.items()}
    return FileEntry(path=relative_path, sha256=hashlib.sha256(data).hexdigest(), tensors=infos)


def verify_file(path: Path, entry: FileEntry, hint: str) -> None:
    """Check ``path``'s sha256 and its tensor headers against ``entry``; ``hint`` says how to fix it."""
    if not path.is_file():
        raise ConversionError(f"{path} is missing; {hint}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ConversionError(
            f"{path} is corrupt or was modified: sha256 {actual[:16]}… does not match the manifest's "
            f"{entry.sha256[:16]}…; {hint}"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}
            found = {
                key: TensorInfo(tuple(piece.get_shape()), _header_dtype(piece.get_dtype()))
                for key, piece in slices.items()
            }
    except SafetensorError as error:
        raise ConversionError(f"{path} is not a readable safetensors file ({error}); {hint}") from error
    check_tensors(found, entry, str(path), hint)


def load_verified(path: Path, entry: FileEntry, hint: str) -> dict[str, torch.Tensor]:
    """Verify ``path`` against ``entry`` and load its tensors (safetensors only, never pickle)."""
    verify_file(path, entry, hint)
    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as error:
        raise ConversionError(f"{path} is not a readable safetensors file ({error}); {hint}") from error
    loaded = {name: TensorInfo(tuple(t.shape), dtype_name(t.dtype)) for name, t in tensors.items()}
    check_tensors(loaded, entry, str(path), hint)
    return tensors


def check_tensors(found: Mapping[str, TensorInfo], entry: FileEntry, where: str, hint: str) -> None:
    """Compare tensor names, shapes and dtypes with the manifest entry."""
    if set(found) != set(entry.tensors):
        missing = sorted(set(entry.tensors) - set(found))
        extra = sorted(set(found) - set(entry.tensors))
        raise ConversionError(f"{where} does not match the manifest (missing {missing}, unexpected {extra}); {hint}")
    for name, info in entry.tensors.items():
        if found[name] != info:
            raise ConversionError(
                f"tensor '{name}' in {where} has shape {list(found[name].shape)} ({found[name].dtype}) but the "
                f"manifest says {list(info.shape)} ({info.dtype}); {hint}"
            )


def _header_dtype(name: str) -> str:
    """Safetensors header dtype (``"F32"``) -> torch dtype name (``"float32"``)."""
    dtype = SAFETENSORS_DTYPES.get(name)
    return name if dtype is None else dtype_name(dtype)
