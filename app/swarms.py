"""Known swarms a volunteer can join in one click: the bundled list, imported files, join links, saved peers.

Three sources make the list the Settings tab shows (:func:`known_swarms`):

- **bundled**: ``resources/swarms.json``, shipped with Blossom and editable (:func:`load_bundled_swarms`);
- **imported**: swarm files of the same format, or ``blossom://join?...`` links, the user imported
  (kept in the settings as dicts, ``AppSettings.imported_swarms``);
- **saved**: initial peers the user pasted and saved under a name (``AppSettings.saved_swarms``;
  they name no model, so joining one keeps the model setting).

The file format (documented for people in ``resources/README.md``)::

    {"swarms": [{"name": "Example swarm",                     # required, unique in the file
                 "model": "org/model-blossom",                 # required: a converted Hub repo or
                                                               #   folder; "" = the bundled demo model
                 "initial_peers": ["/ip4/203.0.113.5/tcp/31337/p2p/Qm..."],   # required, at least one
                 "website": "https://example.org",             # optional
                 "description": "Who runs it, what for"}]}     # optional

A bare list of such objects is accepted too; other keys are ignored. A join link carries the same
fields: ``blossom://join?name=...&model=...&peer=<multiaddr>&peer=...&website=...`` (:meth:`KnownSwarm.link`).

No Qt and no torch here: the widgets show what these functions return.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import parse_qs, urlencode, urlsplit

from core.dht.schema import is_peer_address
from core.errors import InvalidRequestError

if TYPE_CHECKING:
    from app.settings import AppSettings

logger = logging.getLogger(__name__)

BUNDLED_SWARMS_FILE = Path(__file__).resolve().parents[1] / "resources" / "swarms.json"
BUNDLED, IMPORTED, SAVED = "bundled", "imported", "saved"
LINK_PREFIX = "blossom://join"
MAX_FILE_BYTES = 1 << 20


class SwarmListError(InvalidRequestError):
    """A swarm file or join link that cannot be used; the message says where and what is wrong."""


@dataclass(frozen=True)
class KnownSwarm:
    """One swarm to join: its name, the model it serves (``None``: keep the model setting), its initial peers."""

    name: str
    model: str | None
    initial_peers: tuple[str, ...]
    website: str = ""
    description: str = ""
    source: str = IMPORTED

    @property
    def model_label(self) -> str:
        if self.model is None:
            return "keeps your model setting"
        return self.model or "the bundled demo model"

    def to_dict(self) -> dict[str, Any]:
        """The file format's object for this swarm."""
        data: dict[str, Any] = {"name": self.name, "model": self.model or "", "initial_peers": list(self.initial_peers)}
        data.update({key: value for key, value in (("website", self.website), ("description", self.description))
                     if value})
        return data

    def link(self) -> str:
        """A ``blossom://join?...`` link others can paste to import this swarm."""
        query = [("name", self.name), ("model", self.model or ""), *(("peer", peer) for peer in self.initial_peers)]
        if self.website:
            query.append(("website", self.website))
        return f"{LINK_PREFIX}?{urlencode(query)}"

    def applied_to(self, settings: "AppSettings") -> "AppSettings":
        """``settings`` joined to this swarm: its initial peers and (unless it names none) its model."""
        from app.settings import JOIN

        return dataclasses.replace(settings, swarm_mode=JOIN, initial_peers=list(self.initial_peers),
                                   model=settings.model if self.model is None else self.model)


def swarm_from_dict(data: Any, source: str, where: str = "") -> KnownSwarm:
    """Check one swarm object of the file format; raises :class:`SwarmListError` saying what is wrong."""
    where = where or "the swarm"
    if not isinstance(data, dict):
        raise SwarmListError(f"{where} is not an object with a name, a model and initial_peers")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SwarmListError(f"{where} has no name (a non-empty string)")
    where = f"{where} ('{name.strip()}')"
    model = data.get("model")
    if not isinstance(model, str):
        raise SwarmListError(f"{where} has no model (a converted Hugging Face repo or folder; \"\" for the "
                             f"bundled demo model)")
    peers = data.get("initial_peers")
    if isinstance(peers, str):
        peers = [peers]
    if not isinstance(peers, list) or not peers or not all(isinstance(peer, str) for peer in peers):
        raise SwarmListError(f"{where} has no initial_peers (a list of multiaddresses)")
    bad = [peer for peer in peers if not is_peer_address(peer.strip())]
    if bad:
        raise SwarmListError(f"{where}: '{bad[0]}' is not a multiaddress like /ip4/1.2.3.4/tcp/31337/p2p/Qm…")
    texts = {key: data.get(key, "") for key in ("website", "description")}
    for key, value in texts.items():
        if not isinstance(value, str):
            raise SwarmListError(f"{where}: {key} must be a string")
    return KnownSwarm(name.strip(), model.strip(), tuple(peer.strip() for peer in peers),
                      texts["website"].strip(), texts["description"].strip(), source)


