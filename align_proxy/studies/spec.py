"""A transfer study's spec: which models, recipes, variants and seeds, checked before anything runs.

A spec expands into cells (model, recipe, variant, seed); each cell is named by a content hash of
its fully resolved configuration, so a rerun recognises the cells it has already finished.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from align_proxy import PROJECT_ROOT
from align_proxy.cells.params import BestOfNPlan
from align_proxy.install import shipped_file
from align_proxy.kinds import CELL_KINDS, KINDS, TRAIN, load_object
from align_proxy.models import registry
from align_proxy.studies.slurm_resources import SlurmResources, check_slurm
from align_proxy.studies.spec_checks import (JUDGE_FLAGS, JUDGED_METRICS, StudySpecError,  # noqa: F401 (re-export)
                                             check_evaluation, check_keys, check_lm_eval_tasks, check_metric,
                                             check_mixture_grid, fail, mixture_ids)

DEFAULT_SPEC = Path(__file__).with_name("default.yaml")
TOP_LEVEL_KEYS = {"name", "output_dir", "models", "target", "seeds", "dataset", "evaluation", "recipes"}


@dataclass(frozen=True)
class RecipePlan:
    recipe: str
    config: str  # the recipe's YAML config, the same file `python recipes/<recipe>.py --config` takes
    grid: dict[str, list] = field(default_factory=dict)
    metric: str = "task_accuracy"  # what the report's headline judges the recipe on
    # Cells under `accelerate launch`: {"config_file": path, "num_processes": n}; empty: one plain process.
    launch: dict = field(default_factory=dict)
    # Start each cell from the model another recipe's cell trained, same seed: {"recipe", "variant"} and, to start
    # every cell from one model's cell (a fixed policy), "model"; without it, each cell's own model.
    start_from: dict = field(default_factory=dict)
    # RL recipes: train against the reward model an earlier reward recipe's cell trained (same model and seed):
    # {"recipe", "variant"}. With a fixed `start_from` model, a cell's model is then its reward model's size.
    reward_from: dict = field(default_factory=dict)
    # What each cell's Slurm job asks for (`--executor slurm`): where it runs, never what it computes, so it is
    # not part of a cell's hash.
    slurm: SlurmResources = field(default_factory=lambda: SlurmResources())
    # Also evaluate, for every pair of models small < large (in the spec's order), each large base model steered
    # at decoding time by the small cell's trained model (align_proxy/proxy_tuning.py), at each `alpha`.
    proxy_tune: bool = False
    alpha: tuple[float, ...] = (1.0,)
    # Reward recipes: also rank a fixed policy's samples by each cell's reward model (best-of-n), `BestOfNPlan`.
    best_of_n: BestOfNPlan | None = None

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
    reward_from: str | None = None  # config_hash of the reward cell whose model this cell's rewards come from
    judge_from: str | None = None  # config_hash of the reward cell whose model judges this cell's replies
    # Which kind of cell (`align_proxy.kinds.CELL_KINDS`) and its typed parameters (`CellKind.params`). A
    # proxy-tuning cell's `model` is the large base it steers and `start_from` the small cell whose model is the
    # expert; a best-of-n cell's `model` is its reward model's, `reward_from` the reward cell and `start_from` the
    # policy's cell, unless its parameters name a policy model. `recipe` is the store's name, the kind's label.
    kind: str = TRAIN
    params: object | None = None

    @property
    def needs(self) -> tuple[str, ...]:
        """The cells that must be done before this one runs: the one it starts from, the one its reward is, the one
        whose reward model judges it."""
        return tuple(h for h in (self.start_from, self.reward_from, self.judge_from) if h is not None)

    @property
    def processes(self) -> int:
        return int(self.launch.get("num_processes", 1))

    @property
    def machines(self) -> int:
        return int(self.launch.get("num_machines", 1))


@dataclass(frozen=True)
class StudySpec:
    name: str
    output_dir: str
    models: list[str]
    recipes: list[RecipePlan]
    seeds: list[int]
    dataset: str = "builtin:arith"
    evaluation: dict = field(default_factory=dict)  # recipe flags every cell gets (the judge's: judged kinds only)
    target: str | float | None = None  # a registry name or a parameter count to predict gains at

    def evaluation_for(self, recipe: str) -> dict:
        """The `evaluation:` flags a cell of `recipe` gets: all of them, less the judge's where it judges nothing, and
        less a judge that is a cell (`judge_cell`: its directory becomes the flag when the cell runs)."""
        judged = KINDS[recipe].judged and not self.judge_cell
        return {k: v for k, v in self.evaluation.items() if judged or k not in JUDGE_FLAGS}

    @property
    def judge_cell(self) -> dict | None:
        """The reward cell whose model judges every judged cell ({recipe, variant, model, seed}), if the judge is
        one."""
        judge = self.evaluation.get("eval_judge")
        return judge if isinstance(judge, dict) else None

    @property
    def judge(self) -> dict | None:
        """The judge every judged cell uses, as the spec names it (None: no judge)."""
        if not self.evaluation.get("eval_judge"):
            return None
        return {"judge": self.evaluation["eval_judge"], "weights": self.evaluation.get("eval_judge_weights"),
                "num_samples": self.evaluation.get("eval_num_samples")}

    def slurm_resources(self) -> dict[str, SlurmResources]:
        """The Slurm job of each recipe name the store uses: a recipe's own, shared by the cells of every other kind
        of it (its proxy-tuning and best-of-n cells evaluate that recipe's models)."""
        return {kind.display(plan.recipe): plan.slurm for plan in self.recipes for kind in CELL_KINDS.values()}

    def cells(self) -> list[Cell]:
        """Every cell, kind by kind (`align_proxy.studies.cell_kinds`): train cells first, then the kinds that
        evaluate their models."""
        cells: list[Cell] = []
        for kind in CELL_KINDS.values():
            cells += kind.expand_cells(self, cells)
        return cells


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


def _check(raw: dict, path: Path) -> StudySpec:
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        fail(path, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    models = raw.get("models") or []
    if not isinstance(models, list) or len(models) < 2:
        fail(path, f"'models' lists {len(models) if isinstance(models, list) else models!r}; a transfer study "
                   "compares at least two model sizes (e.g. [ladder-s, ladder-m, ladder-l])")
    for model in models:
        _check_model(str(model), path)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        fail(path, f"'seeds' must be a non-empty list of integers, got {seeds!r}")
    evaluation = check_evaluation(raw.get("evaluation") or {}, path)
    lm_eval_tasks = check_lm_eval_tasks(evaluation.get("lm_eval_tasks"), path)
    recipes: list[RecipePlan] = []
    for i, entry in enumerate(raw.get("recipes") or []):
        recipes.append(_check_recipe(entry, i, path, recipes, lm_eval_tasks, [str(m) for m in models]))
    if not recipes:
        fail(path, "'recipes' is empty: list at least one of " + ", ".join(KINDS))
    if evaluation.get("eval_judge") and not any(KINDS[plan.recipe].judged for plan in recipes):
        fail(path, f"evaluation.judge: no listed recipe writes replies to judge ({', '.join(p.recipe for p in recipes)}"
                   "); list sft, dpo, grpo or rloo, or drop the judge")
    if isinstance(evaluation.get("eval_judge"), dict):
        evaluation["eval_judge"] = _check_judge_cell(evaluation["eval_judge"], recipes, [str(m) for m in models], seeds,
                                                     path)
    # Every cell takes the evaluation keys as flags: each must be a field of every listed recipe's arguments class
    # (RecipeArguments or a subclass; read from the kinds, so a spec of light kinds never imports TRL).
    arguments = {KINDS[plan.recipe].arguments for plan in recipes}
    shared = set.intersection(*({f.name for f in dataclasses.fields(load_object(a))} for a in arguments))
    check_keys(evaluation, shared, path, "evaluation")
    dataset = str(raw.get("dataset", "builtin:arith"))
    for plan in recipes:
        if plan.best_of_n and not dataset.startswith("builtin:"):
            fail(path, f"{plan.recipe}.best_of_n scores samples by a built-in task's gold reward on its held-out "
                       f"prompts; dataset {dataset!r} is not a built-in task (use builtin:arith)")
        judged = KINDS[plan.recipe].judged_metrics
        if plan.metric in JUDGED_METRICS and not (plan.metric in judged and evaluation.get("eval_judge")):
            fail(path, f"recipes: {plan.recipe}'s metric {plan.metric} is judged, and "
                       + (f"the {plan.recipe} recipe's judge gives {', '.join(judged) or 'nothing'}"
                          if evaluation.get("eval_judge") else "the spec names no judge: add evaluation: {judge: "
                          "SPEC} (a registered reward, module:function or a reward-model directory)"))
        if lm_eval_tasks and not KINDS[plan.recipe].policy:
            fail(path, f"evaluation.lm_eval_tasks: the {plan.recipe} recipe trains no language model for lm-eval to "
                       "score; run it in a study of its own, or without lm_eval_tasks")
    return StudySpec(name=str(raw.get("name", path.stem)), output_dir=str(raw.get("output_dir", f"studies/{path.stem}")),
                     models=[str(m) for m in models], recipes=recipes, seeds=seeds,
                     dataset=dataset, evaluation=evaluation, target=raw.get("target"))


def _check_judge_cell(judge: dict, recipes: list[RecipePlan], models: list[str], seeds: list[int], path: Path) -> dict:
    """`evaluation.judge: {recipe: reward, model: ladder-l[, variant: ..., seed: 0]}`: the model one cell of a reward
    recipe trains judges every judged cell (Gao et al.'s synthetic gold reward model). The reward recipe is listed
    before every judged one (cells wait on it); `seed` defaults to the study's first."""
    where = "evaluation.judge"
    first_judged = next((i for i, plan in enumerate(recipes) if KINDS[plan.recipe].judged), len(recipes))
    before = [plan.recipe for plan in recipes[:first_judged]]
    if judge.get("recipe") not in before:
        fail(path, f"{where}.recipe: {judge.get('recipe')!r} is not a recipe listed before the first judged one "
                   f"({recipes[first_judged].recipe if first_judged < len(recipes) else 'none'}); list the reward "
                   "recipe whose cell judges first (its cells run before the cells it judges)")
    reference = _check_reference({k: v for k, v in judge.items() if k != "seed"}, recipes[:first_judged], path, where,
                                 "be judged by", extra={"model"})
    if KINDS[reference["recipe"]].policy:
        fail(path, f"{where}: {reference['recipe']!r} trains a policy, not a reward model; name a reward recipe")
    if str(judge.get("model")) not in models:
        fail(path, f"{where}.model: {judge.get('model')!r} is not one of the study's models ({', '.join(models)}); "
                   "name the model whose reward cell judges")
    seed = judge.get("seed", seeds[0])
    if seed not in seeds:
        fail(path, f"{where}.seed: {seed!r} is not one of the study's seeds ({', '.join(map(str, seeds))})")
    return {**reference, "model": str(judge["model"]), "seed": seed}


def _check_model(model: str, path: Path) -> None:
    known = set(registry.registry_names())
    if model in known or Path(model).expanduser().is_dir() or model.count("/") == 1:
        return  # a registry name, a local directory, or a Hub id (checked when its cell runs)
    fail(path, f"unknown model {model!r}: use a registry name ({', '.join(sorted(known))}), a local model "
               "directory or a Hub id (owner/name)")


def _check_recipe(entry, index: int, path: Path, earlier: list[RecipePlan], lm_eval_tasks: list[str],
                  models: list[str]) -> RecipePlan:
    where = f"recipes[{index}]"
    if not isinstance(entry, dict) or "recipe" not in entry:
        fail(path, f"{where} must be a mapping with 'recipe', 'config' and optional 'grid', 'metric', 'launch', "
                   "'start_from', 'reward_from', 'slurm', 'proxy_tune', 'alpha' and 'best_of_n'")
    check_keys(entry, {"recipe", "config", "grid", "metric", "launch", "start_from", "reward_from", "slurm",
                       "proxy_tune", "alpha", "best_of_n"}, path, where)
    recipe = entry["recipe"]
    kind = KINDS.get(recipe)
    if kind is None:
        near = difflib.get_close_matches(str(recipe), KINDS, n=1)
        fail(path, f"{where}: unknown recipe {recipe!r}{f' (did you mean {near[0]!r}?)' if near else ''}; "
                   f"available: {', '.join(KINDS)}")
    if any(plan.recipe == recipe for plan in earlier):
        fail(path, f"{where}: recipe {recipe!r} is listed twice; give one entry a grid over what differs")
    config = _find_config(str(entry.get("config") or f"recipes/configs/{recipe}_ladder_cpu.yaml"), path, where)
    metric = entry.get("metric", kind.primary_metric)
    check_metric(metric, kind, lm_eval_tasks, path, where)
    grid = entry.get("grid") or {}
    allowed = {f.name for cls in kind.flag_classes for f in dataclasses.fields(cls)}
    allowed |= set(check_mixture_grid(grid if isinstance(grid, dict) else {}, Path(config), path, where))
    check_keys(grid, allowed, path, f"{where}.grid",
               hint=f"fields of the {recipe} recipe's arguments, or mix.ID for a share of its datasets: mixture")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            fail(path, f"{where}.grid.{key} must be a non-empty list of values, got {values!r}")
    start = _check_start(entry.get("start_from"), earlier, path, f"{where}.start_from", models)
    reward = _check_reward_from(entry.get("reward_from"), kind, earlier, path, f"{where}.reward_from")
    proxy_tune, alpha = _check_proxy_tune(entry, kind, bool(start), path, where)
    if proxy_tune and mixture_ids(Path(config)):
        fail(path, f"{where}: proxy_tune with a datasets: mixture in {config} is not supported yet: a proxy-tuning "
                   "cell reads its held-out items by dataset_name, not the mixture's; drop one of them")
    best = _check_best_of_n(entry.get("best_of_n"), kind, earlier, path, f"{where}.best_of_n", models)
    return RecipePlan(recipe, config, grid, metric, _check_launch(entry.get("launch"), path, f"{where}.launch"),
                      start, reward, check_slurm(entry.get("slurm") or {}, SlurmResources(), path, f"{where}.slurm"),
                      proxy_tune, alpha, best)


def _check_proxy_tune(entry: dict, kind, starts: bool, path: Path, where: str) -> tuple[bool, tuple[float, ...]]:
    """`proxy_tune: true` and an optional `alpha: [0.5, 1.0]` (default [1.0]): policies only, trained from a
    ladder rung or base model (not from another recipe's cell: the large base would then be that cell's model)."""
    proxy_tune = entry.get("proxy_tune", False)
    if not isinstance(proxy_tune, bool):
        fail(path, f"{where}.proxy_tune must be true or false, got {proxy_tune!r}")
    alpha = entry.get("alpha", [1.0])
    if "alpha" in entry and not proxy_tune:
        fail(path, f"{where}.alpha is the proxy-tuning strength: set proxy_tune: true as well, or drop alpha")
    if not isinstance(alpha, list) or not alpha or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                                            for a in alpha):
        fail(path, f"{where}.alpha must be a non-empty list of numbers (e.g. [0.5, 1.0, 1.5]), got {alpha!r}")
    if proxy_tune and not kind.policy:
        fail(path, f"{where}: proxy_tune steers a policy's decoding; a {kind.name} model is not a policy "
                   "(reward models are out of scope)")
    if proxy_tune and starts:
        fail(path, f"{where}: proxy_tune with start_from is not supported: the large base to steer would be the "
                   "start recipe's large model; proxy-tune the start recipe itself, or run `align-proxy proxy-tune "
                   "--base <its large cell>` by hand")
    return proxy_tune, tuple(float(a) for a in alpha)


def _check_start(start, earlier: list[RecipePlan], path: Path, where: str, models: list[str]) -> dict:
    """`start_from: sft`, `{recipe: sft, variant: learning_rate=0.001}` or `{recipe: sft, model: ladder-s}`: each
    cell trains, and is judged against, the model that cell of an earlier recipe trained with the same seed, from
    the same base model (SFT, then GRPO: the order RLHF runs in), or from `model` for every cell (one fixed policy,
    e.g. trained against each size's reward model with `reward_from`)."""
    if start is None:
        return {}
    reference = _check_reference(start, earlier, path, where, "start from", extra={"model"})
    if "model" in (start if isinstance(start, dict) else {}):
        if str(start["model"]) not in models:
            fail(path, f"{where}.model: {start['model']!r} is not one of the study's models ({', '.join(models)})")
        reference["model"] = str(start["model"])
    return reference


def _check_reference(ref, earlier: list[RecipePlan], path: Path, where: str, role: str,
                     extra: set[str] = frozenset()) -> dict:
    """`sft` or `{recipe: sft, variant: ...}`: a recipe listed earlier and one of its variants (named, when it has
    several), as {"recipe", "variant"}."""
    if isinstance(ref, str):
        ref = {"recipe": ref}
    check_keys(ref, {"recipe", "variant", *extra}, path, where)
    plans = {plan.recipe: plan for plan in earlier}
    plan = plans.get(ref.get("recipe"))
    if plan is None:
        fail(path, f"{where}: {ref.get('recipe')!r} is not a recipe listed before this one "
                   f"(listed before: {', '.join(plans) or 'none'}); a recipe runs before the cells that {role} it")
    variants = [name for name, _ in plan.variants()]
    variant = ref.get("variant")
    if variant is None and len(variants) > 1:
        fail(path, f"{where}: {plan.recipe} has {len(variants)} variants; name the one to {role} with "
                   f"'variant' ({', '.join(variants)})")
    variant = variant if variant is not None else variants[0]
    if variant not in variants:
        fail(path, f"{where}: {plan.recipe} has no variant {variant!r}; its variants: {', '.join(variants)}")
    return {"recipe": plan.recipe, "variant": variant}


def _check_reward_from(ref, kind, earlier: list[RecipePlan], path: Path, where: str) -> dict:
    """`reward_from: reward`: an RL recipe's reward is the model the named reward recipe's cell trained (same
    model, same seed), in place of its config's `reward_funcs`."""
    if ref is None:
        return {}
    if kind.family != "rl":
        fail(path, f"{where}: only RL recipes (grpo, rloo) train against a reward; {kind.name} does not")
    reference = _check_reference(ref, earlier, path, where, "train against")
    if KINDS[reference["recipe"]].policy:
        fail(path, f"{where}: {reference['recipe']!r} trains a policy, not a reward model; name a reward recipe")
    return reference


def _check_best_of_n(raw, kind, earlier: list[RecipePlan], path: Path, where: str, models: list[str]):
    """`best_of_n: {policy: {recipe: sft, model: ladder-s}, n: 64, prompts: 128}` on a reward recipe: each of its
    reward models picks the best of n of the policy's samples (the policy: a cell of an earlier recipe, or a model
    of the study, `policy: ladder-s`), every n <= `n`; `gold` names the true reward (default: the task's)."""
    if raw is None:
        return None
    if kind.policy:
        fail(path, f"{where}: best-of-n ranks samples by a reward model; {kind.name} trains a policy. Put "
                   "best_of_n on the reward recipe")
    fields = {f.name for f in dataclasses.fields(BestOfNPlan)}
    check_keys(raw, fields, path, where)
    if "policy" not in raw:
        fail(path, f"{where} needs 'policy': a model of the study (e.g. {models[0]}) or an earlier recipe's cell "
                   f"({{recipe: sft, model: {models[0]}}})")
    policy = raw["policy"]
    if isinstance(policy, dict) and "recipe" in policy:
        if "model" not in policy:
            fail(path, f"{where}.policy: name the one model whose cell is the policy ({', '.join(models)}), "
                       "e.g. {recipe: sft, model: ladder-s}: every reward model ranks the same policy's samples")
        policy = _check_start(policy, earlier, path, f"{where}.policy", models)
    elif isinstance(policy, (str, dict)):
        model = str(policy["model"] if isinstance(policy, dict) else policy)
        _check_model(model, path)
        policy = {"model": model}
    else:
        fail(path, f"{where}.policy must be a model name or {{recipe, model[, variant]}}, got {policy!r}")
    values = {k: v for k, v in raw.items() if k != "policy"}
    for key in ("n", "prompts", "max_new_tokens"):
        if key in values and (not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1):
            fail(path, f"{where}.{key} must be a positive whole number, got {values[key]!r}")
    if values.get("n", 2) < 2:
        fail(path, f"{where}.n must be at least 2: best-of-1 is the policy itself")
    if "temperature" in values and not (isinstance(values["temperature"], (int, float)) and values["temperature"] > 0):
        fail(path, f"{where}.temperature must be a number above 0, got {values['temperature']!r}")
    if values.get("gold") is not None:
        from align_proxy.rewards import get_reward

        try:
            get_reward(str(values["gold"]))
        except (KeyError, ValueError, ImportError, OSError) as err:
            fail(path, f"{where}.gold: {str(err).strip(chr(39))}")
    return BestOfNPlan(policy, **values)


def _check_launch(launch, path: Path, where: str) -> dict:
    """`launch: {config_file: recipes/accelerate/deepspeed_zero2.yaml, num_processes: 8}`: the cell runs under
    `accelerate launch` with that config; num_processes (over all machines) and num_machines default to the config's
    own. More than one machine needs `--executor slurm`: the cell becomes one job on that many nodes."""
    if launch is None:
        return {}
    check_keys(launch, {"config_file", "num_processes", "num_machines"}, path, where)
    if "config_file" not in launch:
        fail(path, f"{where} needs 'config_file', an accelerate config (e.g. recipes/accelerate/multi_gpu.yaml)")
    config_file = _find_config(str(launch["config_file"]), path, where)
    try:
        accelerate_config = yaml.safe_load(Path(config_file).read_text())
    except yaml.YAMLError as err:
        fail(path, f"{where}: {config_file} is not valid YAML: {err}")
    if not isinstance(accelerate_config, dict):
        fail(path, f"{where}: {config_file} is not an accelerate config (a YAML mapping, as `accelerate config` writes)")
    processes = launch.get("num_processes", accelerate_config.get("num_processes", 1))
    machines = launch.get("num_machines", accelerate_config.get("num_machines", 1))
    for key, value in (("num_processes", processes), ("num_machines", machines)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            fail(path, f"{where}.{key} must be a positive integer, got {value!r}")
    if processes % machines:
        fail(path, f"{where}: {processes} processes do not split evenly over {machines} machines; make "
                   "num_processes (all machines together, as accelerate counts it) a multiple of num_machines")
    # Several machines only under `--executor slurm`, one job over that many nodes; kept out of the dict (and
    # so out of the cell's hash) when 1, so cells of earlier studies keep their names.
    return {"config_file": config_file, "num_processes": processes, **({"num_machines": machines} if machines > 1 else {})}


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
    fail(path, f"{where}: config file {config} not found (looked in {', '.join(str(c.parent) for c in candidates)})")


