"""Reward-model overoptimization, measured (Gao et al. 2022): the samples and scores that gold and proxy reward
against d = sqrt(KL) are drawn from, for best-of-n and for RL, per proxy reward model.

This module samples and scores (what a best-of-n cell and the `align-proxy overoptimization` command measure);
the curves and their fits are the analysis's (`align_proxy.studies.overoptimization_run`), their plot the
report's.

Best-of-n: a fixed policy samples `N` completions per held-out prompt once; every proxy reward model and the gold
reward score the same pool, so curves of reward models of different sizes differ only by the reward model. For
each n <= N the expected gold and proxy reward of best-of-n follow exactly from the pool
(`align_proxy.studies.overoptimization.best_of_n`), with d = sqrt(KL_bon) from the formula. RL: a GRPO or RLOO
run with `--curve_every` records proxy and gold reward and KL per prompt as it trains
(`align_proxy.evals.rl.RewardCurve`); its d is the measured sqrt(KL). Each curve is fitted with its form
(R_bon = d (alpha - beta d), R_RL = d (alpha - beta log d)) on the gold reward's gain, with intervals from
resampling the prompts. Prompts are the built-in task's own evaluation prompts, rendered and rewarded as GRPO and
RLOO do in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import AutoModelForCausalLM

from align_proxy.evals.rl import Sampling, prompt_token_ids, sample_completions, sequence_logprobs
from align_proxy.evals.suite import _load


@dataclass(frozen=True)
class Pool:
    """`N` sampled completions for each prompt (prompts x N), the prompts' other columns (the rewards' keyword
    arguments, e.g. the task's `answer`) and the policy's log-probability of each sample (prompts x N; None when it
    sampled at a temperature other than 1, whose distribution the model's log-probs are not)."""

    prompts: list
    completions: list[list[str]]
    columns: dict[str, list]
    logprobs: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.completions[0]) if self.completions else 0

    def score(self, reward) -> np.ndarray:
        """(prompts x N) scores of a reward with TRL's signature (a function or a reward model)."""
        n = self.size
        repeated = [p for p in self.prompts for _ in range(n)]
        flat = [c for row in self.completions for c in row]
        columns = {name: [v for v in values for _ in range(n)] for name, values in self.columns.items()}
        scores = np.asarray(reward(repeated, flat, **columns), dtype=float)
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"{getattr(reward, '__name__', reward)} returned a non-finite score on the pool")
        return scores.reshape(len(self.prompts), n)


def sample_pool(policy_path: str, tokenizer, prompts, n: int, sampling: Sampling) -> Pool:
    """Sample `n` completions per prompt from the policy at `policy_path` (one call, so one seed for all)."""
    originals = list(prompts["prompt"])
    tokenized = prompt_token_ids(tokenizer, originals, sampling.chat_template_kwargs)
    model = _load(AutoModelForCausalLM, policy_path)
    sampling = Sampling(**{**sampling.__dict__, "num_samples": n})
    prompt_ids, completion_ids = sample_completions(model, tokenizer, tokenized, sampling, [tokenizer.eos_token_id])
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    rows = [texts[i:i + n] for i in range(0, len(texts), n)]
    columns = {c: list(prompts[c]) for c in prompts.column_names if c not in ("prompt", "completion")}
    plain = sampling.temperature == 1.0 and sampling.top_k in (0, None) and sampling.top_p == 1.0 and not sampling.min_p
    logprobs = (np.array(sequence_logprobs(model, prompt_ids, completion_ids, tokenizer.pad_token_id)).reshape(-1, n)
                if plain else None)
    return Pool(originals, rows, columns, logprobs)


def learned(path: str):
    """A proxy reward model directory as a reward function (scored on the CPU or the run's device)."""
    from align_proxy.rewards.learned import LearnedReward

    return LearnedReward(path)


DEFAULT_GOLD = "arith_exact_match"  # the built-in tasks' own reward: the answer, exactly
