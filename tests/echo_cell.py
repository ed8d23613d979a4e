"""A toy cell kind's entry module (tests/test_kinds.py registers the kind): it writes its parameters back as its
metrics file, so a test follows one payload from the spec, through the command line and metrics.json, to the store.

    python tests/echo_cell.py --note hello --model DIR --output_dir OUT
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from align_proxy.run_metrics import RunMetrics, Scores, Training


@dataclass(frozen=True)
class EchoParams:
    recipe: str  # whose train cell's model it evaluates
    note: str

    def to_json(self) -> dict:
        return {"recipe": self.recipe, "note": self.note}

    @classmethod
    def from_json(cls, raw: dict) -> EchoParams:
        return cls(raw["recipe"], raw["note"])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--note", "--model", "--recipe", "--output_dir"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    record = RunMetrics(args.recipe, {"name": args.model}, "builtin:arith", None, Training(),
                        Scores({"task_accuracy": 0.5}, {"task_accuracy": 0.5}), kind="echo",
                        params=EchoParams(args.recipe, args.note))
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    record.write(Path(args.output_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
