"""A transfer study's spec: which models, recipes, variants and seeds, checked before anything runs.

A spec expands into cells (model, recipe, variant, seed); each cell is named by a content hash of
its fully resolved configuration, so a rerun recognises the cells it has already finished.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from align_proxy import PROJECT_ROOT
from align_proxy.install import shipped_file
from align_proxy.kinds import KINDS, RECIPE_ARGUMENTS, load_object
from align_proxy.metrics import METRICS
from align_proxy.models import registry

DEFAULT_SPEC = Path(__file__).with_name("default.yaml")
TOP_LEVEL_KEYS = {"name", "output_dir", "models", "target", "seeds", "dataset", "evaluation", "recipes"}


class StudySpecError(ValueError):
    """A malformed study spec; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class RecipePlan:
    recipe: str
    config: str  # the recipe's YAML config, the same file `python recipes/<recipe>.py --config` takes
    grid: dict[str, list] = field(default_factory=dict)
    metric: str = "task_accuracy"  # what the report's headline judges the recipe on
    # Cells under `accelerate launch`: {"config_file": path, "num_processes": n}; empty: one plain process.
    launch: dict = field(default_factory=dict)
    # Start each cell from the model another recipe's cell trained (same model and seed): {"recipe", "variant"}.
    start_from: dict = field(default_factory=dict)
    # Also evaluate, for every pair of models small < large (in the spec's order), each large base model steered
    # at decoding time by the small cell's trained model (align_proxy/proxy_tuning.py), at each `alpha`.
    proxy_tune: bool = False
    alpha: tuple[float, ...] = (1.0,)

    def variants(self) -> list[tuple[str, dict]]:
        """Every combination of the grid, named like `beta=0.1,learning_rate=0.0001`."""
        if not self.grid:
            return [("default", {})]
        keys = sorted(self.grid)
        combos = itertools.product(*(self.grid[k] for k in keys))
        return [(",".join(f"{k}={v}" for k, v in zip(keys, values)), dict(zip(keys, values))) for values in combos]


@dataclass(frozen=True)
class Cell:
    model: str
    recipe: str
    variant: str
    seed: int
    overrides: dict  # command-line overrides of the recipe config, all of them
    config_hash: str
    launch: dict = field(default_factory=dict)  # the recipe plan's `launch`, config_file resolved
    start_from: str | None = None  # config_hash of the cell whose trained model this cell starts from
    # A proxy-tuning cell (no training): {"recipe", "variant", "small", "alpha"}; `model` is the large base it
    # steers and `start_from` the small cell whose trained model is the expert.
    proxy: dict = field(default_factory=dict)

    @property
    def processes(self) -> int:
        return int(self.launch.get("num_processes", 1))


