"""Every metric a run reports, declared once: its name, how a reader sees it, which way is better, and how
per-item scores add up to the total. Torch-free, so the study's analysis and report read it cheaply.

Evaluators (`evals/`) score each held-out item with the rules below and derive every total with
`aggregate`, so a rule such as "a tie counts half" exists in one place; the shipped `evaluate` modules
(`evals/metrics/`) call the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

MEAN = "mean"  # the mean of the per-item scores
PER_TOKEN = "per_token"  # summed over items, divided by their summed token counts


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # what a table calls it
    # True: higher is better; False: lower is better; None: no better direction (a KL of 0 is the untrained
    # policy, not the goal).
    higher_is_better: bool | None
    aggregation: str = MEAN

    def judge(self, gain: float) -> str:
        """How a change reads: "better", "worse", "same", or "change" for a metric with no direction.

        >>> METRICS["completion_nll"].judge(-0.1), METRICS["task_accuracy"].judge(-0.1)
        ('better', 'worse')
        >>> METRICS["kl_to_reference"].judge(2.0), METRICS["task_accuracy"].judge(0.0)
        ('change', 'same')
        """
        if gain == 0:
            return "same"
        if self.higher_is_better is None:
            return "change"
        return "better" if (gain > 0) == self.higher_is_better else "worse"


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("task_accuracy", "task accuracy (greedy, held-out)", True),
    Metric("completion_nll", "completion NLL (nats/token)", False, PER_TOKEN),
    Metric("preference_accuracy", "preference accuracy (held-out)", True),
    Metric("preference_margin", "preference margin", True),
    Metric("implicit_reward_accuracy", "implicit-reward accuracy (vs base)", True),
    Metric("implicit_reward_margin", "implicit-reward margin", True),
    # RL evaluation (evals/rl.py), on completions sampled as in training; per item: the mean over a prompt's samples.
    Metric("reward", "reward (weighted, as trained)", True),
    Metric("gold_reward", "gold reward (sampled, held-out)", True),
    Metric("learned_reward", "learned-RM reward (sampled)", True),
    Metric("kl_to_reference", "KL to reference (nats/seq)", None),
    Metric("response_length", "response length (tokens)", None),
)}


def metric(name: str) -> Metric:
    """The table's entry; a metric it does not list (a reward reported under its own name) reads as a
    mean where higher is better.

    >>> metric("arith_exact_match")
    Metric(name='arith_exact_match', label='arith_exact_match', higher_is_better=True, aggregation='mean')
    """
    return METRICS.get(name) or Metric(name, name, True)


# --- per-item rules ---------------------------------------------------------------------------------------

def exact_match(prediction: str, reference: str) -> float:
    """Task accuracy of one item: 1 when the parsed answer equals the gold one (an unparsed answer is "")."""
    return 1.0 if prediction == reference else 0.0


def preference_win(margin: float) -> float:
    """Preference accuracy of one pair from its margin (chosen minus rejected score): a tie counts half, so a
    model that cannot tell the two apart scores 0.5, not 0.

    >>> [preference_win(m) for m in (0.3, 0.0, -1.0)]
    [1.0, 0.5, 0.0]
    """
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def aggregate(name: str, items: list[float], tokens: list[int] | None = None, sums: list[float] | None = None) -> float:
    """A metric's total from its per-item scores (a per-token metric: from each item's summed score and token
    count, so the total weighs every token alike).

    >>> aggregate("task_accuracy", [1.0, 0.0, 1.0, 1.0])
    0.75
    >>> aggregate("completion_nll", [1.0, 0.5], tokens=[2, 4], sums=[2.0, 2.0])
    0.6666666666666666
    """
    if metric(name).aggregation == PER_TOKEN:
        if tokens is None or sums is None:
            raise ValueError(f"{name} is a per-token mean: pass each item's summed score and token count")
        return sum(sums) / max(1, sum(tokens))
    return sum(items) / len(items)
