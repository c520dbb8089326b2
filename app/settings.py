"""The app's settings, kept across runs with QSettings, and what they mean for the block server.

:class:`AppSettings` is a plain dataclass; :class:`SettingsStore` reads and writes it (any field
missing or unreadable in storage keeps its default). :class:`ServingChoice` is the part the
dashboard edits. :func:`build_serve_request` turns settings and a hardware recommendation into the
:class:`~app.worker.messages.ServeRequest` the worker serves: the one place where settings become a
request (the worker turns the request into a :class:`core.config.ServerConfig`, see
:func:`app.worker.node.server_config`). The dtype and quantization choices are
:data:`core.config.TORCH_DTYPES` and :data:`core.config.QUANT_TYPES`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings

from app.auto_pause import default_programs
from app.pause_policy import parse_clock
from app.worker.messages import PUBLIC_HOST, ServeRequest
from core.config import QUANT_TYPES, TORCH_DTYPES
from core.dht.schema import is_peer_address
from core.hardware import Recommendation

logger = logging.getLogger(__name__)

ORGANIZATION = "Blossom"
APPLICATION = "Blossom"
PRIVATE, JOIN = "private", "join"


@dataclass(frozen=True)
class ServingChoice:
    """What the user chose to serve on the dashboard: the :class:`AppSettings` fields of the same names.

    With ``override`` on, ``num_blocks`` (0: as recommended), ``torch_dtype``, ``quant_type`` and
    ``device`` (empty: as recommended) replace the recommendation's fields of the same names.
    """

    override: bool
    num_blocks: int
    torch_dtype: str
    quant_type: str
    device: str


CHOSEN_FIELDS = tuple(item.name for item in dataclasses.fields(ServingChoice) if item.name != "override")
"""What an override replaces: fields of :class:`AppSettings`, ``Recommendation`` and :class:`ServeRequest` alike."""


@dataclass
class AppSettings:
    """Everything the user chose.

    ``model``: empty for the bundled SmolLM2 demo, else a converted model folder or Hub repo.
    ``swarm_mode``: ``"private"`` (a swarm on this PC) or ``"join"`` (``initial_peers``).
    ``saved_swarms``: initial peers the user saved by name; ``imported_swarms``: swarms imported from
    files or join links, as objects of the swarm file format (see :mod:`app.swarms`).
    ``override`` makes ``num_blocks`` / ``torch_dtype`` / ``quant_type`` / ``device`` replace the
    recommendation; ``more_blocks`` asks the recommendation for int8/nf4 on small cards.
    ``api_enabled`` runs the OpenAI-compatible API (``blossom-api``) for programs on this PC, on ``api_port``.
    ``first_run_done``: the first-run page was answered (serving never starts before that).
    ``auto_pause`` and the ``pause_*`` / ``schedule_*`` fields: when serving pauses by itself
    (:mod:`app.pause_policy`); ``pause_programs`` starts as the bundled game-launcher list.
    ``tuning_dataset`` and ``tuning_steps`` (0: the default) are the last training run's, offered again.
    ``max_vram_gib``, ``ram_percent``, ``cpu_threads``, ``gpu_power_watts``: the most Blossom may use
    (0 or 100 %: no limit; see :mod:`app.limits`).
    """

    model: str = ""
    swarm_mode: str = PRIVATE
    initial_peers: list[str] = field(default_factory=list)
    saved_swarms: dict[str, list[str]] = field(default_factory=dict)
    imported_swarms: list[dict] = field(default_factory=list)
    public_name: str = ""
    port: int = 0
    more_blocks: bool = False
    override: bool = False
    num_blocks: int = 0
    torch_dtype: str = "auto"
    quant_type: str = "none"
    device: str = ""
    start_serving_at_launch: bool = True
    close_notice_shown: bool = False
    temperature: float = 0.0  # greedy: the demo model answers "Paris"; at 0.7 it often did not
    top_p: float = 0.9
    max_new_tokens: int = 160
    prompts_path: str = ""
    api_enabled: bool = False
    api_port: int = 8000
    first_run_done: bool = False
    auto_pause: bool = True
    pause_programs: list[str] = field(default_factory=default_programs)
    pause_when_fullscreen: bool = True
    pause_gpu_percent: int = 40
    pause_when_active: bool = False
    pause_idle_minutes: int = 5
    pause_on_battery: bool = True
    schedule_enabled: bool = False
    schedule_start: str = "22:00"
    schedule_end: str = "08:00"
    tuning_dataset: str = ""
    tuning_steps: int = 0
    max_vram_gib: float = 0.0
    ram_percent: int = 100
    cpu_threads: int = 0
    gpu_power_watts: int = 0

    @property
    def private_swarm(self) -> bool:
        return self.swarm_mode != JOIN

    def problems(self) -> list[str]:
        """Reasons these settings cannot be used to serve (empty when fine)."""
        found = []
        if self.swarm_mode == JOIN and not self.initial_peers:
            found.append("Paste the initial peers of the swarm to join (or choose the private swarm on this PC)")
        bad = [peer for peer in self.initial_peers if not is_peer_address(peer)]
        if self.swarm_mode == JOIN and bad:
            found.append(f"'{bad[0]}' is not a multiaddress like /ip4/1.2.3.4/tcp/31337/p2p/Qm…")
        if not 0 <= self.port <= 65535:
            found.append(f"Port must be 0..65535, got {self.port}")
        if not 1 <= self.api_port <= 65535:
            found.append(f"The API's port must be 1..65535, got {self.api_port}")
        elif self.api_enabled and self.api_port == self.port:
            found.append(f"The API and the node cannot both use port {self.port}; choose another API port")
        if self.torch_dtype not in TORCH_DTYPES:
            found.append(f"Unknown dtype '{self.torch_dtype}'")
        if self.quant_type not in QUANT_TYPES:
            found.append(f"Unknown quantization '{self.quant_type}'")
        for name in ("schedule_start", "schedule_end"):
            try:
                parse_clock(getattr(self, name))
            except ValueError:
                found.append(f"Serving hours are written like 22:00, got '{getattr(self, name)}'")
        return found

    def with_choice(self, choice: ServingChoice) -> AppSettings:
        """These settings with the dashboard's ``choice``."""
        return dataclasses.replace(self, **dataclasses.asdict(choice))


