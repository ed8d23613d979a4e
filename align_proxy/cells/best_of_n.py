"""A study's best-of-n cell (`align_proxy.kinds.CELL_KINDS["best-of-n"]`): the policy's pool ranked by one reward
model, and metrics.json written atomically, last: the curve (train.curve, one point per n), and gold and learned
reward of the policy (base, n = 1) and of best-of-N (trained), per prompt. Prompts are the task's held-out ones
(eval seed 0, as RL runs' curves); `--seed` seeds the sampling.

    python -m align_proxy.cells.best_of_n --policy ladder-s --reward_model studies/x/cells/HASH --recipe reward \\
        --n 64 --prompts 128 --seed 0 --temperature 1.0 --max_new_tokens 8 --output_dir studies/x/cells/HASH2
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from align_proxy.cells.params import BestOfNParams
from align_proxy.evals.overoptimization import DEFAULT_GOLD
from align_proxy.models import registry
from align_proxy.run_metrics import RunMetrics, Scores, Training
# The cell measures its curve as the standalone command does (a cell entry point is the study's own process).
from align_proxy.studies.overoptimization_run import run


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--policy", "--reward_model", "--output_dir"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--recipe", default="reward")  # the reward recipe whose model ranks the samples
    parser.add_argument("--gold", default=DEFAULT_GOLD)
    parser.add_argument("--task", default="arith")
    for flag, kind in (("--n", int), ("--prompts", int), ("--seed", int), ("--max_new_tokens", int),
                       ("--temperature", float)):
        parser.add_argument(flag, type=kind, required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    print(f"[align-proxy] best-of-{args.n} of {args.policy} by {args.reward_model} ({args.prompts} prompts, "
          f"gold {args.gold})", flush=True)
    (curve,), pool = run(args.policy, [args.reward_model], gold=args.gold, n=args.n, prompts=args.prompts,
                         task=args.task, seed=args.seed, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, prompt_seed=0)
    first, last = {"gold_reward": curve.gold[:, 0], "learned_reward": curve.proxy[:, 0]}, \
        {"gold_reward": curve.gold[:, -1], "learned_reward": curve.proxy[:, -1]}
    scores = Scores({k: float(v.mean()) for k, v in first.items()}, {k: float(v.mean()) for k, v in last.items()},
                    {k: v.tolist() for k, v in first.items()}, {k: v.tolist() for k, v in last.items()})
    params = BestOfNParams(args.n, args.prompts, args.gold, args.temperature, args.max_new_tokens, args.task,
                           policy=args.policy, recipe=args.recipe, reward_model=args.reward_model,
                           distinct_per_prompt=float(np.mean([len(set(row)) for row in pool.completions])))
    record = RunMetrics(args.recipe, dataclasses.asdict(registry.resolve(args.policy)), f"builtin:{args.task}", None,
                        Training(curve=curve.points()), scores, kind="best-of-n", params=params)
    record.write(Path(args.output_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
