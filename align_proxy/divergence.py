"""Divergence is a result: a training loss that explodes or stops being a number ends the run early, and the run
records where (`metrics.json` `diverged: {step, loss}`) instead of training on and failing in evaluation.

Checked at each logged loss, so at the trainer's `logging_steps` cadence (`--logging_steps 1` checks every step).
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from align_proxy.run_metrics import Divergence


class DivergenceWatch(TrainerCallback):
    """Stops training at the first logged loss (or gradient norm) that is not finite, or a loss whose size exceeds
    `threshold` (`--divergence_threshold`; inf turns the size check off). Every rank logs the same gathered
    loss, so every rank stops at the same step."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.found: Divergence | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.found is not None or not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        grad_norm = float(logs.get("grad_norm", 0.0) or 0.0)
        if math.isfinite(loss) and math.isfinite(grad_norm) and abs(loss) <= self.threshold:
            return
        self.found = Divergence(state.global_step, loss)
        control.should_training_stop = True
