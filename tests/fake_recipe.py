"""A fake recipe kind for scheduling tests: a cell that writes a canned metrics.json, fails, or diverges in
milliseconds, driven by its flags exactly as the runner passes them to a real recipe script.

    python tests/fake_recipe.py --config c.yaml --output_dir d --base_eval_cache b --model_name_or_path m --seed 0 ...

Its config YAML may hold `seconds` (how long the "training" takes, so a study can be caught mid-cell). A grid
value `max_length: 2` fails the cell like a data check would; `learning_rate >= 100` diverges it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock

from align_proxy.files import atomic_write
from align_proxy.kinds import RecipeKind, register
from align_proxy.run_metrics import Divergence, RunMetrics, Scores, Training

FAKE = RecipeKind("fake", config="tests.fake_recipe:FakeConfig", trainer="tests.fake_recipe:FakeConfig",
                  formats=(), task_format="sft", primary_metric="task_accuracy",
                  evaluation="tests.fake_recipe:FakeConfig", arguments="tests.fake_recipe:FakeConfig",
                  model_arguments="tests.fake_recipe:FakeConfig",
                  script=__file__)


@dataclass
class FakeConfig:
    """What the fake kind takes: a grid or evaluation key must be one of these (the spec check reads them)."""

    learning_rate: float = 1e-3
    max_length: int = 64
    seed: int = 0
    eval_size: int = 8
    builtin_test_size: int = 8
    seconds: float = 0.0


def register_fake() -> RecipeKind:
    return register(FAKE)


def flags(argv: list[str]) -> dict[str, str]:
    return {key[2:]: value for key, value in zip(argv[::2], argv[1::2])}


def main(argv: list[str]) -> None:
    args = flags(argv)
    config = yaml.safe_load(Path(args["config"]).read_text()) or {}
    out = Path(args["output_dir"])
    lr, seed, model = float(args.get("learning_rate", 1e-3)), int(args["seed"]), args["model_name_or_path"]
    (out / "run_config.yaml").write_text(yaml.safe_dump(
        {"recipe": "fake", "training_args": {"learning_rate": lr, "seed": seed, "output_dir": str(out)},
         "model_args": {"model_name_or_path": model}}))
    if int(args.get("max_length", 64)) < 3:
        # As a recipe ends on a user error (align_proxy.recipe.run_script): its message, exit code 2.
        print(f"error: {args.get('dataset_name')}: every prompt is longer than max_length {args['max_length']}",
              file=sys.stderr)
        sys.exit(2)
    # The base evaluation, once per model: shared through the cache directory like a real recipe's, under
    # its lock and written whole (a concurrent cell, or one started after a kill, never reads half a file).
    cache = Path(args["base_eval_cache"]) / f"fake-{Path(model).name}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{cache}.lock"):
        if not cache.exists():
            atomic_write(cache, json.dumps([float((len(model) + i) % 2) for i in range(8)]))
        base = json.loads(cache.read_text())
    time.sleep(float(config.get("seconds", 0.0)))  # the fake's "training"
    log = [{"loss": 2.0, "step": 1}, {"loss": 1e6 if lr >= 100 else 1.5, "step": 2}]
    diverged = Divergence(2, 1e6) if lr >= 100 else None
    trained = [] if diverged else [min(1.0, b + (seed + 1) * lr) for b in base]
    scores = Scores({"task_accuracy": sum(base) / len(base)},
                    {"task_accuracy": sum(trained) / len(trained)} if trained else {},
                    {"task_accuracy": base}, {"task_accuracy": trained} if trained else {})
    metrics = RunMetrics("fake", {"name": model, "path": model, "parameters": 1, "source": "local"}, "fake", None,
                         Training({}, 2, log), scores, diverged)
    metrics.write(out)


if __name__ == "__main__":
    main(sys.argv[1:])
