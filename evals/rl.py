"""Evaluation of an RL policy: what it earns on completions it samples, and how far it moved to earn it.

On held-out prompts, for the base and the trained policy alike: each configured reward and their
weighted total (as trained), the built-in task's gold reward, KL to the reference model and response
length, all on `num_samples` completions per prompt sampled as in training; plus everything
`evaluate_policy` scores (greedy task accuracy, completion NLL, preference accuracy). With `--eval_judge`, the
judge scores the same completions (`judge_reward`): a held-out gold beside the training reward on any data. A learned
reward and the gold reward are reported side by side because they can disagree: a policy can learn
to please the reward model without getting more answers right. Conversational prompts are rendered
and handed to the rewards exactly as GRPO and RLOO do in training.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, CompileConfig
from trl.data_utils import is_conversational

from align_proxy.data.tasks import ArithmeticTask
from align_proxy.files import files_stamp
from align_proxy.scoring import pad_rows, span_logprob_sums
from align_proxy.evals.suite import EvalResult, EvalSet, _load, evaluate_policy
from align_proxy.rewards import RewardSet, arith, reward_identity
from align_proxy.rl import StaticCacheReuse


@dataclass(frozen=True)
class Sampling:
    """How completions are sampled: the training run's own generation settings."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float | None = None
    num_samples: int = 4  # per prompt: a per-prompt mean is far less noisy than one sample
    seed: int = 0
    chat_template_kwargs: dict = field(default_factory=dict)  # conversational prompts render as in training

    @classmethod
    def from_config(cls, config, num_samples: int, seed: int) -> Sampling:
        return cls(config.max_completion_length, config.temperature, config.top_p, config.top_k, config.min_p,
                   num_samples, seed, dict(config.chat_template_kwargs or {}))


def prompt_token_ids(tokenizer, prompts: list, chat_template_kwargs: dict | None = None) -> list[list[int]]:
    """Token ids of each prompt as GRPO and RLOO feed it to the policy: text prompts tokenized as they are,
    conversational ones (lists of messages) through the tokenizer's chat template with the generation prompt."""
    if not prompts or not is_conversational({"prompt": prompts[0]}):
        return tokenizer(list(prompts))["input_ids"]
    if tokenizer.chat_template is None:
        raise ValueError("the prompts are conversational (lists of messages) but the tokenizer has no chat template "
                         "to render them: use a chat model's tokenizer (--tokenizer_name_or_path) or text prompts")
    return tokenizer.apply_chat_template(conversation=list(prompts), add_generation_prompt=True, tokenize=True,
                                         return_dict=True, **(chat_template_kwargs or {}))["input_ids"]


def rl_prompts(test: Dataset, task: ArithmeticTask | None, size: int, seed: int = 0) -> Dataset:
    """Held-out prompts: a built-in task's own evaluation prompts (the very items task accuracy is scored
    on, so every metric pairs item by item), else the first `size` rows of the test split, whose other
    columns reach the rewards as keyword arguments, as in training."""
    if task is not None:
        return task.evaluation(size, seed=seed)
    return test.select(range(min(size, len(test))))


# Compiling the decoding step (static cache, CUDA graphs) costs tens of seconds per shape, and saves ~80 ms per
# decoding step of a proxy at batch 256 (shared/bench/README.md, 350M: 2,739 new tokens/s eager with a dynamic cache,
# 18,580 static and compiled). Below about this many decoding steps per call the compile does not repay itself: an
# estimate from those figures and a ~30 s compile, which benchmarks/eval_generation.py measures on a GPU.
COMPILE_FROM_STEPS = 512


