"""Prompt tuning from the app: ``core.tuning.train_prompts`` in a background thread, reported step by step.

:class:`TuningBridge` emits ``step_reported`` after every optimizer step (for the progress bar
and the loss plot), then ``training_finished`` or ``training_failed``. The trained model is kept
so ``save()`` can write its prompts afterwards; the chat tab then loads that file.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.formatting import describe_error
from core.tuning import StepReport, TrainingConfig, TrainingResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuningRequest:
    """What the user asked to train; the model and the swarm are added by the app (see :meth:`to_config`)."""

    dataset_path: str
    tuning_mode: str = "ptune"
    pre_seq_len: int = 16
    steps: int = 100
    learning_rate: float = 1e-2
    batch_size: int = 4
    max_seq_len: int = 128

    def to_config(self, model_path: str, initial_peers: tuple[str, ...]) -> TrainingConfig:
        return TrainingConfig(model_path=model_path, initial_peers=tuple(initial_peers),
                              dataset_path=self.dataset_path, tuning_mode=self.tuning_mode,
                              pre_seq_len=self.pre_seq_len, steps=self.steps, learning_rate=self.learning_rate,
                              batch_size=self.batch_size, max_seq_len=self.max_seq_len)


class TuningBridge(QObject):
    """Runs one prompt-tuning job at a time."""

    status_changed = Signal(str)
    step_reported = Signal(object)  # StepReport
    training_finished = Signal(object)  # TrainingResult
    training_failed = Signal(str)
    prompts_saved = Signal(str)  # path
    save_failed = Signal(str)
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config: TrainingConfig | None = None
        self.result: TrainingResult | None = None
        self._model: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def has_prompts(self) -> bool:
        """A run ended with at least one step, so there are prompts to save."""
        return self._model is not None and self.result is not None and self.result.steps_done > 0

    def start(self, config: TrainingConfig) -> bool:
        """Begin training (False if a run is going on or the config is invalid, with ``training_failed``)."""
        if self.busy:
            return False
        problems = config.problems()
        if problems:
            self.training_failed.emit("; ".join(problems))
            return False
        self.config, self.result = config, None
        self._stop.clear()
        self._busy = True
        self._thread = threading.Thread(target=self._train, args=(config,), name="blossom-tuning", daemon=True)
        self.busy_changed.emit(True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop before the next step; the steps done so far are kept."""
        self._stop.set()

    def save(self, path: str) -> None:
        """Write the trained prompts to ``path`` in a background thread (``prompts_saved`` / ``save_failed``)."""
        if not self.has_prompts or self.busy:
            self.save_failed.emit("Train some prompts first")
            return
        threading.Thread(target=self._save, args=(path,), name="blossom-save-prompts", daemon=True).start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop training and leave the swarm."""
        self._stop.set()
        self._closed = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._lock.acquire(timeout=0.1):  # else the thread is still busy and unloads when it ends
            try:
                self._unload()
            finally:
                self._lock.release()

    # ---- background threads -------------------------------------------------------------------
    def _train(self, config: TrainingConfig) -> None:
        outcome: tuple[Signal, object] | None = None
        try:
            with self._lock:
                self._unload()
                self.status_changed.emit("Connecting to the swarm…")
                from core.models.auto import AutoDistributedModelForCausalLM
                from core.tuning import train_prompts

                self._model = AutoDistributedModelForCausalLM.from_pretrained(
                    config.model_path, initial_peers=config.initial_peers, tuning_mode=config.tuning_mode,
                    pre_seq_len=config.pre_seq_len)
                self.status_changed.emit("Training…")
                result = train_prompts(config, on_step=self._on_step, stop_event=self._stop, model=self._model)
            self.result = result
            done = "Stopped" if result.stopped else "Finished"
            self.status_changed.emit(f"{done} after {result.steps_done} of {config.steps} steps")
            outcome = (self.training_finished, result)
        except Exception as error:
            logger.warning("Prompt tuning failed: %s", describe_error(error), exc_info=True)
            with self._lock:
                self._unload()
            self.status_changed.emit("Failed")
            outcome = (self.training_failed, describe_error(error))
        finally:
            if self._closed:
                with self._lock:
                    self._unload()
            self._busy = False  # before the outcome: a new run may start as soon as this one is shown
            self.busy_changed.emit(False)
            if outcome is not None:
                outcome[0].emit(outcome[1])

    def _on_step(self, report: StepReport) -> None:
        self.step_reported.emit(report)

    def _save(self, path: str) -> None:
        try:
            from core.tuning import save_prompts

            with self._lock:
                saved = save_prompts(self._model, path)
        except Exception as error:
            self.save_failed.emit(describe_error(error))
        else:
            self.prompts_saved.emit(saved)

    def _unload(self) -> None:
        model, self._model = self._model, None
        if model is not None:
            try:
                model.shutdown()
            except Exception:
                logger.debug("The tuning model did not shut down cleanly", exc_info=True)
