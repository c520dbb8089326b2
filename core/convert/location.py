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

PROBE_TIMEOUT = 10.0
"""Seconds the first request to the Hub may take before the Hub counts as unreachable."""
HUB_ERRORS: tuple[type[BaseException], ...] = (
    hub_errors.HfHubHTTPError,
    hub_errors.HFValidationError,
    hub_errors.EntryNotFoundError,
    hub_errors.LocalEntryNotFoundError,
    OSError,
)


def check_repo_id(name: str, *, converted: bool) -> None:
    """Raise at once when ``name``, which is not a local folder, cannot be a Hub repo id either.

    Converted models always live in an ``ORG/NAME`` repo (``--output_repo``), so for them a bare name
    is a folder that is not there; an original model may be a bare legacy id such as ``gpt2``.
    """
    where = Path(name).expanduser().resolve()
    not_here = f"'{name}' is not a folder on this machine (no {where})"
    looks_like_path = name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
    if (converted and "/" not in name) or looks_like_path:
        raise ConversionError(f"{not_here}; check the path" + (
            ", or pass the folder written by blossom-convert" if converted else ""))
    try:
        huggingface_hub.utils.validate_repo_id(name)
    except hub_errors.HFValidationError:
        raise ConversionError(f"{not_here}, and it cannot be a Hugging Face repo id either; check the path") from None


def hub_failure(error: BaseException, repo_id: str, revision: str | None, wanted: str) -> ConversionError:
    """A Hub download's failure in words a person can act on (no library jargon)."""
    revision = revision or "main"
    if isinstance(error, hub_errors.GatedRepoError):
        reason = "it is gated: accept its terms on huggingface.co and pass --use_auth_token"
    elif isinstance(error, hub_errors.RepositoryNotFoundError):
        reason = "the Hub has no repo of that name (or it is private: pass --use_auth_token)"
    elif isinstance(error, hub_errors.RevisionNotFoundError):
        reason = f"the repo has no revision '{revision}'"
    elif isinstance(error, hub_errors.EntryNotFoundError) and not isinstance(error, hub_errors.LocalEntryNotFoundError):
        reason = f"the repo has no {wanted} at revision '{revision}'"
    else:
        cause = error.__cause__ or error.__context__ or error
        reason = f"the Hugging Face Hub could not be reached ({str(cause).strip().rstrip('.')}); check your network"
    return ConversionError(f"'{repo_id}' is not a folder on this machine and could not be downloaded: {reason}")


def local_folder(path_or_repo: str | Path) -> Path | None:
    """The folder ``path_or_repo`` names when it exists locally, else ``None`` (then it is a repo id)."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(
            f"'{path_or_repo}' is a file, not a converted model: pass the folder written by "
            f"blossom-convert or a Hugging Face repo id"
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
                f"convert the model again with blossom-convert"
            )
        return path
    repo_id = str(path_or_repo)
    check_repo_id(repo_id, converted=True)
    logger.debug("Downloading %s from %s (revision %s)", filename, repo_id, revision or "main")
    try:
        _probe(repo_id, filename, revision, token)
        downloaded = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, token=token)
    except HUB_ERRORS as error:
        wanted = filename + (" (it is not a model converted by Blossom)" if filename == "manifest.json" else "")
        raise hub_failure(error, repo_id, revision, wanted) from error
    return Path(downloaded)


def _probe(repo_id: str, filename: str, revision: str | None, token: str | None) -> None:
    """One quick request for ``filename``'s metadata, so that an unreachable Hub or a missing repo is
    told at once: ``hf_hub_download`` retries a failed connection for about 30 s before it gives up.
    A file already in the cache needs no Hub, so a connection failure then is no error."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return
    url = huggingface_hub.hf_hub_url(repo_id, filename, revision=revision)
    try:
        huggingface_hub.get_hf_file_metadata(url, token=token, timeout=PROBE_TIMEOUT)
    except (hub_errors.HfHubHTTPError, hub_errors.EntryNotFoundError):  # the Hub answered
        raise
    except Exception as error:
        if not isinstance(huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision), str):
            raise hub_errors.LocalEntryNotFoundError(str(error)) from error
