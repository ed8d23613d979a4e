"""Reward-model overoptimization, measured (Gao et al. 2022): gold and proxy reward against d = sqrt(KL) for
best-of-n and for RL, per proxy reward model, with Gao et al.'s forms fitted.

Best-of-n: a fixed policy samples `N` completions per held-out prompt once; every proxy reward model and the gold
reward score the same pool, so curves of reward models of different sizes differ only by the reward model. For
each n <= N the expected gold and proxy reward of best-of-n follow exactly from the pool
(`align_proxy.studies.overoptimization.best_of_n`), with d = sqrt(KL_bon) from the formula. RL: a GRPO or RLOO
run with `--curve_every` records proxy and gold reward and KL per prompt as it trains (`evals.rl.RewardCurve`);
its d is the measured sqrt(KL). Each curve is fitted with its form (R_bon = d (alpha - beta d),
R_RL = d (alpha - beta log d)) on the gold reward's gain, with intervals from resampling the prompts. Prompts are
the built-in task's own evaluation prompts, rendered and rewarded as GRPO and RLOO do in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import AutoModelForCausalLM

from align_proxy.studies.overoptimization import (BestOfN, GainsOverStart, Overoptimization, best_of_n,
                                                 fit_overoptimization)
from align_proxy.studies.records import to_json  # nan and inf as null, like report.json
from evals.rl import Sampling, prompt_token_ids, sample_completions
from evals.suite import _load


@dataclass(frozen=True)
class Pool:
    """`N` sampled completions for each prompt (prompts x N), and the prompts' other columns (the rewards'
    keyword arguments, e.g. the task's `answer`)."""

    prompts: list
    completions: list[list[str]]
    columns: dict[str, list]

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
    _, completion_ids = sample_completions(model, tokenizer, tokenized, sampling, [tokenizer.eos_token_id])
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    rows = [texts[i:i + n] for i in range(0, len(texts), n)]
    columns = {c: list(prompts[c]) for c in prompts.column_names if c not in ("prompt", "completion")}
    return Pool(originals, rows, columns)


@dataclass(frozen=True)
class Curve(GainsOverStart):
    """One proxy reward model's curve: gold and proxy reward per prompt (prompts x points) at each point's d, for
    best-of-n (points are n) or an RL run (points are optimiser steps), and the form fitted to the gold gain."""

    form: str
    reward_model: str
    parameters: int
    x: list[int]
    d: np.ndarray
    gold: np.ndarray
    proxy: np.ndarray
    kl_measured: np.ndarray | None  # best-of-n: the pool's KL, repeats merged; RL: the run's own KL estimate
    fit: Overoptimization | None  # None when the curve has too few points with d > 0

    @property
    def form_label(self) -> str:
        return "best-of-n" if self.form == "best_of_n" else "RL"

    def to_json(self) -> dict:
        return {"form": self.form, "reward_model": self.reward_model, "parameters": self.parameters,
                "x": "n" if self.form == "best_of_n" else "step", "points": list(self.x), "d": self.d.tolist(),
                "kl_measured": self.kl_measured.tolist() if self.kl_measured is not None else None,
                "gold": self.gold.mean(axis=0).tolist(), "proxy": self.proxy.mean(axis=0).tolist(),
                "gold_fit": to_json(self.fit) if self.fit else None}


def _fitted(form: str, d: np.ndarray, gold_gain: np.ndarray, confidence: float, n_resamples: int):
    return fit_overoptimization(form, d, gold_gain, confidence, n_resamples) if np.count_nonzero(d > 0) >= 2 else None


def best_of_n_curves(pool: Pool, gold: np.ndarray, proxies: dict[str, tuple[int, object]], ns: list[int],
                     confidence: float = 0.95, n_resamples: int = 2000) -> list[Curve]:
    """Each proxy reward model's best-of-n curve (`proxies`: name -> (parameters, reward)), smallest first."""
    out = []
    for name, (parameters, reward) in sorted(proxies.items(), key=lambda kv: (kv[1][0], kv[0])):
        result: BestOfN = best_of_n(pool.score(reward), gold, ns, completions=pool.completions)
        out.append(Curve("best_of_n", name, parameters, result.ns, result.d, result.gold, result.proxy,
                         result.kl_empirical.mean(axis=0),
                         _fitted("best_of_n", result.d, result.gold_gain, confidence, n_resamples)))
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
    gold = np.array([p["items"]["gold_reward"] for p in points]).T  # prompts x points
    proxy = np.array([p["items"]["proxy_reward"] for p in points]).T
    kl = np.array([p["kl_to_reference"] for p in points])
    d = np.sqrt(np.clip(kl, 0.0, None))
    return Curve("rl", learned[0], parameter_count(learned[0]), [p["step"] for p in points], d, gold, proxy, kl,
                 _fitted("rl", d, gold - gold[:, :1], confidence, n_resamples))


