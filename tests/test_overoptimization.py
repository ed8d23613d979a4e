"""Overoptimization statistics (Gao et al. 2022): the exact best-of-n estimator against brute force and
simulation, the KL of best-of-n, and fits that recover planted curves of both forms."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest

from align_proxy.studies import best_of_n as best_of_n_module
from align_proxy.studies import overoptimization
from align_proxy.studies.stats import intervals, power, rankings, resampling
from align_proxy.studies.best_of_n import best_of_n, kl_best_of_n, kl_best_of_n_on_support, selection_probabilities
from align_proxy.studies.overoptimization import fit_overoptimization, peak, reward_curve


@pytest.mark.parametrize("module", [best_of_n_module, overoptimization, intervals, power, rankings, resampling],
                         ids=lambda m: m.__name__)
def test_doctests_hold(module):
    failed, attempted = doctest.testmod(module)
    assert attempted > 0 and failed == 0


def brute_force(proxy: np.ndarray, gold: np.ndarray, n: int) -> tuple[float, float]:
    """Mean over every size-n subset of the gold and proxy reward of its top proxy sample (ties split evenly)."""
    golds, proxies = [], []
    for subset in itertools.combinations(range(proxy.size), n):
        top = max(proxy[i] for i in subset)
        tied = [i for i in subset if proxy[i] == top]
        golds.append(np.mean([gold[i] for i in tied]))
        proxies.append(top)
    return float(np.mean(golds)), float(np.mean(proxies))


@pytest.mark.parametrize("pool", [7, 9])
def test_best_of_n_equals_enumerating_every_subset_ties_included(pool):
    rng = np.random.default_rng(pool)
    proxy = rng.integers(0, 4, size=(5, pool)).astype(float)  # few values: many ties
    gold = rng.normal(size=(5, pool))
    result = best_of_n(proxy, gold)
    for row in range(5):
        for column, n in enumerate(result.ns):
            expected_gold, expected_proxy = brute_force(proxy[row], gold[row], n)
            assert result.gold[row, column] == pytest.approx(expected_gold, abs=1e-12)
            assert result.proxy[row, column] == pytest.approx(expected_proxy, abs=1e-12)


def test_best_of_n_agrees_with_drawing_subsets_on_a_large_pool():
    rng = np.random.default_rng(1)
    proxy, gold = rng.normal(size=256), rng.normal(size=256)
    gold = 0.6 * proxy + 0.8 * gold  # a correlated gold reward
    result = best_of_n(proxy[None, :], gold[None, :], ns=[4, 64])
    draws = 20_000
    for column, n in enumerate(result.ns):
        picks = np.array([(lambda s: s[np.argmax(proxy[s])])(rng.choice(256, n, replace=False)) for _ in range(draws)])
        simulated = gold[picks]
        error = simulated.std() / math.sqrt(draws)
        assert abs(result.gold[0, column] - simulated.mean()) < 4 * error


def test_selection_probabilities_sum_to_one_and_n_equal_to_the_pool_picks_the_top():
    proxy = np.array([0.2, 0.9, 0.1, 0.9, 0.5])
    for n in range(1, 6):
        assert selection_probabilities(proxy, n).sum() == pytest.approx(1.0)
    assert selection_probabilities(proxy, 5).tolist() == [0.0, 0.5, 0.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="1 <= n <= pool size"):
        selection_probabilities(proxy, 6)


def test_kl_of_best_of_n_matches_the_published_values():
    assert [round(kl_best_of_n(n), 3) for n in (4, 16, 64)] == [0.636, 1.835, 3.175]


def test_empirical_kl_meets_the_formula_for_distinct_samples_and_is_smaller_when_samples_repeat():
    rng = np.random.default_rng(2)
    proxy = rng.normal(size=(1, 64))
    distinct = [[f"completion {i}" for i in range(64)]]
    repeats = [[f"completion {i % 8}" for i in range(64)]]
    exact = best_of_n(proxy, proxy, ns=[4, 16], completions=distinct)
    # Subsets of a finite pool are drawn without replacement, so the pool's KL sits a little above
    # log n - (n-1)/n and meets it as the pool grows past n (64 samples, n = 4: within 0.03).
    assert exact.kl_empirical[0, 0] == pytest.approx(kl_best_of_n(4), abs=0.03)
    assert np.all(exact.kl_empirical[0] >= exact.kl_formula)
    repeated = best_of_n(proxy, proxy, ns=[4, 16], completions=repeats)
    assert np.all(repeated.kl_empirical[0] < exact.kl_empirical[0])


def test_a_gold_reward_that_is_the_proxy_itself_never_overoptimizes():
    rng = np.random.default_rng(3)
    proxy = rng.normal(size=(20, 64))
    result = best_of_n(proxy, proxy)
    assert np.all(np.diff(result.gold.mean(axis=0)) > 0)  # monotone in n: no peak
    fit = fit_overoptimization("best_of_n", result.d, result.gold_gain, n_resamples=300)
    assert fit.alpha.low > 0


@pytest.mark.parametrize("form,alpha,beta", [("best_of_n", 0.9, 0.25), ("rl", 0.6, 0.3)])
def test_fits_recover_planted_coefficients_and_their_peak(form, alpha, beta):
    d = np.sqrt(np.array([kl_best_of_n(n) for n in (1, 2, 4, 8, 16, 32, 64)] + [4.0, 6.0, 9.0]))
    rng = np.random.default_rng(4)
    rewards = reward_curve(form, alpha, beta, d)[None, :] + rng.normal(0, 0.1, size=(300, d.size))
    fit = fit_overoptimization(form, d, rewards, n_resamples=500)
    assert fit.alpha.covers(alpha) and fit.beta.covers(beta)
    assert fit.alpha.estimate == pytest.approx(alpha, abs=0.05) and fit.beta.estimate == pytest.approx(beta, abs=0.05)
    true_d, true_reward = peak(form, alpha, beta)
    assert fit.peak_d.covers(true_d) and fit.peak_reward.covers(true_reward)
    assert fit.r_squared > 0.99


def test_fit_intervals_cover_planted_coefficients_at_the_nominal_rate():
    """Prompts are the resampled unit: planted curve plus prompt-level noise, 200 studies."""
    d = np.sqrt(np.array([kl_best_of_n(n) for n in (1, 2, 4, 8, 16, 32, 64)]))
    rng = np.random.default_rng(5)
    covered = 0
    studies = 200
    for _ in range(studies):
        prompt_scale = rng.normal(1.0, 0.3, size=(60, 1))  # prompts differ in how much they gain
        rewards = prompt_scale * reward_curve("best_of_n", 0.5, 0.15, d)[None, :] + rng.normal(0, 0.2, (60, d.size))
        fit = fit_overoptimization("best_of_n", d, rewards, n_resamples=400, seed=int(rng.integers(1 << 30)))
        covered += fit.beta.covers(0.15)
    assert covered / studies >= 0.9


def test_no_peak_is_reported_when_the_gold_reward_keeps_rising():
    assert all(math.isnan(x) for x in peak("best_of_n", 1.0, -0.1))
    assert all(math.isnan(x) for x in peak("rl", 1.0, 0.0))


def test_a_peak_at_negative_d_is_the_start_itself():
    """Gold that falls from the first step peaks at d = 0 (no optimisation is best), not at a negative d."""
    assert peak("best_of_n", -0.2, 0.1) == (0.0, 0.0)
    assert peak("best_of_n", -0.2, 0.0) == (0.0, 0.0)


BON_D = np.sqrt(np.array([kl_best_of_n(n) for n in (1, 2, 4, 8, 16, 32, 64)]))


def _shared_pool_curves(rng, small: tuple[float, float], large: tuple[float, float], prompts: int = 80):
    """Two reward models' best-of-n gold gains on one pool: the prompts (how much each can gain, and its noise)
    are shared by both curves, as the samples of one pool are; each reward model adds its own noise."""
    shared = rng.normal(1.0, 0.4, size=(prompts, 1))
    noise = rng.normal(0, 0.15, size=(prompts, BON_D.size))
    curves = []
    for name, (alpha, beta) in (("small", small), ("large", large)):
        gains = shared * reward_curve("best_of_n", alpha, beta, BON_D)[None, :] + noise + \
            rng.normal(0, 0.05, size=(prompts, BON_D.size))
        gains[:, 0] = 0.0  # n = 1 is the policy itself: no gain
        curves.append(overoptimization.Curve.fitted("best_of_n", name, 1, list(range(BON_D.size)), BON_D, gains,
                                                    gains, None, 0.95, 300))
    return curves


def test_peak_shift_intervals_cover_the_true_shift_in_a_shared_pool_design():
    """200 simulated studies of the design a study's best-of-n cells have (one pool, shared prompts, two reward
    models whose peaks differ: d* 0.8 and 1.2): the shift's interval covers the true 0.4 at about its level."""
    rng = np.random.default_rng(11)
    small, large = (0.48, 0.3), (0.72, 0.3)  # d* = alpha / (2 beta) = 0.8 and 1.2
    truth = peak("best_of_n", *large)[0] - peak("best_of_n", *small)[0]
    covered = defined = 0
    for _ in range(200):
        a, b = _shared_pool_curves(rng, small, large)
        shift = overoptimization.peak_shift(a, b, n_resamples=300, seed=int(rng.integers(1 << 30)))
        defined += not math.isnan(shift.low)
        covered += shift.covers(truth)
    assert defined >= 190 and covered / defined >= 0.92