def parse_swarms(data: Any, source: str, where: str) -> list[KnownSwarm]:
    """The swarms of a parsed file (``{"swarms": [...]}`` or a bare list); names must be unique."""
    items = data.get("swarms") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise SwarmListError(f"{where} does not list swarms: expected {{\"swarms\": [...]}} or a list of swarms")
    swarms = [swarm_from_dict(item, source, f"swarm {index + 1} of {where}") for index, item in enumerate(items)]
    names = [swarm.name for swarm in swarms]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise SwarmListError(f"{where} names two swarms '{duplicate}'; give each its own name")
    return swarms


def load_swarm_file(path: str | Path, source: str = IMPORTED) -> list[KnownSwarm]:
    """The swarms listed in a JSON file; raises :class:`SwarmListError` with the file, line and reason."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SwarmListError(f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB: not a swarm list")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SwarmListError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SwarmListError(f"cannot read {path}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SwarmListError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, "
                             f"column {error.colno}") from None
    return parse_swarms(data, source, path.name)


def parse_join_link(link: str, source: str = IMPORTED) -> KnownSwarm:
    """The swarm of a ``blossom://join?name=...&model=...&peer=...`` link."""
    link = link.strip()
    parts = urlsplit(link)
    if parts.scheme != "blossom" or (parts.netloc or parts.path.strip("/")) != "join":
        raise SwarmListError(f"'{link[:80]}' is not a Blossom join link (they start with {LINK_PREFIX}?)")
    query = parse_qs(parts.query, keep_blank_values=True)
    data = {"name": query.get("name", [""])[0], "model": query.get("model", [None])[0],
            "initial_peers": query.get("peer", []), "website": query.get("website", [""])[0],
            "description": query.get("description", [""])[0]}
    return swarm_from_dict(data, source, "the join link")


def load_import(source: str) -> list[KnownSwarm]:
    """Swarms from what the user gave: a join link or the path of a swarm file."""
    if source.strip().startswith("blossom:"):
        return [parse_join_link(source)]
    return load_swarm_file(source)


def load_bundled_swarms(path: Path = BUNDLED_SWARMS_FILE) -> tuple[list[KnownSwarm], str]:
    """The bundled list and, when it cannot be used, why (a missing file is an empty list)."""
    if not path.exists():
        logger.info("No bundled swarm list at %s", path)
        return [], ""
    try:
        return load_swarm_file(path, BUNDLED), ""
    except SwarmListError as error:
        logger.warning("Ignoring the bundled swarm list: %s", error)
        return [], f"The bundled swarm list is ignored: {error}"


def stored_swarms(items: Iterable[Any]) -> list[KnownSwarm]:
    """Imported swarms as kept in the settings (entries that no longer check out are skipped)."""
    swarms = []
    for item in items:
        try:
            swarms.append(swarm_from_dict(item, IMPORTED))
        except SwarmListError as error:
            logger.warning("Ignoring a stored swarm: %s", error)
    return swarms


def with_imported(items: list[Any], new: Iterable[KnownSwarm]) -> list[dict[str, Any]]:
    """The stored imported swarms plus ``new`` ones (a swarm of the same name is replaced)."""
    new = list(new)
    names = {swarm.name for swarm in new}
    kept = [swarm.to_dict() for swarm in stored_swarms(items) if swarm.name not in names]
    return kept + [swarm.to_dict() for swarm in new]


def known_swarms(bundled: Iterable[KnownSwarm], settings: "AppSettings") -> list[KnownSwarm]:
    """What the Settings tab lists: the bundled swarms, then imported ones, then the user's saved peers."""
    saved = [KnownSwarm(name, None, tuple(peers), source=SAVED) for name, peers in sorted(settings.saved_swarms.items())
             if isinstance(peers, list) and peers]
    return [*bundled, *stored_swarms(settings.imported_swarms), *saved]
