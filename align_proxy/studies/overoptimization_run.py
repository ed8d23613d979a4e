"""The `align-proxy overoptimization` command's measurement and a best-of-n cell's: one policy's pool sampled and
scored (`align_proxy.evals.overoptimization`), each proxy reward model's best-of-n curve computed exactly from it
and fitted, and an RL run's recorded curve read back (the report draws them: `report/overoptimization.py`)."""

from __future__ import annotations

import numpy as np

from align_proxy.evals.overoptimization import DEFAULT_GOLD, Pool, learned, sample_pool
from align_proxy.evals.rl import Sampling
from align_proxy.studies.overoptimization import BestOfN, Curve, best_of_n


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


def run(policy: str, reward_models: list[str], gold: str = DEFAULT_GOLD, n: int = 64, prompts: int = 64,
        task: str = "arith", seed: int = 0, max_new_tokens: int = 8, temperature: float = 1.0,
        n_resamples: int = 2000, prompt_seed: int | None = None) -> tuple[list[Curve], Pool]:
    """Sample the pool from `policy` (a registry name or directory) once and score it with every proxy reward
    model and the gold reward (a reward name, `module:function`, or a reward-model directory). `seed` seeds the
    sampling and `prompt_seed` (default: `seed`) picks the task's held-out prompts."""
    from align_proxy.data.tasks import get_task
    from align_proxy.models.registry import parameter_count, resolve
    from align_proxy.models.tokenizer import build_tokenizer
    # The gold: a registered reward, `module:function` or a reward-model directory.
    from align_proxy.rewards import get_reward

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

