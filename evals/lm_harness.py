"""Standard benchmarks through lm-evaluation-harness: the tasks researchers report (PIQA, ARC-Easy, HellaSwag, ...)
scored on a run's base and trained model, per item, so a study judges a recipe on them like any other metric.

lm-eval (`pip install -e ".[lm-eval]"`) loads the data, builds the prompts and scores them; this module only runs
it on the model through its Python API and turns its logged samples into per-item scores, named
`lm_eval:TASK/METRIC` (`align_proxy.metrics`): lm-eval's own per-item metrics (accuracy, length-normalised
accuracy, ...) and, for multiple-choice tasks, the correct answer's log-probability in total and per byte of the
continuation scored. Items are ordered by lm-eval's doc_id, so every model's scores pair item by item.

Tasks are lm-eval task names, the shipped local tasks (`evals/lm_eval_tasks/`: `arith_mc`), or paths to task
YAML files. `load_tasks` builds them, data included, before any model is read: an unknown name or a dataset
that cannot be had offline fails there, naming the task and the fix.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from align_proxy.errors import UserInputError
from align_proxy.files import files_stamp
from align_proxy.metrics import LM_EVAL_METRICS, lm_eval_metric_name

SHIPPED_TASKS = Path(__file__).with_name("lm_eval_tasks")
INSTALL_HINT = 'lm-eval is not installed: pip install -e ".[lm-eval]" (or pip install "align-proxy[lm-eval]")'


class LmEvalTaskError(UserInputError, ValueError):
    """An lm-eval task that cannot be evaluated: unknown, or its data out of reach."""


def split_tasks(specs) -> list[str]:
    """Task specs from `--lm_eval_tasks piqa,arc_easy` or a list (either, or both, of commas and items).

    >>> split_tasks(["piqa,arc_easy", "hellaswag"]), split_tasks("arith_mc"), split_tasks(None)
    (['piqa', 'arc_easy', 'hellaswag'], ['arith_mc'], [])
    """
    if not specs:
        return []
    specs = [specs] if isinstance(specs, str) else specs
    return [part.strip() for spec in specs for part in str(spec).split(",") if part.strip()]


def _is_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or Path(spec).expanduser().is_file()


@functools.lru_cache(maxsize=2)
def task_manager(with_defaults: bool):
    """lm-eval's task index over the shipped local tasks, and its own tasks when a name needs them (indexing its
    ~15k task files takes seconds, so a run of local tasks only skips it). One per process."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise LmEvalTaskError(INSTALL_HINT) from err
    return TaskManager(include_path=str(SHIPPED_TASKS), include_defaults=with_defaults)


def _manager_for(specs: list[str]):
    local = task_manager(False)
    return local if all(_is_path(s) or s in local.all_tasks for s in specs) else task_manager(True)


def _check_names(specs: list[str], manager) -> None:
    import difflib

    for spec in specs:
        if _is_path(spec):
            if not Path(spec).expanduser().is_file():
                raise LmEvalTaskError(f"--lm_eval_tasks: task file {spec} not found")
        elif spec not in manager.all_tasks:
            near = difflib.get_close_matches(spec, manager.all_tasks, n=3)
            hint = f" (did you mean {', '.join(map(repr, near))}?)" if near else ""
            raise LmEvalTaskError(f"--lm_eval_tasks: unknown lm-eval task {spec!r}{hint}; `lm-eval ls tasks` lists "
                                  f"them, or pass a task YAML path (shipped, offline: {SHIPPED_TASKS / 'arith_mc.yaml'})")


