"""The dashboard's two lower-left cards: this computer's hardware, and what to serve (recommended or chosen)."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QGridLayout, QHBoxLayout, QLabel, QSpinBox, QWidget

from app.settings import AppSettings, ServingChoice
from app.widgets.common import Card, wrapped_label
from core.config import QUANT_TYPES, TORCH_DTYPES
from core.hardware import HardwareReport, ModelFootprint, Recommendation, fits, format_memory


class HardwareCard(Card):
    """GPUs (name, VRAM, driver, compute capability), CPU and RAM; "serving on CPU" when there is no GPU."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("This computer", parent)
        self.gpu_label = wrapped_label("Detecting GPUs…")
        self.cpu_label = wrapped_label("")
        self.ram_label = wrapped_label("")
        grid = QGridLayout()
        grid.setHorizontalSpacing(12)
        grid.setVerticalSpacing(6)
        for row, (caption, label) in enumerate((("GPU", self.gpu_label), ("CPU", self.cpu_label),
                                                ("Memory", self.ram_label))):
            title = QLabel(caption)
            title.setObjectName("muted")
            grid.addWidget(title, row, 0, Qt.AlignmentFlag.AlignTop)
            grid.addWidget(label, row, 1)
        grid.setColumnStretch(1, 1)
        self.body.addLayout(grid)
        self.body.addStretch(1)

    def show_report(self, report: HardwareReport) -> None:
        if report.gpus:
            lines = []
            for gpu in report.gpus:
                major, minor = gpu.compute_capability
                lines.append(f"<b>{gpu.name}</b><br>{format_memory(gpu.total_memory)} VRAM, "
                             f"{format_memory(gpu.free_memory)} free · driver {gpu.driver_version} · "
                             f"compute capability {major}.{minor}")
            self.gpu_label.setText("<br>".join(lines))
        else:
            self.gpu_label.setText(f"{report.gpu_note or 'No NVIDIA GPU found'}: <b>serving on CPU</b>")
        host = report.host
        self.cpu_label.setText(f"{host.cpu_name}<br>{host.physical_cores} cores, {host.logical_cores} threads")
        self.ram_label.setText(f"{format_memory(host.total_memory)} RAM, {format_memory(host.available_memory)} available")


