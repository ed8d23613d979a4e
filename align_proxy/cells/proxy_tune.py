"""A study's proxy-tuning cell (`align_proxy.kinds.CELL_KINDS["proxy-tuning"]`): score the large base and the
large base steered by a small train cell's model on that recipe's held-out items, and write metrics.json (base =
the large base, trained = proxy-tuned) atomically, last.

    python -m align_proxy.cells.proxy_tune --base ladder-m --expert studies/x/cells/HASH --small ladder-s \\
        --recipe sft --variant default --alpha 1.0 --output_dir studies/x/cells/HASH2
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from align_proxy.cells.params import ProxyTuneParams
from align_proxy.models import registry
from align_proxy.proxy_tuning import HeldOut, ProxyModels, score_proxy_tuning
from align_proxy.run_metrics import RunMetrics, Scores, Training


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--base", "--expert", "--small", "--recipe", "--variant", "--output_dir"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--alpha", type=float, required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    held_out = HeldOut.of_run(args.expert)
    print(f"[align-proxy] proxy-tuning {args.base} by {args.expert} - {args.small} (alpha {args.alpha:g})", flush=True)
    scores = score_proxy_tuning(ProxyModels(args.base, args.expert, args.small, args.alpha), held_out)
    record = RunMetrics(args.recipe, dataclasses.asdict(registry.resolve(args.base)), held_out.dataset, None,
                        Training(), Scores(scores.base.metrics, scores.proxy.metrics, scores.base.items,
                                           scores.proxy.items, scores.base.details, scores.proxy.details),
                        kind="proxy-tuning",
                        params=ProxyTuneParams(args.recipe, args.variant, args.small, args.alpha, args.expert))
    record.write(Path(args.output_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