def python_it_runs(task_file: Path, _seen: frozenset = frozenset()) -> list[str]:
    """The Python a task YAML makes lm-eval import and run: its `!function module.name` tags, and those of the
    files it `include:`s (one or a list), as "module.name (path of module.py)". Read with a safe loader that only
    notes the tags; lm-eval executes them while it builds the task.

    >>> import tempfile; folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "base.yaml").write_text("process_docs: !function utils.process_docs\\n")
    >>> _ = (folder / "task.yaml").write_text("include: [base.yaml]\\nmetric_list: [{metric: !function m.f}]\\n")
    >>> [line.split(" (")[0] for line in python_it_runs(folder / "task.yaml")]
    ['m.f', 'utils.process_docs']
    """
    import yaml

    class Function(str):
        """A `!function` tag's target."""

    class TaskLoader(yaml.SafeLoader):
        """PyYAML's safe loader that keeps `!function` as a marked string instead of importing it."""

    TaskLoader.add_constructor("!function", lambda loader, node: Function(loader.construct_scalar(node)))

    def functions(value) -> list[str]:
        if isinstance(value, Function):
            return [str(value)]
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        return [name for child in children for name in functions(child)]

    task_file = task_file.expanduser().resolve()
    if task_file in _seen or not task_file.is_file():
        return []
    try:
        config = yaml.load(task_file.read_text(errors="replace"), Loader=TaskLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError:
        return []  # lm-eval reports what is wrong with the file when it loads it
    if not isinstance(config, dict):
        return []
    found = [f"{name} ({task_file.parent / name.rsplit('.', 1)[0].replace('.', '/')}.py)" for name in functions(config)]
    includes = config.get("include") or []
    for include in [includes] if isinstance(includes, str) else includes:
        found += python_it_runs(task_file.parent / str(include), _seen | {task_file})
    return found


_NOTED: set[Path] = set()


def _say_what_runs(specs: list[str]) -> None:
    """A task file from outside the package may run Python (lm-eval's `!function`): say which, once, before it
    runs. lm-eval's own tasks and the shipped ones are installed code; a YAML file from elsewhere is as trusted as
    a script."""
    for spec in specs:
        path = Path(spec).expanduser().resolve()
        if _is_path(spec) and not path.is_relative_to(SHIPPED_TASKS.resolve()) and path not in _NOTED:
            _NOTED.add(path)
            if code := python_it_runs(path):
                print(f"[align-proxy] note: task file {spec} has lm-eval import and run Python: {', '.join(code)}. "
                      "Pass only task files you trust, as you would a script.", flush=True)


def load_tasks(specs) -> dict:
    """lm-eval's tasks for `specs`, built with their data, keyed by task name (a group or tag gives each of its
    tasks). Raises LmEvalTaskError naming the task and the fix when a name is unknown or its data unavailable."""
    specs = split_tasks(specs)
    manager = _manager_for(specs)
    _check_names(specs, manager)
    _say_what_runs(specs)
    tasks = {}
    for spec in specs:
        try:
            tasks.update(manager.load([str(Path(spec).expanduser()) if _is_path(spec) else spec])["tasks"])
        except OSError as err:  # datasets' ConnectionError, DatasetNotFoundError and FileNotFoundError all are
            raise LmEvalTaskError(
                f"--lm_eval_tasks: lm-eval task {spec!r} could not load its data ({type(err).__name__}: {err}). "
                "Without network: download it where there is some (lm-eval loads it with datasets.load_dataset into "
                "the Hugging Face datasets cache, ~/.cache/huggingface), copy that cache here and set "
                "HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1; or score a local task YAML instead (offline, shipped: "
                f"--lm_eval_tasks arith_mc, {SHIPPED_TASKS / 'arith_mc.yaml'})") from err
    return tasks


def task_names(specs) -> list[str]:
    """The names lm-eval reports `specs` under (what `lm_eval:TASK/...` metrics name), data checked."""
    return sorted(load_tasks(specs))


@dataclass(frozen=True)
class LmEvalSettings:
    """What `--lm_eval_*` asks for: the tasks, and how lm-eval runs them."""

    tasks: tuple[str, ...]
    limit: int | None = None  # items per task (lm-eval's first N); None: all
    num_fewshot: int | None = None  # None: each task's own default (0 for most)
    batch_size: int = 32

    @classmethod
    def from_args(cls, args) -> LmEvalSettings | None:
        tasks = split_tasks(getattr(args, "lm_eval_tasks", None))
        return cls(tuple(tasks), args.lm_eval_limit, args.lm_eval_num_fewshot, args.lm_eval_batch_size) if tasks else None

    def cache_key(self) -> dict:
        """What the scores depend on: the tasks (a YAML file's contents by its stamp), items and shots; not the batch."""
        import importlib.metadata

        return {"lm_eval_tasks": list(self.tasks), "lm_eval_task_files": [files_stamp(t) for t in self.tasks if _is_path(t)],
                "lm_eval_shipped": files_stamp(str(SHIPPED_TASKS)), "lm_eval_limit": self.limit,
                "lm_eval_num_fewshot": self.num_fewshot, "lm_eval_version": importlib.metadata.version("lm_eval")}


def _gold_index(target, arguments: list) -> list[int] | None:
    """The correct choice(s) of a multiple-choice item: lm-eval's target is an index, a list of them, or the
    answer text; None when it names no choice (lm-eval warns and scores such an item wrong)."""
    golds = target if isinstance(target, list) else [target]
    found = []
    for gold in golds:
        if isinstance(gold, str):
            gold = next((i for i, (_, cont) in enumerate(arguments) if cont.strip() == gold.strip()), -1)
        if not isinstance(gold, int) or not 0 <= gold < len(arguments):
            return None
        found.append(gold)
    return found


def _continuous_scores(sample: dict) -> tuple[float, float] | None:
    """(log-probability, log-probability per UTF-8 byte) of a multiple-choice item's correct continuation, as
    scored (the delimiter lm-eval puts before it included); None when the item names no valid choice."""
    arguments = [tuple(a) for a in sample["arguments"]]
    lls = [float(r[0]) for r in sample["filtered_resps"]]
    if "acc_mutual_info" in sample["metrics"]:  # the second half holds the unconditional log-likelihoods
        arguments, lls = arguments[: len(arguments) // 2], lls[: len(lls) // 2]
    golds = _gold_index(sample["target"], arguments)
    if golds is None:
        return None
    best = max(golds, key=lambda i: lls[i])  # several correct answers: the likeliest one
    return lls[best], lls[best] / max(1, len(arguments[best][1].encode("utf-8")))


def per_item_scores(task: str, samples: list[dict], multiple_choice: bool) -> dict[str, list[float]]:
    """A task's per-item scores from lm-eval's logged samples, by metric name, in doc_id order.

    >>> sample = {"doc_id": 0, "target": 1, "arguments": [["2+2=", "5"], ["2+2=", "4"]], "filter": "none",
    ...           "filtered_resps": [[-3.0, False], [-1.0, True]], "metrics": ["acc"], "acc": 1.0}
    >>> per_item_scores("t", [sample], multiple_choice=True)
    {'lm_eval:t/acc': [1.0], 'lm_eval:t/logprob': [-1.0], 'lm_eval:t/logprob_per_byte': [-1.0]}
    """
    scores: dict[str, list[float]] = {}
    skipped = set()
    for sample in sorted(samples, key=lambda s: (s["filter"], s["doc_id"])):
        for score in sample["metrics"]:
            value = sample.get(score)
            if score in LM_EVAL_METRICS and isinstance(value, (int, float)):
                scores.setdefault(lm_eval_metric_name(task, score, sample["filter"]), []).append(float(value))
            else:
                skipped.add(score)
    if skipped:
        print(f"[align-proxy] lm-eval {task}: {', '.join(sorted(skipped))} not recorded (align-proxy records per-item "
              f"scores averaged over items: {', '.join(LM_EVAL_METRICS)})", flush=True)
    if multiple_choice:
        firsts = [s for s in samples if s["filter"] == samples[0]["filter"]]
        continuous = [_continuous_scores(s) for s in sorted(firsts, key=lambda s: s["doc_id"])]
        if all(c is not None for c in continuous):
            scores[lm_eval_metric_name(task, "logprob")] = [c[0] for c in continuous]
            scores[lm_eval_metric_name(task, "logprob_per_byte")] = [c[1] for c in continuous]
        else:
            print(f"[align-proxy] lm-eval {task}: an item's target names no choice; its log-prob scores are skipped",
                  flush=True)
    return scores


def evaluate_lm_eval(model_path: str, tokenizer, settings: LmEvalSettings):
    """lm-eval's scores of the causal LM in `model_path`, per item (`align_proxy.evals.suite.EvalResult`)."""
    import torch
    from transformers import AutoModelForCausalLM

    from align_proxy.evals.suite import EvalResult, _load

    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        raise LmEvalTaskError(INSTALL_HINT) from err
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-task INFO lines drown the run's log
    model = _load(AutoModelForCausalLM, model_path).eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, device=str(model.device))
    with torch.no_grad():
        out = lm_eval.simple_evaluate(
            lm, tasks=[str(Path(t).expanduser()) if _is_path(t) else t for t in settings.tasks],
            task_manager=_manager_for(list(settings.tasks)), limit=settings.limit, num_fewshot=settings.num_fewshot,
            log_samples=True, bootstrap_iters=0,  # the study's paired bootstrap gives the intervals
            # lm-eval reseeds the process's global generators by default; a recipe seeds its own training.
            random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    result = EvalResult()
    for task in sorted(out["samples"]):
        multiple_choice = out["configs"][task].get("output_type") == "multiple_choice"
        for name, items in per_item_scores(task, out["samples"][task], multiple_choice).items():
            result.add(name, items)
    return result


@dataclass
class LmEvalEvaluation:
    """The run's lm-eval tasks as an evaluation beside its recipe kind's (`align_proxy.evals.suite.Evaluations`). Its kind is
    "lm_eval": every recipe that trains a policy scores the base model on them the same way, so a study evaluates
    each base model once for all of them."""

    tokenizer: object
    settings: LmEvalSettings
    kind: ClassVar[str] = "lm_eval"

    def cache_key(self) -> dict:
        return {"evaluation": self.kind, **self.settings.cache_key()}

    def __call__(self, model_path: str):
        return evaluate_lm_eval(model_path, self.tokenizer, self.settings)
