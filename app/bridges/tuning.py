"""Prompt tuning from the app: ``core.tuning.train_prompts`` in a background thread, reported step by step.

:class:`TuningBridge` (a :class:`~app.bridges.job.JobBridge`) takes a
:class:`core.tuning.TrainingConfig` and emits ``step_reported`` after every optimizer step (for the
progress bar and the loss plot), then ``training_finished`` (a :class:`core.tuning.TrainingResult`)
or ``training_failed``. The trained model is kept so ``save()`` can write its prompts afterwards;
the chat tab then loads that file.
"""
from __future__ import annotations

import functools

from PySide6.QtCore import QObject, Signal, SignalInstance

from app.bridges.job import JobBridge
from app.bridges.tasks import run_in_background
from core.tuning import TrainingConfig, TrainingResult


class TuningBridge(JobBridge):
    """Runs one prompt-tuning job at a time."""

    step_reported = Signal(object)  # StepReport
    prompts_saved = Signal(str)  # path
    save_failed = Signal(str)

    job_name = "Prompt tuning"
    failure_status = "Failed"
    shutdown_timeout = 30.0

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config: TrainingConfig | None = None
        self.result: TrainingResult | None = None

    @property
    def training_finished(self) -> SignalInstance:
        """:attr:`finished`, with the :class:`~core.tuning.TrainingResult`."""
        return self.finished

    @property
    def training_failed(self) -> SignalInstance:
        """:attr:`failed`, with the reason."""
        return self.failed

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
        return self.start_job(functools.partial(self._train, config), "blossom-tuning")

    def save(self, path: str) -> None:
        """Write the trained prompts to ``path`` in a background thread (``prompts_saved`` / ``save_failed``)."""
        if not self.has_prompts or self.busy:
            self.save_failed.emit("Train some prompts first")
            return
        run_in_background(functools.partial(self._save, path), self.prompts_saved.emit, self.save_failed.emit,
                          "blossom-save-prompts")

    # ---- background threads -------------------------------------------------------------------
    def _train(self, config: TrainingConfig) -> TrainingResult:
        with self._lock:
            self._unload()
            self.status_changed.emit("Connecting to the swarm…")
            from core.models.auto import AutoDistributedModelForCausalLM
            from core.tuning import train_prompts

            self._model = AutoDistributedModelForCausalLM.from_pretrained(
                config.model_path, initial_peers=config.initial_peers, tuning_mode=config.tuning_mode,
                pre_seq_len=config.pre_seq_len)
            self.status_changed.emit("Training…")
            result = train_prompts(config, on_step=self.step_reported.emit, stop_event=self.stop_event,
                                   model=self._model)
        self.result = result
        done = "Stopped" if result.stopped else "Finished"
        self.status_changed.emit(f"{done} after {result.steps_done} of {config.steps} steps")
        return result

    def _save(self, path: str) -> str:
        from core.tuning import save_prompts

        with self._lock:
            return save_prompts(self._model, path)
