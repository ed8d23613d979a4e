"""Transfer statistics: crossed intervals, ordering probabilities, power, gain ratios, rank agreement and the
gain-vs-scale fit. Their coverage in the study's design is in test_calibration.py."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from align_proxy.studies.stats import (
    CrossedResampler,
    VarianceParts,
    decision_accuracy,
    gain_interval,
    probability_greater,
    rank_agreement,
    ratio_interval,
    required_design,
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


def test_intervals_are_deterministic_for_a_seed():
    gains = seeds_of(np.random.default_rng(3), 0.05)
    assert gain_interval(gains, n_resamples=N, seed=7) == gain_interval(gains, n_resamples=N, seed=7)
    assert gain_interval(gains, n_resamples=N, seed=7) != gain_interval(gains, n_resamples=N, seed=8)


def test_a_single_seed_resamples_items_and_a_single_value_has_no_interval():
    one_seed = gain_interval([np.array([0.0, 1.0, 0.0, 1.0])], n_resamples=N)
    assert one_seed.low < 0.5 < one_seed.high
    single = gain_interval([np.array([0.3])], n_resamples=N)
    assert single.estimate == 0.3 and math.isnan(single.low) and math.isnan(single.high)


def test_empty_gains_raise():
    with pytest.raises(ValueError, match="at least one"):
        gain_interval([])
    with pytest.raises(ValueError, match="at least one"):
        gain_interval([np.array([0.1]), np.array([])])


def test_items_shared_by_seeds_widen_the_interval_beyond_independent_resampling():
    # Every seed scored on the same items: a hard item is hard for all of them, so item noise does not
    # average away over seeds. Three identical seeds carry exactly one seed's item information.
    items = np.random.default_rng(9).choice([-1.0, 0.0, 1.0], size=200)
    shared = gain_interval([items, items, items], n_resamples=N)
    alone = gain_interval([items], n_resamples=N)
    assert shared.high - shared.low == pytest.approx(alone.high - alone.low, rel=0.1)


def test_a_dominant_seed_effect_gives_a_t_interval_over_seeds():
    # Seeds differ by whole offsets and items add nothing: the interval is the mean's t interval with S-1 df.
    offsets = np.array([0.10, 0.15, 0.26])
    seeds = [np.full(50, o) for o in offsets]
    interval = gain_interval(seeds, n_resamples=20_000)
    half = float(stats.t.ppf(0.975, 2)) * offsets.std(ddof=1) / math.sqrt(3)
    assert interval.low == pytest.approx(offsets.mean() - half, abs=0.01)
    assert interval.high == pytest.approx(offsets.mean() + half, abs=0.01)


def test_variance_parts_separate_items_seeds_and_their_interaction():
    rng = np.random.default_rng(10)
    item, seed = rng.normal(0, 0.5, 4000), np.array([-0.2, 0.0, 0.2, 0.4])
    matrix = 1.0 + item[None, :] + seed[:, None] + rng.normal(0, 0.3, (4, 4000))
    parts = VarianceParts.of(matrix)
    assert parts.residual_var == pytest.approx(0.09, rel=0.05)
    assert parts.item_var == pytest.approx(0.25 + 0.09 / 4, rel=0.1)
    assert parts.seed_var == pytest.approx(seed.var(ddof=1), rel=0.05)


def test_metrics_of_the_same_runs_share_their_seed_draw():
    # A lucky seed is lucky on every metric: replicates of two metrics of one group move together.
    resampler = CrossedResampler(2000, seed=0)
    seeds = np.array([[0.1], [0.3], [0.5]])
    a = resampler.replicates(seeds, ("sft", "v", "m"))
    b = resampler.replicates(-2 * seeds, ("sft", "v", "m"))
    other = resampler.replicates(seeds, ("sft", "w", "m"))
    assert np.corrcoef(a, b)[0, 1] == pytest.approx(-1.0)
    assert abs(np.corrcoef(a, other)[0, 1]) < 0.1


def test_probability_greater_counts_ties_half():
    assert probability_greater(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == 0.75


def test_power_asks_for_more_seeds_when_seeds_dominate_and_more_items_when_items_do():
    seedy = VarianceParts(0.05, 3, 200, item_var=0.001, seed_var=0.004, residual_var=0.0)
    power = required_design(seedy, 0.05)
    assert power.seeds is not None and power.seeds > 3
    assert power.items is None  # the seed spread alone is too large for any item count
    itemy = VarianceParts(0.05, 3, 200, item_var=0.4, seed_var=0.0, residual_var=0.0)
    power = required_design(itemy, 0.05)
    assert power.items is not None and power.items > 200
    assert power.seeds is None  # shared items: more seeds do not shrink their noise
    assert power.detectable > 0.05


def test_power_design_reaches_the_required_standard_error():
    # By hand: at 200 items the item part is (0.01 - 0.006/3)/200 = 4e-5, and 0.03 / (1.96 + 0.84) squared is
    # 1.15e-4, so the seed part 0.0005/S must stay under 7.5e-5: S >= 7 with normal quantiles, a little more
    # with the t quantile of the design's few degrees of freedom.
    parts = VarianceParts(0.03, 3, 200, item_var=0.01, seed_var=0.0005, residual_var=0.006)
    power = required_design(parts, 0.03)
    assert power.seeds in (7, 8, 9)
    assert parts.standard_error_at(power.seeds, 200) <= 0.03 / (1.96 + 0.84)


def test_decision_accuracy_works_on_replicate_rows():
    small = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    large = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    assert decision_accuracy(small, large).tolist() == [1.0, 0.0]


def test_ratio_of_planted_doubled_gain_is_near_two():
    rng = np.random.default_rng(4)
    small = np.concatenate([[0.2], rng.normal(0.2, 0.01, 2000)])
    large = np.concatenate([[0.4], 2 * small[1:] + rng.normal(0, 0.005, 2000)])
    interval = ratio_interval(small, large)
    assert interval.estimate == pytest.approx(2.0)
    assert interval.covers(2.0) and interval.high - interval.low < 0.3


def test_ratio_with_a_small_gain_crossing_zero_is_nan():
    rng = np.random.default_rng(5)
    small = np.concatenate([[0.01], rng.normal(0.01, 0.05, 2000)])
    interval = ratio_interval(small, np.concatenate([[0.4], rng.normal(0.4, 0.05, 2000)]))
    assert all(math.isnan(v) for v in (interval.estimate, interval.low, interval.high))
    assert interval.to_json() == {"estimate": None, "low": None, "high": None}  # report.json's null
    assert not interval.covers(0.0)


def test_a_zero_replicate_in_the_outer_tail_leaves_the_ratio_defined_and_warns_nothing():
    # Discrete per-item scores make an exact-zero replicate of the small gain possible far out in its tail.
    rng = np.random.default_rng(7)
    small = np.concatenate([[0.2], rng.normal(0.2, 0.01, 2000)])
    large = np.concatenate([[0.4], 2 * small[1:] + rng.normal(0, 0.005, 2000)])
    small[1:4] = [0.0, 0.0, -0.01]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interval = ratio_interval(small, large)
    assert interval.covers(2.0) and interval.high - interval.low < 0.3
    small[1] = large[1] = 0.0  # 0/0 says nothing: undefined
    assert math.isnan(ratio_interval(small, large).low)


def test_power_gives_a_joint_design_when_neither_seeds_nor_items_alone_suffice():
    # Item noise too large for more seeds to help, seed spread too large (at 3 seeds) for more items to help.
    parts = VarianceParts(-0.053, 3, 200, item_var=0.164, seed_var=0.001, residual_var=0.1)
    power = required_design(parts, -0.053)
    assert power.seeds is None and power.items is None
    seeds, items = power.together
    assert seeds > 3 and items > 200
    assert parts.standard_error_at(seeds, items) <= 0.053 / (1.96 + 0.84)
