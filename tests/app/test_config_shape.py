"""One config shape: settings -> ServeRequest -> ServerConfig by field names, and the choices come from core."""
from __future__ import annotations

import dataclasses

from app.settings import SHARED_FIELDS, AppSettings, ServingChoice, build_serve_request
from app.widgets.hardware_panel import RecommendationCard
from app.widgets.tuning import TuningTab
from app.worker.messages import ServeRequest
from app.worker.node import RENAMED_FIELDS, WORKER_FIELDS, server_config
from core.config import QUANT_TYPES, TORCH_DTYPES, ServerConfig
from core.tuning import TrainingConfig

PEER = "/ip4/203.0.113.5/tcp/31337/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
OWN = ("/ip4/127.0.0.1/tcp/4/p2p/QmOwn",)


def test_every_request_field_reaches_the_server_config() -> None:
    request = ServeRequest("/models/m", private_swarm=False, initial_peers=(PEER,), host="0.0.0.0", port=31330,
                           public_name="me", num_blocks=8, block_indices=(4, 12), torch_dtype="bfloat16",
                           quant_type="nf4", device="cuda:1", attn_cache_tokens=4096, num_threads=3,
                           throughput=12.5, identity_path="/id.key", drain_timeout=5.0)
    config = server_config(request, swarm_peers=(PEER,))
    assert config.converted_model_name_or_path == "/models/m" and config.torch_threads == 3
    assert config.shutdown_timeout == 5.0 and config.host_maddrs == ("/ip4/0.0.0.0/tcp/31330",)
    assert config.direct_port == 0 and config.initial_peers == (PEER,)  # TLS direct connections, any free port
    for name in ("public_name", "num_blocks", "block_indices", "torch_dtype", "quant_type", "device",
                 "attn_cache_tokens", "throughput", "identity_path"):
        assert getattr(config, name) == getattr(request, name), name
    mapped = {RENAMED_FIELDS.get(item.name, item.name) for item in dataclasses.fields(ServeRequest)} - set(WORKER_FIELDS)
    assert mapped <= {item.name for item in dataclasses.fields(ServerConfig)}


def test_request_defaults_are_the_servers() -> None:
    server_defaults = {item.name: item.default for item in dataclasses.fields(ServerConfig)}
    for item in dataclasses.fields(ServeRequest):
        if item.name not in WORKER_FIELDS and item.name != "model_path":
            assert item.default == server_defaults[RENAMED_FIELDS.get(item.name, item.name)], item.name


def test_a_private_swarm_listens_on_this_pc_only() -> None:
    request = ServeRequest("/m", private_swarm=True, initial_peers=(PEER,), host="0.0.0.0", port=31330)
    assert (request.host, request.port, request.initial_peers) == ("127.0.0.1", 0, ())
    config = server_config(request, swarm_peers=OWN, span=(0, 4), throughput=7.5)  # resumed after a pause
    assert config.host_maddrs == ("/ip4/127.0.0.1/tcp/0",) and config.direct_port == 0
    assert (config.num_blocks, config.block_indices, config.throughput, config.initial_peers) == (None, (0, 4), 7.5,
                                                                                               OWN)


def test_settings_carry_their_request_fields_over() -> None:
    assert set(SHARED_FIELDS) == {"initial_peers", "public_name", "port", "num_blocks", "torch_dtype", "quant_type",
                                  "device"}
    choice = ServingChoice(override=True, num_blocks=3, torch_dtype="float16", quant_type="int8", device="cpu")
    settings = AppSettings(swarm_mode="join", initial_peers=[PEER]).with_choice(choice)
    request = build_serve_request(settings, "/models/m", None)
    assert (request.num_blocks, request.torch_dtype, request.quant_type, request.device) == (3, "float16", "int8",
                                                                                              "cpu")


def test_choices_and_defaults_come_from_core(qtbot) -> None:
    card = RecommendationCard()
    qtbot.addWidget(card)
    assert tuple(card.dtype.itemText(i) for i in range(card.dtype.count())) == TORCH_DTYPES
    assert tuple(card.quant.itemText(i) for i in range(card.quant.count())) == QUANT_TYPES
    with qtbot.waitSignal(card.override_changed) as changed:
        card.override.click()
    assert changed.args[0] == ServingChoice(True, 0, "auto", "none", "")

    tab = TuningTab()
    qtbot.addWidget(tab)
    tab.dataset.setText(" /data/flowers.txt ")
    assert tab.request() == TrainingConfig(model_path="", initial_peers=(), dataset_path="/data/flowers.txt")
