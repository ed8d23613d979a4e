"""align-proxy's metric table as an `evaluate` metric: `config_name` picks the row (task_accuracy,
completion_nll, ...), and the total follows the row's aggregation rule (`align_proxy.metrics.aggregate`)."""

import datasets
import evaluate

from align_proxy.metrics import PER_TOKEN, aggregate, metric

_DESCRIPTION = """A metric of align-proxy's table (align_proxy/metrics.py) from per-item scores, totalled by the
table's own rule: the mean over items, or for a per-token metric the summed score over the summed token count."""

_KWARGS = """
Args (a mean metric):
    scores (list of float): each held-out item's score (e.g. 1.0 / 0.0 for a right / wrong answer).
Args (a per-token metric, such as completion_nll):
    sums (list of float): each item's score summed over its tokens.
    num_tokens (list of int): each item's token count.
Returns:
    {config_name: total}
Example:
    >>> metric = evaluate.load("evals/metrics/align_proxy_metric", config_name="completion_nll")
    >>> metric.compute(sums=[2.0, 2.0], num_tokens=[2, 4])
    {'completion_nll': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class AlignProxyMetric(evaluate.Metric):
    def _info(self):
        per_token = metric(self.config_name).aggregation == PER_TOKEN
        features = ({"sums": datasets.Value("float64"), "num_tokens": datasets.Value("int64")} if per_token
                    else {"scores": datasets.Value("float64")})
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features(features))

    def _compute(self, scores=None, sums=None, num_tokens=None):
        total = aggregate(self.config_name, scores or [], tokens=num_tokens, sums=sums)
        return {self.config_name: total}
