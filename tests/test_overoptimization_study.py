"""Overoptimization in a study: reward models on every rung, a fixed policy optimised against each by best-of-n cells
and by RL cells (`reward_from`), what the spec allows and refuses, how cells wait on and strand by the cells they
need, and the report's section built from the curves."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml

from support import REPO, fake_models


def _spec(tmp_path, recipes: list[dict], models=None, dataset: str = "builtin:arith"):
    from align_proxy.studies.spec import load_spec

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "overopt", "output_dir": str(tmp_path / "study"), "seeds": [0, 1],
                                    "models": models or fake_models(tmp_path), "dataset": dataset,
                                    "recipes": recipes}))
    return load_spec(path)


def test_the_shipped_study_optimises_one_policy_against_each_rungs_reward_model():
    from align_proxy.studies.spec import load_spec

    cells = load_spec(REPO / "align_proxy/studies/overoptimization.yaml").cells()
    by_hash = {c.config_hash: c for c in cells}
    policy = next(c for c in cells if (c.recipe, c.model) == ("sft", "ladder-m"))
    rl = [c for c in cells if c.recipe == "rloo"]
    best = [c for c in cells if c.kind == "best-of-n"]
    assert len(rl) == len(best) == 3 and len(cells) == 12
    for cell in rl + best:  # the one policy, and the reward model of the cell's own rung and seed
        reward = by_hash[cell.reward_from]
        assert cell.start_from == policy.config_hash and cell.needs == (policy.config_hash, reward.config_hash)
        assert (reward.recipe, reward.model, reward.seed) == ("reward", cell.model, cell.seed)
    assert {c.params.n for c in best} == {64} and {c.recipe for c in best} == {"reward (best-of-n)"}
    assert len({c.config_hash for c in cells}) == len(cells)


def test_every_cell_kind_has_its_recipes_slurm_job():
    """Under --executor slurm, proxy-tuning and best-of-n cells are submitted with their recipe's resources."""
    from align_proxy.studies.spec import load_spec

    for name in ("overoptimization.yaml", "proxy_tuning.yaml"):
        spec = load_spec(REPO / "align_proxy/studies" / name)
        assert {c.recipe for c in spec.cells()} <= set(spec.slurm_resources())


def test_a_cells_hash_follows_the_reward_model_it_trains_against(tmp_path):
    rloo = {"recipe": "rloo", "config": "recipes/configs/rloo_overoptimization_cpu.yaml", "reward_from": "reward"}
    first = _spec(tmp_path, [{"recipe": "reward"}, rloo]).cells()
    grid = _spec(tmp_path, [{"recipe": "reward", "grid": {"learning_rate": [1e-3, 3e-4]}},
                            {**rloo, "reward_from": {"recipe": "reward", "variant": "learning_rate=0.0003"}}]).cells()
    hashes = lambda cells: {c.config_hash for c in cells if c.recipe == "rloo"}  # noqa: E731
    assert hashes(first).isdisjoint(hashes(grid))


@pytest.mark.parametrize("recipes, message", [
    ([{"recipe": "reward"}, {"recipe": "sft", "reward_from": "reward"}], "only RL recipes"),
    ([{"recipe": "sft"}, {"recipe": "rloo", "reward_from": "sft"}], "trains a policy, not a reward model"),
    ([{"recipe": "rloo", "reward_from": "reward"}], "not a recipe listed before this one"),
    ([{"recipe": "sft", "best_of_n": {"policy": "ladder-s"}}], "Put best_of_n on the reward recipe"),
    ([{"recipe": "reward", "best_of_n": {"n": 64}}], "needs 'policy'"),
    ([{"recipe": "sft"}, {"recipe": "reward", "best_of_n": {"policy": {"recipe": "sft"}}}], "name the one model"),
    ([{"recipe": "reward", "best_of_n": {"policy": "ladder-s", "n": 1}}], "at least 2"),
    ([{"recipe": "reward", "best_of_n": {"policy": "ladder-s", "gold": "no_such_reward"}}], "best_of_n.gold"),
    ([{"recipe": "sft"}, {"recipe": "rloo", "start_from": {"recipe": "sft", "model": "ladder-xl"}}],
     "not one of the study's models"),
])
def test_an_overoptimization_spec_error_names_the_key_and_the_fix(tmp_path, recipes, message):
    from align_proxy.studies.spec import StudySpecError

    with pytest.raises(StudySpecError, match=message):
        _spec(tmp_path, recipes, models=["ladder-s", "ladder-m"])


