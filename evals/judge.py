"""Judged evaluation (`--eval_judge`): what a policy writes, scored by a judge, before and after training.

Base and trained model each sample `--eval_num_samples` replies per held-out prompt (the same prompts, the same
seed), and the judge (any `--reward_funcs` spec: a registered reward, `module:function`, a reward-model directory;
several summed with `--eval_judge_weights`) scores them and the item's reference reply (its completion, or a
preference pair's chosen). Per prompt, as in AlpacaFarm and AlpacaEval, and each a row of the metric table:

- `judge_reward`: the judge's mean score of the prompt's samples;
- `win_rate_vs_reference`: how often the judge prefers a sample to the reference; ties count half;
- `win_rate_vs_base`: the trained model's sample i against the base model's sample i of the same prompt (the base
  samples are drawn again, with the seed the base evaluation drew them with); the base's is 0.5 by definition;
- `response_length`: the samples' mean length in tokens, beside the win rates, since DPO lengthens replies;
- `length_controlled_win_rate`: the win rate against the reference that a reply of the reference's length would have
  (AlpacaEval 2's, `align_proxy.evals.length_control`), per prompt as the fit's pseudo-values, whose mean is the rate.

Each evaluation also prints the length-controlled win rate with its own interval over prompts. That interval and the
judge's identity (`align_proxy.rewards.reward_identity`: spec, file and content hash) are the result's details, kept
in metrics.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
from datasets import Dataset
from transformers import AutoModelForCausalLM

from align_proxy.evals.length_control import length_controlled_win_rate, per_prompt_values
from align_proxy.evals.rl import (Sampling, judge_record, per_prompt, prompt_token_ids, reward_columns,
                                  sample_and_score)
from align_proxy.evals.suite import EvalResult, _load
from align_proxy.files import files_stamp
from align_proxy.metrics import preference_win
from align_proxy.rewards import RewardSet
from align_proxy.scoring import _tokenize_pair


def win_rates(scores: list[float], others: list[float]) -> list[float]:
    """Each score against the other at its place: 1 a win, 0.5 a tie, 0 a loss (`align_proxy.metrics`)."""
    return [preference_win(s - o) for s, o in zip(scores, others)]


@dataclass
class JudgeEvaluation:
    """A policy run's judged evaluation, beside its recipe kind's (`RecipeRun.evaluation`). Its kind is "judge"; its
    cache key holds the judge's identity (specs, weights, the files of a reward-model directory) and the sampling,
    so a cached base evaluation is reused only by runs judged the same way."""

    tokenizer: object
    items: Dataset  # prompt, completion (the reference reply), and any columns the judge reads
    judge: RewardSet
    specs: tuple[str, ...]
    sampling: Sampling
    base_path: str  # the run's base model: its win rate against itself is 0.5
    kind: ClassVar[str] = "judge"

    @classmethod
    def for_run(cls, run) -> JudgeEvaluation:
        args = run.script_args
        items = run.evalset.completions
        if items is None:
            from align_proxy.errors import RecipeArgumentError

            raise RecipeArgumentError(f"--eval_judge compares sampled replies with each held-out item's reference "
                                      f"reply, and {run.data.source}'s test split has none (a completion, or a "
                                      "preference pair's chosen): give it one, or drop --eval_judge")
        sampling = Sampling(args.eval_max_new_tokens, args.eval_temperature, num_samples=args.eval_num_samples,
                            seed=args.eval_seed)
        return cls(run.tokenizer, items, run.judge, tuple(args.eval_judge), sampling, run.model.path)

    @classmethod
    def of_held_out(cls, tokenizer, evalset, held_out) -> JudgeEvaluation:
        """The judged evaluation a run's held-out settings describe (`align_proxy.proxy_tuning.HeldOut`: its judge and
        sampling, read from the run's run_config.yaml): how a proxy-tuning cell judges as its expert's run did."""
        from align_proxy.rewards import load_rewards

        judge = load_rewards(list(held_out.judge), list(held_out.judge_weights) if held_out.judge_weights else None)
        sampling = Sampling(held_out.max_new_tokens, held_out.temperature, num_samples=held_out.num_samples,
                            seed=held_out.eval_seed)
        return cls(tokenizer, evalset.completions, judge, tuple(held_out.judge), sampling, "")

    def cache_key(self) -> dict:
        return {"evaluation": self.kind, "judge": list(self.specs), "judge_weights": self.judge.weights,
                "judge_files": [files_stamp(spec) for spec in self.specs], "sampling": asdict(self.sampling)}

    def __call__(self, model_path: str) -> EvalResult:
        if model_path == self.base_path:
            return self.judge_model(_load(AutoModelForCausalLM, model_path), None, "base model")
        return self.judge_model(_load(AutoModelForCausalLM, model_path), self.base_path, "trained model")

    # Computed once per evaluation, however many models it judges (base, trained, the base again for win rates):
    # the prompts' token ids, the judge's scores of the reference replies, and the judge's identity (which hashes
    # a reward model's whole directory).
    @cached_property
    def prompt_ids(self) -> list[list[int]]:
        return prompt_token_ids(self.tokenizer, list(self.items["prompt"]))

    @cached_property
    def reference_scores(self) -> list[float]:
        return self.judge.score(list(self.items["prompt"]), list(self.items["completion"]),
                                **reward_columns(self.items))[1]

    @cached_property
    def record(self) -> dict:
        return judge_record(self.specs, self.judge, self.sampling)

    def judge_model(self, model, base, who: str) -> EvalResult:
        """`model` (loaded: a proxy-tuned one too) judged; `base` its base model, loaded or its path (loaded only
        then), or None when `model` is the base (its win rate against itself is 0.5)."""
        k = self.sampling.num_samples
        references = list(self.items["completion"])
        prompts = list(self.items["prompt"])
        scores, lengths = self._judged_samples(model)
        result = EvalResult()
        result.add("judge_reward", per_prompt(scores, k))
        wins = win_rates(scores, [s for s in self.reference_scores for _ in range(k)])
        result.add("win_rate_vs_reference", per_prompt(wins, k))
        if base is None:
            result.add("win_rate_vs_base", [0.5] * len(prompts))  # against itself, by definition
        else:
            base_scores = self._judged_samples(_load(AutoModelForCausalLM, base) if isinstance(base, str) else base)[0]
            result.add("win_rate_vs_base", per_prompt(win_rates(scores, base_scores), k))
        result.add("response_length", per_prompt([float(n) for n in lengths], k))
        result.details["judge"] = self.record
        lc = self._length_controlled(who, wins, lengths, prompts, references)
        if lc:
            values, result.details["length_controlled_win_rate"] = lc
            result.add("length_controlled_win_rate", values)
        return result

    def _judged_samples(self, model) -> tuple[list[float], list[int]]:
        """The judge's score and the token length of each reply `model` samples, `num_samples` per prompt in a row,
        sampled and scored as the RL evaluation does (`align_proxy.evals.rl.sample_and_score`): conversational
        prompts get assistant messages, and the items' other columns reach the judge."""
        samples = sample_and_score(model, self.tokenizer, self.items, self.prompt_ids, self.judge, self.sampling,
                                   gold=False)
        return samples.total, [len(ids) for ids in samples.completion_ids]

    def _length_controlled(self, who: str, wins: list[float], lengths: list[int], prompts: list,
                           references: list) -> tuple[list[float], dict] | None:
        """The length-controlled win rate against the reference, printed with its interval over prompts, and returned
        as its per-prompt values (`length_control.per_prompt_values`: the metric a study resamples) and the result's
        details (None with fewer than 2 prompts). A reference reply's length is counted as the model would write it:
        its tokens after the prompt, EOS included."""
        if len(prompts) < 2:
            return None
        k = self.sampling.num_samples
        reference_lengths = [len(ids) - start for ids, start in
                             (_tokenize_pair(self.tokenizer, p, r) for p, r in zip(prompts, references))]
        diffs = np.array(lengths, float).reshape(-1, k) - np.array(reference_lengths, float)[:, None]
        lc = length_controlled_win_rate(np.reshape(wins, (-1, k)), diffs, seed=self.sampling.seed)
        print(f"[align-proxy] {who}: length-controlled win rate vs reference {lc.estimate:.3f} "
              f"[{lc.low:.3f}, {lc.high:.3f}] ({lc.level:.0%}, over {len(prompts)} prompts; raw {lc.raw:.3f}; replies "
              f"{diffs.mean():+.1f} tokens against the reference)", flush=True)
        values = per_prompt_values(np.reshape(wins, (-1, k)), diffs).tolist()
        return values, {**asdict(lc), "prompts": len(prompts), "mean_length_difference": float(diffs.mean())}
