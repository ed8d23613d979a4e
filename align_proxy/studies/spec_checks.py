"""What every part of a study spec's check shares (its error, `fail`, `check_keys`) and the check of its
`evaluation:` mapping: the flags every cell gets, the judge, and the metrics that need them
(`align_proxy.studies.spec` checks the rest)."""

from __future__ import annotations

import difflib
from pathlib import Path

from align_proxy.errors import UserInputError
from align_proxy.kinds import KINDS
from align_proxy.metrics import LM_EVAL_PREFIX, METRICS, lm_eval_metric_error

# `evaluation:` keys a spec may spell short, and the recipe flags they set (`evaluation: {judge: arith_gold,
# num_samples: 4}`). The judge's own flags reach only the recipes whose replies it judges (`RecipeKind.judged`).
EVALUATION_ALIASES = {"judge": "eval_judge", "judge_weights": "eval_judge_weights", "num_samples": "eval_num_samples",
                      "temperature": "eval_temperature"}
JUDGE_FLAGS = ("eval_judge", "eval_judge_weights")
# Every metric some recipe kind's judge adds (`RecipeKind.judged_metrics`): a headline on one needs a judge.
JUDGED_METRICS = tuple(dict.fromkeys(m for kind in KINDS.values() for m in kind.judged_metrics))


class StudySpecError(UserInputError, ValueError):
    """A malformed study spec; the message names the file, the key and what is allowed."""


def fail(path: Path, message: str) -> None:
    raise StudySpecError(f"{path}: {message}")


def check_evaluation(evaluation, path: Path) -> dict:
    """`evaluation:` with its short keys spelt as the recipe flags they set, and the judge's specs checked now
    (a reward-model directory is recognised, not loaded)."""
    if not isinstance(evaluation, dict):
        fail(path, f"evaluation must be a mapping, got {evaluation!r}")
    flags = {}
    for key, value in evaluation.items():
        flag = EVALUATION_ALIASES.get(key, key)
        if flag in flags:
            fail(path, f"evaluation: {key!r} and {flag!r} set the same flag; keep one")
        flags[flag] = value
    if isinstance(flags.get("eval_judge"), dict):  # a cell of the study (spec.py checks which, once recipes are read)
        check_keys(flags["eval_judge"], {"recipe", "model", "variant", "seed"}, path, "evaluation.judge")
        if flags.get("eval_judge_weights") is not None:
            fail(path, "evaluation.judge_weights: a judge that is a cell of the study is one judge; drop the weights")
    elif flags.get("eval_judge") is not None:
        if isinstance(flags["eval_judge"], str):
            flags["eval_judge"] = [flags["eval_judge"]]
        specs = flags["eval_judge"]
        if not isinstance(specs, list) or not specs or not all(isinstance(s, str) for s in specs):
            fail(path, f"evaluation.judge must be a reward spec, a list of them, or a reward cell of the study "
                       f"({{recipe: reward, model: ...}}), got {specs!r}")
        weights = flags.get("eval_judge_weights")
        if weights is not None and (not isinstance(weights, list) or len(weights) != len(specs)):
            fail(path, f"evaluation.judge_weights must list one number per judge ({len(specs)}), got {weights!r}")
        from align_proxy.rewards import check_reward_spec

        for spec in specs:
            try:
                check_reward_spec(spec)
            except (UserInputError, TypeError) as err:
                fail(path, f"evaluation.judge: {err}")
    return flags


def check_lm_eval_tasks(tasks, path: Path) -> list[str]:
    """The names lm-eval reports `evaluation: {lm_eval_tasks: ...}` under, each task and its data checked now, before
    any cell runs (a comma-separated string or a list, as on a recipe's command line)."""
    if not tasks:
        return []
    if not isinstance(tasks, (str, list)):
        fail(path, f"evaluation.lm_eval_tasks must be task names or YAML paths (a list or comma-separated), got {tasks!r}")
    from align_proxy.evals.lm_harness import task_names

    try:
        return task_names(tasks)
    except ValueError as err:
        fail(path, f"evaluation.lm_eval_tasks: {err}")


def check_metric(metric, kind, lm_eval_tasks: list[str], path: Path, where: str) -> None:
    if str(metric).startswith(LM_EVAL_PREFIX):
        if not kind.policy:
            fail(path, f"{where}: {metric!r}: the {kind.name} recipe trains no language model for lm-eval to score")
        error = lm_eval_metric_error(metric, lm_eval_tasks)
        if error:
            fail(path, f"{where}.metric: {error}")
    elif metric not in METRICS:
        fail(path, f"{where}: unknown metric {metric!r}; choose one of {', '.join(METRICS)}, or an lm-eval task's "
                   "lm_eval:TASK/METRIC (with the task in evaluation.lm_eval_tasks)")


def check_keys(mapping, allowed: set[str], path: Path, where: str, hint: str = "") -> None:
    if not isinstance(mapping, dict):
        fail(path, f"{where} must be a mapping, got {mapping!r}")
    for key in mapping:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f" (did you mean '{near[0]}'?)" if near else ""
            fail(path, f"{where}: unknown key '{key}'{suggestion}; keys must be {hint or 'one of ' + ', '.join(sorted(allowed))}")


def mixture_ids(config: Path) -> list[str]:
    """The IDs of the datasets in a recipe config's `datasets:` mixture (`align_proxy.data.mixture.dataset_id`), none
    without one."""
    import yaml

    try:
        entries = (yaml.safe_load(config.read_text()) or {}).get("datasets") or []
    except (OSError, yaml.YAMLError, AttributeError):
        entries = []
    if not entries:  # most configs: nothing more to import
        return []
    from align_proxy.data.mixture import dataset_id

    return [dataset_id(str(e.get("path", ""))) for e in entries if isinstance(e, dict)]


def check_mixture_grid(grid: dict, config: Path, path: Path, where: str) -> dict:
    """The grid keys over a dataset mixture's shares (`mix.ID: [0.1, 0.3, 0.5]`, `align_proxy.data.mixture`), checked
    against the recipe config's `datasets:`; returns them. Each becomes `--mix ID=SHARE` on the cell's command line,
    so a share is part of the cell's hash."""
    shares = {k: v for k, v in grid.items() if str(k).startswith("mix.")}
    if not shares:
        return shares
    ids = mixture_ids(config)
    for key, values in shares.items():
        name = key.removeprefix("mix.")
        if name not in ids:
            fail(path, f"{where}.grid.{key}: {config} has no dataset {name!r} in its datasets: mixture "
                       f"({', '.join(ids) or 'it has none'}); a mix.ID key names one of them")
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and 0 < v < 1 for v in values):
            fail(path, f"{where}.grid.{key} must list shares strictly between 0 and 1, got {values!r}")
    return shares
