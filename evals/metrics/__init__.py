"""Metrics as `evaluate` modules shipped with the project, loaded by path (never from the Hub)."""

from functools import cache
from pathlib import Path

METRICS_DIR = Path(__file__).parent
NAMES = ("task_accuracy", "preference_accuracy", "completion_nll", "sequence_kl")


@cache
def load_metric(name: str):
    """`evaluate.load` on the shipped module; `evaluate.load("accuracy")` would fetch from the Hub."""
    if name not in NAMES:
        raise KeyError(f"unknown metric {name!r}: shipped metrics are {', '.join(NAMES)}")
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))
