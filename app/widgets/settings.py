"""The settings tab: which model, which swarm (private, a known swarm joined in one click, or pasted peers),
this node's name and port, and the OpenAI-compatible API offered on this PC."""
from __future__ import annotations

import dataclasses

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLineEdit,
    QPlainTextEdit,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.autostart import Autostart, AutostartError, describe
from app.bridges.model import DEMO_LABEL
from app.settings import JOIN, PRIVATE, AppSettings, parse_peers
from app.swarms import IMPORTED, SAVED, KnownSwarm
from app.widgets.common import button, wrapped_label
from app.widgets.limits_settings import LimitsBox
from app.widgets.pause_settings import PauseSettingsBox
from app.widgets.swarm_chooser import SwarmChooser


class SettingsTab(QWidget):
    """Edits a copy of the settings; ``apply_requested`` hands the edited copy over.

    ``join_requested`` hands over the edited settings joined to the chosen swarm (its peers and model);
    ``import_requested`` a swarm file's path or a join link to add to the known swarms.
    """

    apply_requested = Signal(object)  # AppSettings
    join_requested = Signal(object)  # AppSettings, joined to a known swarm
    import_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None, autostart: Autostart | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("page")
        self.settings = AppSettings()
        self.autostart = autostart or Autostart()
        self.demo_model = QRadioButton(DEMO_LABEL)
        self.custom_model = QRadioButton("A converted model (folder or Hugging Face repo)")
        self.model_group = QButtonGroup(self)
        self.model_group.addButton(self.demo_model)
        self.model_group.addButton(self.custom_model)
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("/path/to/converted-model or org/model-blossom")
        self.browse_model = button("Browse…")
        self.private_swarm = QRadioButton("A private swarm on this PC (nothing leaves this computer)")
        self.join_swarm = QRadioButton("Join a swarm")
        self.swarm_group = QButtonGroup(self)
        self.swarm_group.addButton(self.private_swarm)
        self.swarm_group.addButton(self.join_swarm)
        self.swarm_chooser = SwarmChooser()
        self.save_swarm = button("Save as…", tooltip="Keep these initial peers under a name in the list above")
        self.peers = QPlainTextEdit()
        self.peers.setPlaceholderText("Initial peers, one per line, e.g.\n/ip4/203.0.113.5/tcp/31337/p2p/QmXyz…")
        self.peers.setFixedHeight(90)
        self.public_name = QLineEdit()
        self.public_name.setPlaceholderText("Shown to others in the swarm (optional)")
        self.public_name.setMaxLength(64)
        self.port = QSpinBox()
        self.port.setRange(0, 65535)
        self.port.setSpecialValueText("random")
        self.port.setFixedWidth(120)
        self.port.setToolTip("The TCP port to listen on when joining a swarm; forward it on your router to be "
                             "reachable from the internet")
        self.start_at_launch = QCheckBox("Start serving when Blossom starts")
        self.start_on_login = QCheckBox("Start Blossom when I log in (in the tray)")
        self.start_on_login.setToolTip(describe(self.autostart))
        self.api_enabled = QCheckBox("Offer an OpenAI-compatible API on this PC")
        self.api_enabled.setToolTip("Programs on this PC that speak OpenAI's API (editors, chat apps, the openai "
                                    "library) can use the swarm's model at http://127.0.0.1:PORT/v1")
        self.api_port = QSpinBox()
        self.api_port.setRange(1, 65535)
        self.api_port.setFixedWidth(120)
        self.api_port.setToolTip("The API listens on 127.0.0.1 (this PC only) at this port")
        self.pause_box = PauseSettingsBox()
        self.limits_box = LimitsBox()
        self.apply_button = button("Apply", primary=True)
        self.revert_button = button("Revert")
        self.problem = wrapped_label("", "errorText")
        self.problem.hide()
        self.location = wrapped_label("", "muted")
        self._build_layout()
        self._connect_signals()

    def _build_layout(self) -> None:
        model_box = QGroupBox("Model")
        model_layout = QVBoxLayout(model_box)
        model_layout.addWidget(self.demo_model)
        model_layout.addWidget(self.custom_model)
        path_row = QHBoxLayout()
        path_row.addWidget(self.model_path, 1)
        path_row.addWidget(self.browse_model)
        model_layout.addLayout(path_row)

        swarm_box = QGroupBox("Swarm")
        swarm_layout = QVBoxLayout(swarm_box)
        swarm_layout.addWidget(self.private_swarm)
        swarm_layout.addWidget(self.join_swarm)
        swarm_layout.addWidget(self.swarm_chooser)
        peers_row = QHBoxLayout()
        peers_row.addWidget(self.peers, 1)
        peers_row.addWidget(self.save_swarm, 0, Qt.AlignmentFlag.AlignTop)
        swarm_layout.addLayout(peers_row)

        node_box = QGroupBox("This node")
        form = QFormLayout(node_box)
        form.addRow("Public name", self.public_name)
        form.addRow("Port", self.port)
        form.addRow("", self.start_at_launch)
        form.addRow("", self.start_on_login)

        api_box = QGroupBox("OpenAI-compatible API")
        api_form = QFormLayout(api_box)
        api_form.addRow("", self.api_enabled)
        api_form.addRow("API port", self.api_port)
        api_form.addRow("", wrapped_label("The API runs in its own program and answers only programs on this PC. "
                                          "The Dashboard shows its address.", "muted"))

        buttons = QHBoxLayout()
        buttons.addWidget(wrapped_label("A new model or swarm is used the next time serving starts (Join restarts "
                                        "serving at once).", "muted"), 1)
        buttons.addWidget(self.revert_button)
        buttons.addWidget(self.apply_button)
        content = QWidget()
        content.setObjectName("page")
        layout = QVBoxLayout(content)
        layout.setContentsMargins(16, 16, 16, 16)
        layout.setSpacing(12)
        layout.addWidget(model_box)
        layout.addWidget(swarm_box)
        layout.addWidget(node_box)
        layout.addWidget(api_box)
        layout.addWidget(self.pause_box)
        layout.addWidget(self.limits_box)
        layout.addWidget(self.problem)
        layout.addLayout(buttons)
        layout.addStretch(1)
        layout.addWidget(self.location)
        scroll = QScrollArea()  # small screens: the tab scrolls instead of making the window taller
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

    def _connect_signals(self) -> None:
        self.apply_button.clicked.connect(self._apply)
        self.revert_button.clicked.connect(lambda: self.show_settings(self.settings))
        self.browse_model.clicked.connect(self._choose_model)
        self.custom_model.toggled.connect(self._update_enabled)
        self.join_swarm.toggled.connect(self._update_enabled)
        self.api_enabled.toggled.connect(self._update_enabled)
        self.swarm_chooser.swarm_selected.connect(self._show_swarm_peers)
        self.swarm_chooser.join_requested.connect(self._join)
        self.swarm_chooser.delete_requested.connect(self._delete_swarm)
        self.swarm_chooser.import_requested.connect(self.import_requested)
        self.save_swarm.clicked.connect(self._save_swarm)
        self.start_on_login.toggled.connect(self._set_start_on_login)

    # ---- editing ------------------------------------------------------------------------------
    def _update_enabled(self, *_: object) -> None:
        custom = self.custom_model.isChecked()
        self.model_path.setEnabled(custom)
        self.browse_model.setEnabled(custom)
        join = self.join_swarm.isChecked()
        for widget in (self.save_swarm, self.peers, self.port):
            widget.setEnabled(join)
        for widget in (self.save_swarm, self.peers):  # pasting peers is for joining; the list above always works
            widget.setVisible(join)
        self.api_port.setEnabled(self.api_enabled.isChecked())

    def _choose_model(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Converted model folder", self.model_path.text())
        if path:
            self.model_path.setText(path)

    def _show_swarm_peers(self, swarm: KnownSwarm) -> None:
        self.peers.setPlainText("\n".join(swarm.initial_peers))

    def _join(self, swarm: KnownSwarm) -> None:
        """The form's settings joined to ``swarm``; handed over when they can be used."""
        settings = swarm.applied_to(self.edited())
        problems = settings.problems()
        if swarm.model is None and not settings.model and self.custom_model.isChecked():
            problems.insert(0, "Enter the converted model's folder or repo, or choose the bundled demo model")
        self.problem.setText(problems[0] if problems else "")
        self.problem.setVisible(bool(problems))
        if not problems:
            self.join_requested.emit(settings)

    def _save_swarm(self) -> None:
        name, ok = QInputDialog.getText(self, "Save swarm", "Name of this swarm:")
        if ok and name.strip():
            self.save_current_swarm(name.strip())

    def save_current_swarm(self, name: str) -> None:
        """Keep the pasted peers under ``name`` (stored at once)."""
        saved = dict(self.settings.saved_swarms)
        saved[name] = parse_peers(self.peers.toPlainText())
        self.settings = dataclasses.replace(self.settings, saved_swarms=saved)
        self._apply()
        self.swarm_chooser.select(name, SAVED)

    def _delete_swarm(self, swarm: KnownSwarm) -> None:
        if swarm.source == SAVED:
            saved = {key: value for key, value in self.settings.saved_swarms.items() if key != swarm.name}
            self.settings = dataclasses.replace(self.settings, saved_swarms=saved)
        elif swarm.source == IMPORTED:
            kept = [item for item in self.settings.imported_swarms
                    if not (isinstance(item, dict) and item.get("name") == swarm.name)]
            self.settings = dataclasses.replace(self.settings, imported_swarms=kept)
        else:
            return
        self._apply()
        self.swarm_chooser.show_message(f"Forgot '{swarm.name}'.")

    def _set_start_on_login(self, enabled: bool) -> None:
        """Applied at once (it is the desktop's setting, not Blossom's): write or remove the login entry."""
        try:
            self.autostart.set_enabled(enabled)
        except AutostartError as error:
            self.problem.setText(str(error))
            self.problem.show()
            self.show_start_on_login()

    def show_start_on_login(self) -> None:
        """Tick the box when Blossom starts on login now."""
        self.start_on_login.blockSignals(True)
        self.start_on_login.setChecked(self.autostart.is_enabled())
        self.start_on_login.blockSignals(False)

    def edited(self) -> AppSettings:
        """The settings as shown in the form."""
        return dataclasses.replace(
            self.limits_box.edited(self.pause_box.edited(self.settings)),
            model=self.model_path.text().strip() if self.custom_model.isChecked() else "",
            swarm_mode=JOIN if self.join_swarm.isChecked() else PRIVATE,
            initial_peers=parse_peers(self.peers.toPlainText()),
            public_name=self.public_name.text().strip(),
            port=self.port.value(),
            start_serving_at_launch=self.start_at_launch.isChecked(),
            api_enabled=self.api_enabled.isChecked(),
            api_port=self.api_port.value(),
        )

    def _apply(self) -> None:
        settings = self.edited()
        problems = settings.problems()
        if settings.model == "" and self.custom_model.isChecked():
            problems.insert(0, "Enter the converted model's folder or repo, or choose the bundled demo model")
        self.problem.setText(problems[0] if problems else "")
        self.problem.setVisible(bool(problems))
        if not problems:
            self.apply_requested.emit(settings)

    # ---- display ------------------------------------------------------------------------------
    def show_settings(self, settings: AppSettings) -> None:
        self.settings = dataclasses.replace(settings)
        (self.custom_model if settings.model else self.demo_model).setChecked(True)
        self.model_path.setText(settings.model)
        (self.join_swarm if not settings.private_swarm else self.private_swarm).setChecked(True)
        self.peers.setPlainText("\n".join(settings.initial_peers))
        self.public_name.setText(settings.public_name)
        self.port.setValue(settings.port)
        self.start_at_launch.setChecked(settings.start_serving_at_launch)
        self.api_enabled.setChecked(settings.api_enabled)
        self.api_port.setValue(settings.api_port)
        self.pause_box.show_settings(settings)
        self.limits_box.show_settings(settings)
        self.problem.hide()
        self.show_start_on_login()
        self._update_enabled()

    def show_swarms(self, swarms: list[KnownSwarm]) -> None:
        """The swarms to choose from (bundled, imported, saved)."""
        self.swarm_chooser.show_swarms(swarms)

    def show_swarm_message(self, text: str, error: bool = False) -> None:
        """The outcome of an import or a join (empty: none)."""
        self.swarm_chooser.show_message(text, error)

    def show_location(self, text: str) -> None:
        self.location.setText(f"Settings are stored in {text}")
