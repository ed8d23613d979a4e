"""Task accuracy: the share of generations whose parsed answer equals the gold answer."""

import datasets
import evaluate

from align_proxy.metrics import aggregate, exact_match

_DESCRIPTION = """Exact match between answers parsed from model generations and gold answers.
Predictions that could not be parsed should be passed as empty strings; they count as wrong."""

_KWARGS = """
Args:
    predictions (list of str): answers parsed from the model's greedy generations.
    references (list of str): gold answers.
Returns:
    accuracy (float): share of exact matches, in [0, 1].
    correct (int): number of exact matches.
Example:
    >>> metric = evaluate.load("evals/metrics/task_accuracy")
    >>> metric.compute(predictions=["47", "", "3"], references=["47", "12", "4"])
    {'accuracy': 0.3333333333333333, 'correct': 1}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TaskAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        items = [exact_match(p, r) for p, r in zip(predictions, references)]
        return {"accuracy": aggregate("task_accuracy", items), "correct": int(sum(items))}
