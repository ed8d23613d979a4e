"""Does a fresh default study say what the README says? Compares the verdict words (per recipe and model,
and whether the gain transfers) of a study's report.json with the headline table in the README's
quickstart output block, and checks the offline ladder it ran on is a ladder: each larger rung a better
base model (lower held-out loss). The numbers may differ from machine to machine; the words must not.

    python .ci/readme_verdicts.py studies/ladder-default/report.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
VERDICTS = {"helps", "hurts", "unclear", "diverges", "rises", "falls"}


def readme_headline(text: str) -> dict[str, dict]:
    """recipe -> {"verdicts": [per model], "transfers": word} from the first headline table in the README."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "does each recipe's gain transfer?" in line)
    rows = {}
    for line in lines[start:]:
        if line.strip().startswith("└"):
            break
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) < 5 or not cells[2].split() or cells[2].split()[0] not in VERDICTS | {"-"}:
            continue
        *scales, transfers, _confidence = cells[2:]
        rows[cells[0]] = {"verdicts": [s.split()[0] for s in scales], "transfers": transfers}
    if not rows:
        raise SystemExit(f"{README}: found no headline table rows after \"does each recipe's gain transfer?\"")
    return rows


def report_headline(analysis: dict) -> dict[str, dict]:
    models = [m["name"] for m in analysis["models"]]
    rows = {}
    for entry in analysis["headline"]:
        label = f"{entry['recipe']} (from {entry['starts_from']['recipe']})" if entry.get("starts_from") else \
            entry["recipe"]
        by_model = {s["model"]: s["verdict"] for s in entry["scales"]}
        rows[label] = {"verdicts": [by_model.get(m, "-") for m in models],
                       "transfers": entry["transfer"]["transfers"] if entry["transfer"] else "-"}
    return rows


def differences(expected: dict[str, dict], found: dict[str, dict]) -> list[str]:
    problems = [f"{recipe}: in the README but not in the report" for recipe in expected.keys() - found.keys()]
    problems += [f"{recipe}: in the report but not in the README" for recipe in found.keys() - expected.keys()]
    for recipe in sorted(expected.keys() & found.keys()):
        if expected[recipe] != found[recipe]:
            problems.append(f"{recipe}: README says {expected[recipe]}, this study says {found[recipe]}")
    return problems


def ladder_problems() -> list[str]:
    """The offline ladder (in $ALIGN_PROXY_HOME) must grow: more parameters, lower held-out loss."""
    from align_proxy.models import ladder

    rungs = ladder.load_table()
    params, losses = [r.parameters for r in rungs], [r.heldout_loss for r in rungs]
    print("ladder: " + ", ".join(f"{r.name} {r.parameters:,} parameters, held-out loss {r.heldout_loss:.4f}"
                                 for r in rungs))
    if len(rungs) < 3 or params != sorted(params) or params[-1] < 4 * params[0]:
        return [f"the ladder's rungs are not three or more of growing size: {params}"]
    if losses != sorted(losses, reverse=True):
        return [f"a larger rung is not a better base model (held-out losses {losses})"]
    return []


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    expected = readme_headline(README.read_text())
    found = report_headline(json.loads(Path(argv[0]).read_text()))
    problems = differences(expected, found) + ladder_problems()
    for recipe, row in sorted(found.items()):
        print(f"{recipe}: {' / '.join(row['verdicts'])}; transfers: {row['transfers']}")
    if problems:
        print("the default study does not say what the README says:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"verdict words match the README ({len(found)} recipes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
