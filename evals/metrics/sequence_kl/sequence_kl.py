"""Sequence KL: how far a policy has moved from its reference, on completions the policy sampled."""

import datasets
import evaluate

from align_proxy.metrics import aggregate

_DESCRIPTION = """Monte Carlo estimate of KL(policy || reference) per sequence: the mean, over completions
sampled from the policy, of log p_policy(completion | prompt) - log p_reference(completion | prompt)
(each a sum over the completion's tokens). Unbiased for samples drawn from the policy at temperature 1;
0 for the reference itself."""

_KWARGS = """
Args:
    policy_logprobs (list of float): summed log-probability of each sampled completion under the policy.
    reference_logprobs (list of float): the same completions' summed log-probability under the reference.
Returns:
    kl (float): mean log-ratio, in nats per sequence.
Example:
    >>> metric = evaluate.load("evals/metrics/sequence_kl")
    >>> metric.compute(policy_logprobs=[-1.0, -2.0], reference_logprobs=[-3.0, -2.0])
    {'kl': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class SequenceKl(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"policy_logprobs": datasets.Value("float64"),
                                        "reference_logprobs": datasets.Value("float64")}),
        )

    def _compute(self, policy_logprobs, reference_logprobs):
        ratios = [p - r for p, r in zip(policy_logprobs, reference_logprobs)]
        return {"kl": aggregate("kl_to_reference", ratios)}