def parse_peers(text: str) -> list[str]:
    """Multiaddresses pasted as lines, spaces or commas."""
    return [part for part in text.replace(",", " ").split() if part]


def _convert(value: Any, default: Any) -> Any:
    """QSettings (INI files especially) returns strings; bring ``value`` back to ``default``'s type."""
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, (list, dict)):
        parsed = json.loads(value) if isinstance(value, str) else value
        if not isinstance(parsed, type(default)):
            raise ValueError(f"expected a {type(default).__name__}")
        return parsed
    return str(value)


class SettingsStore:
    """Reads and writes :class:`AppSettings` in a QSettings (the platform's place, or an INI file)."""

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            self.qsettings = QSettings(ORGANIZATION, APPLICATION)
        else:
            self.qsettings = QSettings(str(path), QSettings.Format.IniFormat)

    def load(self) -> AppSettings:
        """The stored settings; missing or unreadable values keep their defaults."""
        settings = AppSettings()
        for item in dataclasses.fields(AppSettings):
            if not self.qsettings.contains(item.name):
                continue
            default = getattr(settings, item.name)
            try:
                setattr(settings, item.name, _convert(self.qsettings.value(item.name), default))
            except (TypeError, ValueError) as error:
                logger.warning("Ignoring the stored setting %s (%s)", item.name, error)
        return settings

    def save(self, settings: AppSettings) -> None:
        """Write every field now."""
        for item in dataclasses.fields(AppSettings):
            value = getattr(settings, item.name)
            self.qsettings.setValue(item.name, json.dumps(value) if isinstance(value, (list, dict)) else value)
        self.qsettings.sync()

    @property
    def location(self) -> str:
        return self.qsettings.fileName()


SHARED_FIELDS = tuple(item.name for item in dataclasses.fields(AppSettings)
                      if item.name in {other.name for other in dataclasses.fields(ServeRequest)})
""":class:`AppSettings` fields that are :class:`ServeRequest` fields too (``port``, ``public_name``, …)."""


def build_serve_request(settings: AppSettings, model_path: str, recommendation: Recommendation | None,
                        identity_path: str | None = None, num_threads: int | None = None) -> ServeRequest:
    """What the worker should serve: the override when it is on, the recommendation otherwise.

    Settings fields that have a :class:`ServeRequest` field of the same name carry over. A private
    swarm serves every block (it is the only server) on this PC only (see :class:`ServeRequest`);
    joining a swarm serves the recommended (or chosen) number of blocks where the swarm is weakest.
    """
    values: dict[str, Any] = {name: getattr(settings, name) for name in SHARED_FIELDS}
    if not settings.override and recommendation is not None:
        values.update({name: getattr(recommendation, name) for name in CHOSEN_FIELDS})
        values["num_blocks"] = max(1, recommendation.num_blocks)
    values.update(
        initial_peers=tuple(settings.initial_peers),
        num_blocks=None if settings.private_swarm else values["num_blocks"] or None,  # 0: as the server decides
        device=values["device"] or None,
    )
    return ServeRequest(model_path=model_path, private_swarm=settings.private_swarm, host=PUBLIC_HOST,
                        attn_cache_tokens=recommendation.cache_tokens if recommendation is not None else None,
                        num_threads=num_threads, identity_path=identity_path, **values)