@dataclass(frozen=True)
class StudySpec:
    name: str
    output_dir: str
    models: list[str]
    recipes: list[RecipePlan]
    seeds: list[int]
    dataset: str = "builtin:arith"
    evaluation: dict = field(default_factory=dict)
    target: str | float | None = None  # a registry name or a parameter count to predict gains at

    def cells(self) -> list[Cell]:
        cells: list[Cell] = []
        for plan in self.recipes:
            config_text = Path(plan.config).read_text()
            for model, (variant, grid_values), seed in itertools.product(self.models, plan.variants(), self.seeds):
                overrides = {"model_name_or_path": model, "dataset_name": self.dataset, "seed": seed,
                             **self.evaluation, **grid_values}
                described = {"recipe": plan.recipe, "config": config_text, "overrides": overrides}
                if plan.launch:  # the processes (hence the global batch) and the engine are part of the run
                    described["launch"] = {**plan.launch, "config_file": Path(plan.launch["config_file"]).read_text()}
                start = None
                if plan.start_from:  # the start cell's hash names everything its model came from
                    start = next(c.config_hash for c in cells if (c.model, c.recipe, c.variant, c.seed) ==
                                 (model, plan.start_from["recipe"], plan.start_from["variant"], seed))
                    described["start_from"] = start
                blob = json.dumps(described, sort_keys=True, default=str)
                digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
                cells.append(Cell(model, plan.recipe, variant, seed, overrides, digest, plan.launch, start))
        return cells + self._proxy_cells(cells)

    def _proxy_cells(self, cells: list[Cell]) -> list[Cell]:
        """One cell per recipe with `proxy_tune`, pair of models small < large, variant, seed and alpha: the large
        base steered by the small cell's model. Stored under `proxy_recipe(recipe)` and a variant naming the
        small model and alpha, so each is a cell of its own in the store and the completeness table."""
        proxy_cells = []
        by_key = {(c.recipe, c.variant, c.model, c.seed): c for c in cells}
        for plan in (p for p in self.recipes if p.proxy_tune):
            for (i, small), (j, large) in itertools.combinations(enumerate(self.models), 2):
                for (variant, _), seed, alpha in itertools.product(plan.variants(), self.seeds, plan.alpha):
                    expert = by_key[(plan.recipe, variant, small, seed)]
                    described = {"proxy_tune": {"base": large, "expert_cell": expert.config_hash, "alpha": alpha}}
                    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
                    proxy = {"recipe": plan.recipe, "variant": variant, "small": small, "alpha": float(alpha)}
                    proxy_cells.append(Cell(large, proxy_recipe(plan.recipe), proxy_variant(variant, small, alpha),
                                            seed, {"alpha": float(alpha)}, digest, start_from=expert.config_hash,
                                            proxy=proxy))
        return proxy_cells


def proxy_recipe(recipe: str) -> str:
    """The store's recipe name of a recipe's proxy-tuning cells: `sft (proxy-tuned)`."""
    return f"{recipe} (proxy-tuned)"


def proxy_variant(variant: str, small: str, alpha: float) -> str:
    """The store's variant name of a proxy-tuning cell: the expert's variant, from which model, at which alpha."""
    return f"{variant}, from {Path(small).name}, alpha={float(alpha):g}"


def load_spec(path: str | Path | None = None) -> StudySpec:
    """Read and check a spec file (the embedded default without a path)."""
    path = Path(path) if path is not None else DEFAULT_SPEC
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise StudySpecError(f"cannot read study spec {path}: {err}") from err
    if not isinstance(raw, dict):
        raise StudySpecError(f"{path}: a study spec is a YAML mapping with keys {', '.join(sorted(TOP_LEVEL_KEYS))}")
    return _check(raw, path)


def _fail(path: Path, message: str) -> None:
    raise StudySpecError(f"{path}: {message}")


