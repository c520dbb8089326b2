"""The Settings tab's list of known swarms (bundled, imported, saved) with Join, import and join-link buttons."""
from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFileDialog, QHBoxLayout, QInputDialog, QLabel, QListWidget, QListWidgetItem, QSizePolicy, QVBoxLayout, QWidget,
)

from app.swarms import BUNDLED, IMPORTED, LINK_PREFIX, SAVED, KnownSwarm
from app.widgets.common import button, wrapped_label

SOURCE_SUFFIX = {BUNDLED: "", IMPORTED: " · imported", SAVED: " · your saved peers"}
EMPTY_HINT = ("No public Blossom swarm is known yet. Import a swarm file or paste a join link you were given, "
              "or paste initial peers below.")


class SwarmChooser(QWidget):
    """Lists :class:`~app.swarms.KnownSwarm` entries; emits what the user asks for, decides nothing itself."""

    join_requested = Signal(object)  # KnownSwarm
    import_requested = Signal(str)  # a swarm file's path or a join link
    delete_requested = Signal(object)  # KnownSwarm (imported or saved)
    swarm_selected = Signal(object)  # KnownSwarm

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.swarms: list[KnownSwarm] = []
        self.list_row = QWidget()
        self.list = QListWidget()
        self.list.setMinimumHeight(60)
        self.list.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Ignored)  # as tall as its buttons
        self.details = wrapped_label("", "muted")
        self.details.setTextFormat(Qt.TextFormat.RichText)
        self.details.setOpenExternalLinks(True)
        self.empty_hint = wrapped_label(EMPTY_HINT, "muted")
        self.join_button = button("Join", primary=True,
                                  tooltip="Save this swarm's initial peers and model, then (re)start serving in it")
        self.copy_link_button = button("Copy join link", tooltip="A blossom://join link others can paste")
        self.delete_button = button("Delete", tooltip="Forget this imported or saved swarm")
        self.import_button = button("Import swarm file…",
                                    tooltip="A JSON file listing swarms (the format: resources/README.md)")
        self.link_button = button("Paste join link…", tooltip=f"A link starting with {LINK_PREFIX}?")
        self.message = wrapped_label("", "muted")
        self.message.hide()
        self._build_layout()
        self._connect_signals()
        self.show_swarms([])

    def _build_layout(self) -> None:
        title = QLabel("Known swarms")
        title.setObjectName("muted")
        title_row = QHBoxLayout()
        title_row.addWidget(title, 1)
        title_row.addWidget(self.import_button)
        title_row.addWidget(self.link_button)
        side = QVBoxLayout()
        for widget in (self.join_button, self.copy_link_button, self.delete_button):
            side.addWidget(widget)
        side.addStretch(1)
        top = QHBoxLayout(self.list_row)
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.list, 1)
        top.addLayout(side)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(title_row)
        layout.addWidget(self.list_row)
        layout.addWidget(self.details)
        layout.addWidget(self.empty_hint)
        layout.addWidget(self.message)

    def _connect_signals(self) -> None:
        self.list.currentRowChanged.connect(self._on_row)
        self.list.itemDoubleClicked.connect(lambda _item: self._join())
        self.join_button.clicked.connect(self._join)
        self.copy_link_button.clicked.connect(self._copy_link)
        self.delete_button.clicked.connect(self._delete)
        self.import_button.clicked.connect(self._choose_file)
        self.link_button.clicked.connect(self._ask_link)

    # ---- what the user does -------------------------------------------------------------------
    @property
    def current(self) -> KnownSwarm | None:
        row = self.list.currentRow()
        return self.swarms[row] if 0 <= row < len(self.swarms) else None

    def select(self, name: str, source: str | None = None) -> bool:
        """Select the swarm called ``name`` (of ``source``, if given); False when it is not listed."""
        for row, swarm in enumerate(self.swarms):
            if swarm.name == name and source in (None, swarm.source):
                self.list.setCurrentRow(row)
                return True
        return False

    def _on_row(self, _row: int) -> None:
        self._show_details()
        if self.current is not None:
            self.swarm_selected.emit(self.current)

    def _show_details(self) -> None:
        swarm = self.current
        self._update_buttons()
        self.details.setVisible(swarm is not None)
        if swarm is None:
            self.details.setText("")
            return
        peers = len(swarm.initial_peers)
        parts = [f"Model: {html.escape(swarm.model_label)}", f"{peers} initial peer{'s' if peers != 1 else ''}"]
        if swarm.website:
            parts.append(f'<a href="{html.escape(swarm.website, quote=True)}">{html.escape(swarm.website)}</a>')
        text = " · ".join(parts)
        if swarm.description:
            text = f"{html.escape(swarm.description)}<br>{text}"
        self.details.setText(text)

    def _update_buttons(self) -> None:
        swarm = self.current
        self.join_button.setEnabled(swarm is not None)
        self.copy_link_button.setEnabled(swarm is not None)
        self.delete_button.setEnabled(swarm is not None and swarm.source != BUNDLED)

    def _join(self) -> None:
        if self.current is not None:
            self.join_requested.emit(self.current)

    def _copy_link(self) -> None:
        if self.current is not None:
            QGuiApplication.clipboard().setText(self.current.link())
            self.show_message(f"Copied a join link for '{self.current.name}'.")

    def _delete(self) -> None:
        if self.current is not None and self.current.source != BUNDLED:
            self.delete_requested.emit(self.current)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import swarms", "", "Swarm lists (*.json);;All files (*)")
        if path:
            self.import_requested.emit(path)

    def _ask_link(self) -> None:
        link, ok = QInputDialog.getText(self, "Paste join link", f"Join link ({LINK_PREFIX}?…):")
        if ok and link.strip():
            self.import_requested.emit(link.strip())

    # ---- display ------------------------------------------------------------------------------
    def show_swarms(self, swarms: list[KnownSwarm]) -> None:
        """List ``swarms``, keeping the selection when the same swarm is still there."""
        current = self.current
        self.swarms = list(swarms)
        self.list.blockSignals(True)
        self.list.clear()
        for swarm in self.swarms:
            item = QListWidgetItem(f"{swarm.name} — {swarm.model_label}{SOURCE_SUFFIX.get(swarm.source, '')}")
            item.setToolTip("\n".join(swarm.initial_peers))
            self.list.addItem(item)
        self.list.setCurrentRow(-1)
        if current is not None:  # the same swarm stays selected, quietly (the peers field keeps what it shows)
            self.select(current.name, current.source)
        self.list.blockSignals(False)
        self.list_row.setVisible(bool(self.swarms))
        self.empty_hint.setVisible(not self.swarms)
        self._show_details()

    def show_message(self, text: str, error: bool = False) -> None:
        """A result of the last import, join or copy (empty: none)."""
        self.message.setObjectName("errorText" if error else "muted")
        self.message.style().unpolish(self.message)
        self.message.style().polish(self.message)
        self.message.setText(text)
        self.message.setVisible(bool(text))
