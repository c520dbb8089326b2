"""Upload a converted model to the Hugging Face Hub with one branch per block.

``main`` holds config, tokenizer, manifest and the client tensors; branch ``block_i`` additionally
gets ``block_i/model.safetensors`` (plus manifest and config), so a server downloads only the blocks
it serves and a client never downloads a block.
"""
from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub

from core.convert.location import HUB_ERRORS
from core.convert.manifest import CONFIG_NAME, MANIFEST_NAME, Manifest, block_revision
from core.errors import ConversionError

logger = logging.getLogger(__name__)


def upload_conversion(folder: Path, manifest: Manifest, repo_id: str, token: str | None = None) -> None:
    """Push the conversion in ``folder`` to ``repo_id``: ``main`` without blocks, then a branch per block.

    Re-running resumes an interrupted upload: the repo and branches are created with ``exist_ok``
    and unchanged files are not uploaded again by the Hub client.
    """
    api = huggingface_hub.HfApi(token=token)
    try:
        logger.info("Uploading %s to %s (main: config, tokenizer, manifest, client tensors)", folder, repo_id)
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision="main",
            ignore_patterns=["block_*"],
            commit_message=f"Blossom conversion of {manifest.source}: config, tokenizer, manifest, client",
        )
        for entry in manifest.blocks:
            branch = block_revision(entry.index)
            logger.info("Uploading block %d to branch %s", entry.index, branch)
            api.create_branch(repo_id, branch=branch, exist_ok=True)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=branch,
                allow_patterns=[f"{Path(entry.path).parent.as_posix()}/*", MANIFEST_NAME, CONFIG_NAME],
                commit_message=f"Blossom conversion of {manifest.source}: block {entry.index}",
            )
    except HUB_ERRORS as error:
        raise ConversionError(
            f"uploading to '{repo_id}' failed: {error}. The local conversion in {folder} is complete; check "
            f"your token's write access (--use_auth_token) and run the same command again to resume"
        ) from error
    logger.info("Uploaded %s to https://huggingface.co/%s (%d block branches)", manifest.dht_prefix, repo_id,
                manifest.num_blocks)
