"""Transfer statistics: bootstrap intervals, gain ratios, rank agreement and the gain-vs-scale fit."""

import math

import numpy as np
import pytest

from align_proxy.studies.stats import (
    Interval,
    fit_gain_vs_scale,
    gain_interval,
    rank_agreement,
    ratio_interval,
    sign_agreement,
)

N = 1000


def seeds_of(rng, mean, n_seeds=3, n_items=100, spread=0.3):
    return [rng.normal(mean, spread, n_items) for _ in range(n_seeds)]


def test_identical_orderings_agree_perfectly():
    small = {"a": 0.01, "b": 0.02, "c": 0.05, "d": 0.08}
    large = {"a": 0.10, "b": 0.20, "c": 0.30, "d": 0.90}
    r = rank_agreement(small, large)
    assert r["kendall"] == pytest.approx(1.0)
    assert r["spearman"] == pytest.approx(1.0)
    assert r["decision_accuracy"] == 1.0
    assert r["n_variants"] == 4


def test_reversed_orderings_disagree_completely():
    small = {"a": 0.01, "b": 0.02, "c": 0.05, "d": 0.08}
    large = {"a": 0.9, "b": 0.3, "c": 0.2, "d": 0.1}
    r = rank_agreement(small, large)
    assert r["kendall"] == pytest.approx(-1.0)
    assert r["decision_accuracy"] == 0.0


def test_ties_count_half_in_decision_accuracy():
    # Pairs: (a,b) tied at large -> 0.5, (a,c) agree -> 1, (b,c) agree -> 1.
    r = rank_agreement({"a": 0.1, "b": 0.2, "c": 0.3}, {"a": 1.0, "b": 1.0, "c": 2.0})
    assert r["decision_accuracy"] == pytest.approx(2.5 / 3)


def test_rank_agreement_uses_only_shared_variants_and_is_nan_below_two():
    r = rank_agreement({"a": 0.1, "x": 0.5}, {"a": 0.2, "y": 0.1})
    assert r["n_variants"] == 1
    assert all(math.isnan(r[k]) for k in ("spearman", "kendall", "decision_accuracy"))


def test_two_variants_with_constant_gains_give_nan_correlation_without_warning(recwarn):
    r = rank_agreement({"a": 0.1, "b": 0.1}, {"a": 0.2, "b": 0.3})
    assert math.isnan(r["spearman"]) and math.isnan(r["kendall"])
    assert r["decision_accuracy"] == 0.5
    assert len(recwarn) == 0


def test_sign_agreement_counts_shared_variants_with_zero_as_its_own_sign():
    small = {"a": 0.1, "b": -0.2, "c": 0.0, "d": 0.0, "only_small": 1.0}
    large = {"a": 0.3, "b": 0.1, "c": 0.0, "d": 0.2, "only_large": 1.0}
    assert sign_agreement(small, large) == pytest.approx(2 / 4)


def test_zero_gain_interval_covers_zero():
    rng = np.random.default_rng(1)
    gains = [rng.choice([-1.0, 0.0, 1.0], size=150) for _ in range(3)]
    interval = gain_interval(gains, n_resamples=N)
    assert interval.low < interval.estimate < interval.high
    assert interval.covers(0.0)


def test_clearly_positive_gain_interval_excludes_zero():
    interval = gain_interval(seeds_of(np.random.default_rng(2), 0.2), n_resamples=N)
    assert interval.low > 0
    assert not interval.covers(0.0)


def test_bootstrap_is_deterministic_for_a_seed():
    gains = seeds_of(np.random.default_rng(3), 0.05)
    assert gain_interval(gains, n_resamples=N, seed=7) == gain_interval(gains, n_resamples=N, seed=7)
    assert gain_interval(gains, n_resamples=N, seed=7) != gain_interval(gains, n_resamples=N, seed=8)


def test_single_seed_resamples_items_and_single_value_is_degenerate():
    one_seed = gain_interval([np.array([0.0, 1.0, 0.0, 1.0])], n_resamples=N)
    assert one_seed.low < 0.5 < one_seed.high
    assert gain_interval([np.array([0.3])], n_resamples=N) == Interval(0.3, 0.3, 0.3)


def test_empty_gains_raise():
    with pytest.raises(ValueError, match="at least one"):
        gain_interval([])
    with pytest.raises(ValueError, match="at least one"):
        gain_interval([np.array([0.1]), np.array([])])


def test_ratio_of_planted_doubled_gain_is_near_two():
    rng = np.random.default_rng(4)
    interval = ratio_interval(seeds_of(rng, 0.2, spread=0.05), seeds_of(rng, 0.4, spread=0.05), n_resamples=N)
    assert interval.estimate == pytest.approx(2.0, abs=0.1)
    assert interval.covers(2.0)


def test_ratio_with_zero_small_gain_is_nan():
    small = [np.array([-0.1, 0.1]), np.array([0.1, -0.1])]
    interval = ratio_interval(small, seeds_of(np.random.default_rng(5), 0.4), n_resamples=N)
    assert all(math.isnan(v) for v in interval.to_dict().values())
    assert not interval.covers(0.0)


def test_planted_log_linear_trend_is_recovered():
    rng = np.random.default_rng(6)
    params = np.array([1e6, 5e6, 2e7, 1e8, 5e8])
    gains = 0.05 + 0.02 * np.log10(params) + rng.normal(0, 0.002, params.size)
    fit = fit_gain_vs_scale(list(params), list(gains), target_parameters=7e9)
    assert fit.slope == pytest.approx(0.02, abs=0.003)
    assert fit.intercept == pytest.approx(0.05, abs=0.02)
    assert fit.r_squared > 0.95 and fit.n_points == 5
    assert fit.prediction.covers(0.05 + 0.02 * math.log10(7e9))
    assert fit.prediction.high - fit.prediction.low > 0


def test_fewer_than_three_sizes_raise():
    with pytest.raises(ValueError, match="3 distinct"):
        fit_gain_vs_scale([1e6, 1e6, 1e7, 1e7], [0.1, 0.11, 0.2, 0.21], target_parameters=1e9)
