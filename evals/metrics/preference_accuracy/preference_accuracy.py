"""Preference accuracy: how often a score ranks the chosen response above the rejected one."""

import datasets
import evaluate

from align_proxy.metrics import aggregate, preference_win

_DESCRIPTION = """Share of preference pairs whose chosen response scores higher than the rejected one.
The score is whatever ranks responses: a reward model's output, a DPO policy's implicit reward
(beta * log-ratio to the reference), or a language model's log-likelihood. Ties count as half,
so a model that cannot tell the two apart scores 0.5, not 0."""

_KWARGS = """
Args:
    chosen_scores (list of float): score of each chosen response.
    rejected_scores (list of float): score of the paired rejected response.
Returns:
    accuracy (float): share of pairs ranked correctly, ties counted as half.
    mean_margin (float): mean of chosen minus rejected score.
Example:
    >>> metric = evaluate.load("evals/metrics/preference_accuracy")
    >>> metric.compute(chosen_scores=[1.0, 0.0, 2.0], rejected_scores=[0.0, 0.0, 3.0])
    {'accuracy': 0.5, 'mean_margin': 0.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class PreferenceAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"chosen_scores": datasets.Value("float64"), "rejected_scores": datasets.Value("float64")}
            ),
        )

    def _compute(self, chosen_scores, rejected_scores):
        margins = [c - r for c, r in zip(chosen_scores, rejected_scores)]
        return {"accuracy": aggregate("preference_accuracy", [preference_win(m) for m in margins]),
                "mean_margin": aggregate("preference_margin", margins)}
