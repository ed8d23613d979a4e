"""Coverage of the study's 95% gain intervals, simulated in the study's own design
(`align_proxy/studies/calibration.py`): shared held-out items, one base evaluation, seed effects from
none to large, 3 and 5 seeds, zero and non-zero gains; binary, continuous, sampled (a judged win rate) and
length-controlled (its length-controlled form) metrics. Required: at least 0.93 in every setting.

    python benchmarks/calibration.py                  # the full sweep: 2000 studies per setting (~25 CPU-minutes)
    python benchmarks/calibration.py --studies 400    # what tests/test_calibration.py runs
    python benchmarks/calibration.py --metrics length_controlled    # one metric's settings

Each row also runs the interval align-proxy used before (a two-level bootstrap that resamples items
independently per seed) on the same simulated studies, as the baseline.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from align_proxy.studies.calibration import GAINS, coverage, designs
from align_proxy.studies.stats import Interval


METRICS = tuple(GAINS)


def two_level_bootstrap(seeds: list[np.ndarray], n_resamples: int, seed: int) -> Interval:
    """The interval align-proxy used before: seeds resampled, then items *independently within each seed*, a
    plain percentile interval. Kept here only as the baseline the crossed interval is measured against."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(s, dtype=float) for s in seeds]
    picked = rng.integers(len(arrays), size=(n_resamples, len(arrays)))
    means = np.empty(picked.shape)
    for i, items in enumerate(arrays):
        slots = picked == i
        means[slots] = items[rng.integers(items.size, size=(int(slots.sum()), items.size))].mean(axis=1)
    low, high = np.quantile(means.mean(axis=1), [0.025, 0.975])
    return Interval(float(np.mean([a.mean() for a in arrays])), float(low), float(high))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=2000, help="simulated studies per setting")
    parser.add_argument("--resamples", type=int, default=1000, help="replicates per interval")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=METRICS, help="which metrics' settings")
    parser.add_argument("--out", help="also write the table as JSON here")
    args = parser.parse_args()
    print(f"{'metric':11s} {'seeds':>5s} {'seed sd':>8s} {'gain':>6s} {'crossed':>8s} {'width':>6s} "
          f"{'old':>6s} {'width':>6s} {'width x':>7s}")
    rows, started = [], time.perf_counter()
    for design in designs(metrics=args.metrics):
        new_cov, new_width = coverage(design, args.studies, args.resamples)
        old_cov, old_width = coverage(design, args.studies, args.resamples, interval=two_level_bootstrap)
        rows.append({"design": asdict(design), "coverage": new_cov, "width": new_width,
                     "baseline_coverage": old_cov, "baseline_width": old_width})
        print(f"{design.metric:11s} {design.n_seeds:5d} {design.seed_sd:8.2f} {design.gain:+6.2f} {new_cov:8.3f} "
              f"{new_width:6.3f} {old_cov:6.3f} {old_width:6.3f} {new_width / old_width:7.2f}", flush=True)
    worst = min(r["coverage"] for r in rows)
    print(f"lowest coverage: crossed {worst:.3f}, old two-level bootstrap {min(r['baseline_coverage'] for r in rows):.3f}"
          f" (nominal 0.95, required >= 0.93); {args.studies} studies per setting, "
          f"{time.perf_counter() - started:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"studies": args.studies, "resamples": args.resamples, "rows": rows},
                                             indent=1))


if __name__ == "__main__":
    main()
