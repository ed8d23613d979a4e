"""Best-of-n from one pool of samples per prompt, exactly: the expected gold and proxy reward of best-of-n for every
n <= N, and how far best-of-n moves from the policy (KL). Pure functions over arrays (numpy and scipy, no torch).

- `best_of_n`: the mean over all C(N, n) subsets of the sample the proxy ranks first, by order statistics
  rather than by resampling subsets.
- `kl_best_of_n`: the analytic KL of best-of-n to the policy, log n - (n - 1) / n, an upper bound (Beirami
  et al. 2024) that is loose when samples repeat; `empirical_kl_best_of_n` measures it on the pool itself,
  identical completions merged, so a small model that repeats itself shows how loose.

Gao et al.'s curves fitted to these numbers are `overoptimization`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special


# --- best-of-n from one pool -------------------------------------------------------------------------------

def selection_probabilities(proxy: np.ndarray, n: int) -> np.ndarray:
    """P(sample i is the one best-of-n picks), over all size-n subsets of the pool drawn uniformly.

    The subset's top proxy score lies in a tie group occupying sorted positions [a, b) with probability
    (C(b, n) - C(a, n)) / C(N, n); within the group each tied sample is picked equally often.

    >>> selection_probabilities(np.array([0.1, 0.3, 0.2]), 2).round(3).tolist()  # top of 2 of 3: C(i, 1)/C(3, 2)
    [0.0, 0.667, 0.333]
    >>> selection_probabilities(np.array([1.0, 1.0, 0.0]), 2).round(3).tolist()  # a tie at the top shares
    [0.5, 0.5, 0.0]
    """
    proxy = np.asarray(proxy, dtype=float)
    size = proxy.size
    if not 1 <= n <= size:
        raise ValueError(f"best-of-n needs 1 <= n <= pool size ({size}), got n={n}")
    order = np.argsort(proxy, kind="stable")
    ranked = proxy[order]
    probabilities = np.empty(size)
    total = special.comb(size, n, exact=False)
    start = 0
    while start < size:
        stop = start + 1
        while stop < size and ranked[stop] == ranked[start]:
            stop += 1
        group = (special.comb(stop, n, exact=False) - special.comb(start, n, exact=False)) / total
        probabilities[order[start:stop]] = group / (stop - start)
        start = stop
    return probabilities


class GainsOverStart:
    """Gold and proxy reward as gains over each prompt's first point (n = 1, or step 0): Gao et al.'s R(d)."""

    gold: np.ndarray
    proxy: np.ndarray

    @property
    def gold_gain(self) -> np.ndarray:
        return self.gold - self.gold[:, :1]

    @property
    def proxy_gain(self) -> np.ndarray:
        return self.proxy - self.proxy[:, :1]


@dataclass(frozen=True)
class BestOfN(GainsOverStart):
    """Best-of-n on a set of prompts: per n, the expected gold and proxy reward per prompt (prompts x ns),
    their gains over n = 1 (the policy itself), and both KL measures."""

    ns: list[int]
    gold: np.ndarray
    proxy: np.ndarray
    kl_formula: np.ndarray
    kl_empirical: np.ndarray | None
    kl_policy: np.ndarray | None = None  # on the pool's distinct completions, by the policy's own probabilities

    @property
    def d(self) -> np.ndarray:
        """sqrt(KL) per n, from the formula (Gao et al.'s axis)."""
        return np.sqrt(self.kl_formula)


def best_of_n(proxy: np.ndarray, gold: np.ndarray, ns: list[int] | None = None,
              completions: list[list[str]] | None = None, logprobs: np.ndarray | None = None) -> BestOfN:
    """Expected gold and proxy reward of best-of-n for each prompt (rows) from its pool of N samples (columns),
    exactly, for each n in `ns` (default: every n from 1 to N). `completions` (prompts x N texts), when given,
    adds the empirical KL with identical completions merged, and with `logprobs` (prompts x N, the policy's
    log-probability of each sample, at the temperature it sampled at) the KL on the policy's own probabilities of
    the distinct sequences sampled (`kl_best_of_n_on_support`).

    >>> proxy = np.array([[0.0, 1.0, 2.0, 3.0]]); gold = np.array([[0.0, 1.0, 2.0, 0.0]])
    >>> result = best_of_n(proxy, gold)
    >>> result.proxy[0].round(3).tolist(), result.gold[0].round(3).tolist()  # proxy rises; gold peaks, falls
    ([1.5, 2.333, 2.75, 3.0], [0.75, 0.833, 0.5, 0.0])
    """
    proxy, gold = np.atleast_2d(np.asarray(proxy, dtype=float)), np.atleast_2d(np.asarray(gold, dtype=float))
    if proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold rewards must have one shape (prompts x samples); got {proxy.shape} "
                         f"and {gold.shape}")
    size = proxy.shape[1]
    ns = list(ns or range(1, size + 1))
    expected_gold = np.empty((proxy.shape[0], len(ns)))
    expected_proxy = np.empty_like(expected_gold)
    kl_empirical = np.empty_like(expected_gold) if completions is not None else None
    kl_policy = np.empty_like(expected_gold) if completions is not None and logprobs is not None else None
    for row in range(proxy.shape[0]):
        if kl_policy is not None:  # one sample per distinct token sequence: its text and its log-probability
            keys = [(text, round(float(lp), 6)) for text, lp in zip(completions[row], logprobs[row])]
            distinct = sorted({key: i for i, key in reversed(list(enumerate(keys)))}.values())
        for column, n in enumerate(ns):
            p = selection_probabilities(proxy[row], n)
            expected_gold[row, column] = p @ gold[row]
            expected_proxy[row, column] = p @ proxy[row]
            if kl_empirical is not None:
                kl_empirical[row, column] = empirical_kl_best_of_n(p, completions[row])
            if kl_policy is not None:
                kl_policy[row, column] = kl_best_of_n_on_support(proxy[row, distinct], logprobs[row, distinct], n)
    return BestOfN(ns, expected_gold, expected_proxy, np.array([kl_best_of_n(n) for n in ns]), kl_empirical,
                   kl_policy)


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n || policy) = log n - (n - 1) / n, exact for distinct samples and an upper bound otherwise.

    >>> [round(kl_best_of_n(n), 3) for n in (1, 4, 16, 64)]
    [0.0, 0.636, 1.835, 3.175]
    """
    return math.log(n) - (n - 1) / n


def kl_best_of_n_on_support(proxy: np.ndarray, logprobs: np.ndarray, n: int) -> float:
    """KL(best-of-n || policy), exact, for a policy whose outputs are these distinct completions with probabilities
    from its log-probabilities (renormalised over them: the pool's support, where a small model puts most of its
    mass). Best-of-n of a discrete distribution puts F_hi^n - F_lo^n on the completions tied at one proxy score
    (F the policy's CDF in proxy order), shared among them in proportion to the policy (the tied samples are
    exchangeable), so KL = sum over score groups of P log(P / pi). Unlike the formula, it sees that a policy
    which concentrates on a few completions cannot be moved far by picking among them.

    >>> round(kl_best_of_n_on_support(np.arange(1000.0), np.zeros(1000), 4), 3)  # many equal completions: the formula
    0.636
    >>> kl_best_of_n_on_support(np.array([0.0, 1.0]), np.log([0.99, 0.01]), 4) < kl_best_of_n(4)
    True
    """
    proxy, logprobs = np.asarray(proxy, dtype=float), np.asarray(logprobs, dtype=float)
    probability = np.exp(logprobs - logprobs.max())
    probability /= probability.sum()
    scores, group = np.unique(proxy, return_inverse=True)  # score groups, lowest first
    mass = np.bincount(group, weights=probability, minlength=scores.size)
    cdf_high = np.minimum(np.cumsum(mass), 1.0)
    cdf_low = np.concatenate([[0.0], cdf_high[:-1]])
    chosen = cdf_high ** n - cdf_low ** n
    kept = chosen > 0
    return float(max(np.sum(chosen[kept] * np.log(chosen[kept] / mass[kept])), 0.0))


def empirical_kl_best_of_n(selection: np.ndarray, texts: list[str]) -> float:
    """KL of one prompt's best-of-n selection to the policy on the pool's empirical distribution, samples with
    one text merged: the policy puts count/N on a text, best-of-n the sum of its samples' selection
    probabilities. Subsets of a finite pool are drawn without replacement, so for distinct texts this sits
    slightly above the formula (64 samples, n = 4: 0.66 against 0.64) and meets it as the pool grows; repeats
    pull it below.

    >>> round(empirical_kl_best_of_n(selection_probabilities(np.arange(4.0), 4), list("abcd")), 3)  # log 4
    1.386
    >>> empirical_kl_best_of_n(selection_probabilities(np.arange(4.0), 4), list("aaaa"))  # one text: no change
    0.0
    """
    mass: dict[str, list[float]] = {}
    for p, text in zip(selection, texts):
        entry = mass.setdefault(text, [0.0, 0.0])
        entry[0] += p
        entry[1] += 1.0 / len(texts)
    return float(sum(p * math.log(p / q) for p, q in mass.values() if p > 0))
