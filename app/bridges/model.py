"""Which model the app serves and chats with: the bundled demo (converted on first use) or a chosen one."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.errors import InvalidRequestError
from core.hardware import ModelFootprint

logger = logging.getLogger(__name__)

DEMO_LABEL = "SmolLM2-135M-Instruct (bundled demo)"


@dataclass(frozen=True)
class PreparedModel:
    """A model ready to serve: where it is (folder or Hub repo), its name and its block sizes."""

    path: str
    name: str
    footprint: ModelFootprint
    is_demo: bool


def prepare_model(spec: str, on_progress: Callable[[str, int, int], None] | None = None) -> PreparedModel:
    """Resolve a model setting (blocking; run it in a background thread).

    ``""`` means the bundled SmolLM2 demo, converted into Blossom's home folder on first use; a
    folder must hold a converted model; anything else is taken as a converted Hub repo. The demo's
    conversion tells ``on_progress(stage, done, total)`` how far it is (from this background thread).
    """
    if not spec:
        from core.cli.demo import ensure_demo_model

        path = ensure_demo_model(on_progress=on_progress)
        footprint = ModelFootprint.from_converted_folder(path)
        return PreparedModel(str(path), footprint.name, footprint, True)
    folder = Path(spec).expanduser()
    if folder.exists():
        footprint = ModelFootprint.from_converted_folder(folder)
        return PreparedModel(str(folder), footprint.name, footprint, False)
    if folder.is_absolute() or spec.startswith((".", "~")):
        raise InvalidRequestError(f"the folder '{spec}' does not exist; choose a converted model folder, or a "
                                  f"converted Hugging Face repo such as org/model")
    import json

    from core.convert.location import fetch_file

    manifest = json.loads(fetch_file(spec, "manifest.json").read_text(encoding="utf-8"))
    config = json.loads(fetch_file(spec, "config.json").read_text(encoding="utf-8"))
    footprint = ModelFootprint.from_manifest(manifest, config)
    return PreparedModel(spec, footprint.name, footprint, False)
