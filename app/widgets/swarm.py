"""The swarm tab: for the chosen model, who holds which blocks (a picture and a table), refreshed periodically."""
from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.formatting import format_blocks, format_count, format_rate
from app.theme import ACCENT, BAD, GOOD
from app.widgets.common import Card, button, wrapped_label
from app.widgets.coverage import STATE_COLORS, CoverageView, server_label

MAX_PICTURE_HEIGHT = 420  # beyond this the coverage picture scrolls
COLUMNS = ("Server", "Peer ID", "Blocks", "State", "Throughput", "dtype", "Quantization", "Cache left", "Version")
LEGEND = " ".join(
    f"<span style='color:{color};'>■</span> {name}&nbsp;&nbsp;" for name, color in (
        ("online", STATE_COLORS["online"]), ("joining", STATE_COLORS["joining"]), ("offline", STATE_COLORS["offline"]),
        ("this PC", ACCENT), ("uncovered block", BAD)))


def uncovered_text(blocks: tuple[int, ...]) -> str:
    """``(3, 4, 5, 9)`` -> ``'3–5, 9'``."""
    parts: list[tuple[int, int]] = []
    for index in sorted(blocks):
        if parts and index == parts[-1][1]:
            parts[-1] = (parts[-1][0], index + 1)
        else:
            parts.append((index, index + 1))
    return ", ".join(format_blocks(start, end) for start, end in parts)


class SwarmTab(QWidget):
    """Shows :class:`~app.bridges.swarm.SwarmSnapshot` objects."""

    refresh_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("page")
        self.snapshot: Any = None
        self.own_peer_id = ""
        self.preferred_model = ""
        self.model_choice = QComboBox()
        self.model_choice.setMinimumWidth(240)
        self.summary = QLabel("")
        self.updated = QLabel("")
        self.updated.setObjectName("muted")
        self.refresh_button = button("Refresh")
        self.message = wrapped_label("Start serving, or join a swarm in Settings, to see it here.", "muted")
        self.coverage = CoverageView()
        self.scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(self.coverage)
        scroll.setMinimumHeight(120)
        self.legend = QLabel(LEGEND)
        self.legend.setObjectName("muted")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        self.table.setColumnWidth(1, 200)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)

        header = QHBoxLayout()
        header.addWidget(QLabel("Model"))
        header.addWidget(self.model_choice)
        header.addSpacing(12)
        header.addWidget(self.summary, 1)
        header.addWidget(self.updated)
        header.addWidget(self.refresh_button)
        picture = Card("Block coverage")
        picture.body.addWidget(self.message)
        picture.body.addWidget(scroll, 1)
        picture.body.addWidget(self.legend)
        servers = Card("Servers")
        servers.body.addWidget(self.table)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 16, 16, 16)
        layout.setSpacing(12)
        layout.addLayout(header)
        layout.addWidget(picture)
        layout.addWidget(servers, 1)
        self._connect_signals()

    def _connect_signals(self) -> None:
        self.refresh_button.clicked.connect(self.refresh_requested)
        self.model_choice.currentIndexChanged.connect(lambda *_: self._show_selected())

    def set_own_peer_id(self, peer_id: str) -> None:
        if peer_id != self.own_peer_id:
            self.own_peer_id = peer_id
            self._show_selected()

    def set_preferred_model(self, name: str) -> None:
        """Select this model when it appears (the one this app serves)."""
        self.preferred_model = name

    def show_busy(self, busy: bool) -> None:
        self.refresh_button.setEnabled(not busy)
        if busy:
            self.updated.setText("Refreshing…")

    def show_no_swarm(self) -> None:
        self.snapshot = None
        self.model_choice.clear()
        self.summary.setText("")
        self.updated.setText("")
        self.message.setText("Start serving, or join a swarm in Settings, to see it here.")
        self.message.show()
        self.coverage.show_model(None)
        self.table.setRowCount(0)

    def show_failure(self, reason: str) -> None:
        self.updated.setText("Could not refresh")
        self.message.setText(f"Could not read the swarm: {reason}")
        self.message.show()

    def show_snapshot(self, snapshot: Any) -> None:
        self.snapshot = snapshot
        names = [model.dht_prefix for model in snapshot.models]
        current = self.model_choice.currentText() or self.preferred_model
        self.model_choice.blockSignals(True)
        self.model_choice.clear()
        self.model_choice.addItems(names)
        if names:
            choice = current if current in names else (self.preferred_model if self.preferred_model in names
                                                        else names[0])
            self.model_choice.setCurrentText(choice)
        self.model_choice.blockSignals(False)
        self.updated.setText("Updated " + time.strftime("%H:%M:%S", time.localtime(snapshot.fetched_at)))
        self._show_selected()

    def selected_model(self) -> Any:
        if self.snapshot is None:
            return None
        name = self.model_choice.currentText()
        return next((model for model in self.snapshot.models if model.dht_prefix == name), None)

    def _show_selected(self) -> None:
        model = self.selected_model()
        if model is None:
            if self.snapshot is not None:
                self.message.setText("No model is announced in this swarm yet.")
                self.message.show()
                self.summary.setText("")
            self.coverage.show_model(None)
            self.table.setRowCount(0)
            return
        self.message.hide()
        online = [row for row in model.servers if row.state == "online"]
        if model.uncovered:
            state = (f"<span style='color:{BAD}; font-weight:600;'>{len(model.uncovered)} block(s) not served: "
                     f"{uncovered_text(model.uncovered)}</span>")
        else:
            state = f"<span style='color:{GOOD}; font-weight:600;'>every block is served</span>"
        mine = [row for row in model.servers if self.own_peer_id and row.peer_id == self.own_peer_id]
        place = (f" · this PC holds blocks {format_blocks(mine[0].start_block, mine[0].end_block)}" if mine else "")
        self.summary.setText(f"{len(online)} server(s) online · {model.total_blocks} blocks · {state}{place}")
        self.coverage.show_model(model, self.own_peer_id)
        self.scroll.setMaximumHeight(min(self.coverage.minimumHeight() + 4, MAX_PICTURE_HEIGHT))
        self._fill_table(model)

    def _fill_table(self, model: Any) -> None:
        self.table.setRowCount(len(model.servers))
        for index, row in enumerate(model.servers):
            values = (server_label(row, self.own_peer_id), row.peer_id, format_blocks(row.start_block, row.end_block),
                      row.state, f"{format_rate(row.throughput)} tok/s/block", row.torch_dtype, row.quant_type,
                      format_count(row.cache_tokens_left) + " tokens", row.version)
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                if column == 1:
                    item.setToolTip(row.peer_id)
                if self.own_peer_id and row.peer_id == self.own_peer_id:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                item.setTextAlignment(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft)
                self.table.setItem(index, column, item)