def test_a_peak_near_the_last_point_gets_an_interval_open_past_the_data_that_covers_it():
    """200 simulated best-of-n studies whose true peak (d* 1.6) lies just inside the last d (1.78): in many, some
    prompt resamples still rise at the last point. Those are censored there, not failures: every interval is
    defined, some are open above (the data do not bound them), and they cover the true d* at about their level.
    Counting any censored resample as undefined, as before, left 84 of these 200 without an interval."""
    rng = np.random.default_rng(12)
    alpha, beta = 0.96, 0.3
    truth = peak("best_of_n", alpha, beta)[0]
    covered = opened = censored = 0
    for _ in range(200):
        gains = rng.normal(1.0, 0.4, size=(80, 1)) * reward_curve("best_of_n", alpha, beta, BON_D)[None, :] + \
            rng.normal(0, 0.15, (80, BON_D.size))
        gains[:, 0] = 0.0
        fit = fit_overoptimization("best_of_n", BON_D, gains, n_resamples=300, seed=int(rng.integers(1 << 30)))
        assert not math.isnan(fit.peak_d.low) and fit.d_max == BON_D.max()
        censored += fit.beyond_data > 0
        opened += math.isinf(fit.peak_d.high)
        covered += fit.peak_d.covers(truth)
    assert censored >= 50 and 5 <= opened < censored and covered / 200 >= 0.93