def test_best_of_n_needs_a_built_in_task(tmp_path):
    from align_proxy.studies.spec import StudySpecError

    (tmp_path / "data.jsonl").write_text('{"prompt": "1+1=", "completion": "2"}\n')
    with pytest.raises(StudySpecError, match="not a built-in task"):
        _spec(tmp_path, [{"recipe": "reward", "best_of_n": {"policy": "ladder-s"}}], models=["ladder-s", "ladder-m"],
              dataset=str(tmp_path / "data.jsonl"))


def test_cells_wait_for_and_are_stranded_by_the_reward_cell_they_need():
    from align_proxy.studies.execute.scheduler import startable, stranded
    from align_proxy.studies.spec import load_spec

    cells = load_spec(REPO / "align_proxy/studies/overoptimization.yaml").cells()
    rewards = {c.model: c.config_hash for c in cells if c.recipe == "reward"}
    queue = [c for c in cells if c.needs]
    status = {c.config_hash: "done" for c in cells if c.recipe == "sft"}
    status |= {h: "pending" for h in rewards.values()} | {c.config_hash: "pending" for c in queue}
    assert startable(queue, status) == []  # the policy is done, no reward model yet
    status[rewards["ladder-s"]] = "done"
    assert {c.model for c in startable(queue, status)} == {"ladder-s"}
    status[rewards["ladder-m"]] = "failed"
    lost = stranded(queue, status)
    assert {(c.recipe, c.model) for c, _ in lost} == {("rloo", "ladder-m"), ("reward (best-of-n)", "ladder-m")}
    assert all(why.startswith("the cell its reward model comes from") and "failed" in why for _, why in lost)


def test_the_command_lines_name_the_policy_and_the_reward_cells_model(tmp_path):
    from align_proxy.studies.cell_runs import cell_command
    from align_proxy.studies.execute.cells import needed_dirs
    from align_proxy.studies.spec import load_spec

    cells = load_spec(REPO / "align_proxy/studies/overoptimization.yaml").cells()
    cell_dir = lambda h: tmp_path / h  # noqa: E731
    for cell in (c for c in cells if c.needs):
        script, argv = cell_command(cell, REPO / "recipes/rloo.py", "rloo.yaml", tmp_path / cell.config_hash,
                                    tmp_path / "base", *needed_dirs(cell, cell_dir))
        policy, reward = str(cell_dir(cell.start_from)), str(cell_dir(cell.reward_from))
        if cell.kind == "best-of-n":
            assert script.endswith("align_proxy/cells/best_of_n.py")  # `python -m align_proxy.cells.best_of_n`
            assert argv[argv.index("--policy") + 1] == policy and argv[argv.index("--reward_model") + 1] == reward
            assert argv[argv.index("--n") + 1] == "64" and argv[argv.index("--seed") + 1] == str(cell.seed)
        else:
            assert argv[argv.index("--model_name_or_path") + 1] == policy
            assert argv[argv.index("--reward_funcs") + 1:argv.index("--reward_funcs") + 2] == [reward]


# --- the report's section, from curves planted in cell results -------------------------------------------------

