"""Plain data exchanged with the prompt trainer: :class:`TrainingConfig`, :class:`StepReport`, :class:`TrainingResult`.

This module imports nothing heavy (no torch), so a GUI can build configs and read reports cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass, field

TUNING_MODES = ("ptune", "deep_ptune")


@dataclass(frozen=True)
class TrainingConfig:
    """One prompt-tuning run.

    Attributes:
        model_path: a converted model folder or converted Hub repo (its tokenizer is used too).
        initial_peers: multiaddrs of the swarm serving the model's blocks.
        dataset_path: a ``.txt`` file (one example per line, or paragraphs separated by blank
            lines) or a ``.jsonl`` file (objects with ``"text"``, or ``"prompt"`` + ``"completion"``).
        tuning_mode: ``"ptune"`` (prompts before the input) or ``"deep_ptune"`` (also one per block).
        pre_seq_len: number of trainable prompt positions.
        steps: optimizer steps to run.
        learning_rate: AdamW learning rate.
        batch_size: examples per step.
        max_seq_len: examples are cut to this many tokens.
        save_path: where to write the trained prompts (``.safetensors``), or ``None``.
        seed: seeds prompt initialisation and the order of examples.
    """

    model_path: str
    initial_peers: tuple[str, ...]
    dataset_path: str
    tuning_mode: str = "ptune"
    pre_seq_len: int = 16
    steps: int = 100
    learning_rate: float = 1e-2
    batch_size: int = 4
    max_seq_len: int = 128
    save_path: str | None = None
    seed: int = 0

    def problems(self) -> list[str]:
        """Every reason this config cannot be used (empty when it is valid)."""
        found = []
        if self.tuning_mode not in TUNING_MODES:
            found.append(f"tuning_mode must be one of {TUNING_MODES}, got '{self.tuning_mode}'")
        for name in ("pre_seq_len", "steps", "batch_size", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                found.append(f"{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            found.append(f"learning_rate must be positive, got {self.learning_rate!r}")
        if not self.model_path:
            found.append("model_path is empty: pass a converted model folder or repo")
        if not self.dataset_path:
            found.append("dataset_path is empty: pass a .txt or .jsonl file")
        return found


@dataclass
class StepReport:
    """Sent to ``on_step`` after every optimizer step (``step`` counts from 1)."""

    step: int
    total_steps: int
    loss: float


@dataclass
class TrainingResult:
    """What a run did: the steps completed, their losses, where the prompts were saved, whether it was stopped."""

    steps_done: int
    losses: list[float] = field(default_factory=list)
    saved_path: str | None = None
    stopped: bool = False
