"""Which setting at the target size: a hyperparameter's optimum per rung (a quadratic in its log through the grid's
gains, refitted on the study's crossed replicates), its path across sizes and its prediction at the target, on
planted studies through `analyse` (the prediction's coverage in the study's design is in tests/test_calibration.py)."""

import math

import numpy as np
import pytest

from align_proxy.studies.analysis.optima import parse_variant
from align_proxy.studies.calibration import TARGET, OptimumDesign

def only_optimum(design: OptimumDesign, seed: int = 0):
    (optimum,) = design.analyse(np.random.default_rng(seed)).optima
    return optimum


def test_an_optimum_that_falls_as_n_to_the_minus_half_is_recovered():
    optimum = only_optimum(OptimumDesign(exponent=-0.5))
    assert optimum.located and optimum.key == "learning_rate" and optimum.scale == "log10"
    assert optimum.exponent.covers(-0.5) and abs(optimum.exponent.estimate + 0.5) < 0.2, optimum.exponent
    for rung in optimum.rungs:  # each rung's own optimum, closed and around the planted one
        truth = 10 ** OptimumDesign().optimum(rung.parameters)
        assert rung.edge is None and rung.optimum.covers(truth), (rung.model, rung.optimum, truth)
    assert optimum.prediction.covers(10 ** OptimumDesign().optimum(TARGET[1]))
    # Keeping the smallest rung's best costs what the curvature says: a loss, as far as the data can tell.
    assert optimum.cost_of_keeping.estimate < 0 and optimum.smallest_best == optimum.rungs[0].optimum.estimate


def test_an_optimum_that_does_not_move_gives_a_slope_interval_covering_zero():
    optimum = only_optimum(OptimumDesign(exponent=0.0))
    assert optimum.located and optimum.exponent.covers(0.0), optimum.exponent
    assert optimum.cost_of_keeping.high == 0.0  # keeping the smallest rung's best may cost nothing


def test_an_optimum_beyond_the_grid_is_open_on_that_side_never_a_number_inside_it():
    optimum = only_optimum(OptimumDesign(exponent=0.0, optimum_at_smallest=-0.5))  # grid tops out at 10^-1.5
    assert not optimum.located and optimum.prediction is None and optimum.exponent is None
    assert "extend the grid above it (next: 0.1)" in optimum.not_located_because
    top = 10 ** -1.5
    for rung in optimum.rungs:
        assert rung.edge == "above" and rung.optimum.estimate == pytest.approx(top) and rung.optimum.high == math.inf
    report = optimum.to_json()  # an open side is null in report.json, never a number
    assert report["rungs"][0]["optimum"]["high"] is None


def test_grid_variant_names_read_back_as_settings():
    assert parse_variant("beta=0.1,learning_rate=0.0001") == {"beta": 0.1, "learning_rate": 1e-4}
    assert parse_variant("loss_type=sigmoid") == {"loss_type": "sigmoid"} and parse_variant("default") == {}


def test_the_report_has_the_optimum_table_plot_and_lines_and_the_console_prints_them_after_the_headline(tmp_path):
    import io
    import json

    from rich.console import Console

    from align_proxy.studies.analysis import analyse
    from align_proxy.studies.report import write_report
    from align_proxy.studies.report.console import print_report
    from align_proxy.studies.runner import WrittenReport

    design = OptimumDesign()
    cells = design.cells(np.random.default_rng(0))
    analysis = analyse(cells, dict(design.rungs), {"sft": design.metric}, target=TARGET, n_resamples=300)
    files = write_report(tmp_path, analysis, cells, "lr transfer")
    (optimum,) = json.loads(files["json"].read_text())["optima"]
    assert optimum["key"] == "learning_rate" and optimum["located"] and len(optimum["rungs"]) == 3
    markdown = files["markdown"].read_text()
    assert "Which setting at the target size" in markdown and "sft learning_rate: at climb-350m " in markdown
    assert (tmp_path / "plots" / "optima.png").stat().st_size > 10_000
    out = io.StringIO()
    print_report(Console(file=out, width=120), WrittenReport(analysis, files))
    text = out.getvalue()
    assert text.index("does each recipe's gain transfer?") < text.index("- sft learning_rate: at climb-350m ")
    assert max(len(line) for line in text.splitlines()) <= 120


