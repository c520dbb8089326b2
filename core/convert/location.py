"""Where a converted model lives: a local folder, or a Hugging Face Hub repo with one branch per block.

:func:`fetch_file` is the single place that touches the Hub for readers, so tests can replace
``huggingface_hub.hf_hub_download`` and see every download.
"""
from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub
from huggingface_hub import errors as hub_errors

from core.errors import ConversionError

logger = logging.getLogger(__name__)

HUB_ERRORS: tuple[type[BaseException], ...] = (
    hub_errors.HfHubHTTPError,
    hub_errors.HFValidationError,
    hub_errors.EntryNotFoundError,
    hub_errors.LocalEntryNotFoundError,
    OSError,
)


def local_folder(path_or_repo: str | Path) -> Path | None:
    """The folder ``path_or_repo`` names when it exists locally, else ``None`` (then it is a repo id)."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(
            f"'{path_or_repo}' is a file, not a converted model: pass the folder written by "
            f"python -m core.cli.convert_model or a Hugging Face repo id"
        )
    return None


def fetch_file(path_or_repo: str | Path, filename: str, revision: str | None = None, token: str | None = None) -> Path:
    """Local path of ``filename`` of a converted model, downloading it from the Hub when needed.

    For a local folder ``revision`` is ignored. For a repo id the file is downloaded (and cached) from
    ``revision`` (default ``main``); only that one file is fetched.
    """
    folder = local_folder(path_or_repo)
    if folder is not None:
        path = folder / filename
        if not path.is_file():
            raise ConversionError(
                f"'{folder}' has no {filename}: it is not a complete Blossom conversion; "
                f"convert the model again with python -m core.cli.convert_model"
            )
        return path
    repo_id = str(path_or_repo)
    logger.debug("Downloading %s from %s (revision %s)", filename, repo_id, revision or "main")
    try:
        downloaded = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, token=token)
    except HUB_ERRORS as error:
        raise ConversionError(
            f"could not get {filename} (revision {revision or 'main'}) of '{repo_id}': {error}. "
            f"'{repo_id}' is neither a local folder nor a reachable Hub repo converted by Blossom; check the "
            f"path or repo id, your network, and pass a token for private repos"
        ) from error
    return Path(downloaded)
