"""The manifest of a converted model: which files hold which tensors, with their sha256.

``manifest.json`` is written last by the converter, so a folder that has one is a complete
conversion. Servers and clients check every file they load against it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from core.convert.location import fetch_file
from core.errors import ConversionError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
CONFIG_NAME = "config.json"
CLIENT_FILE = "client/model.safetensors"
_HASH_CHUNK = 1 << 22


def block_file(index: int) -> str:
    """Path of block ``index``'s tensors inside a converted model."""
    return f"block_{index}/model.safetensors"


def block_revision(index: int) -> str:
    """Hub branch that holds block ``index`` of an uploaded conversion."""
    return f"block_{index}"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype name (``"float32"``) of one stored tensor."""

    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(shape=tuple(int(d) for d in data["shape"]), dtype=str(data["dtype"]))


@dataclass(frozen=True)
class FileEntry:
    """One safetensors file of a conversion: its relative path, sha256 and tensors."""

    path: str
    sha256: str
    tensors: Mapping[str, TensorInfo] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "tensors": {name: info.to_dict() for name, info in self.tensors.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileEntry:
        """Inverse of :meth:`to_dict`."""
        return cls(
            path=str(data["path"]),
            sha256=str(data["sha256"]),
            tensors={name: TensorInfo.from_dict(info) for name, info in data["tensors"].items()},
        )


@dataclass(frozen=True)
class BlockEntry(FileEntry):
    """The file of one transformer block."""

    index: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``index`` first)."""
        return {"index": self.index, **super().to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockEntry:
        """Inverse of :meth:`to_dict`."""
        entry = FileEntry.from_dict(data)
        return cls(path=entry.path, sha256=entry.sha256, tensors=entry.tensors, index=int(data["index"]))


@dataclass(frozen=True)
class Manifest:
    """Everything a server or client needs to know about a converted model's files."""

    family: str
    model_type: str
    num_blocks: int
    torch_dtype: str
    dht_prefix: str
    source: str
    client: FileEntry
    blocks: tuple[BlockEntry, ...]
    format_version: int = FORMAT_VERSION

    def block(self, index: int) -> BlockEntry:
        """The entry of block ``index``; a clear error when the model has no such block."""
        if not 0 <= index < self.num_blocks:
            raise ConversionError(
                f"block {index} does not exist: model '{self.dht_prefix}' has {self.num_blocks} blocks "
                f"(valid indices 0..{self.num_blocks - 1})"
            )
        return self.blocks[index]

    def files(self) -> list[FileEntry]:
        """The client file followed by every block file."""
        return [self.client, *self.blocks]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, in the documented key order."""
        return {
            "format_version": self.format_version,
            "family": self.family,
            "model_type": self.model_type,
            "num_blocks": self.num_blocks,
            "torch_dtype": self.torch_dtype,
            "dht_prefix": self.dht_prefix,
            "source": self.source,
            "client": self.client.to_dict(),
            "blocks": [block.to_dict() for block in self.blocks],
        }

    def to_json(self) -> str:
        """The text of ``manifest.json``."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes | Mapping[str, Any], where: str = "manifest.json") -> Manifest:
        """Parse and validate a manifest; ``where`` names it in error messages."""
        try:
            data = json.loads(text) if isinstance(text, (str, bytes)) else dict(text)
        except json.JSONDecodeError as error:
            raise ConversionError(f"{where} is not valid JSON ({error}); re-convert the model") from error
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise ConversionError(
                f"{where} has format_version {version!r} but this Blossom reads version {FORMAT_VERSION}; "
                f"re-convert the model with this version of Blossom (blossom-convert)"
            )
        try:
            manifest = cls(
                family=str(data["family"]),
                model_type=str(data["model_type"]),
                num_blocks=int(data["num_blocks"]),
                torch_dtype=str(data["torch_dtype"]),
                dht_prefix=str(data["dht_prefix"]),
                source=str(data["source"]),
                client=FileEntry.from_dict(data["client"]),
                blocks=tuple(BlockEntry.from_dict(block) for block in data["blocks"]),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConversionError(f"{where} is incomplete or malformed ({error!r}); re-convert the model") from error
        indices = [block.index for block in manifest.blocks]
        if indices != list(range(manifest.num_blocks)):
            raise ConversionError(
                f"{where} lists blocks {indices} but num_blocks is {manifest.num_blocks}; re-convert the model"
            )
        return manifest


def load_manifest(path_or_repo: str | Path, token: str | None = None, revision: str | None = None) -> Manifest:
    """Read ``manifest.json`` of a converted model from a local folder or a Hub repo (``revision``: branch)."""
    path = fetch_file(path_or_repo, MANIFEST_NAME, revision=revision, token=token)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"cannot read {path}: {error}; re-convert or re-download the model") from error
    return Manifest.from_json(text, where=str(path))