def test_a_peak_shift_with_one_curve_past_the_data_stays_defined_and_covers_the_truth():
    """The shared-pool design with the larger reward model's peak near the last point (d* 0.8 and 1.6): a resample
    in which it still rises there bounds the shift from below only; the intervals cover the true 0.8. (A study
    whose larger model's own fit peaks past the data has no estimate, and no interval: it says so.)"""
    rng = np.random.default_rng(13)
    small, large = (0.48, 0.3), (0.96, 0.3)
    truth = peak("best_of_n", *large)[0] - peak("best_of_n", *small)[0]
    covered = opened = defined = 0
    for _ in range(200):
        shift = overoptimization.peak_shift(*_shared_pool_curves(rng, small, large), n_resamples=300,
                                            seed=int(rng.integers(1 << 30)))
        assert math.isnan(shift.low) == math.isnan(shift.estimate)
        defined += not math.isnan(shift.low)
        opened += math.isinf(shift.high)
        covered += shift.covers(truth)
    assert defined >= 180 and opened >= 5 and covered / defined >= 0.92  # 0.926 over 600 studies, as the shift's
    # interval does with both peaks inside the data (0.93)


def test_a_shift_where_both_curves_rise_past_the_data_is_bounded_on_neither_side():
    """One pool's gains scored by two reward models that agree, peaking near the last point: in each resample
    both fits peak together (shift 0) or both still rise at the last point, and then the shift is unknown in
    sign, so a share of those past alpha / 2 opens the interval on both sides."""
    rng = np.random.default_rng(14)
    gains = rng.normal(1.0, 0.4, size=(12, 1)) * reward_curve("best_of_n", 1.0, 0.3, BON_D)[None, :] + \
        rng.normal(0, 0.3, (12, BON_D.size))  # d* 1.67, near the last d 1.78, on 12 prompts
    gains[:, 0] = 0.0
    same = [overoptimization.Curve.fitted("best_of_n", name, 1, list(range(BON_D.size)), BON_D, gains, gains, None,
                                          0.95, 400) for name in ("small", "large")]
    assert 0.05 < same[0].fit.beyond_data < 0.95 and same[0].fit.peak_d.estimate < BON_D.max()
    shift = overoptimization.peak_shift(*same, n_resamples=400)
    assert shift.estimate == 0.0 and shift.low == -math.inf and shift.high == math.inf


