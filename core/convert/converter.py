"""``convert_model``: an original checkpoint -> per-block safetensors files + ``manifest.json``.

The output is written into a temporary sibling folder (``OUT.tmp-XXXX``), every file is re-read and
checked against its sha256, ``manifest.json`` is written last, and only then is the folder renamed to
``OUT``. An interrupted conversion therefore never leaves an ``OUT`` that looks complete. Free disk
space is checked first, a disk that fills up midway gives a :class:`ConversionError` that says so,
and a re-run removes what an interrupted run left behind (see :mod:`core.convert.staging`).
"""
from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, PretrainedConfig

from core.convert.checkpoint import Checkpoint, describe_source, open_checkpoint
from core.convert.files import dtype_name, verify_file, write_tensors
from core.convert.manifest import (
    CLIENT_FILE,
    CONFIG_NAME,
    MANIFEST_NAME,
    BlockEntry,
    Manifest,
    block_file,
)
from core.convert.plan import ConversionPlan, plan_conversion
from core.convert.staging import (
    check_free_space,
    disk_full_error,
    is_disk_full,
    remove_stale_workdirs,
    required_bytes,
    staging_lock,
)
from core.convert.upload import upload_conversion
from core.errors import ConversionError
from core.utils.heartbeat import ProgressCallback, still_working

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TORCH_DTYPE_CHOICES: tuple[str, ...] = ("auto", *DTYPES)
_PREFIX_FORBIDDEN = re.compile(r"[^A-Za-z0-9_-]")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_dht_prefix(output_path: str | Path, output_repo: str | None = None) -> str:
    """The output's name (repo name when uploading) with every character outside ``[A-Za-z0-9_-]`` -> ``-``."""
    name = output_repo.rsplit("/", 1)[-1] if output_repo else Path(output_path).expanduser().absolute().name
    prefix = _PREFIX_FORBIDDEN.sub("-", name)
    if not prefix.strip("-"):
        raise ConversionError(f"cannot derive a DHT prefix from '{name}'; pass --dht_prefix explicitly")
    return prefix


def check_dht_prefix(prefix: str) -> str:
    """Return ``prefix`` when it is usable in DHT keys ('.' separates block indices there)."""
    if not prefix or _PREFIX_FORBIDDEN.search(prefix):
        raise ConversionError(
            f"DHT prefix '{prefix}' may only contain letters, digits, '_' and '-' "
            f"(e.g. '{_PREFIX_FORBIDDEN.sub('-', prefix) or 'my-model'}')"
        )
    return prefix


def convert_model(
    model: str,
    output_path: str | Path,
    torch_dtype: str = "auto",
    dht_prefix: str | None = None,
    output_repo: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    on_progress: ProgressCallback | None = None,
) -> Manifest:
    """Convert ``model`` (Hub repo id, local HF folder, or ``.gguf`` file) into ``output_path``.

    Args:
        model: what to convert.
        output_path: the folder to create; it must not exist unless it is already a conversion of the
            same source (then it is kept and returned) or ``overwrite`` is set.
        torch_dtype: ``auto`` (the checkpoint's dtype; float32 for GGUF), ``float32``, ``float16``, ``bfloat16``.
        dht_prefix: name of the model in the swarm; defaults to the output's name (see :func:`default_dht_prefix`).
        output_repo: ``ORG/NAME`` to upload to: ``main`` gets config, tokenizer, manifest and client
            tensors; branch ``block_i`` gets block ``i`` so servers download only what they serve.
        token: Hugging Face token for gated source models and for uploading.
        revision: revision of a Hub source model.
        progress: show a progress bar over blocks.
        overwrite: replace an existing ``output_path``.
        on_progress: told each stage, and each block written (e.g. for the desktop app's progress bar).
    """
    if torch_dtype not in TORCH_DTYPE_CHOICES:
        raise ConversionError(f"torch_dtype must be one of {', '.join(TORCH_DTYPE_CHOICES)}, not '{torch_dtype}'")
    if output_repo is not None and not _REPO_ID.match(output_repo):
        raise ConversionError(f"--output_repo must look like ORG/NAME, not '{output_repo}'")
    output = Path(output_path).expanduser().absolute()
    prefix = check_dht_prefix(dht_prefix) if dht_prefix else default_dht_prefix(output, output_repo)
    source = describe_source(model, revision)
    manifest = _existing_conversion(output, source, torch_dtype, dht_prefix, overwrite)
    if manifest is None:
        with open_checkpoint(model, token=token, revision=revision, on_progress=on_progress) as checkpoint:
            manifest = _convert(checkpoint, output, torch_dtype, prefix, source, progress, on_progress)
    if output_repo is not None:
        upload_conversion(output, manifest, output_repo, token=token)
    return manifest


def _existing_conversion(
    output: Path, source: str, torch_dtype: str, dht_prefix: str | None, overwrite: bool
) -> Manifest | None:
    """The manifest of an up-to-date conversion already at ``output``, ``None`` to convert, or an error."""
    if not output.exists():
        return None
    if not output.is_dir():
        raise ConversionError(f"{output} exists and is a file; choose another --output_path")
    if not any(output.iterdir()):
        return None
    manifest_path = output / MANIFEST_NAME
    try:
        existing = Manifest.from_json(manifest_path.read_text(encoding="utf-8"), where=str(manifest_path))
    except (OSError, ConversionError):
        existing = None
    if overwrite:
        logger.info("Replacing %s (overwrite requested)", output)
        return None
    if existing is None:
        raise ConversionError(
            f"{output} already exists and is not a complete Blossom conversion; remove it, choose another "
            f"--output_path, or pass --overwrite"
        )
    same = (
        existing.source == source
        and torch_dtype in ("auto", existing.torch_dtype)
        and dht_prefix in (None, existing.dht_prefix)
        and all((output / entry.path).is_file() for entry in existing.files())
    )
    if not same:
        raise ConversionError(
            f"{output} already holds a conversion of {existing.source} ({existing.torch_dtype}, DHT prefix "
            f"'{existing.dht_prefix}'); choose another --output_path or pass --overwrite to replace it"
        )
    logger.info(
        "%s is already a complete conversion of %s; keeping it (pass --overwrite / overwrite=True to convert again)",
        output, source,
    )
    return existing


