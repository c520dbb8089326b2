"""Find an original checkpoint (Hub repo id, local Hugging Face folder or ``.gguf`` file) and open it.

:func:`open_checkpoint` returns the config, the tokenizer when one can be loaded, and a
:class:`~core.convert.sources.CheckpointSource` over the weights. Preference order for weights in a
folder: ``model.safetensors.index.json`` → ``model.safetensors`` → any ``*.safetensors`` →
``.bin`` files (read with ``torch.load(weights_only=True)``, never downloaded when safetensors exist).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from core.convert.location import HUB_ERRORS, check_repo_id, hub_failure
from core.utils.heartbeat import ProgressCallback, still_working
from core.convert.sources import CheckpointSource, SafetensorsSource, StateDictSource, load_bin_files
from core.errors import ConversionError, UnsupportedModelError
from core.models.registry import ModelFamily, get_family

logger = logging.getLogger(__name__)

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


@dataclass
class Checkpoint:
    """An opened original checkpoint."""

    config: PretrainedConfig
    family: ModelFamily
    tokenizer: Any | None
    source: CheckpointSource
    extra_files: list[Path] = field(default_factory=list)
    """Small files copied as they are into the conversion (``generation_config.json``)."""
    default_dtype: torch.dtype | None = None
    """The dtype ``torch_dtype="auto"`` means (``None``: the dtype of the stored block tensors)."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.source.close()


def describe_source(model: str | Path, revision: str | None = None) -> str:
    """A stable description of what ``model`` names, stored as ``manifest.source``."""
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve())
    return f"{model}@{revision}" if revision else str(model)


def open_checkpoint(model: str | Path, token: str | None = None, revision: str | None = None,
                    on_progress: ProgressCallback | None = None) -> Checkpoint:
    """Open ``model``: a ``.gguf`` file, a local Hugging Face folder, or a Hub repo id."""
    path = Path(model).expanduser()
    description = describe_source(model, revision)
    if path.suffix == ".gguf" or path.is_file():
        if not path.is_file():
            raise ConversionError(f"GGUF file {path} does not exist; check the --model path")
        if path.suffix != ".gguf":
            raise ConversionError(
                f"{path} is a file but not a .gguf file: pass a Hugging Face model folder, a repo id, or a .gguf file"
            )
        return _open_gguf(path, description, on_progress)
    if path.is_dir():
        return _open_folder(path, description)
    check_repo_id(str(model), converted=False)
    return _open_folder(_download(str(model), token, revision), description)


def _download(repo_id: str, token: str | None, revision: str | None) -> Path:
    """Download config, tokenizer and weights of a Hub repo (safetensors if any, else .bin)."""
    logger.info("Downloading %s from the Hugging Face Hub", repo_id)
    try:
        folder = Path(huggingface_hub.snapshot_download(
            repo_id, revision=revision, token=token, allow_patterns=_HUB_PATTERNS, ignore_patterns=["*/*"]
        ))
        if not any(folder.glob("*.safetensors")):
            folder = Path(huggingface_hub.snapshot_download(
                repo_id, revision=revision, token=token, allow_patterns=["*.bin"], ignore_patterns=["*/*"]
            ))
    except HUB_ERRORS as error:
        raise hub_failure(error, repo_id, revision, "model weights") from error
    return folder


def _family_of(config_path: Path) -> ModelFamily:
    """The family of the model whose ``config.json`` is at ``config_path``, read before transformers parses it."""
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConversionError(f"cannot read {config_path}: {error}") from error
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if not model_type:
        raise UnsupportedModelError(f"{config_path} has no 'model_type'; is this a Hugging Face transformers model?")
    return get_family(str(model_type))


def _open_folder(folder: Path, description: str) -> Checkpoint:
    config_path = folder / "config.json"
    if not config_path.is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        hint = f"; to convert a GGUF file pass its path, e.g. --model {ggufs[0]}" if ggufs else ""
        raise ConversionError(f"{folder} has no config.json, so it is not a Hugging Face model folder{hint}")
    family = _family_of(config_path)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, OSError) as error:
        raise UnsupportedModelError(f"transformers cannot read {config_path}: {error}") from error
    tokenizer = _load_tokenizer(folder)
    extra_files = [path for path in [folder / "generation_config.json"] if path.is_file()]
    source = _open_weights(folder, description)
    return Checkpoint(config=config, family=family, tokenizer=tokenizer, source=source, extra_files=extra_files)


def _open_weights(folder: Path, description: str) -> CheckpointSource:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return SafetensorsSource(_files_from_index(index), description)
    if (folder / "model.safetensors").is_file():
        return SafetensorsSource([folder / "model.safetensors"], description)
    safetensors_files = sorted(folder.glob("*.safetensors"))
    if safetensors_files:
        return SafetensorsSource(safetensors_files, description)
    bin_index = folder / "pytorch_model.bin.index.json"
    if bin_index.is_file():
        return load_bin_files(_files_from_index(bin_index), description)
    bin_files = sorted(p for p in folder.glob("*.bin") if p.name != "training_args.bin")
    if bin_files:
        return load_bin_files(bin_files, description)
    raise ConversionError(
        f"{folder} has no weights (*.safetensors or *.bin); download the full checkpoint, "
        f"or pass the path of a .gguf file"
    )


def _files_from_index(index: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names, in first-use order."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ConversionError(f"checkpoint index {index} is unreadable ({error!r}); download it again") from error
    files = [index.parent / name for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ConversionError(
            f"checkpoint index {index.name} lists shard(s) {', '.join(missing)} that are missing from "
            f"{index.parent}; download the complete checkpoint"
        )
    return files


def _load_tokenizer(folder: Path, **kwargs: Any) -> Any | None:
    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except Exception as error:  # tokenizers fail in many ways (missing files, extra libraries); it is optional
        logger.warning(
            "No tokenizer could be loaded from %s (%s: %s); the conversion will have none and clients "
            "must load a tokenizer themselves", folder, type(error).__name__, error,
        )
        return None


def _open_gguf(path: Path, description: str, on_progress: ProgressCallback | None = None) -> Checkpoint:
    """Dequantize a GGUF file with transformers; the whole model is held in memory as float32."""
    folder, name = path.parent, path.name
    try:
        with still_working(f"Reading the config and tokenizer of {name}", logger, on_progress=on_progress):
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            family = get_family(config.model_type)
            tokenizer = _load_tokenizer(folder, gguf_file=name)
    except (ValueError, KeyError) as error:
        raise UnsupportedModelError(f"transformers cannot read the GGUF file {path}: {error}") from error
    except OSError as error:
        raise ConversionError(f"cannot read the GGUF file {path} ({error}); it may be truncated") from error
    try:
        with still_working(f"Dequantizing {name} with transformers (the whole model is loaded in memory)", logger,
                           on_progress=on_progress):
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError) as error:
        raise UnsupportedModelError(f"transformers cannot load the GGUF file {path}: {error}") from error
    except OSError as error:
        raise ConversionError(f"cannot read the GGUF file {path} ({error}); it may be truncated") from error
    state = model.state_dict()
    del model
    return Checkpoint(
        config=config, family=family, tokenizer=tokenizer, source=StateDictSource(state, description),
        default_dtype=torch.float32,
    )
