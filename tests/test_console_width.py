"""What `align-proxy study`, `report` and `overoptimization` print reads at 120 columns: each recipe's conclusion as
a heading and one claim a line with the number behind it, tables that fit (one row per recipe and model, the
overoptimization table split in two), lines wrapped under their bullet; `--wide` keeps the report's whole
conclusion on one line and the tables whole."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from align_proxy.studies.analysis import GapClosed, analyse
from align_proxy.studies.report import prose
from align_proxy.studies.report.console import overoptimization_table, print_report
from align_proxy.studies.report.formatting import format_number
from align_proxy.studies.runner import WrittenReport
from align_proxy.studies.stats import Interval
from support import MODELS, PRIMARY, TARGET, diverging, everywhere, planted_cells

FILES = {"html": Path("study/report.html"), "markdown": Path("study/report.md"), "json": Path("study/report.json")}


@pytest.fixture(scope="module")
def analysis():
    """A study whose conclusions run long: variants too close to separate, a mixed pattern with unclear gains,
    a prediction past the metric's range, a diverged variant and decoding-time transfer to the largest model."""
    steep = {"ladder-s": 0.05, "ladder-m": 0.2, "ladder-l": 0.33}  # extrapolates past +1 at the target
    cells = (planted_cells("sft", {"learning_rate=0.0003": everywhere(0.2), "learning_rate=0.0001": everywhere(0.19),
                                   "learning_rate=3e-05": everywhere(0.1)}) +
             planted_cells("dpo", {"beta=0.1": {"ladder-s": 0.06, "ladder-m": 0.01, "ladder-l": 0.0},
                                   "beta=0.3": everywhere(0.0)}) +
             planted_cells("reward", {"learning_rate=0.0003": steep}, metric="preference_accuracy"))
    result = analyse(diverging(cells, "learning_rate=3e-05", "ladder-l"), MODELS, PRIMARY, target=TARGET)
    sft = next(h for h in result.headline if h.recipe == "sft")
    gaps = [GapClosed("sft", sft.recommended_variant, sft.metric, small, "ladder-l", MODELS[small],
                      MODELS["ladder-l"], 1.0, 3, 0.3, 0.4, 0.5, 0.2, Interval(0.5, 0.2, 0.8))
            for small in ("ladder-s", "ladder-m")]
    return dataclasses.replace(result, gap_closed=gaps)


def printed(analysis, width: int = 120, wide: bool = False) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    print_report(console, WrittenReport(analysis, FILES), wide=wide)
    return console.export_text()


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def unwrapped(text: str) -> list[str]:
    """The printed lines with each wrapped line joined to the line it continues (indented deeper, no bullet)."""
    lines = []
    for line in text.splitlines():
        continues = lines and line.startswith("    ") and not line.lstrip().startswith(("- ", "│", "└", "├"))
        if continues:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.rstrip())
    return lines


def test_no_line_of_the_report_is_wider_than_120_columns(analysis):
    assert widest(printed(analysis)) <= 120


def test_each_recipe_prints_a_heading_and_each_claim_on_its_own_line(analysis):
    lines = unwrapped(printed(analysis))
    for words in prose.recipe_verdicts(analysis):
        heading = lines.index(f"{words.label}: {words.action} ({words.confidence} confidence)")
        claims = [f"  - {claim.console}" for claim in words.claims]
        assert lines[heading + 1:heading + 1 + len(claims)] == claims
        assert len(claims) >= 3


def test_the_claims_carry_the_numbers_behind_them(analysis):
    text = " ".join(unwrapped(printed(analysis)))
    for entry in analysis.headline:
        gains = ", ".join(f"{format_number(s.gain.estimate, True)} at {s.model}" for s in entry.scales)
        if len({s.verdict for s in entry.scales}) == 1:
            assert f"(gain {gains})" in text
        else:
            assert all(f"{s.model} ({format_number(s.gain.estimate, True)})" in text for s in entry.scales)
    reward = next(h for h in analysis.headline if h.recipe == "reward")
    p = reward.prediction
    assert not p.trusted and f"helps with probability {p.direction_probability:.2f}" in text
    assert f"size not estimated: its interval [{p.gain.low:+.3f}, {p.gain.high:+.3f}] leaves the metric's range" in text
    assert "proxy-tuning ladder-l (alpha 1) works from ladder-m: closes 50% [20%, 80%] of the gap" in text
    assert "learning_rate=3e-05 diverges at ladder-l (3/3 seeds; loss 1.5e+05 at step 7)" in text


def test_the_report_keeps_the_whole_conclusion_as_one_line():
    words = prose.RecipeVerdict("sft", "medium", "worth a large run", (prose.Claim("helps at every scale", "short"),
                                                                        prose.Claim("one variant tried (a)")))
    assert words.conclusion == "worth a large run: helps at every scale; one variant tried (a)"
    assert prose.RecipeVerdict("sft", "low", "no finished cells yet", ()).conclusion == "no finished cells yet"


def test_the_headline_has_one_row_per_recipe_and_model_within_120_columns(analysis):
    text = printed(analysis)
    table = text[:text.index("└")]
    assert "│ model " in table.replace("┃", "│") and "gain [95% interval]" in table
    for entry in analysis.headline:
        for scale in entry.scales:
            assert f"{scale.model} ({format_number(scale.gain.estimate, True)}" not in table  # not the wide cells
    assert table.count("ladder-m (0.80M)") == len(analysis.headline)


