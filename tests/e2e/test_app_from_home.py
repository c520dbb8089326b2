"""Scenario 5: the desktop app serving from a PC behind a home router tells the volunteer how others reach it.

The lab of :mod:`tests.netlab` (scenario 1 of ``test_serving_from_home.py``): a public bootstrap peer
and a public server for blocks 0..1; the app's worker serves blocks 2..3 from a PC behind a home
router without UPnP, so it can only be reached through a relay. The app itself (offscreen Qt) runs
in this test's process; only its worker runs inside the home namespace, started through
``BLOSSOM_WORKER_PREFIX="ip netns exec <namespace>"`` (see :mod:`app.worker.controller`). The
dashboard's reachability line must say the PC is reached through a relay, and the worker's
StatusEvent must say ``relayed``. Needs root with ``ip`` and ``iptables``; elsewhere it skips and
says why. The worker is stopped and the lab's namespaces removed even when the test fails.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from app.reachability import RELAYED
from app.settings import JOIN, AppSettings, SettingsStore
from app.worker.controller import PREFIX_VARIABLE
from app.worker.messages import StatusEvent, WorkerState
from benchmarks.home_lab import start_bootstrap, start_server, wait_until_serving
from tests.netlab import Lab, lab_unavailable_reason

pytestmark = pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason()))

SERVING_TIMEOUT = 300_000  # ms: torch import, block loading, the dial-back, the port-mapping wait, the relay


def make_window(qtbot, tmp_path: Path, settings: AppSettings):
    """The real main window around an AppController with these settings (no swarm view: see below)."""
    from app.app_controller import AppController
    from app.widgets.main_window import MainWindow

    store = SettingsStore(tmp_path / "settings.ini")
    store.save(settings)
    controller = AppController(store, log_dir=tmp_path / "logs")
    # The swarm view's DHT node would live in this process, outside the lab, where the lab's addresses
    # do not exist: it is closed, so only the worker (inside the home namespace) joins the swarm.
    controller.swarm.shutdown(timeout=0)
    window = MainWindow(controller)
    qtbot.addWidget(window)
    return window


def stop_app(qtbot, window) -> None:
    """Stop the worker (announcing its blocks offline) and close the app; kill the worker if it lingers."""
    controller = window.controller
    try:
        controller.shutdown(kill_after=30)
        qtbot.waitUntil(lambda: controller.closed, timeout=60_000)
    finally:
        controller.worker.kill()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_dashboard_says_a_home_pc_is_reached_through_a_relay(qtbot, tiny_checkpoints, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _, converted = tiny_checkpoints["llama"]
    monkeypatch.setenv("BLOSSOM_HOME", str(tmp_path / "blossom-home"))
    with Lab() as lab:
        seed, public = lab.add_public("seed"), lab.add_public("public")
        pc = lab.add_host("pc", home=lab.add_home("home"))  # a home router without UPnP
        _, bootstrap = start_bootstrap(seed, tmp_path)
        first = start_server(public, tmp_path, "public-server", converted, [bootstrap], (0, 2))
        assert wait_until_serving(first).startswith(f"reachable directly at {public.ip}:")

        monkeypatch.setenv(PREFIX_VARIABLE, shlex.join(pc.command([])))  # the worker runs on the home PC
        window = make_window(qtbot, tmp_path, AppSettings(
            model=str(converted), swarm_mode=JOIN, initial_peers=[bootstrap], override=True, num_blocks=2,
            torch_dtype="float32", device="cpu", start_serving_at_launch=False, first_run_done=True))
        controller = window.controller
        assert controller.worker.command[:4] == ["ip", "netns", "exec", pc.ns]
        statuses: list[StatusEvent] = []
        controller.worker.status_updated.connect(statuses.append)
        try:
            controller.begin()
            assert controller.start_serving()
            qtbot.waitUntil(lambda: controller.worker.status.reachability != "" or
                            controller.worker.state == WorkerState.ERROR, timeout=SERVING_TIMEOUT)
            status = controller.worker.status
            assert status.state == WorkerState.SERVING, f"{status.detail}\n{window.dashboard.log.toPlainText()}"
            assert status.reachability == "relayed", status.reachability_detail
            assert (status.start_block, status.end_block) == (2, 4)  # the public server holds 0..1
            bootstrap_id = bootstrap.rsplit("/", 1)[1]
            assert status.reachability_detail.startswith(f"reachable through relay {bootstrap_id}")

            window.grab().save(str(tmp_path / "dashboard-relayed.png"))  # kept with the test's files
            line = window.dashboard.status.reachability
            assert line.isVisibleTo(window) and line.text() == RELAYED
            assert line.text().startswith("Others reach this PC through a relay")
            assert line.toolTip() == f"This server is {status.reachability_detail}"
            assert RELAYED in window.tray.icon.toolTip()
            assert all(event.reachability in ("", "relayed") for event in statuses)  # never "unreachable" on the way
        finally:
            stop_app(qtbot, window)
        assert controller.worker.state in (WorkerState.STOPPED, WorkerState.ERROR)