def _curve_cell(model: str, parameters: int, alpha: float, beta: float, seed: int = 0, prompts: int = 60):
    from align_proxy.cells.params import BestOfNParams
    from align_proxy.studies.overoptimization import Curve, kl_best_of_n, reward_curve
    from align_proxy.studies.store import CellResult

    ns = [1, 2, 4, 8, 16, 32, 64]
    d = np.sqrt([kl_best_of_n(n) for n in ns])
    rng = np.random.default_rng(parameters + seed)
    gold = 0.2 + reward_curve("best_of_n", alpha, beta, d)[None, :] + rng.normal(0, 0.05, (prompts, len(ns)))
    proxy = np.cumsum(np.full((prompts, len(ns)), 0.1), axis=1)
    points = Curve("best_of_n", model, parameters, ns, d, gold, proxy, d ** 2, None).points()
    return CellResult(f"h{parameters}{seed}", model, parameters, "reward (best-of-n)", "default", seed,
                      {"gold_reward": 0.2}, {"gold_reward": float(gold[:, -1].mean())}, curve=points,
                      kind="best-of-n", params=BestOfNParams(64, 60, None, 1.0, 8, "arith"))


def test_the_report_fits_each_curve_and_says_whether_smaller_reward_models_overoptimise_sooner(tmp_path):
    from align_proxy.studies.analysis import analyse
    from align_proxy.studies.report import write_report

    sizes = {"rm-s": 200_000, "rm-m": 800_000, "rm-l": 1_800_000}
    planted = {"rm-s": (0.3, 0.3), "rm-m": (0.45, 0.3), "rm-l": (0.6, 0.3)}  # d* = 0.5, 0.75, 1.0
    results = [_curve_cell(m, sizes[m], *planted[m]) for m in sizes]
    analysis = analyse(results, sizes, {})
    summary = analysis.overoptimization
    assert analysis.gains == []  # best-of-n cells are not a recipe's gains
    assert [c.reward_model for c in summary.curves] == ["rm-s", "rm-m", "rm-l"]
    for curve in summary.curves:
        alpha, beta = planted[curve.reward_model]
        assert curve.fit.alpha.covers(alpha) and curve.fit.beta.covers(beta)
    (shift,) = summary.peak_shifts
    assert (shift.small, shift.large) == ("rm-s", "rm-l") and shift.resolved and shift.difference.covers(0.5)
    trend = {t.coefficient: t for t in summary.trends}
    assert trend["alpha"].slope_per_decade.estimate > 0
    files = write_report(tmp_path, analysis, results, title="overoptimization")
    markdown = files["markdown"].read_text()
    assert "Reward-model overoptimization" in markdown and "as Gao et al. found" in markdown
    assert {"plot_overoptimization", "plot_overoptimization_vs_size"} <= set(files)
    document = json.loads(files["json"].read_text())
    assert document["overoptimization"]["curves"][0]["fit"]["peak_d"]["estimate"] == pytest.approx(0.5, abs=0.15)


def test_a_peak_past_the_data_in_some_resamples_is_reported_open_on_that_side_not_dropped():
    """Planted peaks near the last d (1.78) on 8 prompts: rm-l's fit peaks inside the data, but some resamples of
    its prompts still rise at the last point. Its interval is open above, in the table (`>1.78`) and in
    report.json (null, with the share of such resamples), and the shift, unresolved, says what would bound it."""
    from align_proxy.studies.analysis import analyse
    from align_proxy.studies.record import to_json
    from align_proxy.studies.report.formatting import overoptimization_rows, peak_shift_text

    sizes = {"rm-s": 200_000, "rm-m": 800_000, "rm-l": 1_800_000}
    planted = {"rm-s": (0.9, 0.3), "rm-m": (0.95, 0.3), "rm-l": (1.0, 0.3)}  # d* = 1.5, 1.58, 1.67
    summary = analyse([_curve_cell(m, sizes[m], *planted[m], prompts=8) for m in sizes], sizes, {}).overoptimization
    largest = summary.curves[-1].fit
    assert largest.peak_d.estimate < largest.d_max and largest.peak_d.high == math.inf and largest.beyond_data > 0.025
    assert overoptimization_rows(summary.curves)[1][-1][8] == f"{largest.peak_d.estimate:.3f} " \
                                                              f"[{largest.peak_d.low:.3f}, >1.78]"
    document = to_json(largest)
    assert document["peak_d"]["high"] is None and document["beyond_data"] == largest.beyond_data
    (shift,) = summary.peak_shifts
    assert shift.difference.low < 0 < shift.difference.estimate and shift.difference.high == math.inf
    assert shift.prompts_to_resolve is None
    assert peak_shift_text(shift).endswith("not resolved, the interval covers 0 and is open on one side: in some "
                                           "resamples a curve still rises at the last point measured, its peak past "
                                           "the data; optimise further to bound it")