def test_the_headline_fits_120_columns_for_any_number_of_rungs():
    rungs = {f"rung-{i}": 200_000 * 2 ** i for i in range(8)}
    cells = [dataclasses.replace(c, model=f"rung-{i}", parameters=rungs[f"rung-{i}"])
             for i in range(8) for c in planted_cells("sft", {"lr=high": {"ladder-s": 0.1 + 0.01 * i}})]
    text = printed(analyse(cells, rungs, PRIMARY, target=TARGET))
    assert widest(text) <= 120 and all(f"rung-{i} (" in text for i in range(8))


def test_wide_prints_the_whole_conclusion_on_one_line_and_one_column_per_model(analysis):
    text = printed(analysis, width=1000, wide=True)
    lines = text.splitlines()
    for words in prose.recipe_verdicts(analysis):
        assert f"{words.label}: {words.conclusion}" in lines
    header = next(line for line in lines if "┃ recipe" in line)
    assert all(f"{name} (" in header for name in MODELS)


def test_section_lines_wrap_under_their_bullet_and_lose_no_word(analysis):
    text = printed(analysis, width=80)
    items = []
    for line in text.splitlines():
        if line.startswith("- "):
            items.append(line)
        elif items and items[-1] is not None and line.startswith("  ") and line[2] != " ":
            items[-1] += " " + line[2:]
        else:
            items.append(None)
    expected = ["- " + line for line in prose.optimum_lines(analysis)]
    assert expected and set(expected) <= set(items) and widest(text) <= 80
    assert any(len(line) > 78 for line in expected)  # one that had to wrap


# --- the overoptimization table ------------------------------------------------------------------------------

def curves():
    """Best-of-n and RL curves against reward models named as `align-proxy overoptimization` names them (their
    directories), with the policy's KL: the widest rows the table meets."""
    from align_proxy.studies.analysis import OveroptimizationCurve
    from align_proxy.studies.overoptimization import Curve, kl_best_of_n, reward_curve

    records, rng = [], np.random.default_rng(0)
    for i, (name, parameters) in enumerate(MODELS.items()):
        ns = [1, 2, 4, 8, 16, 32, 64]
        d = np.sqrt([kl_best_of_n(n) for n in ns])
        gold = 0.2 + reward_curve("best_of_n", 0.5 + 0.1 * i, 0.3, d)[None, :] + rng.normal(0, 0.05, (40, len(ns)))
        proxy = np.cumsum(np.full((40, len(ns)), 0.1), axis=1)
        reward_model = f"outputs/reward-{name}"
        records.append(Curve.fitted("best_of_n", reward_model, parameters, ns, d, gold, proxy, d ** 2 * 0.9, 0.95,
                                    200, d ** 2 * 0.8))
        steps = list(range(0, 501, 50))
        d_rl = np.sqrt(np.linspace(0, 12, len(steps)))
        gold_rl = 0.2 + reward_curve("rl", 0.3, 0.2, d_rl)[None, :] + rng.normal(0, 0.05, (40, len(steps)))
        records.append(Curve.fitted("rl", reward_model, parameters, steps, d_rl, gold_rl, proxy[:, :1] + d_rl,
                                    d_rl ** 2, 0.95, 200))
    return [OveroptimizationCurve.of(c) for c in records]


def rendered(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_overoptimization_table_splits_to_fit_120_columns_with_a_row_per_curve():
    records = curves()
    text = rendered(overoptimization_table(records), 120)
    assert widest(text) <= 120
    assert text.count("┏") == 2  # where each curve ends, then the fit and its peak
    rows = [line for line in text.splitlines() if line.startswith("│ best-of-n") or line.startswith("│ RL")]
    assert len(rows) == 2 * len(records)
    assert text.count("reward-ladder-s (0.20M)") == 4  # a name as long as a rung's reward model does not wrap
    for record in records:
        assert f"{record.fit.alpha.estimate:+.3f}" in text and f"{record.gold[-1]:.3f}" in text


def test_the_overoptimization_table_prints_whole_where_it_has_room():
    text = rendered(overoptimization_table(curves()), 1000)
    assert text.count("┏") == 1 and "KL at end (best-of-n: formula / pool / policy)" in text


def test_wide_gives_the_console_room_and_a_later_command_its_width_back():
    from align_proxy import cli

    assert cli.main(["report", "--wide", "no-such-study"]) == 2 and cli.console.width == 1000
    assert cli.main(["report", "no-such-study"]) == 2
    assert cli.console.width == Console(width=cli.WIDTH).width  # 120 off a terminal, else the terminal's


def test_the_status_table_fits_120_columns_and_wraps_only_a_long_error(tmp_path):
    from types import SimpleNamespace

    from align_proxy.studies.report.console import study_status_table
    from align_proxy.studies.runner import study_paths
    from align_proxy.studies.store import ResultStore

    store = ResultStore(study_paths(tmp_path).db)
    cells = [SimpleNamespace(config_hash=f"{i:016x}", model="ladder-l", recipe="sft", variant="learning_rate=0.0003",
                             seed=i, overrides={}) for i in range(2)]
    store.add_cells(cells)
    error = "ValueError: " + "the prompt of row 17 is longer than max_length 2 in data/train.jsonl " * 3
    store.record_failure(cells[0].config_hash, error)
    text = rendered(study_status_table(tmp_path), 120)
    assert widest(text) <= 120
    assert text.count("learning_rate=0.0003") == 2 and "0000000000000000" in text  # names and hashes whole
    assert len(text.splitlines()) > 4 + len(cells)  # the error wrapped onto more lines
