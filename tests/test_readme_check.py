"""The CI check that a fresh default study says what the README says (`.ci/readme_verdicts.py`): it holds the
README's claim to a fresh run's intervals, so a run on another machine that is statistically consistent with the
README passes, and a changed recipe effect fails, named with its size."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from support import REPO

MODELS = {"ladder-s": 202_272, "ladder-m": 797_760, "ladder-l": 1_786_464}
METRICS = {"sft": "task_accuracy", "dpo": "preference_margin", "reward": "preference_accuracy"}
# The README's headline as of this test's writing: recipe -> ({model: (verdict, estimate, low, high)}, transfers).
# reward at ladder-m is the one narrowly resolved verdict: widened (x2.00, WIDEN) its interval reaches below 0.
ROWS = {
    "sft": ({"ladder-s": ("helps", 0.146, 0.108, 0.184), "ladder-m": ("helps", 0.103, 0.052, 0.158),
             "ladder-l": ("helps", 0.161, 0.106, 0.215)}, "yes"),
    "dpo": ({"ladder-s": ("helps", 1.041, 0.854, 1.224), "ladder-m": ("helps", 1.116, 0.928, 1.300),
             "ladder-l": ("helps", 1.472, 1.220, 1.725)}, "yes"),
    "reward": ({"ladder-s": ("helps", 0.111, 0.058, 0.163), "ladder-m": ("helps", 0.121, 0.010, 0.232),
                "ladder-l": ("helps", 0.160, 0.079, 0.239)}, "yes"),
}
REAL_REPORTS = sorted((REPO / "tests" / "data" / "readme_check").glob("*.json"))


def load_check():
    spec = importlib.util.spec_from_file_location("readme_verdicts", REPO / ".ci" / "readme_verdicts.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there while the class is made
    spec.loader.exec_module(module)
    return module


check = load_check()


def cell(figure) -> str:
    verdict, estimate, low, high = figure
    return verdict if estimate is None else f"{verdict} {estimate:+.3f} [{low:+.3f}, {high:+.3f}]"


def readme_text(rows: dict) -> str:
    """A README whose quickstart block holds `rows` as `align-proxy study` prints its headline (rich's box table)."""
    header = ["recipe", "judged on", *(f"{m} ({p / 1e6:.2f}M)" for m, p in MODELS.items()), "transfers",
              "confidence"]
    body = [[recipe, METRICS[recipe], *(cell(figures[m]) for m in MODELS), transfers, "medium"]
            for recipe, (figures, transfers) in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells, bar):
        return bar + bar.join(f" {c.ljust(w)} " for c, w in zip(cells, widths)) + bar

    rule = lambda left, mid, right, fill: left + mid.join(fill * (w + 2) for w in widths) + right  # noqa: E731
    return "\n".join(["# a README", "   ```", "   72/72 cells done",
                      "   does each recipe's gain transfer? (gain of the best variant, 95% interval)",
                      "   " + rule("┏", "┳", "┓", "━"), "   " + line(header, "┃"), "   " + rule("┡", "╇", "┩", "━"),
                      *("   " + line(row, "│") for row in body), "   " + rule("└", "┴", "┘", "─"),
                      "   sft: probably worth a large run", "   ```"])


def report_json(rows: dict) -> dict:
    """A report.json (`StudyAnalysis.to_json()`) with the fields the check reads, from rows like ROWS."""
    return {"models": [{"name": m, "parameters": p} for m, p in MODELS.items()],
            "headline": [{"recipe": recipe, "metric": METRICS[recipe], "starts_from": None,
                          "scales": [{"model": m, "parameters": MODELS[m], "verdict": v,
                                      "gain": {"estimate": e, "low": lo, "high": hi}}
                                     for m, (v, e, lo, hi) in figures.items()],
                          "transfer": {"transfers": transfers}}
                         for recipe, (figures, transfers) in rows.items()]}


def judged(estimate: float, low: float, high: float) -> tuple:
    """A figure with the verdict the analysis gives its interval (every metric here: higher is better)."""
    return ("helps" if low > 0 else "hurts" if high < 0 else "unclear", estimate, low, high)


def shifted(rows: dict, by: dict[tuple[str, str], float]) -> dict:
    """`rows` with the gains of each (recipe, model) in `by` moved by that much, verdicts judged again."""
    out = {}
    for recipe, (figures, transfers) in rows.items():
        moved = {m: judged(*(x + by.get((recipe, m), 0.0) for x in f[1:])) for m, f in figures.items()}
        out[recipe] = (moved, transfers)
    return out


def run_check(tmp_path, monkeypatch, capsys, readme_rows: dict, report_rows: dict) -> tuple[int, str]:
    """`main` on a README and a report.json written from rows; the ladder check (this machine's cached ladder)
    is out of scope here and answers nothing."""
    readme, report = tmp_path / "README.md", tmp_path / "report.json"
    readme.write_text(readme_text(readme_rows))
    report.write_text(json.dumps(report_json(report_rows)))
    monkeypatch.setattr(check, "ladder_problems", lambda: [])
    code = check.main(["--readme", str(readme), str(report)])
    return code, capsys.readouterr().out


def test_the_real_readme_table_parses_into_three_recipes_on_three_models():
    headline = check.readme_headline(check.README.read_text(), check.README)
    assert headline.models == ["ladder-s", "ladder-m", "ladder-l"]
    assert set(headline.rows) == {"sft", "dpo", "reward"}
    for row in headline.rows.values():
        assert set(row.figures) == set(headline.models) and row.transfers in {"yes", "no", "unclear"}
        for figure in row.figures.values():
            assert figure.verdict in check.VERDICTS and figure.has_interval
            assert figure.low <= figure.estimate <= figure.high


def test_a_readme_cell_without_numbers_reads_as_its_word_alone():
    rows = {**ROWS, "reward": ({**ROWS["reward"][0], "ladder-l": ("diverges", None, None, None)}, "unclear")}
    figures = check.readme_headline(readme_text(rows)).rows["reward"].figures
    assert figures["ladder-l"] == check.Figure("diverges")
    assert check.readme_headline(readme_text(ROWS)).rows["sft"].figures["ladder-m"] == \
        check.Figure("helps", 0.103, 0.052, 0.158)


def test_the_report_reader_finds_the_gain_where_the_analysis_writes_it():
    from align_proxy.studies.analysis import analyse
    from support import MODELS as PLANTED_MODELS, PRIMARY, TARGET, everywhere, planted_cells

    analysis = analyse(planted_cells("sft", {"a": everywhere(0.2)}), PLANTED_MODELS, PRIMARY, target=TARGET)
    found = check.report_headline(json.loads(json.dumps(analysis.to_json())))
    assert found.models == list(PLANTED_MODELS) and list(found.rows) == ["sft"]
    entry = analysis.headline[0]
    for scale in entry.scales:
        assert found.rows["sft"].figures[scale.model] == check.Figure(
            scale.verdict, scale.gain.estimate, scale.gain.low, scale.gain.high)
    assert found.rows["sft"].transfers == entry.transfer.transfers == "yes"


def test_a_study_that_prints_the_readme_numbers_passes(tmp_path, monkeypatch, capsys):
    code, out = run_check(tmp_path, monkeypatch, capsys, ROWS, ROWS)
    assert code == 0, out
    assert "FAIL" not in out and "9 figures within their bands" in out


def test_numbers_moved_within_the_band_and_a_narrow_verdict_turned_unclear_pass(tmp_path, monkeypatch, capsys):
    # every figure moves by 0.9 of its interval's half-width (inside the x1.41 band), alternately up and down
    by = {(recipe, model): (0.9 if i % 2 else -0.9) * (figure[3] - figure[2]) / 2
          for recipe, (figures, _) in ROWS.items() for i, (model, figure) in enumerate(figures.items())}
    by[("reward", "ladder-m")] = -0.05  # +0.121 [+0.010, +0.232], narrow, becomes +0.071 [-0.040, +0.182]
    fresh = shifted(ROWS, by)
    assert fresh["reward"][0]["ladder-m"][0] == "unclear"
    assert [f[0] for r, (fs, _) in fresh.items() for m, f in fs.items() if (r, m) != ("reward", "ladder-m")] == \
        ["helps"] * 8
    code, out = run_check(tmp_path, monkeypatch, capsys, ROWS, fresh)
    assert code == 0, out
    assert "FAIL" not in out
    line = next(x for x in out.splitlines() if x.startswith("reward") and "ladder-m" in x)
    assert "unclear +0.071" in line and "word moved (README's was narrow" in line


def test_a_changed_recipe_effect_fails_naming_recipe_model_and_the_size_of_the_move(tmp_path, monkeypatch, capsys):
    # sft at ladder-m, +0.103 [+0.052, +0.158] and resolved by a wide margin, loses 0.12 (about 3 combined SEs)
    fresh = shifted(ROWS, {("sft", "ladder-m"): -0.12})
    code, out = run_check(tmp_path, monkeypatch, capsys, ROWS, fresh)
    assert code == 1
    failures = out.split("FAIL: ", 1)[1]
    assert "sft at ladder-m: the README's +0.103 lies outside this study's widened interval" in failures
    assert "sft at ladder-m: the README's 'helps' is resolved by a wide margin" in failures
    assert "moved -0.120, -3.1 combined SE" in failures
    assert "ladder-s" not in failures and "dpo" not in failures and "reward" not in failures


def test_a_verdict_that_flips_while_its_number_stays_in_the_band_fails_only_when_it_was_wide(
        tmp_path, monkeypatch, capsys):
    # sft at ladder-m drops to unclear within the band: still a failure, its README verdict being wide
    fresh = shifted(ROWS, {("sft", "ladder-m"): -0.06})
    code, out = run_check(tmp_path, monkeypatch, capsys, ROWS, fresh)
    assert code == 1 and "outside this study's widened interval" not in out
    assert "sft at ladder-m: the README's 'helps' is resolved by a wide margin" in out


def test_transfers_is_held_only_where_both_end_verdicts_are_wide(tmp_path, monkeypatch, capsys):
    # a README where reward at ladder-l is narrow: a run where it turns unclear, and transfers with it, passes
    narrow = {**ROWS, "reward": ({**ROWS["reward"][0], "ladder-l": ("helps", 0.060, 0.005, 0.115)}, "yes")}
    fresh = shifted(narrow, {("reward", "ladder-l"): -0.03})
    fresh["reward"] = (fresh["reward"][0], "unclear")
    code, out = run_check(tmp_path, monkeypatch, capsys, narrow, fresh)
    assert code == 0, out
    assert any(x.startswith("reward") and "unclear" in x and "word moved" in x for x in out.splitlines())
    # on wide ends, a different transfers word fails
    readme = check.readme_headline(readme_text(ROWS)).rows["sft"]
    outcome, failures = check.compare_transfers("sft", list(MODELS), readme, check.Row(readme.figures, "no"))
    assert outcome == "FAIL" and failures[0].startswith("sft: the README says it transfers 'yes'")


def test_a_recipe_missing_from_the_report_fails(tmp_path, monkeypatch, capsys):
    code, out = run_check(tmp_path, monkeypatch, capsys, ROWS, {r: ROWS[r] for r in ("sft", "dpo")})
    assert code == 1 and "reward: in the README but not in the report" in out


@pytest.mark.parametrize("report", REAL_REPORTS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no real report.json in tests/data/readme_check/: add the report.json of a default `align-proxy study` "
           "run (one per machine) there to hold the README to it"))], ids=lambda p: p.name if p else "none")