class RecommendationCard(Card):
    """The recommended blocks and precision with their one-line reason, and the user's override."""

    more_blocks_toggled = Signal(bool)
    override_changed = Signal(object)  # ServingChoice

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("What to serve", parent)
        self.footprint: ModelFootprint | None = None
        self.recommendation: Recommendation | None = None
        self.private_swarm = True
        self.headline = QLabel("Waiting for the model and the hardware…")
        self.headline.setObjectName("statValue")
        self.explanation = wrapped_label("", "muted")
        self.more_blocks = QCheckBox("Fit more blocks on a small GPU (int8 / nf4 weights)")
        self.override = QCheckBox("Choose myself")
        self.blocks = QSpinBox()
        self.blocks.setRange(0, 10000)
        self.blocks.setSpecialValueText("auto")
        self.blocks.setToolTip("How many blocks to serve (auto: as recommended)")
        self.dtype = QComboBox()
        self.dtype.addItems(TORCH_DTYPES)
        self.quant = QComboBox()
        self.quant.addItems(QUANT_TYPES)
        self.device = QComboBox()
        self.device.addItem("auto", "")
        self.device.addItem("cpu", "cpu")
        row = QHBoxLayout()
        for caption, widget in (("Blocks", self.blocks), ("dtype", self.dtype), ("Quantization", self.quant),
                                ("Device", self.device)):
            label = QLabel(caption)
            label.setObjectName("muted")
            row.addWidget(label)
            row.addWidget(widget)
        row.addStretch(1)
        self.override_row = QWidget()
        self.override_row.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        self.warning = wrapped_label("", "warningText")
        self.warning.hide()
        self.body.addWidget(self.headline)
        self.body.addWidget(self.explanation)
        self.body.addWidget(self.more_blocks)
        self.body.addWidget(self.override)
        self.body.addWidget(self.override_row)
        self.body.addWidget(self.warning)
        self.body.addStretch(1)
        self._connect_signals()

    def _connect_signals(self) -> None:
        self.more_blocks.toggled.connect(self.more_blocks_toggled)
        self.override.toggled.connect(self._emit_override)
        self.blocks.valueChanged.connect(self._emit_override)
        self.dtype.currentTextChanged.connect(self._emit_override)
        self.quant.currentTextChanged.connect(self._emit_override)
        self.device.currentIndexChanged.connect(self._emit_override)

    def _emit_override(self, *_: object) -> None:
        self.override_row.setVisible(self.override.isChecked())
        self.override_changed.emit(self.choice())
        self._update_warning()

    def choice(self) -> ServingChoice:
        """What the controls show now."""
        return ServingChoice(override=self.override.isChecked(), num_blocks=self.blocks.value(),
                             torch_dtype=self.dtype.currentText(), quant_type=self.quant.currentText(),
                             device=self.device.currentData() or "")

    def show_hardware(self, report: HardwareReport) -> None:
        """Offer each GPU as a device; GPU advice only where there is a GPU."""
        self.more_blocks.setVisible(bool(report.gpus))
        current = self.device.currentData()
        self.device.blockSignals(True)
        while self.device.count() > 2:
            self.device.removeItem(2)
        for gpu in report.gpus:
            self.device.addItem(f"{gpu.device} ({gpu.name})", gpu.device)
        index = self.device.findData(current)
        self.device.setCurrentIndex(max(index, 0))
        self.device.blockSignals(False)

    def show_settings(self, settings: AppSettings) -> None:
        for widget in (self.more_blocks, self.override, self.blocks, self.dtype, self.quant, self.device):
            widget.blockSignals(True)
        self.more_blocks.setChecked(settings.more_blocks)
        self.override.setChecked(settings.override)
        self.blocks.setValue(settings.num_blocks)
        self.dtype.setCurrentText(settings.torch_dtype)
        self.quant.setCurrentText(settings.quant_type)
        self.device.setCurrentIndex(max(self.device.findData(settings.device), 0))
        for widget in (self.more_blocks, self.override, self.blocks, self.dtype, self.quant, self.device):
            widget.blockSignals(False)
        self.override_row.setVisible(settings.override)
        self.private_swarm = settings.private_swarm
        self._update_warning()

    def show_recommendation(self, recommendation: Recommendation | None, footprint: ModelFootprint | None) -> None:
        self.recommendation, self.footprint = recommendation, footprint
        if recommendation is None:
            self.headline.setText("Waiting for the model and the hardware…")
            self.explanation.setText("")
        else:
            where = "CPU" if recommendation.device == "cpu" else recommendation.device
            quant = f" · {recommendation.quant_type}" if recommendation.quant_type != "none" else ""
            self.headline.setText(f"{recommendation.num_blocks} of {recommendation.total_blocks} blocks · "
                                  f"{recommendation.torch_dtype}{quant} · {where}")
            self.explanation.setText(recommendation.explanation)
            self.blocks.setMaximum(recommendation.total_blocks)
        self._update_warning()

    def _update_warning(self) -> None:
        rec, footprint = self.recommendation, self.footprint
        text = ""
        if rec is not None and footprint is not None:
            if self.override.isChecked():
                blocks = self.blocks.value() or rec.num_blocks
                dtype = self.dtype.currentText()
                dtype = rec.torch_dtype if dtype == "auto" else dtype
                if not fits(footprint, rec.budget_bytes, blocks, dtype, self.quant.currentText(), rec.cache_tokens):
                    text = (f"{blocks} blocks in {dtype} may not fit the {format_memory(rec.budget_bytes)} that are "
                            f"free after headroom; your other programs may run short of memory")
            elif self.private_swarm and rec.num_blocks < rec.total_blocks:
                text = (f"A private swarm serves all {rec.total_blocks} blocks, more than the {rec.num_blocks} "
                        f"recommended; this PC's memory will be tight")
        self.warning.setText(text)
        self.warning.setVisible(bool(text))
