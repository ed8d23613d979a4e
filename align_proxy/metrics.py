"""Every metric a run reports, declared once: its name, how a reader sees it, which way is better, and how
per-item scores add up to the total. Torch-free, so the study's analysis and report read it cheaply.

Evaluators (`evals/`) score each held-out item with the rules below and derive every total with
`aggregate`, so a rule such as "a tie counts half" exists in one place; the shipped `evaluate` modules
(`evals/metrics/`) call the same rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

UNIT = (0.0, 1.0)  # a share of items: an accuracy
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
    # (lowest, highest) a total can take, None when unbounded or unknown: a gain can then be at most their
    # difference, which the analysis holds a prediction at the target size to (an accuracy gains at most 1).
    bounds: tuple[float, float] | None = None
    # What it measures, and the recipe kinds (align_proxy.kinds.KINDS) and study cell kinds (CELL_KINDS) that record
    # it: for the reference page (docs/reference/metrics.md) and a reader, left out of the repr.
    meaning: str = field(default="", repr=False)
    recorded_by: tuple[str, ...] = field(default=(), repr=False)

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


_POLICIES = ("sft", "dpo", "grpo", "rloo", "proxy-tuning")  # every cell that scores a trained language model
_PREFERENCES = ("sft", "dpo", "reward", "grpo", "rloo", "proxy-tuning")
_JUDGED = ("sft", "dpo", "grpo", "rloo")

METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("task_accuracy", "task accuracy (greedy, held-out)", True, bounds=UNIT, recorded_by=_POLICIES,
           meaning="Share of a built-in task's held-out prompts whose greedily decoded answer equals the gold one (an "
                   "answer that does not parse counts wrong)."),
    Metric("completion_nll", "completion NLL (nats/token)", False, PER_TOKEN, bounds=(0.0, math.inf),
           recorded_by=_POLICIES, meaning="Negative log-likelihood of the held-out reference completions (a "
                                          "preference pair's chosen one), summed over items, divided by their tokens."),
    Metric("preference_accuracy", "preference accuracy (held-out)", True, bounds=UNIT, recorded_by=_PREFERENCES,
           meaning="Share of held-out preference pairs scored chosen above rejected: a policy by its log-likelihood, a "
                   "reward model by its score. A tie counts half, so chance is 0.5."),
    Metric("preference_margin", "preference margin", True, recorded_by=_PREFERENCES,
           meaning="Mean score of the chosen completion minus the rejected one, as preference accuracy scores them."),
    Metric("implicit_reward_accuracy", "implicit-reward accuracy (vs base)", True, bounds=UNIT, recorded_by=("dpo",),
           meaning="Preference accuracy by DPO's implicit reward beta * log(pi / pi_ref) against the base model (the "
                   "base itself: 0.5 by definition)."),
    Metric("implicit_reward_margin", "implicit-reward margin", True, recorded_by=("dpo",),
           meaning="Mean implicit-reward margin of chosen over rejected."),
    # RL evaluation (evals/rl.py), on completions sampled as in training; per item: the mean over a prompt's samples.
    Metric("reward", "reward (weighted, as trained)", True, recorded_by=("grpo", "rloo"),
           meaning="The run's rewards (`reward_funcs`, weighted by `reward_weights`) on completions sampled as in "
                   "training; per prompt the mean over its samples. Each reward is also recorded under its own name."),
    Metric("gold_reward", "gold reward (sampled, held-out)", True, recorded_by=("grpo", "rloo", "best-of-n"),
           meaning="The built-in task's exact match of sampled completions (RL), or of the reward model's pick among "
                   "n samples (best-of-n)."),
    Metric("learned_reward", "learned-RM reward (sampled)", True, recorded_by=("best-of-n",),
           meaning="The proxy reward model's score of its own pick among n samples."),
    Metric("kl_to_reference", "KL to reference (nats/seq)", None, recorded_by=("grpo", "rloo"),
           meaning="log pi(y|x) - log pi_ref(y|x) of sampled completions against the base model, in nats per "
                   "sequence: how far training moved the policy."),
    Metric("response_length", "response length (tokens)", None, recorded_by=_JUDGED,
           meaning="Sampled completions' length in tokens, EOS included (sft and dpo: with a judge, beside the win "
                   "rates)."),
    # Judged replies (evals/judge.py, --eval_judge); per item: the mean over a prompt's samples.
    Metric("judge_reward", "judge reward (sampled, held-out)", True, recorded_by=_JUDGED,
           meaning="The judge's (`--eval_judge`) mean score of a prompt's sampled replies."),
    Metric("win_rate_vs_reference", "win rate vs reference (judged)", True, bounds=UNIT, recorded_by=("sft", "dpo"),
           meaning="How often the judge prefers a sampled reply to the item's reference reply; ties count half."),
    Metric("win_rate_vs_base", "win rate vs base (judged)", True, bounds=UNIT, recorded_by=("sft", "dpo"),
           meaning="The trained model's sample i against the base model's sample i of the same prompt, judged; ties "
                   "count half (the base's: 0.5)."),
    # Per item: the logistic fit's pseudo-value (evals/length_control.py), whose mean over items is the rate.
    Metric("length_controlled_win_rate", "LC win rate vs reference (judged)", True, bounds=UNIT,
           recorded_by=("sft", "dpo"), meaning="The win rate against the reference that a reply of the reference's "
                                               "length would have (AlpacaEval 2's logistic fit)."),
)}


# --- lm-eval tasks (evals/lm_eval.py) -----------------------------------------------------------------------
# Their metrics are named `lm_eval:TASK/METRIC` (`lm_eval:TASK/METRIC,FILTER` for a filter other than lm-eval's
# "none"); METRIC is one of the per-item scores below. lm-eval's own: its per-item metrics that are plain numbers
# averaged over items. Ours, for multiple-choice tasks, from the log-likelihoods lm-eval logs: the continuous
# scores that rank models at small scale better than accuracy does (DataDecide).
LM_EVAL_PREFIX = "lm_eval:"
LM_EVAL_METRICS: dict[str, tuple[str, bool]] = {
    "acc": ("accuracy", True),
    "acc_norm": ("length-normalised accuracy", True),
    "acc_bytes": ("byte-normalised accuracy", True),
    "acc_mutual_info": ("mutual-information accuracy", True),
    "exact_match": ("exact match", True),
    "logprob": ("correct-answer log-prob (nats)", True),
    "logprob_per_byte": ("correct-answer log-prob per byte (nats)", True),
}


def lm_eval_metric_name(task: str, score: str, filter_name: str = "none") -> str:
    """The name a study and metrics.json know an lm-eval score by.

    >>> lm_eval_metric_name("arc_easy", "acc_norm"), lm_eval_metric_name("gsm8k", "exact_match", "strict-match")
    ('lm_eval:arc_easy/acc_norm', 'lm_eval:gsm8k/exact_match,strict-match')
    """
    return f"{LM_EVAL_PREFIX}{task}/{score}" + ("" if filter_name == "none" else f",{filter_name}")


def parse_lm_eval_metric(name: str) -> tuple[str, str, str] | None:
    """(task, score, filter) of an lm-eval metric name, None for another metric or a malformed name.

    >>> parse_lm_eval_metric("lm_eval:arc_easy/acc_norm"), parse_lm_eval_metric("task_accuracy")
    (('arc_easy', 'acc_norm', 'none'), None)
    """
    if not name.startswith(LM_EVAL_PREFIX) or "/" not in name:
        return None
    task, _, rest = name.removeprefix(LM_EVAL_PREFIX).rpartition("/")
    score, _, filter_name = rest.partition(",")
    return (task, score, filter_name or "none") if task and score else None


def lm_eval_metric_error(name: str, tasks: list[str]) -> str | None:
    """Why `name` is not a metric a study evaluating lm-eval `tasks` (their task names) records, with a
    did-you-mean; None when it is.

    >>> lm_eval_metric_error("lm_eval:arc_easy/acc_norm", ["arc_easy"]) is None
    True
    >>> lm_eval_metric_error("lm_eval:arc_eazy/acc", ["arc_easy", "piqa"])
    "lm-eval task 'arc_eazy' is not evaluated (did you mean 'arc_easy'?); evaluated: arc_easy, piqa (evaluation: lm_eval_tasks)"
    """
    parsed = parse_lm_eval_metric(name)
    if parsed is None:
        return f"{name!r} is not an lm-eval metric name: write {LM_EVAL_PREFIX}TASK/METRIC (e.g. lm_eval:arc_easy/acc_norm)"
    task, score, _ = parsed
    if task not in tasks:
        return (f"lm-eval task {task!r} is not evaluated{_did_you_mean(task, tasks)}; evaluated: "
                f"{', '.join(tasks) or 'none'} (evaluation: lm_eval_tasks)")
    if score not in LM_EVAL_METRICS:
        return (f"{score!r} is not an lm-eval score align-proxy records{_did_you_mean(score, LM_EVAL_METRICS)}; "
                f"choose one of {', '.join(LM_EVAL_METRICS)}")
    return None


def _did_you_mean(name: str, options) -> str:
    import difflib

    near = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def metric(name: str) -> Metric:
    """The table's entry, an lm-eval score's (named as `lm_eval_metric_name` names it), or for a metric neither
    knows (a reward reported under its own name) a mean where higher is better, bounded as a share of items when
    its name says it is an accuracy.

    >>> metric("arith_exact_match")
    Metric(name='arith_exact_match', label='arith_exact_match', higher_is_better=True, aggregation='mean', bounds=None)
    >>> metric("lm_eval:arc_easy/acc_norm").label
    'arc_easy/acc_norm (lm-eval)'
    """
    if name in METRICS:
        return METRICS[name]
    parsed = parse_lm_eval_metric(name)
    if parsed is not None and parsed[1] in LM_EVAL_METRICS:
        # Labelled by lm-eval's own names (acc_norm), which its users know and which fit a table's column.
        # No bounds: lm-eval's scores include unbounded log-probs, and its accuracies (acc, not *_accuracy) have
        # never held a prediction to a range; giving them one would change studies' existing predictions.
        return Metric(name, f"{name.removeprefix(LM_EVAL_PREFIX)} (lm-eval)", LM_EVAL_METRICS[parsed[1]][1])
    # A metric of our own naming scheme that the table lacks: an accuracy by its name, as the analysis has always
    # read such a name.
    return Metric(name, name, True, bounds=UNIT if name.endswith("_accuracy") else None)


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