def test_a_real_default_study_agrees_with_the_readme(report, monkeypatch, capsys):
    monkeypatch.setattr(check, "ladder_problems", lambda: [])  # the ladder was that run's machine's, not ours
    code = check.main([str(report)])
    assert code == 0, capsys.readouterr().out


@pytest.mark.parametrize("report", REAL_REPORTS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no real report.json in tests/data/readme_check/"))], ids=lambda p: p.name if p else "none")
def test_a_planted_change_of_one_recipes_effect_in_a_real_study_fails(report, tmp_path, monkeypatch, capsys):
    # The same real study with SFT's effect gone at every rung (its intervals moved with it, its verdicts unclear):
    # a changed effect, not noise. Smaller changes than about two interval half-widths pass: the band is that wide.
    data = json.loads(report.read_text())
    for entry in data["headline"]:
        if entry["recipe"] == "sft":
            for scale in entry["scales"]:
                shift = -scale["gain"]["estimate"]
                scale["gain"] = {k: v + shift for k, v in scale["gain"].items()}
                scale["verdict"] = "unclear"
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps(data))
    monkeypatch.setattr(check, "ladder_problems", lambda: [])
    assert check.main([str(planted)]) == 1
    out = capsys.readouterr()
    assert "sft at ladder-" in out.out + out.err and "moved -0.1" in out.out + out.err
