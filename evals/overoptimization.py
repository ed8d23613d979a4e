"""Reward-model overoptimization, measured (Gao et al. 2022): gold and proxy reward against d = sqrt(KL) for
best-of-n and for RL, per proxy reward model, with Gao et al.'s forms fitted.

Best-of-n: a fixed policy samples `N` completions per held-out prompt once; every proxy reward model and the gold
reward score the same pool, so curves of reward models of different sizes differ only by the reward model. For
each n <= N the expected gold and proxy reward of best-of-n follow exactly from the pool
(`align_proxy.studies.overoptimization.best_of_n`), with d = sqrt(KL_bon) from the formula. RL: a GRPO or RLOO
run with `--curve_every` records proxy and gold reward and KL per prompt as it trains (`align_proxy.evals.rl.RewardCurve`);
its d is the measured sqrt(KL). Each curve is fitted with its form (R_bon = d (alpha - beta d),
R_RL = d (alpha - beta log d)) on the gold reward's gain, with intervals from resampling the prompts. Prompts are
the built-in task's own evaluation prompts, rendered and rewarded as GRPO and RLOO do in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import AutoModelForCausalLM

from align_proxy.studies.overoptimization import BestOfN, Curve, best_of_n
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


def best_of_n_curves(pool: Pool, gold: np.ndarray, proxies: dict[str, tuple[int, object]], ns: list[int],
                     confidence: float = 0.95, n_resamples: int = 2000) -> list[Curve]:
    """Each proxy reward model's best-of-n curve (`proxies`: name -> (parameters, reward)), smallest first."""
    out = []
    for name, (parameters, reward) in sorted(proxies.items(), key=lambda kv: (kv[1][0], kv[0])):
        result: BestOfN = best_of_n(pool.score(reward), gold, ns, completions=pool.completions,
                                    logprobs=pool.logprobs)
        out.append(Curve.of_best_of_n(result, name, parameters, confidence, n_resamples))
    return out


def rl_curve(run_dir: str, confidence: float = 0.95, n_resamples: int = 2000) -> Curve:
    """The curve an RL run recorded (`--curve_every`), its reward model named by the run's run_config.yaml."""
    import json
    from pathlib import Path

    import yaml

    from align_proxy.models.registry import parameter_count

    run = Path(run_dir)
    metrics_path, config_path = run / "metrics.json", run / "run_config.yaml"
    if not metrics_path.is_file() or not config_path.is_file():
        raise ValueError(f"{run} is not a finished RL run: expected metrics.json and run_config.yaml from "
                         "recipes/grpo.py or recipes/rloo.py")
    points = json.loads(metrics_path.read_text()).get("train", {}).get("curve") or []
    if len(points) < 3 or "items" not in points[0] or "gold_reward" not in points[0]["items"]:
        raise ValueError(f"{metrics_path} has no reward curve with per-prompt gold reward: train the run with "
                         "--curve_every (e.g. 10) on a built-in task")
    reward_funcs = (yaml.safe_load(config_path.read_text()).get("script_args") or {}).get("reward_funcs") or []
    learned = [f for f in reward_funcs if Path(f).is_dir()]
    if len(learned) != 1:
        raise ValueError(f"{config_path}: an overoptimization curve needs exactly one learned reward model among "
                         f"reward_funcs, found {len(learned)} ({reward_funcs})")
    return Curve.from_points(points, learned[0], parameter_count(learned[0]), confidence, n_resamples)


def learned(path: str):
    """A proxy reward model directory as a reward function (scored on the CPU or the run's device)."""
    from align_proxy.rewards.learned import LearnedReward

    return LearnedReward(path)


DEFAULT_GOLD = "arith_exact_match"  # the built-in tasks' own reward: the answer, exactly


def run(policy: str, reward_models: list[str], gold: str = DEFAULT_GOLD, n: int = 64, prompts: int = 64,
        task: str = "arith", seed: int = 0, max_new_tokens: int = 8, temperature: float = 1.0,
        n_resamples: int = 2000, prompt_seed: int | None = None) -> tuple[list[Curve], Pool]:
    """Sample the pool from `policy` (a registry name or directory) once and score it with every proxy reward
    model and the gold reward (a reward name, `module:function`, or a reward-model directory). `seed` seeds the
    sampling and `prompt_seed` (default: `seed`) picks the task's held-out prompts."""
    from align_proxy.data.tasks import get_task
    from align_proxy.models.registry import parameter_count, resolve
    from align_proxy.models.tokenizer import build_tokenizer
    from align_proxy.rewards import get_reward  # the gold: a registered reward, `module:function` or a reward-model directory

    if n < 2:
        raise ValueError(f"--n must be at least 2 to draw a curve (got {n})")
    proxies = {}
    for path in reward_models:  # every reward model is checked before the policy samples anything
        proxies[path] = (parameter_count(path), learned(path))
    gold_reward = get_reward(gold)
    policy_path = resolve(policy).path
    tokenizer = build_tokenizer()
    held_out = get_task(task).evaluation(prompts, seed=seed if prompt_seed is None else prompt_seed)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, num_samples=n, seed=seed)
    pool = sample_pool(policy_path, tokenizer, held_out, n, sampling)
    ns = sorted({1, *[k for k in (2, 4, 8, 16, 32, 64, 128, 256) if k <= n], n})
    return best_of_n_curves(pool, pool.score(gold_reward), proxies, ns, n_resamples=n_resamples), pool


def run_cell(argv: list[str] | None = None) -> None:
    """A study's best-of-n cell (`studies.spec.StudySpec._best_of_n_cells`, run by the study runner like a recipe
    script): the policy's pool ranked by one reward model, and metrics.json written atomically, last: the curve
    (train.curve, one point per n), and gold and learned reward of the policy (base, n = 1) and of best-of-N
    (trained), per prompt. Prompts are the task's held-out ones (eval seed 0, as RL runs' curves); `--seed` seeds
    the sampling."""
    import argparse
    import dataclasses
    import json
    from pathlib import Path

    from align_proxy.files import atomic_write
    from align_proxy.models import registry
    from align_proxy.run_metrics import RunMetrics, Scores, Training

    parser = argparse.ArgumentParser(description=run_cell.__doc__.splitlines()[0])
    for flag in ("--policy", "--reward-model", "--output-dir"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--gold", default=DEFAULT_GOLD)
    parser.add_argument("--task", default="arith")
    for flag, kind in (("--n", int), ("--prompts", int), ("--seed", int), ("--max-new-tokens", int),
                       ("--temperature", float)):
        parser.add_argument(flag, type=kind, required=True)
    args = parser.parse_args(argv)
    print(f"[align-proxy] best-of-{args.n} of {args.policy} by {args.reward_model} ({args.prompts} prompts, "
          f"gold {args.gold})", flush=True)
    (curve,), pool = run(args.policy, [args.reward_model], gold=args.gold, n=args.n, prompts=args.prompts,
                         task=args.task, seed=args.seed, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, prompt_seed=0)
    first, last = {"gold_reward": curve.gold[:, 0], "learned_reward": curve.proxy[:, 0]}, \
        {"gold_reward": curve.gold[:, -1], "learned_reward": curve.proxy[:, -1]}
    scores = Scores({k: float(v.mean()) for k, v in first.items()}, {k: float(v.mean()) for k, v in last.items()},
                    {k: v.tolist() for k, v in first.items()}, {k: v.tolist() for k, v in last.items()})
    settings = {"policy": args.policy, "reward_model": args.reward_model, "gold": args.gold, "task": args.task,
                "n": args.n, "prompts": args.prompts, "temperature": args.temperature,
                "max_new_tokens": args.max_new_tokens,
                "distinct_per_prompt": float(np.mean([len(set(row)) for row in pool.completions]))}
    record = RunMetrics("best-of-n", dataclasses.asdict(registry.resolve(args.policy)), f"builtin:{args.task}", None,
                        Training(curve=curve.points()), scores, best_of_n=settings)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write(output / "metrics.json", json.dumps(record.to_json(), indent=2))


if __name__ == "__main__":
    import sys

    run_cell(sys.argv[1:])