def trend(curves_: list[Curve], confidence: float = 0.95) -> dict[str, dict] | None:
    """Per form, alpha and beta against log10(reward-model parameters) (Gao et al.: smooth, roughly log-linear),
    each a straight line over one point per size; forms with fewer than three sizes are left out."""
    from align_proxy.studies.stats import fit_gain_vs_scale

    out = {}
    for form in dict.fromkeys(c.form for c in curves_):
        fitted = [c for c in curves_ if c.form == form and c.fit is not None]
        sizes = [c.parameters for c in fitted]
        if len(set(sizes)) < 3 or len(set(sizes)) != len(sizes):
            continue
        out[form] = {}
        for name in ("alpha", "beta"):
            fit = fit_gain_vs_scale(sizes, [getattr(c.fit, name).estimate for c in fitted], max(sizes), confidence)
            out[form][name] = {"slope_per_decade": fit.slope, "intercept": fit.intercept, "r_squared": fit.r_squared}
    return out or None


def learned(path: str):
    """A proxy reward model directory as a reward function (scored on the CPU or the run's device)."""
    from rewards.learned import LearnedReward

    return LearnedReward(path)


def get_gold(name: str):
    """The gold reward: a registered reward, `module:function`, or a reward-model directory."""
    from rewards import get_reward

    return get_reward(name)


def run(policy: str, reward_models: list[str], gold: str = "arith_exact_match", n: int = 64, prompts: int = 64,
        task: str = "arith", seed: int = 0, max_new_tokens: int = 8, temperature: float = 1.0,
        n_resamples: int = 2000) -> tuple[list[Curve], Pool]:
    """Sample the pool from `policy` (a registry name or directory) once and score it with every proxy reward
    model and the gold reward (a reward name, `module:function`, or a reward-model directory)."""
    from align_proxy.data.tasks import get_task
    from align_proxy.models.registry import parameter_count, resolve
    from align_proxy.models.tokenizer import build_tokenizer

    if n < 2:
        raise ValueError(f"--n must be at least 2 to draw a curve (got {n})")
    proxies = {}
    for path in reward_models:  # every reward model is checked before the policy samples anything
        proxies[path] = (parameter_count(path), learned(path))
    gold_reward = get_gold(gold)
    policy_path = resolve(policy).path
    tokenizer = build_tokenizer()
    held_out = get_task(task).evaluation(prompts, seed=seed)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, num_samples=n, seed=seed)
    pool = sample_pool(policy_path, tokenizer, held_out, n, sampling)
    ns = sorted({1, *[k for k in (2, 4, 8, 16, 32, 64, 128, 256) if k <= n], n})
    return best_of_n_curves(pool, pool.score(gold_reward), proxies, ns, n_resamples=n_resamples), pool


def plot(curves_: list[Curve]) -> bytes:
    """Gold and proxy reward gain against sqrt(KL), one colour per reward-model size (best-of-n: circles, solid;
    RL: triangles, dashed), each fitted gold curve dotted: the look of Gao et al.'s Figure 1."""
    import io

    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from align_proxy.studies.formatting import format_parameters

    figure = Figure(figsize=(10, 4), layout="constrained")
    gold_ax, proxy_ax = figure.subplots(1, 2)
    sizes = sorted({c.parameters for c in curves_})
    cmap = colormaps["viridis"]
    for curve in curves_:
        colour = cmap(sizes.index(curve.parameters) / max(1, len(sizes) - 1))
        marker, line = ("o", "-") if curve.form == "best_of_n" else ("^", "--")
        label = f"{format_parameters(curve.parameters)} RM, {curve.form_label}"
        gold_ax.plot(curve.d, curve.gold_gain.mean(axis=0), marker + line, color=colour, label=label, markersize=4)
        if curve.fit is not None:
            grid = np.linspace(0, curve.d.max(), 100)
            gold_ax.plot(grid, curve.fit.curve(grid), ":", color=colour, linewidth=1)
        proxy_ax.plot(curve.d, curve.proxy_gain.mean(axis=0), marker + line, color=colour, label=label, markersize=4)
    for ax, what in ((gold_ax, "gold"), (proxy_ax, "proxy")):
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set(xlabel="d = sqrt(KL to the initial policy), nats^0.5", ylabel=f"{what} reward gain",
               title=f"{what} reward against optimisation")
        ax.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    return buffer.getvalue()