# --- a real study on the tiny ladder -------------------------------------------------------------------------

def _tiny_config(tmp_path, name: str, **values) -> str:
    config = dict(yaml.safe_load((REPO / f"recipes/configs/{name}").read_text()), builtin_train_size=128,
                  builtin_test_size=24, eval_size=16, logging_steps=1, **values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_a_study_of_real_cells_draws_best_of_n_and_rl_curves_per_reward_model(tiny_ladder, tmp_path):
    small, large = (r.path for r in tiny_ladder)
    rl = _tiny_config(tmp_path, "rloo_overoptimization_cpu.yaml", max_steps=2, curve_every=1, curve_prompts=8,
                      per_device_train_batch_size=16, num_generations=4, eval_num_samples=2)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "overopt", "output_dir": str(tmp_path / "study"), "seeds": [0], "models": [small, large],
        "recipes": [
            {"recipe": "sft", "config": _tiny_config(tmp_path, "sft_ladder_cpu.yaml", max_steps=4)},
            {"recipe": "reward", "config": _tiny_config(tmp_path, "reward_ladder_cpu.yaml", max_steps=4),
             "best_of_n": {"policy": {"recipe": "sft", "model": small}, "n": 8, "prompts": 12}},
            {"recipe": "rloo", "config": rl, "start_from": {"recipe": "sft", "model": small}, "reward_from": "reward"},
        ]}))
    result = subprocess.run([sys.executable, "-m", "align_proxy.cli", "study", str(spec), "--jobs", "2"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "8/8 cells done" in result.stdout, result.stdout[-3000:]
    assert "rloo (from sft on" in result.stdout and "against reward" in result.stdout
    report = json.loads((tmp_path / "study" / "report.json").read_text())
    curves = report["overoptimization"]["curves"]
    assert sorted((c["form"], c["reward_model"]) for c in curves) == sorted(
        (form, model) for form in ("best_of_n", "rl") for model in (small, large))
    for curve in curves:
        assert curve["points"][0] in (0, 1) and len(curve["d"]) == len(curve["gold"]) >= 3
    best = [c for c in curves if c["form"] == "best_of_n"]
    assert best[0]["gold"][0] == pytest.approx(best[1]["gold"][0])  # n = 1: one policy's pool, whatever ranks it
    assert (tmp_path / "study" / "plots" / "overoptimization.png").exists()
    assert "Reward-model overoptimization" in (tmp_path / "study" / "report.md").read_text()


def test_a_best_of_n_policy_can_be_a_model_of_the_study_rather_than_a_cell(tmp_path):
    from align_proxy.studies.cell_runs import cell_command
    from align_proxy.studies.execute.cells import needed_dirs

    best_of_n = {"policy": "ladder-s", "n": 16, "gold": "arith_exact_match"}
    spec = _spec(tmp_path, [{"recipe": "reward", "best_of_n": best_of_n}], models=["ladder-s", "ladder-m"])
    best = [c for c in spec.cells() if c.kind == "best-of-n"]
    assert len(best) == 4 and all(c.start_from is None and c.needs == (c.reward_from,) for c in best)
    _, argv = cell_command(best[0], None, None, tmp_path / "cell", tmp_path / "base",
                           *needed_dirs(best[0], lambda h: tmp_path / h))
    assert argv[argv.index("--policy") + 1] == "ladder-s" and argv[argv.index("--gold") + 1] == "arith_exact_match"
    assert argv[argv.index("--n") + 1] == "16"
