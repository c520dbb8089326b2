"""Where a conversion is written before it is complete: disk space, one converter per output, leftovers.

The converter writes into ``OUT.tmp-XXXX`` next to ``OUT`` and renames it only once it is verified
(see :mod:`core.convert.converter`). This module keeps that staging area honest:

- :func:`required_bytes` estimates the output's size from the plan, and :func:`check_free_space`
  refuses to start when the disk cannot hold it; :func:`disk_full_error` turns an ``ENOSPC`` hit
  midway (another program filled the disk) into a :class:`ConversionError` saying so.
- :func:`staging_lock` holds ``OUT.lock`` (an advisory ``flock``) for the whole conversion, so two
  converters never write the same output; while it is held, :func:`remove_stale_workdirs` deletes
  the ``OUT.tmp-*`` (and ``OUT.old-*``) folders a killed earlier run left behind, so a re-run starts from a clean slate.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch

from core.convert.plan import ConversionPlan
from core.convert.sources import CheckpointSource
from core.errors import ConversionError
from core.utils.units import format_bytes

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent conversions of one output are not detected
    fcntl = None

logger = logging.getLogger(__name__)

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
METADATA_ALLOWANCE = 64 * 2**20
"""Room kept for config, tokenizer and manifest files, and safetensors headers."""


def required_bytes(source: CheckpointSource, plan: ConversionPlan, dtype: torch.dtype) -> int:
    """Bytes the converted tensors will take on disk when floating-point tensors are stored as ``dtype``."""
    target_size = torch.empty(0, dtype=dtype).element_size()
    keys = [key for mapping in plan.blocks for key in mapping.values()] + list(plan.client.values())
    total = 0
    for key in keys:
        numel = 1
        for dim in source.shape(key):
            numel *= dim
        stored = source.dtype(key)
        total += numel * (target_size if stored.is_floating_point else torch.empty(0, dtype=stored).element_size())
    for target in plan.tied.values():  # a tied tensor is written a second time under its own name
        numel = 1
        for dim in source.shape(plan.client[target]):
            numel *= dim
        total += numel * target_size
    return total + METADATA_ALLOWANCE


def free_bytes(folder: Path) -> int:
    """Free space for an unprivileged user on the file system holding ``folder``."""
    return shutil.disk_usage(folder).free


def check_free_space(folder: Path, needed: int) -> None:
    """Raise :class:`ConversionError` unless ``folder``'s file system has ``needed`` bytes free."""
    available = free_bytes(folder)
    if available < needed:
        raise ConversionError(
            f"not enough disk space in {folder}: the conversion needs about {format_bytes(needed)} but only "
            f"{format_bytes(available)} is free; free at least {format_bytes(needed - available)} or choose an "
            f"--output_path on another disk"
        )


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is the operating system saying the disk (or the user's quota) is full."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def disk_full_error(folder: Path, needed: int, error: OSError) -> ConversionError:
    """The error to raise when a write into ``folder`` failed because the disk filled up."""
    return ConversionError(
        f"the disk holding {folder} is full ({error.strerror or error}); nothing was kept. The conversion needs "
        f"about {format_bytes(needed)} and {format_bytes(free_bytes(folder))} is free now: free more space (or "
        f"choose an --output_path on another disk) and run the conversion again"
    )


@contextlib.contextmanager
def staging_lock(output: Path) -> Iterator[None]:
    """Hold ``OUT.lock`` for the duration; raise :class:`ConversionError` if another converter holds it."""
    if fcntl is None:
        yield
        return
    lock_path = output.with_name(output.name + ".lock")
    handle = open(lock_path, "a+b")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConversionError(
                f"another conversion into {output} is running (it holds {lock_path}); wait for it to finish"
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)  # while still locked, so no other converter holds an orphaned lock
    finally:
        handle.close()


def remove_stale_workdirs(output: Path) -> list[Path]:
    """Delete ``OUT.tmp-*`` (and ``OUT.old-*``) folders left by interrupted runs; call only while holding
    :func:`staging_lock`."""
    if fcntl is None:
        return []  # without the lock a running conversion's folder cannot be told from a stale one
    removed = []
    leftovers = [*output.parent.glob(f"{output.name}.tmp-*"), *output.parent.glob(f"{output.name}.old-*")]
    for leftover in leftovers:
        if leftover.is_dir():
            logger.info("Removing %s, left by an interrupted conversion", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed
