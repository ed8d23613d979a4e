"""Does a fresh default study say what the README says? Holds a study's report.json to the README's headline table
(quickstart output), figure by figure, and checks the offline ladder it ran on is a ladder (each larger rung a better
base model). It tests the README's claim, not the machine: two independent runs differ by sqrt(2) times one run's
spread, and the headline holds 9 figures checked at once, so each band is a 95% interval widened x sqrt(2) and again
to the family-wise level (Bonferroni, z at 1 - 0.025/9 over z at 0.975): x2.00 in all, and a machine whose study is
consistent with the README's fails on any figure less than 5% of the time. (a) Each README estimate must lie in this
study's interval so widened about its estimate; (b) a README verdict (helps/hurts/rises/falls) resolved by a wide
margin, its own interval so widened still excluding 0, must be this study's word too; narrow, unclear and diverges
verdicts may move, and are printed; (c) the transfers word must match where both verdicts it rests on (smallest and
largest model) are wide.
Each figure prints how far it moved, also in combined standard errors (one run's sd = interval half-width / 1.96).

    python .ci/readme_verdicts.py studies/ladder-default/report.json
    python .ci/readme_verdicts.py --readme OTHER.md studies/ladder-default/report.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

README = Path(__file__).resolve().parents[1] / "README.md"
TITLE = "does each recipe's gain transfer?"
VERDICTS = {"helps", "hurts", "unclear", "diverges", "rises", "falls"}
RESOLVED = {"helps", "hurts", "rises", "falls"}  # the words an interval that excludes 0 gives
Z95 = NormalDist().inv_cdf(0.975)
FIGURES = 9  # the default headline's: 3 recipes x 3 rungs
# The difference of two independent runs has sqrt(2) times one run's spread; FIGURES bands at once, each at
# 1 - 0.05 / FIGURES (Bonferroni), keep the chance that a consistent machine fails any of them under 5%.
WIDEN = math.sqrt(2) * NormalDist().inv_cdf(1 - 0.025 / FIGURES) / Z95
ROUNDING = 0.0005  # the README prints three decimals
CELL = re.compile(r"(?P<verdict>[a-z]+|-)(?:\s+(?P<estimate>n/a|[+-]?\d+\.\d+))?"
                  r"(?:\s+\[(?P<low>[+-]?\d+\.\d+),\s*(?P<high>[+-]?\d+\.\d+)\])?")


@dataclass(frozen=True)
class Figure:
    """A recipe's gain at one model as the headline shows it: the verdict word and its 95% interval (None where
    there is none: '-' for no result at that model, or every variant diverged)."""

    verdict: str
    estimate: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def has_interval(self) -> bool:
        return None not in (self.estimate, self.low, self.high)

    def widened(self) -> tuple[float, float] | None:
        """The interval widened xWIDEN about the estimate, on each side: what a second run may show."""
        if not self.has_interval:
            return None
        return (self.estimate - WIDEN * (self.estimate - self.low),
                self.estimate + WIDEN * (self.high - self.estimate))

    @property
    def sd(self) -> float | None:
        return (self.high - self.low) / 2 / Z95 if self.has_interval else None

    @property
    def wide_margin(self) -> bool:
        """A resolved verdict whose widened interval still excludes 0: a second run should resolve it too."""
        band = self.widened()
        return self.verdict in RESOLVED and band is not None and (band[0] > 0 or band[1] < 0)

    def __str__(self) -> str:
        if self.estimate is None:
            return self.verdict
        bounds = f" [{self.low:+.3f}, {self.high:+.3f}]" if self.has_interval else ""
        return f"{self.verdict} {self.estimate:+.3f}{bounds}"


@dataclass(frozen=True)
class Row:
    figures: dict[str, Figure]  # model -> its figure
    transfers: str


@dataclass(frozen=True)
class Headline:
    models: list[str]
    rows: dict[str, Row]  # recipe label (`grpo (from sft)` for a chained recipe) -> its row


# --- reading the two sides ------------------------------------------------------------------------------------

def _cells(line: str, bar: str) -> list[str]:
    return [c.strip() for c in line.strip().strip(bar).split(bar)]


def _figure(cell: str, where: str) -> Figure:
    match = CELL.fullmatch(cell)
    if not match or match["verdict"] not in VERDICTS | {"-"}:
        raise SystemExit(f"{where}: cannot read the headline cell {cell!r}; expected a verdict and its interval, "
                         "like 'helps +0.146 [+0.108, +0.184]', or 'diverges', or '-'")
    number = lambda key: None if match[key] in (None, "n/a") else float(match[key])  # noqa: E731
    return Figure(match["verdict"], number("estimate"), number("low"), number("high"))


def readme_headline(text: str, source: Path | str = README) -> Headline:
    """The first headline table after the line holding TITLE: its models, and per recipe each model's figure and the
    transfers word. The table comes in either of the console's layouts: one column per model (`--wide`, or a
    terminal wide enough), or one row per recipe and model (a `model` column; 120 columns)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if TITLE in line), None)
    if start is None:
        raise SystemExit(f"{source}: no line containing \"{TITLE}\"; the README's quickstart output block should "
                         "hold the headline table `align-proxy study` prints")
    header, models, figures, transfers, recipe = None, [], {}, {}, None
    for number, line in enumerate(lines[start + 1:], start + 2):
        line, where = line.strip(), f"{source}:{number}"
        if line.startswith("└"):
            break
        if line.startswith("┃") and header is None:
            header = _cells(line, "┃")
            if "transfers" not in header:
                raise SystemExit(f"{where}: the headline table's header has no 'transfers' column")
            if "model" not in header:
                models = [column.split(" (")[0] for column in header[2:header.index("transfers")]]
        elif line.startswith("│") and header is not None:
            cells = dict(zip(header, _cells(line, "│")))
            recipe = cells["recipe"] or recipe  # a recipe's later rows leave it blank
            if "model" in header:
                model = cells["model"].split(" (")[0]
                models += [model] if model not in models else []
                gain = next(value for column, value in cells.items() if column.startswith("gain"))
                figures.setdefault(recipe, {})[model] = _figure(f"{cells['verdict']} {gain}".strip(), where)
            else:
                figures[recipe] = {m: _figure(cells[column], where) for m, column in zip(models, header[2:])}
            transfers[recipe] = transfers.get(recipe) or cells["transfers"]
    if not figures:
        raise SystemExit(f"{source}: found no headline table rows after \"{TITLE}\"")
    return Headline(models, {r: Row(figures[r], transfers[r]) for r in figures})


def recipe_label(entry: dict) -> str:
    """As `align_proxy.studies.report.formatting.recipe_label` writes a headline entry's recipe, from report.json."""
    start = entry.get("starts_from")
    if not start:
        return entry["recipe"]
    model = f" on {start['model']}" if start.get("model") else ""
    reward = f", against {start['reward_from']}" if start.get("reward_from") else ""
    return f"{entry['recipe']} (from {start['recipe']}{model}{reward})"


def report_headline(analysis: dict) -> Headline:
    """The same table from report.json: `models[].name`, and per `headline[]` entry each `scales[]`'s `verdict`
    and `gain` {estimate, low, high} (null where undefined), and `transfer.transfers`."""
    models = [m["name"] for m in analysis["models"]]
    rows = {}
    for entry in analysis["headline"]:
        scales = {s["model"]: s for s in entry["scales"]}
        figures = {m: Figure(scales[m]["verdict"], scales[m]["gain"]["estimate"], scales[m]["gain"]["low"],
                             scales[m]["gain"]["high"]) if m in scales else Figure("-") for m in models}
        rows[recipe_label(entry)] = Row(figures, entry["transfer"]["transfers"] if entry.get("transfer") else "-")
    return Headline(models, rows)


# --- the comparison --------------------------------------------------------------------------------------------

def moved(readme: Figure, fresh: Figure) -> tuple[float | None, float | None]:
    """This study's estimate minus the README's, and that in combined standard errors (None where undefined)."""
    if readme.estimate is None or fresh.estimate is None:
        return None, None
    difference = fresh.estimate - readme.estimate
    if readme.sd is None or fresh.sd is None or readme.sd + fresh.sd == 0:
        return difference, None
    return difference, difference / math.hypot(readme.sd, fresh.sd)


def _size(difference: float | None, z: float | None) -> str:
    if difference is None:
        return "no move to measure"
    return f"moved {difference:+.3f}" + ("" if z is None else f", {z:+.1f} combined SE")


def compare_figure(recipe: str, model: str, readme: Figure, fresh: Figure) -> tuple[str, list[str]]:
    """Rules (a) and (b) for one figure: its outcome in a few words, and a sentence per failure."""
    where = f"{recipe} at {model}"
    if "-" in (readme.verdict, fresh.verdict):
        if readme.verdict == fresh.verdict:
            return "no result in either", []
        return "FAIL", [f"{where}: the README shows {readme}, this study shows {fresh}"]
    difference, z = moved(readme, fresh)
    failures = []
    if readme.estimate is not None:
        band = fresh.widened()
        if band is None:
            failures.append(f"{where}: the README shows {readme}; this study has no interval to hold it to "
                            f"({fresh})")
        elif not band[0] - ROUNDING <= readme.estimate <= band[1] + ROUNDING:
            failures.append(f"{where}: the README's {readme.estimate:+.3f} lies outside this study's widened "
                            f"interval [{band[0]:+.3f}, {band[1]:+.3f}] (this study {fresh.estimate:+.3f}: "
                            f"{_size(difference, z)})")
    if readme.verdict != fresh.verdict and readme.wide_margin:
        low, high = readme.widened()
        failures.append(f"{where}: the README's '{readme.verdict}' is resolved by a wide margin (its interval "
                        f"widened x{WIDEN:.2f}, [{low:+.3f}, {high:+.3f}], excludes 0), but this study says "
                        f"'{fresh.verdict}' ({_size(difference, z)})")
    if failures:
        return "FAIL", failures
    if readme.verdict == fresh.verdict:
        return "ok", []
    why = "unclear" if readme.verdict == "unclear" else "diverges, no interval" if readme.verdict == "diverges" \
        else "narrow: its widened interval reaches 0"
    return f"word moved (README's was {why})", []


def compare_transfers(recipe: str, models: list[str], readme: Row, fresh: Row) -> tuple[str, list[str]]:
    """Rule (c): the transfers word rests on the verdicts at the smallest and largest model with a result."""
    with_result = [readme.figures[m] for m in models if readme.figures[m].verdict != "-"]
    ends = with_result[:1] + with_result[-1:]
    if readme.transfers == fresh.transfers:
        return "ok", []
    if len(ends) == 2 and all(f.wide_margin for f in ends):
        return "FAIL", [f"{recipe}: the README says it transfers '{readme.transfers}', resting on wide-margin "
                        f"verdicts at its ends ({ends[0]} and {ends[-1]}), but this study says '{fresh.transfers}'"]
    return "word moved (it rests on a verdict the README resolves narrowly or not at all)", []


def compare(readme: Headline, fresh: Headline) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """The figures table, the transfers table, and every failure, for the recipes and models both show."""
    failures = [f"model {m}: in the README's table but not in the report" for m in readme.models
                if m not in fresh.models]
    failures += [f"model {m}: in the report but not in the README's table" for m in fresh.models
                 if m not in readme.models]
    failures += [f"{r}: in the README but not in the report" for r in readme.rows if r not in fresh.rows]
    failures += [f"{r}: in the report but not in the README" for r in fresh.rows if r not in readme.rows]
    models = [m for m in readme.models if m in fresh.models]
    figures, transfers = [], []
    for recipe in [r for r in readme.rows if r in fresh.rows]:
        ours, theirs = readme.rows[recipe], fresh.rows[recipe]
        for model in models:
            r, f = ours.figures[model], theirs.figures[model]
            outcome, problems = compare_figure(recipe, model, r, f)
            difference, z = moved(r, f)
            band = f.widened()
            figures.append([recipe, model, str(r), str(f),
                            "" if band is None else f"[{band[0]:+.3f}, {band[1]:+.3f}]",
                            "" if difference is None else f"{difference:+.3f}", "" if z is None else f"{z:+.1f}",
                            outcome])
            failures += problems
        outcome, problems = compare_transfers(recipe, models, ours, theirs)
        transfers.append([recipe, ours.transfers, theirs.transfers, outcome])
        failures += problems
    return figures, transfers, failures


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in column) for column in zip(headers, *rows)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [headers, *rows])


# --- the ladder the study ran on -------------------------------------------------------------------------------

def ladder_problems() -> list[str]:
    """The offline ladder (in $ALIGN_PROXY_HOME) must grow: more parameters, lower held-out loss."""
    from align_proxy.models import ladder_spec

    rungs = ladder_spec.load_table()
    params, losses = [r.parameters for r in rungs], [r.heldout_loss for r in rungs]
    print("ladder: " + ", ".join(f"{r.name} {r.parameters:,} parameters, held-out loss {r.heldout_loss:.4f}"
                                 for r in rungs))
    if len(rungs) < 3 or params != sorted(params) or params[-1] < 4 * params[0]:
        return [f"the ladder's rungs are not three or more of growing size: {params}"]
    if losses != sorted(losses, reverse=True):
        return [f"a larger rung is not a better base model (held-out losses {losses})"]
    return []


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="the fresh study's report.json")
    parser.add_argument("--readme", type=Path, default=README, help="the README whose headline table to hold it to")
    return parser


def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    readme = readme_headline(args.readme.read_text(), args.readme)
    fresh = report_headline(json.loads(args.report.read_text()))
    figures, transfers, failures = compare(readme, fresh)
    print(f"{args.readme} against {args.report}: each recipe's gain (best variant, 95% interval) per model")
    print(f"  band: this study's interval widened x{WIDEN:.2f} about its estimate; the README's estimate must lie "
          "in it")
    print(f"  move: this study minus the README; z: the move in combined SEs, sqrt(sdR^2 + sdF^2), sd = half-width "
          f"/ {Z95:.2f}")
    print(table(["recipe", "model", "README", "this study", "band", "move", "z", "outcome"], figures))
    print(table(["recipe", "transfers: README", "this study", "outcome"], transfers))
    ladder = ladder_problems()
    if failures or ladder:
        problems = failures + ladder
        print(f"FAIL: the default study does not say what the README says ({len(problems)} "
              f"problem{'s' * (len(problems) > 1)}):\n  " + "\n  ".join(problems))
        if failures:
            print(f"The bands hold all {FIGURES} figures at once at about 95%: a run consistent with the README "
                  "fails one about 1 time in 20; several figures out, or |z| well past 3, mean a recipe's effect "
                  "changed. Rerun the study, or update the README's output block from a fresh `align-proxy study` "
                  "if the change is meant.")
        return 1
    moved_words = sum(row[-1].startswith("word moved") for row in figures + transfers)
    print(f"the study agrees with the README: {len(figures)} figures within their bands, every wide-margin verdict "
          f"the same" + (f" ({moved_words} narrow or unclear word{'s' * (moved_words > 1)} moved)"
                         if moved_words else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
