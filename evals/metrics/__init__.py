"""The metric table (`align_proxy.metrics`) in Hugging Face `evaluate`'s form, for code that totals per-item
scores through `evaluate`: one module, generated from the table (each row is a config), loaded by path offline."""

from __future__ import annotations

from functools import cache
from pathlib import Path

MODULE = Path(__file__).parent / "align_proxy_metric"


@cache
def load_metric(name: str):
    """`evaluate.load` of the table's row `name` (a name the table lacks, such as a reward's, is a mean, as
    `align_proxy.metrics.metric` reads it); `evaluate.load("accuracy")` would fetch a Hub script instead.

    >>> load_metric("task_accuracy").compute(scores=[1.0, 0.0, 1.0, 1.0])
    {'task_accuracy': 0.75}
    """
    import evaluate

    return evaluate.load(str(MODULE), config_name=name)