def test_an_unresolved_peak_shift_says_how_many_prompts_would_resolve_it():
    from align_proxy.studies.stats import Interval

    assert overoptimization.prompts_to_resolve(Interval(0.1, -0.1, 0.3), 100) == 400  # half-width 0.2 = 2 x 0.1
    assert overoptimization.prompts_to_resolve(Interval(0.1, 0.05, 0.15), 100) is None  # resolved


def test_size_trends_fit_alpha_and_beta_against_log_parameters():
    sizes = [2e5, 8e5, 1.8e6]
    curves = []
    for size in sizes:  # alpha rises by 0.2 per decade, beta is the same at every size
        alpha = 0.3 + 0.2 * math.log10(size / 2e5)
        gains = np.tile(reward_curve("best_of_n", alpha, 0.2, BON_D), (50, 1))
        gains += np.random.default_rng(int(size)).normal(0, 0.01, gains.shape)
        curves.append(overoptimization.Curve.fitted("best_of_n", f"rm{size:g}", int(size), list(range(BON_D.size)),
                                                    BON_D, gains, gains, None, 0.95, 200))
    trends = {t.coefficient: t for t in overoptimization.size_trends(curves)}
    assert trends["alpha"].slope_per_decade.estimate == pytest.approx(0.2, abs=0.02)
    assert trends["alpha"].slope_per_decade.covers(0.2) and trends["beta"].slope_per_decade.covers(0.0)
    assert trends["alpha"].parameters == [int(s) for s in sizes]
    assert overoptimization.size_trends(curves[:2]) == []  # two sizes fix a line and leave no interval


def test_kl_on_the_policys_own_probabilities_equals_enumerating_every_draw():
    """Best-of-n of a small discrete policy, ties included, enumerated over every n-tuple of draws (a tied top is
    picked uniformly among the tied draws), against the closed form on its probabilities."""
    probability = np.array([0.5, 0.2, 0.2, 0.1])
    proxy = np.array([0.0, 1.0, 1.0, 2.0])  # two completions tie
    for n in (1, 2, 3):
        chosen = np.zeros(4)
        for draw in itertools.product(range(4), repeat=n):
            weight = np.prod(probability[list(draw)])
            top = max(proxy[i] for i in draw)
            tied = [i for i in draw if proxy[i] == top]
            for i in tied:
                chosen[i] += weight / len(tied)
        brute = float(np.sum(chosen[chosen > 0] * np.log(chosen[chosen > 0] / probability[chosen > 0])))
        exact = kl_best_of_n_on_support(proxy, np.log(probability), n)
        assert exact == pytest.approx(brute, abs=1e-12)


def test_kl_on_the_policys_probabilities_is_below_the_formula_and_small_when_the_policy_concentrates():
    rng = np.random.default_rng(3)
    for n in (2, 4, 16, 64):
        spread = kl_best_of_n_on_support(rng.normal(size=50), rng.normal(size=50), n)
        peaked = kl_best_of_n_on_support(rng.normal(size=50), np.r_[0.0, np.full(49, -8.0)], n)
        assert peaked < spread <= kl_best_of_n(n) + 1e-12
