"""The headless prompt-tuning loop used by scripts, ``core.cli.train_prompts`` and the desktop app."""
from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING, Callable

import torch
from transformers import AutoTokenizer

from core.errors import InvalidRequestError
from core.tuning.config import StepReport, TrainingConfig, TrainingResult
from core.tuning.dataset import encode_examples, iterate_batches, read_examples
from core.tuning.prompts_io import save_prompts

if TYPE_CHECKING:
    from core.models.base import DistributedModelForCausalLM

logger = logging.getLogger(__name__)


def _check_model(model: "DistributedModelForCausalLM", config: TrainingConfig) -> None:
    if model.tuning_mode != config.tuning_mode or model.pre_seq_len != config.pre_seq_len:
        raise InvalidRequestError(
            f"the model was created with tuning_mode={model.tuning_mode!r}, pre_seq_len={model.pre_seq_len}, but the "
            f"config asks for tuning_mode={config.tuning_mode!r}, pre_seq_len={config.pre_seq_len}"
        )


def _create_model(config: TrainingConfig) -> "DistributedModelForCausalLM":
    from core.models.auto import AutoDistributedModelForCausalLM

    return AutoDistributedModelForCausalLM.from_pretrained(
        config.model_path,
        initial_peers=config.initial_peers,
        tuning_mode=config.tuning_mode,
        pre_seq_len=config.pre_seq_len,
    )


def train_prompts(
    config: TrainingConfig,
    on_step: Callable[[StepReport], None] | None = None,
    stop_event: threading.Event | None = None,
    model: "DistributedModelForCausalLM | None" = None,
) -> TrainingResult:
    """Train prompts for ``config.steps`` steps of AdamW over the model's trainable parameters.

    Uses ``model`` if given (it must have the config's tuning mode and length), else creates one
    joined to ``config.initial_peers`` and shuts it down at the end. ``on_step`` gets a
    :class:`StepReport` after every step. When ``stop_event`` is set the loop stops before the
    next step. The prompts are saved to ``config.save_path`` (if set) however the loop ended,
    except when a step raised.
    """
    problems = config.problems()
    if problems:
        raise InvalidRequestError("invalid training config: " + "; ".join(problems))
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    encoded = encode_examples(read_examples(config.dataset_path), tokenizer, config.max_seq_len)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    logger.info("Training %s prompts (length %d) on %d examples for %d steps", config.tuning_mode,
                config.pre_seq_len, len(encoded), config.steps)

    torch.manual_seed(config.seed)
    owns_model = model is None
    model = _create_model(config) if model is None else model
    try:
        _check_model(model, config)
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
        batches = iterate_batches(encoded, config.batch_size, pad_token_id, config.seed)
        result = TrainingResult(steps_done=0)
        for step in range(1, config.steps + 1):
            if stop_event is not None and stop_event.is_set():
                result.stopped = True
                logger.info("Stopped after %d of %d steps", result.steps_done, config.steps)
                break
            input_ids, labels = next(batches)
            loss = model(input_ids, labels=labels).loss
            if not math.isfinite(loss.item()):
                raise InvalidRequestError(f"the loss became {loss.item()} at step {step}; lower the learning rate")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            result.steps_done = step
            result.losses.append(loss.item())
            if on_step is not None:
                on_step(StepReport(step=step, total_steps=config.steps, loss=loss.item()))
        if config.save_path:
            result.saved_path = save_prompts(model, config.save_path)
        return result
    finally:
        if owns_model:
            model.shutdown()
