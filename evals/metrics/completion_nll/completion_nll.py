"""Completion NLL: mean negative log-likelihood per completion token, and its perplexity."""

import math

import datasets
import evaluate

from align_proxy.metrics import aggregate

_DESCRIPTION = """Negative log-likelihood of gold completions given their prompts, averaged over
completion tokens (prompt tokens are context, not scored). Lower is better."""

_KWARGS = """
Args:
    sum_logprobs (list of float): summed log-probability of each completion's tokens.
    num_tokens (list of int): number of completion tokens behind each sum.
Returns:
    nll (float): total negative log-likelihood divided by total completion tokens (nats/token).
    perplexity (float): exp(nll); inf when that overflows (a diverged model).
Example:
    >>> metric = evaluate.load("evals/metrics/completion_nll")
    >>> metric.compute(sum_logprobs=[-2.0, -4.0], num_tokens=[2, 4])
    {'nll': 1.0, 'perplexity': 2.718281828459045}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class CompletionNll(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"sum_logprobs": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}),
        )

    def _compute(self, sum_logprobs, num_tokens):
        nll = aggregate("completion_nll", [], tokens=num_tokens, sums=[-s for s in sum_logprobs])
        return {"nll": nll, "perplexity": math.exp(nll) if nll < 700 else math.inf}  # exp(710) overflows a float
