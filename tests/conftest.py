"""Shared fixtures: tiny converted models and real local swarms on 127.0.0.1."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
tempfile.gettempdir()  # resolve before hivemind forks (see DESIGN.md)


def pytest_configure(config: pytest.Config) -> None:
    """``BLOSSOM_TEST_TORCH_THREADS=N``: this process computes with N torch threads (CI's second pass uses 1,
    with ``OMP_NUM_THREADS=1`` for the server subprocesses, to prove the numeric contract of tests/numerics.py
    on another kernel path)."""
    threads = os.environ.get("BLOSSOM_TEST_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """For 'llama' and 'bloom': (original HF folder, converted folder)."""
    from core.convert import convert_model
    from tests.tiny_models import save_model

    root = tmp_path_factory.mktemp("models")
    result = {}
    for family in ("llama", "bloom"):
        original = save_model(family, root / f"{family}-original")
        converted = root / f"tiny-{family}"
        convert_model(str(original), converted, progress=False)
        result[family] = (original, converted)
    return result


@pytest.fixture(scope="module")
def swarm_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start LocalSwarms that are all stopped when the test module ends, even on failure (so server
    processes do not pile up in memory over the whole session)."""
    from core.launcher import LocalSwarm

    started: list[LocalSwarm] = []
    log_root = tmp_path_factory.mktemp("swarm-logs")

    def start(converted: Path, spans: list[tuple[int, int]], **kwargs) -> LocalSwarm:
        swarm = LocalSwarm(converted, spans, log_dir=log_root / f"swarm{len(started)}", **kwargs)
        started.append(swarm)
        swarm.start()
        return swarm

    yield start
    for swarm in started:
        swarm.stop()


@pytest.fixture(scope="session")
def client_dht_factory() -> Iterator:
    """Client-mode DHT nodes joined to a swarm; shut down at the end of the session."""
    import hivemind

    from core.dht.node import create_dht

    nodes: list[hivemind.DHT] = []

    def start(initial_peers: list[str]) -> hivemind.DHT:
        node = create_dht(initial_peers, client_mode=True).dht
        nodes.append(node)
        return node

    yield start
    from core.dht.node import shutdown_client_dht

    for node in nodes:
        shutdown_client_dht(node)
