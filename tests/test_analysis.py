"""A study's analysis on synthetic cells with planted effects: verdicts, transfer, rank agreement,
the gain-vs-scale fit, completeness and strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from align_proxy.studies.analysis import analyse
from align_proxy.studies.report.prose import conclusion, confidence
from align_proxy.studies.stats import Interval
from align_proxy.studies.store import CellResult
from support import MODELS, PRIMARY, TARGET, diverging, everywhere, gain_of, headline, planted_cells

def transfer_of(analysis: dict, recipe: str, small: str, large: str, metric: str = "task_accuracy") -> dict:
    return next(t for t in analysis.transfer if (t.recipe, t.metric, t.small, t.large) ==
                (recipe, metric, small, large))


def test_a_gain_at_every_scale_helps_everywhere_and_transfers():
    cells = planted_cells("sft", {"lr=high": everywhere(0.2), "lr=low": everywhere(0.1)})
    h = headline(analyse(cells, MODELS, PRIMARY, target=TARGET), "sft")
    assert [s.verdict for s in h.scales] == ["helps"] * 3
    assert all(v.verdict == "helps" for s in h.scales for v in s.variants.values())
    assert [s.best_variant for s in h.scales] == ["lr=high"] * 3
    assert h.transfer.transfers == "yes"
    assert h.transfer.rank_agreement.decision_accuracy == 1.0
    assert confidence(h) == "high"
    assert h.prediction.gain.estimate == pytest.approx(0.2, abs=1e-9)
    assert conclusion(h).startswith("worth a large run: helps at every scale; lr=high best at both ends (P 1.00")
    assert "climb-350m" in conclusion(h)


def test_zero_gain_is_unclear_and_its_interval_covers_zero():
    analysis = analyse(planted_cells("dpo", {"beta=0.1": everywhere(0.0)}), MODELS, PRIMARY, target=TARGET)
    for model in MODELS:
        g = gain_of(analysis, "dpo", "beta=0.1", model)
        assert g.verdict == "unclear"
        assert g.gain.low < 0 < g.gain.high
    h = headline(analysis, "dpo")
    assert h.transfer.transfers == "unclear" and confidence(h) == "low"
    assert conclusion(h).startswith("no evidence yet to justify a large run: no clear effect at every scale")


def test_gain_interval_is_the_mean_over_seeds_with_a_two_level_interval():
    g = gain_of(analyse(planted_cells("sft", {"a": everywhere(0.2)}), MODELS, PRIMARY), "sft", "a", "ladder-m")
    assert g.gain.estimate == pytest.approx(0.2)
    assert g.gain.low < 0.2 < g.gain.high
    assert (g.n_seeds, g.seeds, g.per_item, g.n_items) == (3, [0, 1, 2], True, 60)
    assert g.trained_mean - g.base_mean == pytest.approx(0.2)


def test_identical_variant_ordering_at_both_ends_has_decision_accuracy_one():
    gains = {"a": {"ladder-s": 0.05, "ladder-l": 0.10}, "b": {"ladder-s": 0.10, "ladder-l": 0.20},
             "c": {"ladder-s": 0.15, "ladder-l": 0.40}}
    t = transfer_of(analyse(planted_cells("sft", gains), MODELS, PRIMARY), "sft", "ladder-s", "ladder-l")
    assert t.rank_agreement.decision_accuracy == 1.0
    assert t.rank_agreement.kendall == pytest.approx(1.0)
    assert t.sign_agreement == 1.0
    assert t.ratios["a"].estimate == pytest.approx(2.0)


def test_reversed_variant_ordering_has_decision_accuracy_zero_and_names_both_best_variants():
    gains = {"a": {"ladder-s": 0.05, "ladder-l": 0.40}, "b": {"ladder-s": 0.10, "ladder-l": 0.20},
             "c": {"ladder-s": 0.15, "ladder-l": 0.10}}
    analysis = analyse(planted_cells("sft", gains), MODELS, PRIMARY)
    t = transfer_of(analysis, "sft", "ladder-s", "ladder-l")
    assert t.rank_agreement.decision_accuracy == 0.0
    assert t.rank_agreement.kendall == pytest.approx(-1.0)
    h = headline(analysis, "sft")
    assert h.recommended_variant == "a"
    assert h.transfer.ordering == "changes"
    assert ("best variant changes: c at ladder-s (P 0.99), a at ladder-l (P 1.00); decision accuracy 0.00"
            in conclusion(h))
    assert h.transfer.rank_intervals.decision_accuracy == Interval(0.0, 0.0, 0.0)


def test_a_log_linear_trend_is_fitted_and_predicted_at_the_target():
    slope, intercept = 0.05, -0.2
    planted = {m: intercept + slope * math.log10(p) for m, p in MODELS.items()}
    analysis = analyse(planted_cells("sft", {"a": planted}), MODELS, PRIMARY, target=TARGET)
    fit = next(f for f in analysis.fits if f.metric == "task_accuracy")
    assert fit.slope == pytest.approx(slope, abs=1e-9)
    assert fit.intercept == pytest.approx(intercept, abs=1e-9)
    assert fit.n_points == 3  # one point per model: its seeds share items, they are not independent points
    expected = intercept + slope * math.log10(TARGET[1])
    assert fit.prediction.estimate == pytest.approx(expected, abs=1e-9)
    assert fit.prediction.low < expected < fit.prediction.high
    assert fit.extrapolation_factor == pytest.approx(TARGET[1] / MODELS["ladder-l"])
    assert headline(analysis, "sft").prediction.gain == fit.prediction


def _fit_predicting(gain: Interval):
    from align_proxy.studies.analysis import Fit

    return Fit(recipe="sft", variant="a", metric="m", points=[], slope=0.0, slope_interval=gain, intercept=0.0,
               r_squared=1.0, n_points=3, degrees_of_freedom=1, lack_of_fit=0.0, target="big",
               target_parameters=1e9, extrapolation_factor=2.0, prediction=gain, measurement=gain,
               probability_positive=0.9, prediction_trusted=None)


@pytest.mark.parametrize("metric, bounded", [("task_accuracy", True), ("preference_accuracy", True),
                                             ("completion_nll", False), ("lm_eval:arith_mc/acc", False),
                                             ("my_reward", False), ("my_accuracy", True)])
def test_a_prediction_is_held_to_the_gains_its_metrics_bounds_allow(metric, bounded):
    """The bounds come from the metric table (`metrics.Metric.bounds`): an accuracy gains at most 1; an NLL, an
    lm-eval score and an unknown metric are not held to a range (a name the table lacks that says accuracy is)."""
    from align_proxy.studies.analysis.fits import prediction

    said = prediction(_fit_predicting(Interval(0.5, -0.2, 1.4)), metric)
    assert (said.trusted, said.beyond_range) == (not bounded, bounded)
    assert prediction(_fit_predicting(Interval(0.5, -0.2, 0.9)), metric).trusted


def test_fits_are_reported_without_a_prediction_when_no_target_is_named():
    analysis = analyse(planted_cells("sft", {"a": everywhere(0.1)}), MODELS, PRIMARY, target=None)
    assert analysis.fits and all(f.prediction is None and f.slope is not None for f in analysis.fits)
    assert headline(analysis, "sft").prediction is None


def test_two_sizes_give_no_fit():
    gains = {"a": {"ladder-s": 0.1, "ladder-l": 0.2}}
    assert analyse(planted_cells("sft", gains), MODELS, PRIMARY, target=TARGET).fits == []


def test_a_partial_study_lists_its_missing_cells():
    cells = planted_cells("sft", {"a": everywhere(0.2)})
    partial = [c for c in cells if not (c.model == "ladder-l" or (c.model == "ladder-m" and c.seed == 2))]
    completeness = analyse(partial, MODELS, PRIMARY).completeness
    assert (completeness.expected, completeness.done, completeness.complete) == (9, 5, False)
    assert completeness.models_without_results == ["ladder-l"]
    assert {(m.model, m.seed) for m in completeness.missing} == {
        ("ladder-m", 2), ("ladder-l", 0), ("ladder-l", 1), ("ladder-l", 2)}
    rows = {r.model: (r.done, r.expected) for r in completeness.by_recipe_model}
    assert rows == {"ladder-s": (3, 3), "ladder-m": (2, 3), "ladder-l": (0, 3)}


def test_completeness_takes_statuses_from_the_study_cells_when_given():
    cells = planted_cells("sft", {"a": {"ladder-s": 0.2}}, seeds=(0,))
    study = [{"recipe": "sft", "variant": "a", "model": m, "seed": 0, "status": s}
             for m, s in (("ladder-s", "done"), ("ladder-m", "failed"), ("ladder-l", "pending"))]
    completeness = analyse(cells, MODELS, PRIMARY, cells=study).completeness
    assert completeness.expected_from == "study cells"
    assert [(m.model, m.status) for m in completeness.missing] == [("ladder-l", "pending"),
                                                                            ("ladder-m", "failed")]


def test_a_complete_study_says_so():
    completeness = analyse(planted_cells("sft", {"a": everywhere(0.2)}), MODELS, PRIMARY).completeness
    assert completeness.complete and completeness.missing == []


def test_a_drop_in_a_lower_is_better_metric_helps():
    better = planted_cells("sft", {"a": everywhere(-0.3)}, metric="completion_nll", base_level=1.2)
    worse = planted_cells("dpo", {"b": everywhere(0.3)}, metric="completion_nll", base_level=1.2)
    analysis = analyse(better + worse, MODELS, {"sft": "completion_nll", "dpo": "completion_nll"})
    g = gain_of(analysis, "sft", "a", "ladder-s", "completion_nll")
    assert (g.direction, g.verdict, g.improvement) == ("better", "helps", pytest.approx(0.3))
    assert gain_of(analysis, "dpo", "b", "ladder-s", "completion_nll").verdict == "hurts"
    assert analysis.metrics["completion_nll"].higher_is_better is False
    assert conclusion(headline(analysis, "dpo")).startswith("do not spend a large run on it: hurts at every scale")


def test_the_best_variant_of_a_lower_is_better_metric_is_the_largest_drop():
    gains = {"small-drop": everywhere(-0.1), "big-drop": everywhere(-0.4)}
    analysis = analyse(planted_cells("sft", gains, metric="completion_nll"), MODELS, {"sft": "completion_nll"})
    assert {s.best_variant for s in headline(analysis, "sft").scales} == {"big-drop"}


def test_without_item_scores_each_seed_counts_as_one_value():
    cells = [CellResult(c.config_hash, c.model, c.parameters, c.recipe, c.variant, c.seed, c.base, c.trained)
             for c in planted_cells("sft", {"a": everywhere(0.2)})]
    g = gain_of(analyse(cells, MODELS, PRIMARY), "sft", "a", "ladder-s")
    assert (g.per_item, g.n_items) == (False, 0)
    assert g.gain.estimate == pytest.approx(0.2)
    # Three seed values (0.19, 0.20, 0.21) and no items: the t interval over seeds, 2 degrees of freedom.
    half = 4.303 * 0.01 / math.sqrt(3)
    assert g.gain.low == pytest.approx(0.2 - half, abs=0.003)
    assert g.gain.high == pytest.approx(0.2 + half, abs=0.003)


def test_one_seed_without_item_scores_is_unclear():
    cells = [CellResult(c.config_hash, c.model, c.parameters, c.recipe, c.variant, c.seed, c.base, c.trained)
             for c in planted_cells("sft", {"a": everywhere(0.2)}, seeds=(0,))]
    assert gain_of(analyse(cells, MODELS, PRIMARY), "sft", "a", "ladder-s").verdict == "unclear"


def test_base_scores_are_per_recipe_and_count_a_shared_evaluation_once():
    cells = planted_cells("sft", {"a": everywhere(0.2), "b": everywhere(0.1)}, n_items=40)
    base = analyse(cells, MODELS, PRIMARY).base
    row = next(b for b in base if (b.recipe, b.model) == ("sft", "ladder-s"))
    assert row.n_evaluations == 1  # 2 variants x 3 seeds, one shared base evaluation
    expected = np.random.default_rng(MODELS["ladder-s"]).normal(0.5, 0.1, 40).mean()
    assert row.base.estimate == pytest.approx(expected)
    assert row.base.low < expected < row.base.high


def test_every_number_dumps_as_strict_json_with_undefined_values_as_null():
    cells = (planted_cells("sft", {"a": everywhere(0.0)}) +  # undefined ratios, single-variant rank agreement
             planted_cells("reward", {"r": {"ladder-s": 0.1}}, metric="preference_accuracy"))
    analysis = analyse(cells, MODELS, PRIMARY, target=TARGET)
    document = analysis.to_json()
    text = json.dumps(document, allow_nan=False)
    assert json.loads(text) == document
    assert set(document) == {"schema", "confidence", "n_resamples", "resolved_threshold", "models", "target",
                             "seeds", "recipes", "metrics", "completeness", "headline", "base", "gains",
                             "orderings", "transfer", "metric_trust", "fits", "gap_closed", "overoptimization"}
    assert math.isnan(transfer_of(analysis, "sft", "ladder-s", "ladder-l").ratios["a"].estimate)
    sft_transfer = next(t for t in document["transfer"] if t["recipe"] == "sft" and t["large"] == "ladder-l"
                        and t["small"] == "ladder-s")
    assert sft_transfer["ratios"]["a"] == {"estimate": None, "low": None, "high": None}
    assert headline(analysis, "reward").transfer is None
    assert "only ladder-s has results" in conclusion(headline(analysis, "reward"))


def test_models_are_ordered_by_parameters():
    shuffled = {"ladder-l": MODELS["ladder-l"], "ladder-s": MODELS["ladder-s"], "ladder-m": MODELS["ladder-m"]}
    analysis = analyse(planted_cells("sft", {"a": everywhere(0.2)}), shuffled, PRIMARY)
    assert [m.name for m in analysis.models] == ["ladder-s", "ladder-m", "ladder-l"]
    assert [s.model for s in headline(analysis, "sft").scales] == ["ladder-s", "ladder-m", "ladder-l"]


# --- orderings, power, divergence, metric trust, extrapolation ------------------------------------------

def test_variants_inside_the_noise_are_not_called_a_change_of_winner():
    # Equal true gains at both ends: whichever leads by chance, the headline must not say the winner changes.
    gains = {"a": everywhere(0.10), "b": everywhere(0.10)}
    h = headline(analyse(planted_cells("sft", gains, noise=0.3), MODELS, PRIMARY), "sft")
    assert h.transfer.ordering == "not resolved"
    assert "best variant changes" not in conclusion(h)
    assert "variants not distinguishable at ladder-s" in conclusion(h)
    assert all(0.05 < s.p_best < 0.95 for s in h.scales)


def test_an_ordering_probability_is_the_share_of_resamples_a_variant_wins():
    analysis = analyse(planted_cells("sft", {"a": everywhere(0.3), "b": everywhere(0.1)}), MODELS, PRIMARY)
    ordering = next(o for o in analysis.orderings if o.model == "ladder-m")
    assert ordering.leader == "a" and ordering.resolved
    assert ordering.p_best["a"] + ordering.p_best["b"] == pytest.approx(1.0)
    assert ordering.p_beats["a"]["b"] == pytest.approx(ordering.p_best["a"])


def test_an_unclear_gain_says_how_many_seeds_or_items_would_resolve_it():
    analysis = analyse(planted_cells("dpo", {"b": everywhere(0.01)}, noise=0.3), MODELS, PRIMARY)
    g = gain_of(analysis, "dpo", "b", "ladder-m")
    assert g.verdict == "unclear"
    power = g.power
    assert power.items is not None and power.items > 60
    assert power.detectable > abs(g.gain.estimate)
    assert "needs about" in conclusion(headline(analysis, "dpo"))


def test_a_variant_diverging_at_the_largest_rung_is_a_result_not_a_gap():
    cells = diverging(planted_cells("sft", {"lr=high": everywhere(0.2), "lr=low": everywhere(0.1)}),
                      "lr=high", "ladder-l")
    analysis = analyse(cells, MODELS, PRIMARY, target=TARGET)
    g = gain_of(analysis, "sft", "lr=high", "ladder-l")
    assert g.verdict == "diverges" and g.diverged.seeds == 3 and g.diverged.step == 7
    h = headline(analysis, "sft")
    largest = h.scales[-1]
    assert largest.best_variant == "lr=low" and largest.verdict == "helps"
    assert largest.p_best == 1.0  # a diverging variant loses every resample
    assert "lr=high diverges at ladder-l (3/3 seeds; loss 1.5e+05 at step 7)" in conclusion(h)
    assert h.transfer.ordering == "changes"
    assert analysis.completeness.complete
    json.dumps(analysis.to_json(), allow_nan=False)


def test_a_recipe_whose_every_variant_diverges_at_a_rung_diverges_there():
    cells = diverging(planted_cells("sft", {"lr=high": everywhere(0.2)}), "lr=high", "ladder-l")
    h = headline(analyse(cells, MODELS, PRIMARY), "sft")
    assert [s.verdict for s in h.scales] == ["helps", "helps", "diverges"]
    assert h.transfer.transfers == "no"
    assert conclusion(h).startswith("do not spend a large run on it: helps at ladder-s, ladder-m; diverges at ladder-l")


def test_one_diverged_seed_marks_the_variant_and_keeps_the_other_seeds_gain():
    cells = diverging(planted_cells("sft", {"a": everywhere(0.2), "b": everywhere(0.1)}), "a", "ladder-m", seeds=(1,))
    g = gain_of(analyse(cells, MODELS, PRIMARY), "sft", "a", "ladder-m")
    assert (g.verdict, g.n_seeds, g.diverged.seeds, g.diverged.of) == ("diverges", 2, 1, 3)
    assert g.gain.estimate == pytest.approx(0.2, abs=0.02)


def test_each_small_scale_metric_is_scored_on_how_it_predicts_the_largest_ordering():
    agree = {"a": {"ladder-s": 0.1, "ladder-m": 0.1, "ladder-l": 0.1}, "b": {"ladder-s": 0.3, "ladder-m": 0.3,
                                                                            "ladder-l": 0.3}}
    # completion NLL at the smallest rung orders the variants the other way (b drops NLL less).
    nll = {"a": everywhere(-0.4), "b": everywhere(-0.1)}
    cells = planted_cells("sft", agree) + planted_cells("sft", nll, metric="completion_nll", base_level=1.5)
    merged = {}
    for c in cells:
        key = (c.variant, c.model, c.seed)
        if key in merged:
            m = merged[key]
            c = CellResult(m.config_hash, m.model, m.parameters, m.recipe, m.variant, m.seed, {**m.base, **c.base},
                           {**m.trained, **c.trained}, {**m.items_base, **c.items_base},
                           {**m.items_trained, **c.items_trained}, m.log_history, m.duration_s)
        merged[key] = c
    trust = analyse(list(merged.values()), MODELS, PRIMARY).metric_trust
    candidates = {c.metric: c.decision_accuracy for c in trust[0].candidates}
    assert trust[0].judged == "task_accuracy" and trust[0].small == "ladder-s"
    assert candidates["task_accuracy"].estimate == 1.0 and candidates["task_accuracy"].low == 1.0
    assert candidates["completion_nll"].estimate == 0.0 and candidates["completion_nll"].high == 0.0


def test_a_prediction_beyond_the_metrics_range_is_given_as_a_direction_with_its_probability():
    steep = {"ladder-s": 0.05, "ladder-m": 0.2, "ladder-l": 0.33}  # extrapolates past +1 at the target
    h = headline(analyse(planted_cells("reward", {"a": steep}, metric="preference_accuracy"), MODELS,
                         {"reward": "preference_accuracy"}, target=TARGET), "reward")
    p = h.prediction
    assert not p.trusted and p.direction == "helps" and 0.5 < p.direction_probability <= 1.0
    assert "range an accuracy can gain" in p.untrusted_because
    assert f"the trend says helps with probability {p.direction_probability:.2f}" in conclusion(h)
    assert "predicted +" not in conclusion(h)


def test_records_json_form_doctest_holds():
    import doctest

    from align_proxy.studies import record

    failed, attempted = doctest.testmod(record)
    assert attempted > 0 and failed == 0