def equal_batches(rows: int, batch_size: int) -> tuple[int, int]:
    """(batches, rows per batch) that split `rows` into the fewest batches of at most `batch_size`, all of one size
    but the last (which compiled decoding pads to it)."""
    batches = -(-rows // batch_size)
    return batches, -(-rows // batches) if batches else batch_size


def compile_blocker(model, rows: int, batch_size: int, max_new_tokens: int) -> str | None:
    """Why sampling `rows` replies stays eager with a dynamic cache, or None to compile its decoding."""
    if next(model.parameters()).device.type != "cuda":
        return "not on a GPU"  # transformers compiles decoding only on accelerators; on CPU it measured slower
    steps = equal_batches(rows, batch_size)[0] * max_new_tokens
    if steps < COMPILE_FROM_STEPS:
        return f"{steps} decoding steps, too few to repay compiling them (from {COMPILE_FROM_STEPS})"
    return None


def decoding_plan(model, rows: int, batch_size: int, max_new_tokens: int) -> str:
    """How `sample_completions` decodes `rows` replies on `model`, in words."""
    blocker = compile_blocker(model, rows, batch_size, max_new_tokens)
    if blocker:
        return f"eager decoding, dynamic cache ({blocker})"
    batches, size = equal_batches(rows, batch_size)
    return f"{batches} equal batches of {size}, one static cache kept between them, compiled decoding (CUDA graphs)"


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: list[list[int]], sampling: Sampling, eos_token_ids: list[int],
                       batch_size: int = 256, compile: bool | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids and sampled completion ids (cut after the first EOS, which is kept, as TRL does), each
    prompt (token ids, see `prompt_token_ids`) repeated `num_samples` times in a row.

    On a GPU, when the decoding is long enough to repay compiling it (`compile_blocker`; `compile` forces either
    way), it is decoded as the RL rollouts are (`align_proxy.rl.StaticCacheReuse`): batches of one size, the last
    padded with copies of its final row, a static KV cache kept between them and a compiled decoding step, so the
    CUDA graphs record once and replay for every batch."""
    model.eval()
    device = next(model.parameters()).device
    prompt_ids = [list(ids) for ids in prompts for _ in range(sampling.num_samples)]
    if compile is None:
        compile = compile_blocker(model, len(prompt_ids), batch_size, sampling.max_new_tokens) is None
    settings = dict(do_sample=True, max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                    top_p=sampling.top_p, top_k=sampling.top_k, min_p=sampling.min_p,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_token_ids)
    generate = model.generate
    if compile and prompt_ids:
        batch_size = equal_batches(len(prompt_ids), batch_size)[1]  # one shape to compile
        config = copy.deepcopy(model.generation_config)
        config.update(**settings, cache_implementation="static", disable_compile=False, compile_config=CompileConfig())
        settings, generate = {"generation_config": config}, StaticCacheReuse(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(sampling.seed)  # base and trained policies sample with the same seed
    completions = []
    try:
        for lo in range(0, len(prompt_ids), batch_size):
            rows = prompt_ids[lo:lo + batch_size]
            count = len(rows)
            if compile:
                rows = rows + [rows[-1]] * (batch_size - count)
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, row in enumerate(rows):  # left padding: every prompt ends where generation starts
                ids[i, width - len(row):] = torch.tensor(row)
                mask[i, width - len(row):] = 1
            out = generate(input_ids=ids.to(device), attention_mask=mask.to(device), **settings)
            for row in out[:count, width:].tolist():
                ends = [i for i, token in enumerate(row) if token in eos_token_ids]
                completions.append(row[: ends[0] + 1] if ends else row)
    finally:
        torch.random.set_rng_state(generator_state)
    return prompt_ids, completions


@torch.no_grad()
def sequence_logprobs(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                      batch_size: int = 256) -> list[float]:
    """Summed log-probability of each completion's tokens given its prompt (temperature 1)."""
    model.eval()
    sums = []
    for lo in range(0, len(prompt_ids), batch_size):
        prompts, completions = prompt_ids[lo:lo + batch_size], completion_ids[lo:lo + batch_size]
        ids, mask = pad_rows([p + c for p, c in zip(prompts, completions)], pad_id)
        spans = [(len(p), len(p) + len(c)) for p, c in zip(prompts, completions)]
        sums.extend(span_logprob_sums(model, ids, mask, spans))
    return sums


def judge_record(specs, judge: RewardSet, sampling: Sampling) -> dict:
    """Who judged and how the judged replies were sampled: a result's `details["judge"]` (metrics.json)."""
    return {"judges": [reward_identity(spec) for spec in specs], "weights": judge.weights,
            "sampling": asdict(sampling)}


def per_prompt(values: list[float], num_samples: int) -> list[float]:
    """Each prompt's mean over its `num_samples` samples, which stand in a row."""
    return [sum(values[i:i + num_samples]) / num_samples for i in range(0, len(values), num_samples)]


def _add_mean(result: EvalResult, name: str, values: list[float], num_samples: int) -> None:
    result.add(name, per_prompt(values, num_samples))


@dataclass(frozen=True)
class ScoredSamples:
    """Completions a policy sampled on held-out prompts (`num_samples` per prompt, in a row), with the run's
    rewards (each by name, and their weighted total), on a built-in task the gold reward, and with a judge its
    weighted score."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    per_reward: dict[str, list[float]]
    total: list[float]
    gold: list[float] | None
    judged: list[float] | None = None


def reward_columns(rows: Dataset, repeat: int = 1) -> dict[str, list]:
    """The columns that reach the rewards as TRL passes them, each value repeated for its prompt's samples: all but
    the prompt and any gold completion, whose name TRL keeps for the generated one."""
    return {c: [v for v in rows[c] for _ in range(repeat)] for c in rows.column_names
            if c not in ("prompt", "completion", "completion_ids")}


def sample_and_score(model, tokenizer, prompts: Dataset, tokenized: list[list[int]], rewards: RewardSet,
                     sampling: Sampling, gold: bool, judge: RewardSet | None = None) -> ScoredSamples:
    """Sample on `prompts` (their token ids: `prompt_token_ids`) and score every completion as GRPO and RLOO do
    in training: conversational prompts get assistant messages, and the other columns reach the rewards."""
    originals = list(prompts["prompt"])
    prompt_ids, completion_ids = sample_completions(model, tokenizer, tokenized, sampling, [tokenizer.eos_token_id])
    k = sampling.num_samples
    repeated = [p for p in originals for _ in range(k)]
    completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    if is_conversational({"prompt": originals[0]}):  # the rewards get what TRL gives them in training
        completions = [[{"role": "assistant", "content": text}] for text in completions]
    columns = reward_columns(prompts, k)
    per_reward, total = rewards.score(repeated, completions, completion_ids=completion_ids, **columns)
    gold_values = arith.exact_match(repeated, completions, answer=columns.get("answer")) if gold else None
    judged = judge.score(repeated, completions, completion_ids=completion_ids, **columns)[1] if judge else None
    return ScoredSamples(prompt_ids, completion_ids, per_reward, total, gold_values, judged)


def log_ratios(policy, reference, samples: ScoredSamples, pad_id: int) -> list[float]:
    """log pi(y|x) - log pi_ref(y|x) of each sampled completion: the per-sequence KL estimate."""
    return [p - r for p, r in zip(sequence_logprobs(policy, samples.prompt_ids, samples.completion_ids, pad_id),
                                  sequence_logprobs(reference, samples.prompt_ids, samples.completion_ids, pad_id))]


def evaluate_rl_policy(model_path: str, tokenizer, evalset: EvalSet, prompts: Dataset, rewards: RewardSet,
                       sampling: Sampling, reference_path: str | None = None, max_new_tokens: int = 8,
                       judge: RewardSet | None = None, judge_details: dict | None = None) -> EvalResult:
    """Everything `evaluate_policy` scores, plus the RL metrics on sampled completions (see the module doc).

    `reward`, each reward by its name and `gold_reward` are means over samples; `kl_to_reference` is in
    nats per sequence (0 when the policy is the reference); `response_length` counts tokens, EOS
    included, as TRL's `completions/mean_length` does; `judge_reward` is `judge`'s score of the same samples
    (`judge_details`, from `judge_record`, says who judged).
    Per-item scores are per-prompt means, paired across base and trained policies.
    """
    tokenized = prompt_token_ids(tokenizer, list(prompts["prompt"]), sampling.chat_template_kwargs)  # fails early
    result = evaluate_policy(model_path, tokenizer, evalset, max_new_tokens=max_new_tokens)
    model = _load(AutoModelForCausalLM, model_path)
    samples = sample_and_score(model, tokenizer, prompts, tokenized, rewards, sampling, gold=evalset.task is not None,
                               judge=judge)
    k = sampling.num_samples
    _add_mean(result, "reward", samples.total, k)
    for name, values in samples.per_reward.items():
        # A reward is reported under its own name, unless a metric already holds it (a function called `reward`).
        _add_mean(result, name if name not in result.metrics else f"reward_{name}", values, k)
    if samples.gold is not None:
        _add_mean(result, "gold_reward", samples.gold, k)
    if samples.judged is not None:
        _add_mean(result, "judge_reward", samples.judged, k)
        result.details["judge"] = judge_details

    if reference_path is not None:
        # The reference against itself: every log-ratio is 0.
        ratios = ([0.0] * len(samples.completion_ids) if reference_path == model_path else
                  log_ratios(model, _load(AutoModelForCausalLM, reference_path), samples, tokenizer.pad_token_id))
        _add_mean(result, "kl_to_reference", ratios, k)
    _add_mean(result, "response_length", [float(len(c)) for c in samples.completion_ids], k)
    return result


@dataclass
class RLEvaluation:
    """GRPO's and RLOO's evaluation: `evaluate_rl_policy` with the run's rewards and sampling, against the run's
    base model as reference. Its kind is "rl_policy"; its cache key adds what its scores depend on beyond the
    held-out items, so a cached base evaluation is reused only by runs that score it the same way (a learned
    reward model's files included)."""

    tokenizer: object
    evalset: EvalSet
    prompts: Dataset
    rewards: RewardSet
    sampling: Sampling
    reference_path: str | None
    max_new_tokens: int
    key: dict
    judge: RewardSet | None = None  # --eval_judge: scores the same samples (`judge_reward`)
    judge_details: dict | None = None  # who judged (`judge_record`), worked out once for base and trained alike
    kind: ClassVar[str] = "rl_policy"

    @classmethod
    def for_run(cls, run, rewards: RewardSet) -> RLEvaluation:
        args, config = run.script_args, run.training_args
        sampling = Sampling.from_config(config, args.eval_num_samples, args.eval_seed)
        prompts = rl_prompts(run.data.test, run.data.task, args.eval_size, args.eval_seed)
        key = {
            "reward_funcs": list(args.reward_funcs or []),
            "reward_files": [files_stamp(spec) for spec in args.reward_funcs or []],
            "reward_weights": config.reward_weights,
            "eval_num_samples": args.eval_num_samples,
            "sampling": [config.max_completion_length, config.temperature, config.top_p, config.top_k, config.min_p],
            # How conversational prompts render (only when set, so other runs keep their cached evaluations).
            **({"chat_template_kwargs": config.chat_template_kwargs} if config.chat_template_kwargs else {}),
            # The judge (only when there is one, so unjudged runs keep their cached evaluations).
            **({"judge": list(args.eval_judge), "judge_weights": run.judge.weights,
                "judge_files": [files_stamp(spec) for spec in args.eval_judge]} if run.judge else {}),
        }
        return cls(run.tokenizer, run.evalset, prompts, rewards, sampling, run.model.path, args.eval_max_new_tokens,
                   key, run.judge, judge_record(args.eval_judge, run.judge, sampling) if run.judge else None)

    def cache_key(self) -> dict:
        return {"evaluation": self.kind, **self.key}

    def __call__(self, model_path: str) -> EvalResult:
        return evaluate_rl_policy(model_path, self.tokenizer, self.evalset, self.prompts, self.rewards, self.sampling,
                                  reference_path=self.reference_path, max_new_tokens=self.max_new_tokens,
                                  judge=self.judge, judge_details=self.judge_details)


# --- the overoptimization curve of an RL run --------------------------------------------------------------

@torch.no_grad()
def curve_point(policy, reference, tokenizer, prompts: Dataset, tokenized: list[list[int]], rewards: RewardSet,
                sampling: Sampling, gold: bool) -> dict[str, float]:
    """Proxy (the run's own rewards, weighted as trained) and gold reward of completions the in-memory `policy`
    samples on held-out prompts, and its KL to `reference` (nats per sequence, mean over samples)."""
    was_training = policy.training
    samples = sample_and_score(policy, tokenizer, prompts, tokenized, rewards, sampling, gold)
    k = sampling.num_samples
    items = {"proxy_reward": per_prompt(samples.total, k)}
    if samples.gold is not None:
        items["gold_reward"] = per_prompt(samples.gold, k)
    items["kl_to_reference"] = per_prompt(log_ratios(policy, reference, samples, tokenizer.pad_token_id), k)
    # Means, and per-prompt means (the prompts are what a fit of the curve resamples).
    point = {name: sum(values) / len(values) for name, values in items.items()}
    point["sqrt_kl"] = max(point["kl_to_reference"], 0.0) ** 0.5  # a sampled KL can dip below 0 near the start
    point["items"] = items
    if was_training:
        policy.train()
    return point


class RewardCurve:
    """A trainer callback (TRL's GRPO and RLOO trainers): every `every` optimiser steps, and before the first,
    the policy in memory is scored by `curve_point` on held-out prompts, so a run gives Gao et al.'s curve of gold
    and proxy reward against sqrt(KL), not only its end points. Points are kept in `points` (the recipe writes them
    to metrics.json's `train.curve`). Scored on the main process only, every point with the same sampling seed."""

    def __init__(self, tokenizer, prompts: Dataset, rewards: RewardSet, sampling: Sampling, reference_path: str,
                 every: int, gold: bool):
        from transformers import TrainerCallback

        self.tokenizer, self.prompts, self.rewards, self.sampling = tokenizer, prompts, rewards, sampling
        # The prompts never change between points: rendered and tokenized once (and checked before training).
        self.tokenized = prompt_token_ids(tokenizer, list(prompts["prompt"]), sampling.chat_template_kwargs)
        self.reference_path, self.every, self.gold = reference_path, every, gold
        self.points: list[dict] = []
        self._reference = None
        # Subclassing at run time keeps transformers' import out of this module's import.
        self.callback = type("RewardCurveCallback", (TrainerCallback,), {
            "on_train_begin": lambda _, args, state, control, **kw: self._maybe(state, kw.get("model"), force=True),
            "on_step_end": lambda _, args, state, control, **kw: self._maybe(state, kw.get("model")),
        })()

    @classmethod
    def for_run(cls, run, rewards: RewardSet) -> RewardCurve | None:
        args, config = run.script_args, run.training_args
        if not args.curve_every:
            return None
        sampling = Sampling.from_config(config, args.eval_num_samples, args.eval_seed)
        prompts = rl_prompts(run.data.test, run.data.task, args.curve_prompts, args.eval_seed)
        return cls(run.tokenizer, prompts, rewards, sampling, run.model.path, args.curve_every, run.data.task is not None)

    def _maybe(self, state, model, force: bool = False) -> None:
        from accelerate import PartialState

        step = state.global_step
        if model is None or not PartialState().is_main_process:
            return
        if not force and (step % self.every or any(p["step"] == step for p in self.points)):
            return
        if self._reference is None:
            self._reference = _load(AutoModelForCausalLM, self.reference_path).to(next(model.parameters()).device)
        # One sampling seed for every point (common random numbers): the curve moves with the policy, not with
        # fresh sampling noise at each point.
        self.points.append({"step": step, **curve_point(model, self._reference, self.tokenizer, self.prompts,
                                                         self.tokenized, self.rewards, self.sampling, self.gold)})