def test_the_modules_doctests_hold():
    import doctest

    import align_proxy.studies.analysis.optima as module

    failed, attempted = doctest.testmod(module)
    assert attempted and not failed


def test_the_shipped_learning_rate_study_grids_sft_and_dpo_on_every_rung():
    from align_proxy.studies.spec import load_spec
    from support import REPO

    spec = load_spec(REPO / "align_proxy/studies/lr_transfer.yaml")
    assert spec.models == ["ladder-s", "ladder-m", "ladder-l"] and spec.target == "climb-350m"
    grids = {p.recipe: p.grid for p in spec.recipes}
    assert set(grids) == {"sft", "dpo"} and all(len(g["learning_rate"]) >= 5 for g in grids.values())
    assert len(spec.cells()) == 117


def test_the_optimum_plot_draws_an_interval_that_does_not_hold_its_estimate():
    """A percentile interval need not hold its estimate (a censored or skewed fit): matplotlib's error bars refuse
    that (negative lengths), and the whole report died on one in the shipped study."""
    from types import SimpleNamespace

    from matplotlib.figure import Figure

    from align_proxy.studies.analysis import Optimum, RungOptimum
    from align_proxy.studies.report.plots import _optima
    from align_proxy.studies.stats import Interval

    values = [1e-5, 1e-4, 1e-3]
    rungs = [RungOptimum(model, parameters, values, [0.1, 0.2, 0.1], Interval(estimate, low, high), None, 0.0, -0.1,
                         [0.0, 0.0, -0.1], values)
             for model, parameters, estimate, low, high in (("ladder-s", 202_272, 1e-4, 1.2e-4, 3e-4),
                                                           ("ladder-m", 797_760, 5e-5, 2e-5, 4e-5),
                                                           ("ladder-l", 1_786_464, 3e-5, 1e-5, 6e-5))]
    optimum = Optimum("sft", "task_accuracy", "learning_rate", {}, "log10", rungs, True, None, Interval(-0.5, -1, 0),
                      0.0, "climb-350m", 3.45e8, Interval(1e-6, 2e-6, 1e-5), 1e-4, None)
    assert _optima(SimpleNamespace(optima=[optimum]), Figure())


def test_a_grid_through_zero_is_fitted_in_its_own_units():
    """warmup_steps: [0, 10, ...] has no log: its curve and its line are fitted in steps, and the line is a change per
    decade of parameters."""
    from align_proxy.studies.analysis import analyse
    from align_proxy.studies.calibration import LADDER
    from align_proxy.studies.report import prose
    from align_proxy.studies.store import CellResult

    rng = np.random.default_rng(0)
    items = 200
    shared = rng.normal(0.0, 0.2, items)
    cells = []
    for model, parameters in LADDER.items():
        base = rng.normal(0.0, 1.0, items)
        for steps in (0, 10, 20, 40, 80):
            truth = 0.3 - 1e-4 * (steps - 30) ** 2  # best at 30 steps on every rung
            for seed in range(3):
                trained = base + truth + shared + rng.normal(0.0, 0.3, items)
                cells.append(CellResult(f"{model}-{steps}-{seed}", model, parameters, "sft", f"warmup_steps={steps}",
                                        seed, {"judge_reward": float(base.mean())},
                                        {"judge_reward": float(trained.mean())}, {"judge_reward": base.tolist()},
                                        {"judge_reward": trained.tolist()}))
    analysis = analyse(cells, LADDER, {"sft": "judge_reward"}, target=TARGET, n_resamples=300)
    (optimum,) = analysis.optima
    assert optimum.scale == "linear" and optimum.key == "warmup_steps"
    assert all(r.optimum.covers(30.0) and 10 < r.optimum.estimate < 60 for r in optimum.rungs), optimum.rungs
    if optimum.located:
        assert optimum.exponent.covers(0.0)
        assert "optimum " in prose.optimum_lines(analysis)[0] and "per decade of parameters" in \
            prose.optimum_lines(analysis)[0]
