"""A base model's evaluation, scored once per evaluation setup: the "before" of a run's before/after gain.

`evaluate_base` scores the base model on the main process, part by part (an SFT and a GRPO run of one model
share its lm-eval scores); with `--base_eval_cache DIR` (a transfer study sets it) each part is kept in DIR
under a hash of everything it depends on (`base_cache_key`), so the runs of a study score each base once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from accelerate import PartialState

from align_proxy.files import atomic_write, files_stamp


def evaluate_base(run, evaluation):
    """Score `run`'s base model on the main process while the other ranks wait; None on the others, or when
    `--eval_before false`."""
    from align_proxy.evals.suite import EvalResult, Evaluations

    base = None
    if run.script_args.eval_before and run.is_main:
        cache = run.script_args.base_eval_cache
        # Cached part by part: an SFT and a GRPO run of one model share its lm-eval scores.
        base = EvalResult.merged([_from_cache(run, Path(cache), part) if cache else _evaluate_now(run, part)
                                  for part in Evaluations.parts_of(evaluation)])
    PartialState().wait_for_everyone()
    return base


def base_cache_key(run, evaluation) -> dict:
    """Everything a base score depends on. Training seed and hyperparameters are not in it (held-out items
    follow `eval_seed`, and DPO's implicit reward of the base against itself is 0 whatever beta); nor is the
    recipe, beyond the evaluation's own key: its kind (SFT and DPO score a policy on the same items in the
    same way, so they share "policy"; a reward model is another model; an RL evaluation samples) and what
    else it depends on."""
    args = run.script_args
    # The chat template renders conversational items: another template, another score. Keyed only when there is
    # one, so the caches of runs without one keep their keys.
    template = getattr(run.tokenizer, "chat_template", None)
    rendering = ({"chat_template": hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]}
                 if template else {})
    return {"model": run.model.path, "weights": files_stamp(run.model.path),
            "tokenizer": args.tokenizer_name_or_path, "dataset": args.dataset_name,
            "dataset_files": files_stamp(args.dataset_name), "dataset_config": args.dataset_config,
            "test_split": args.dataset_test_split, "builtin_test_size": args.builtin_test_size,
            "eval_size": args.eval_size, "eval_seed": args.eval_seed,
            "eval_max_new_tokens": args.eval_max_new_tokens, **rendering, **evaluation.cache_key()}


def _evaluate_now(run, evaluation):
    print(f"[align-proxy] evaluating base model {run.model.name} ...", flush=True)
    return evaluation(run.model.path)


def _from_cache(run, cache: Path, evaluation):
    """The base evaluation shared by every run with the same key; the lock makes concurrent runs of one
    study wait for one evaluation."""
    from filelock import FileLock

    from align_proxy.evals.suite import EvalResult

    key = base_cache_key(run, evaluation)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{key['evaluation']}-{run.model.name.replace('/', '--')}-{digest}.json"
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            print(f"[align-proxy] base model {run.model.name}: evaluation reused from {path}", flush=True)
            cached = json.loads(path.read_text())
            return EvalResult(cached["metrics"], cached["items"], cached.get("details", {}))
        result = _evaluate_now(run, evaluation)
        atomic_write(path, json.dumps({"key": key, "metrics": result.metrics, "items": result.items,
                                       "details": result.details}))
        return result