def _check(raw: dict, path: Path) -> StudySpec:
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        _fail(path, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    models = raw.get("models") or []
    if not isinstance(models, list) or len(models) < 2:
        _fail(path, f"'models' lists {len(models) if isinstance(models, list) else models!r}; a transfer study "
                    "compares at least two model sizes (e.g. [ladder-s, ladder-m, ladder-l])")
    for model in models:
        _check_model(str(model), path)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        _fail(path, f"'seeds' must be a non-empty list of integers, got {seeds!r}")
    evaluation = raw.get("evaluation") or {}
    _check_keys(evaluation, {f.name for f in dataclasses.fields(load_object(RECIPE_ARGUMENTS))}, path, "evaluation")
    recipes: list[RecipePlan] = []
    for i, entry in enumerate(raw.get("recipes") or []):
        recipes.append(_check_recipe(entry, i, path, recipes))
    if not recipes:
        _fail(path, "'recipes' is empty: list at least one of " + ", ".join(KINDS))
    return StudySpec(name=str(raw.get("name", path.stem)), output_dir=str(raw.get("output_dir", f"studies/{path.stem}")),
                     models=[str(m) for m in models], recipes=recipes, seeds=seeds,
                     dataset=str(raw.get("dataset", "builtin:arith")), evaluation=evaluation, target=raw.get("target"))


def _check_model(model: str, path: Path) -> None:
    known = set(registry.registry_names())
    if model in known or Path(model).expanduser().is_dir() or model.count("/") == 1:
        return  # a registry name, a local directory, or a Hub id (checked when its cell runs)
    _fail(path, f"unknown model {model!r}: use a registry name ({', '.join(sorted(known))}), a local model "
                "directory or a Hub id (owner/name)")


def _check_recipe(entry, index: int, path: Path, earlier: list[RecipePlan]) -> RecipePlan:
    where = f"recipes[{index}]"
    if not isinstance(entry, dict) or "recipe" not in entry:
        _fail(path, f"{where} must be a mapping with 'recipe', 'config' and optional 'grid', 'metric', 'launch' "
                    "and 'start_from'")
    _check_keys(entry, {"recipe", "config", "grid", "metric", "launch", "start_from", "proxy_tune", "alpha"}, path,
                where)
    recipe = entry["recipe"]
    kind = KINDS.get(recipe)
    if kind is None:
        near = difflib.get_close_matches(str(recipe), KINDS, n=1)
        _fail(path, f"{where}: unknown recipe {recipe!r}{f' (did you mean {near[0]!r}?)' if near else ''}; "
                    f"available: {', '.join(KINDS)}")
    if any(plan.recipe == recipe for plan in earlier):
        _fail(path, f"{where}: recipe {recipe!r} is listed twice; give one entry a grid over what differs")
    config = _find_config(str(entry.get("config") or f"recipes/configs/{recipe}_ladder_cpu.yaml"), path, where)
    metric = entry.get("metric", kind.primary_metric)
    if metric not in METRICS:
        _fail(path, f"{where}: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    grid = entry.get("grid") or {}
    classes = (kind.arguments_class, kind.config_class, load_object("trl:ModelConfig"))
    allowed = {f.name for cls in classes for f in dataclasses.fields(cls)}
    _check_keys(grid, allowed, path, f"{where}.grid", hint=f"fields of the {recipe} recipe's arguments")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            _fail(path, f"{where}.grid.{key} must be a non-empty list of values, got {values!r}")
    start = _check_start(entry.get("start_from"), earlier, path, f"{where}.start_from")
    proxy_tune, alpha = _check_proxy_tune(entry, kind, bool(start), path, where)
    return RecipePlan(recipe, config, grid, metric, _check_launch(entry.get("launch"), path, f"{where}.launch"),
                      start, proxy_tune, alpha)


def _check_proxy_tune(entry: dict, kind, starts: bool, path: Path, where: str) -> tuple[bool, tuple[float, ...]]:
    """`proxy_tune: true` and an optional `alpha: [0.5, 1.0]` (default [1.0]): policies only, trained from a
    ladder rung or base model (not from another recipe's cell: the large base would then be that cell's model)."""
    proxy_tune = entry.get("proxy_tune", False)
    if not isinstance(proxy_tune, bool):
        _fail(path, f"{where}.proxy_tune must be true or false, got {proxy_tune!r}")
    alpha = entry.get("alpha", [1.0])
    if "alpha" in entry and not proxy_tune:
        _fail(path, f"{where}.alpha is the proxy-tuning strength: set proxy_tune: true as well, or drop alpha")
    if not isinstance(alpha, list) or not alpha or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                                            for a in alpha):
        _fail(path, f"{where}.alpha must be a non-empty list of numbers (e.g. [0.5, 1.0, 1.5]), got {alpha!r}")
    if proxy_tune and kind.evaluation != "evals.suite:PolicyEvaluation" and kind.task_format != "rl":
        _fail(path, f"{where}: proxy_tune steers a policy's decoding; a {kind.name} model is not a policy "
                    "(reward models are out of scope)")
    if proxy_tune and starts:
        _fail(path, f"{where}: proxy_tune with start_from is not supported: the large base to steer would be the "
                    "start recipe's large model; proxy-tune the start recipe itself, or run `align-proxy proxy-tune "
                    "--base <its large cell>` by hand")
    return proxy_tune, tuple(float(a) for a in alpha)


def _check_start(start, earlier: list[RecipePlan], path: Path, where: str) -> dict:
    """`start_from: sft` or `{recipe: sft, variant: learning_rate=0.001}`: each cell trains, and is judged
    against, the model that cell of an earlier recipe trained from the same base model with the same seed
    (SFT, then GRPO: the order RLHF runs in)."""
    if start is None:
        return {}
    if isinstance(start, str):
        start = {"recipe": start}
    _check_keys(start, {"recipe", "variant"}, path, where)
    plans = {plan.recipe: plan for plan in earlier}
    plan = plans.get(start.get("recipe"))
    if plan is None:
        _fail(path, f"{where}: {start.get('recipe')!r} is not a recipe listed before this one "
                    f"(listed before: {', '.join(plans) or 'none'}); the recipe a cell starts from runs first")
    variants = [name for name, _ in plan.variants()]
    variant = start.get("variant")
    if variant is None and len(variants) > 1:
        _fail(path, f"{where}: {plan.recipe} has {len(variants)} variants; name the one to start from with "
                    f"'variant' ({', '.join(variants)})")
    variant = variant if variant is not None else variants[0]
    if variant not in variants:
        _fail(path, f"{where}: {plan.recipe} has no variant {variant!r}; its variants: {', '.join(variants)}")
    return {"recipe": plan.recipe, "variant": variant}


def _check_launch(launch, path: Path, where: str) -> dict:
    """`launch: {config_file: recipes/accelerate/deepspeed_zero2.yaml, num_processes: 8}`: the cell runs under
    `accelerate launch` with that config; num_processes defaults to the config's own."""
    if launch is None:
        return {}
    _check_keys(launch, {"config_file", "num_processes"}, path, where)
    if "config_file" not in launch:
        _fail(path, f"{where} needs 'config_file', an accelerate config (e.g. recipes/accelerate/multi_gpu.yaml)")
    config_file = _find_config(str(launch["config_file"]), path, where)
    try:
        accelerate_config = yaml.safe_load(Path(config_file).read_text())
    except yaml.YAMLError as err:
        _fail(path, f"{where}: {config_file} is not valid YAML: {err}")
    if not isinstance(accelerate_config, dict):
        _fail(path, f"{where}: {config_file} is not an accelerate config (a YAML mapping, as `accelerate config` writes)")
    processes = launch.get("num_processes", accelerate_config.get("num_processes", 1))
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        _fail(path, f"{where}.num_processes must be a positive integer, got {processes!r}")
    return {"config_file": config_file, "num_processes": processes}


def _find_config(config: str, path: Path, where: str) -> str:
    """A recipe config path, relative to the working directory, the spec file or the project root; else
    a shipped file it names (`recipes/configs/...` resolves in any install)."""
    candidates = [Path(config)] if Path(config).is_absolute() else \
        [Path.cwd() / config, path.parent / config, PROJECT_ROOT / config]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve())
    if not Path(config).is_absolute() and shipped_file(config):
        return str(shipped_file(config))
    _fail(path, f"{where}: config file {config} not found (looked in {', '.join(str(c.parent) for c in candidates)})")


def _check_keys(mapping, allowed: set[str], path: Path, where: str, hint: str = "") -> None:
    if not isinstance(mapping, dict):
        _fail(path, f"{where} must be a mapping, got {mapping!r}")
    for key in mapping:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f" (did you mean '{near[0]}'?)" if near else ""
            _fail(path, f"{where}: unknown key '{key}'{suggestion}; keys must be {hint or 'one of ' + ', '.join(sorted(allowed))}")