def _convert(
    checkpoint: Checkpoint, output: Path, torch_dtype: str, prefix: str, source: str, progress: bool,
    on_progress: ProgressCallback | None = None,
) -> Manifest:
    config, family = copy.deepcopy(checkpoint.config), checkpoint.family
    plan = plan_conversion(checkpoint.source, family, config)
    dtype = DTYPES.get(torch_dtype) or checkpoint.default_dtype or plan.source_dtype
    logger.info("Converting %s: family %s, %d blocks, %s", source, family.name, plan.num_blocks, dtype_name(dtype))
    output.parent.mkdir(parents=True, exist_ok=True)
    needed = required_bytes(checkpoint.source, plan, dtype)
    with staging_lock(output):
        remove_stale_workdirs(output)
        check_free_space(output.parent, needed)
        workdir = Path(tempfile.mkdtemp(prefix=f"{output.name}.tmp-", dir=output.parent))
        try:
            manifest = _write_conversion(checkpoint, plan, config, workdir, dtype, prefix, source, progress,
                                         on_progress)
            _move_into_place(workdir, output)
        except BaseException as error:
            shutil.rmtree(workdir, ignore_errors=True)
            if is_disk_full(error):
                raise disk_full_error(output.parent, needed, error) from error
            raise
    logger.info("Wrote %s (%d blocks, %s, DHT prefix '%s')", output, manifest.num_blocks, manifest.torch_dtype, prefix)
    return manifest


def _write_conversion(
    checkpoint: Checkpoint, plan: ConversionPlan, config: PretrainedConfig, workdir: Path, dtype: torch.dtype,
    prefix: str, source: str, progress: bool, on_progress: ProgressCallback | None = None,
) -> Manifest:
    """Write every file into ``workdir``, verify them, and write ``manifest.json`` last."""
    family = checkpoint.family
    with still_working("Writing the config, tokenizer and the client's weights (embeddings and head)", logger,
                       on_progress=on_progress):
        _write_metadata(checkpoint, config, workdir, prefix, dtype)
        client = write_tensors(workdir, CLIENT_FILE, _client_tensors(checkpoint, plan, dtype))
    blocks: list[BlockEntry] = []
    for index in tqdm(range(plan.num_blocks), desc="Converting blocks", unit="block", disable=not progress):
        if on_progress is not None:
            on_progress("Converting blocks", index, plan.num_blocks)
        tensors = {key: _cast(checkpoint.source.get(src), dtype) for key, src in plan.blocks[index].items()}
        entry = write_tensors(workdir, block_file(index), tensors)
        blocks.append(BlockEntry(path=entry.path, sha256=entry.sha256, tensors=entry.tensors, index=index))
        del tensors
    manifest = Manifest(
        family=family.name, model_type=str(config.model_type), num_blocks=plan.num_blocks,
        torch_dtype=dtype_name(dtype), dht_prefix=prefix, source=source, client=client, blocks=tuple(blocks),
    )
    with still_working("Checking every written file against its checksum", logger, on_progress=on_progress):
        _verify_output(workdir, manifest)
    _write_text(workdir / MANIFEST_NAME, manifest.to_json())
    return manifest


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _client_tensors(checkpoint: Checkpoint, plan: ConversionPlan, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    tensors = {name: _cast(checkpoint.source.get(key), dtype) for name, key in plan.client.items()}
    for name, target in plan.tied.items():
        tensors[name] = tensors[target]
    return {name: tensors[name] for name in checkpoint.family.client_keys}


def _write_metadata(
    checkpoint: Checkpoint, config: PretrainedConfig, workdir: Path, prefix: str, dtype: torch.dtype
) -> None:
    """config.json (with ``dht_prefix`` and the output dtype), tokenizer and generation config."""
    config.dht_prefix = prefix
    config.dtype = dtype
    config.save_pretrained(workdir)
    for extra in checkpoint.extra_files:
        shutil.copyfile(extra, workdir / extra.name)
    if checkpoint.tokenizer is None:
        logger.warning("No tokenizer is saved with this conversion; clients will need to load one separately")
        return
    try:
        checkpoint.tokenizer.save_pretrained(workdir)
    except (OSError, ValueError, TypeError) as error:
        logger.warning("Could not save the tokenizer (%s); the conversion will have none", error)


def _verify_output(workdir: Path, manifest: Manifest) -> None:
    """Re-read every written file: sha256 and tensor headers against the manifest; config readable."""
    hint = "the disk write failed; free some space and convert again"
    for entry in manifest.files():
        verify_file(workdir / entry.path, entry, hint)
    config = AutoConfig.from_pretrained(workdir)
    if getattr(config, "dht_prefix", None) != manifest.dht_prefix:
        raise ConversionError(f"{workdir / CONFIG_NAME} lost its dht_prefix while saving; convert again")


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def _move_into_place(workdir: Path, output: Path) -> None:
    """Rename the finished ``workdir`` to ``output``, replacing an old ``output`` only once the new one is whole."""
    _fsync_dir(workdir)
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{output.name}.old-", dir=output.parent))
        os.rmdir(old)
        os.rename(output, old)
        os.rename(workdir, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(workdir, output)
    _fsync_dir(output.parent)


def _fsync_dir(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on Windows; renames are durable enough there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
