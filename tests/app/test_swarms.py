"""Known swarms: the bundled list, files and join links the user imports, and Join, which serves in the swarm."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.reachability import LOCAL_ONLY
from app.settings import JOIN, AppSettings, SettingsStore
from app.swarms import (
    BUNDLED_SWARMS_FILE, IMPORTED, SAVED, KnownSwarm, SwarmListError, known_swarms, load_bundled_swarms,
    load_swarm_file, parse_join_link,
)
from app.worker.messages import WorkerState

PEER_A = "/ip4/203.0.113.5/tcp/31337/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
PEER_B = "/ip4/198.51.100.7/tcp/31337/p2p/QmTeamPeer"
START_TIMEOUT = 150_000


def write_swarms(path: Path, swarms: list[dict]) -> Path:
    path.write_text(json.dumps({"swarms": swarms}, indent=2), encoding="utf-8")
    return path


def two_swarms(tmp_path: Path) -> Path:
    return write_swarms(tmp_path / "friends.json", [
        {"name": "Flower club", "model": "org/llama-blossom", "initial_peers": [PEER_A],
         "website": "https://example.org/flowers", "description": "Friends serving together"},
        {"name": "Demo team", "model": "", "initial_peers": [PEER_A, PEER_B]},
    ])


def test_the_bundled_list_is_valid_and_names_no_invented_swarm() -> None:
    swarms, problem = load_bundled_swarms()
    assert BUNDLED_SWARMS_FILE.is_file() and problem == ""
    assert swarms == []  # no public Blossom swarm is known: the list ships empty
    assert json.loads(BUNDLED_SWARMS_FILE.read_text())["swarms"] == []


def test_a_swarm_file_a_bare_list_and_a_join_link(tmp_path: Path) -> None:
    flowers, demo = load_swarm_file(two_swarms(tmp_path))
    assert flowers == KnownSwarm("Flower club", "org/llama-blossom", (PEER_A,), "https://example.org/flowers",
                                 "Friends serving together", IMPORTED)
    assert (demo.model, demo.model_label, demo.initial_peers) == ("", "the bundled demo model", (PEER_A, PEER_B))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([flowers.to_dict()]))
    assert load_swarm_file(bare) == [flowers]
    assert parse_join_link(flowers.link()) == KnownSwarm("Flower club", "org/llama-blossom", (PEER_A,),
                                                         "https://example.org/flowers")
    joined = flowers.applied_to(AppSettings(public_name="me"))
    assert (joined.swarm_mode, joined.initial_peers, joined.model, joined.public_name) == (
        JOIN, [PEER_A], "org/llama-blossom", "me")
    saved, = known_swarms([], AppSettings(model="/mine", saved_swarms={"home": [PEER_B]}))
    assert (saved.source, saved.model, saved.applied_to(AppSettings(model="/mine")).model) == (SAVED, None, "/mine")


@pytest.mark.parametrize("content, message", [
    ('{"swarms": [{"name": "x", "model": "m", "initial_peers": [1]}', "is not valid JSON: Expecting ',' delimiter at "
                                                                      "line 1, column 62"),
    ('{"servers": []}', "does not list swarms"),
    ('{"swarms": [{"model": "m", "initial_peers": ["/ip4/1.2.3.4/tcp/1/p2p/Qm"]}]}', "swarm 1 of bad.json has no name"),
    ('{"swarms": [{"name": "x", "initial_peers": ["/ip4/1.2.3.4/tcp/1/p2p/Qm"]}]}', "('x') has no model"),
    ('{"swarms": [{"name": "x", "model": "m", "initial_peers": []}]}', "('x') has no initial_peers"),
    ('{"swarms": [{"name": "x", "model": "m", "initial_peers": ["1.2.3.4:31337"]}]}',
     "'1.2.3.4:31337' is not a multiaddress"),
])
def test_malformed_files_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SwarmListError) as raised:
        load_swarm_file(path)
    assert message in str(raised.value)
    with pytest.raises(SwarmListError, match="is not a Blossom join link"):
        parse_join_link("https://example.org/join?peer=x")


def test_imported_swarms_are_listed_kept_and_deleted(qtbot, make_window, tmp_path: Path,
                                                     settings_store: SettingsStore) -> None:
    window = make_window(saved_swarms={"my peers": [PEER_B]})
    chooser = window.settings.swarm_chooser
    assert [swarm.name for swarm in chooser.swarms] == ["my peers"]  # the bundled list is empty

    window.settings.import_requested.emit(str(two_swarms(tmp_path)))
    assert chooser.message.text() == "Imported 2 swarms: 'Flower club', 'Demo team'. Choose one and press Join."
    assert chooser.message.objectName() == "muted"
    assert [(swarm.name, swarm.source) for swarm in chooser.swarms] == [
        ("Flower club", IMPORTED), ("Demo team", IMPORTED), ("my peers", SAVED)]
    assert [chooser.list.item(row).text() for row in range(chooser.list.count())] == [
        "Flower club — org/llama-blossom · imported", "Demo team — the bundled demo model · imported",
        "my peers — keeps your model setting · your saved peers"]
    assert [item["name"] for item in settings_store.load().imported_swarms] == ["Flower club", "Demo team"]

    chooser.select("Flower club")
    assert "Friends serving together" in chooser.details.text() and "https://example.org/flowers" in chooser.details.text()
    assert window.settings.peers.toPlainText() == PEER_A  # the chosen swarm's peers are shown
    window.settings.import_requested.emit(parse_join_link(KnownSwarm("Flower club", "org/other", (PEER_B,)).link())
                                          .link())  # a pasted link replaces the swarm of the same name
    assert chooser.current.model == "org/other" and len(chooser.swarms) == 3
    chooser.delete_button.click()
    assert [swarm.name for swarm in chooser.swarms] == ["Demo team", "my peers"]
    assert [item["name"] for item in settings_store.load().imported_swarms] == ["Demo team"]


def test_a_malformed_file_shows_a_clear_error_and_changes_nothing(qtbot, make_window, tmp_path: Path,
                                                                  settings_store: SettingsStore) -> None:
    window = make_window()
    bad = tmp_path / "broken.json"
    bad.write_text('{"swarms": [{"name": "x", "model": "m", "initial_peers": ["not-an-address"]}]}')
    window.settings.import_requested.emit(str(bad))
    message = window.settings.swarm_chooser.message
    assert not message.isHidden() and message.objectName() == "errorText"
    assert message.text() == ("Could not import swarms: swarm 1 of broken.json ('x'): 'not-an-address' is not a "
                              "multiaddress like /ip4/1.2.3.4/tcp/31337/p2p/Qm…")
    window.settings.import_requested.emit(str(tmp_path / "missing.json"))
    assert message.text() == f"Could not import swarms: {tmp_path / 'missing.json'} does not exist"
    assert window.settings.swarm_chooser.swarms == [] and settings_store.load().imported_swarms == []
    assert not window.settings.swarm_chooser.empty_hint.isHidden()


@pytest.mark.slow
def test_join_saves_the_swarm_and_restarts_serving_in_it(qtbot, make_window, app_swarm, tiny_checkpoints,
                                                         tmp_path: Path, settings_store: SettingsStore) -> None:
    """Serving in the private swarm, the user imports a file and joins a swarm serving another copy of the model."""
    _, converted = tiny_checkpoints["llama"]
    window = make_window(model=str(converted))
    controller = window.controller
    controller.begin()
    controller.start_serving()
    qtbot.waitUntil(lambda: controller.worker.state == WorkerState.SERVING, timeout=START_TIMEOUT)
    assert window.dashboard.status.reachability.text() == LOCAL_ONLY  # the private swarm is on this PC only
    first_pid = controller.worker.process_id

    model_copy = tmp_path / "tiny-llama-copy"
    shutil.copytree(converted, model_copy)
    swarms = write_swarms(tmp_path / "swarms.json", [
        {"name": "Elsewhere", "model": "org/model", "initial_peers": [PEER_A]},
        {"name": "Test swarm", "model": str(model_copy), "initial_peers": list(app_swarm.initial_peers)}])
    window.tabs.setCurrentWidget(window.settings)
    window.settings.import_requested.emit(str(swarms))
    chooser = window.settings.swarm_chooser
    assert chooser.select("Test swarm")
    qtbot.mouseClick(chooser.join_button, Qt.MouseButton.LeftButton)

    stored = settings_store.load()
    assert (stored.swarm_mode, stored.initial_peers, stored.model) == (JOIN, list(app_swarm.initial_peers),
                                                                       str(model_copy))
    assert window.tabs.currentWidget() is window.dashboard
    qtbot.waitUntil(lambda: controller.worker.state == WorkerState.SERVING and controller.worker.process_id
                    not in (0, first_pid), timeout=START_TIMEOUT)
    request = controller.worker.last_request
    assert (request.private_swarm, request.initial_peers, request.model_path) == (
        False, tuple(app_swarm.initial_peers), str(model_copy))
    status = controller.worker.status
    assert status.reachability == "direct" and "the swarm is on this machine" in status.reachability_detail
    assert window.dashboard.status.reachability.text() == LOCAL_ONLY  # this swarm's peers are all on 127.0.0.1
    assert status.peers >= 0 and window.dashboard.status.title.text() == "Serving"
