"""Settings persist in QSettings (INI here) and turn into the worker's ServeRequest."""
from __future__ import annotations

from pathlib import Path

from app.settings import JOIN, AppSettings, SettingsStore, build_serve_request, parse_peers
from core.hardware import Recommendation

PEER = "/ip4/203.0.113.5/tcp/31337/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
REC = Recommendation("cuda:0", "bfloat16", "int8", 12, 32, 1 << 28, 8 << 30, 1 << 30, 8192, "because")


def test_settings_round_trip(tmp_path: Path) -> None:
    settings = AppSettings(model="/models/llama", swarm_mode=JOIN, initial_peers=[PEER],
                           saved_swarms={"team": [PEER]}, public_name="gamer ✿", port=31330, more_blocks=True,
                           override=True, num_blocks=7, torch_dtype="float16", quant_type="nf4", device="cuda:1",
                           start_serving_at_launch=False, close_notice_shown=True, temperature=0.3, top_p=0.8,
                           max_new_tokens=99, prompts_path="/p.safetensors")
    SettingsStore(tmp_path / "s.ini").save(settings)
    assert SettingsStore(tmp_path / "s.ini").load() == settings
    assert SettingsStore(tmp_path / "empty.ini").load() == AppSettings()


def test_unreadable_values_keep_their_defaults(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "s.ini")
    store.qsettings.setValue("port", "not a number")
    store.qsettings.setValue("saved_swarms", "[1, 2]")
    store.qsettings.setValue("public_name", "kept")
    loaded = store.load()
    assert (loaded.port, loaded.saved_swarms, loaded.public_name) == (0, {}, "kept")


def test_problems_and_peers() -> None:
    assert parse_peers(f" {PEER},\n{PEER} ") == [PEER, PEER]
    assert AppSettings().problems() == []
    assert "Paste the initial peers" in AppSettings(swarm_mode=JOIN).problems()[0]
    assert "is not a multiaddress" in AppSettings(swarm_mode=JOIN, initial_peers=["1.2.3.4:80"]).problems()[0]


def test_serve_request_from_recommendation_or_override() -> None:
    joined = AppSettings(swarm_mode=JOIN, initial_peers=[PEER], port=31330, public_name="me")
    request = build_serve_request(joined, "/models/m", REC)
    assert (request.private_swarm, request.initial_peers, request.host, request.port) == (
        False, (PEER,), "0.0.0.0", 31330)
    assert (request.num_blocks, request.torch_dtype, request.quant_type, request.device) == (
        12, "bfloat16", "int8", "cuda:0")
    assert request.attn_cache_tokens == 8192 and request.public_name == "me"

    chosen = AppSettings(swarm_mode=JOIN, initial_peers=[PEER], override=True, num_blocks=3, torch_dtype="float16")
    request = build_serve_request(chosen, "/models/m", REC)
    assert (request.num_blocks, request.torch_dtype, request.quant_type, request.device) == (3, "float16", "none",
                                                                                              None)
    private = build_serve_request(AppSettings(port=999), "/models/m", REC)
    assert private.private_swarm and private.num_blocks is None  # the only server holds every block
    assert (private.host, private.port, private.initial_peers) == ("127.0.0.1", 0, ())
