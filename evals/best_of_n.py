"""Best-of-n against proxy reward models: Gao et al.'s overoptimization curve, measured on one pool.

A fixed policy samples `N` completions per held-out prompt once; every proxy reward model and the gold reward
score the same pool, so the curves of reward models of different sizes differ only by the reward model. For
each n <= N the expected gold and proxy reward of best-of-n follow exactly from the pool
(`align_proxy.studies.overoptimization.best_of_n`), and Gao et al.'s form R(d) = d (alpha - beta d) is fitted
to the gold reward's gain with d = sqrt(KL_bon). Prompts are the built-in task's own evaluation prompts (the
items task accuracy is scored on), rendered and rewarded exactly as GRPO and RLOO do in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from transformers import AutoModelForCausalLM

from align_proxy.studies.overoptimization import BestOfN, Overoptimization, best_of_n, fit_overoptimization
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
class Curve:
    """One proxy reward model's best-of-n curve on the pool: gold and proxy reward per n, and the fitted form."""

    reward_model: str
    parameters: int
    result: BestOfN
    gold_fit: Overoptimization | None  # None when the curve has too few points with d > 0

    def to_json(self) -> dict:
        r = self.result
        return {"reward_model": self.reward_model, "parameters": self.parameters, "ns": r.ns,
                "kl_formula": r.kl_formula.tolist(),
                "kl_empirical": r.kl_empirical.mean(axis=0).tolist() if r.kl_empirical is not None else None,
                "gold": r.gold.mean(axis=0).tolist(), "proxy": r.proxy.mean(axis=0).tolist(),
                "gold_fit": _finite(self.gold_fit.to_json()) if self.gold_fit else None}


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def curves(pool: Pool, gold: np.ndarray, proxies: dict[str, tuple[int, object]], ns: list[int],
           confidence: float = 0.95, n_resamples: int = 2000) -> list[Curve]:
    """Each proxy reward model's best-of-n curve (`proxies`: name -> (parameters, reward)), smallest first."""
    out = []
    for name, (parameters, reward) in sorted(proxies.items(), key=lambda kv: (kv[1][0], kv[0])):
        result = best_of_n(pool.score(reward), gold, ns, completions=pool.completions)
        fit = (fit_overoptimization("best_of_n", result.d, result.gold_gain, confidence, n_resamples)
               if np.count_nonzero(result.d > 0) >= 2 else None)
        out.append(Curve(name, parameters, result, fit))
    return out


def trend(curves_: list[Curve], confidence: float = 0.95) -> dict | None:
    """alpha and beta against log10(reward-model parameters) (Gao et al.: smooth, roughly log-linear), each a
    straight-line fit over one point per size; None with fewer than three sizes."""
    from align_proxy.studies.stats import fit_gain_vs_scale

    fitted = [c for c in curves_ if c.gold_fit is not None]
    sizes = [c.parameters for c in fitted]
    if len(set(sizes)) < 3 or len(set(sizes)) != len(sizes):
        return None
    out = {}
    for name in ("alpha", "beta"):
        values = [getattr(c.gold_fit, name).estimate for c in fitted]
        fit = fit_gain_vs_scale(sizes, values, max(sizes), confidence)
        out[name] = {"slope_per_decade": fit.slope, "intercept": fit.intercept, "r_squared": fit.r_squared}
    return out


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
    return curves(pool, pool.score(gold_reward), proxies, ns, n_resamples=n_resamples), pool


def plot(curves_: list[Curve]) -> bytes:
    """Gold (solid) and proxy (dashed) reward gain against sqrt(KL_bon), one colour per reward-model size, with
    each fitted gold curve dotted: the look of Gao et al.'s Figure 1."""
    import io

    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from align_proxy.studies.formatting import format_parameters

    figure = Figure(figsize=(10, 4), layout="constrained")
    gold_ax, proxy_ax = figure.subplots(1, 2)
    cmap = colormaps["viridis"]
    for i, curve in enumerate(curves_):
        colour = cmap(i / max(1, len(curves_) - 1))
        label = f"{format_parameters(curve.parameters)} RM"
        d = curve.result.d
        gold_ax.plot(d, curve.result.gold_gain.mean(axis=0), "o-", color=colour, label=label, markersize=4)
        if curve.gold_fit is not None:
            grid = np.linspace(0, d.max(), 100)
            gold_ax.plot(grid, curve.gold_fit.curve(grid), ":", color=colour, linewidth=1)
        proxy_ax.plot(d, curve.result.proxy_gain.mean(axis=0), "s--", color=colour, label=label, markersize=4)
    for ax, what in ((gold_ax, "gold"), (proxy_ax, "proxy")):
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set(xlabel="sqrt(KL) of best-of-n, nats^0.5", ylabel=f"{what} reward gain over n = 1",
               title=f"best-of-n: {what} reward")
        ax.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    return buffer.getvalue()
