"""How a study spec expands into the cells of each kind (`align_proxy.kinds.CellKind.expand`): train cells (one
recipe run per model, variant and seed), proxy-tuning cells and best-of-n cells, each named by a content hash of
what its result depends on, so a rerun recognises the cells it has already finished.

The `described` dicts hashed here are the cells' names in every study directory already written: never change one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

from align_proxy.cells.params import BestOfNParams, ProxyTuneParams
from align_proxy.kinds import CELL_KINDS, KINDS


def _digest(described: dict, **dumps) -> str:
    return hashlib.sha256(json.dumps(described, sort_keys=True, **dumps).encode()).hexdigest()[:16]


def train_cells(spec, cells: list) -> list:
    """One cell per recipe, model, variant and seed: a run of the recipe's script."""
    from align_proxy.studies.spec import Cell

    out: list[Cell] = []
    for plan in spec.recipes:
        config_text = Path(plan.config).read_text()
        for model, (variant, grid_values), seed in itertools.product(spec.models, plan.variants(), spec.seeds):
            shares = [f"{k.removeprefix('mix.')}={v}" for k, v in grid_values.items() if k.startswith("mix.")]
            overrides = {"model_name_or_path": model, "dataset_name": spec.dataset, "seed": seed,
                         **spec.evaluation_for(plan.recipe),
                         **{k: v for k, v in grid_values.items() if not k.startswith("mix.")},
                         **({"mix": shares} if shares else {})}
            described = {"recipe": plan.recipe, "config": config_text, "overrides": overrides}
            if plan.launch:  # the processes (hence the global batch) and the engine are part of the run
                described["launch"] = {**plan.launch, "config_file": Path(plan.launch["config_file"]).read_text()}
            start = find_cell(cells + out, plan.start_from, model, seed)  # its hash names all its model came from
            reward = find_cell(cells + out, plan.reward_from, model, seed)
            judge = (find_cell(cells + out, spec.judge_cell, model, spec.judge_cell["seed"])
                     if spec.judge_cell and KINDS[plan.recipe].judged else None)
            described |= {k: v for k, v in (("start_from", start), ("reward_from", reward), ("judge_from", judge))
                          if v is not None}
            out.append(Cell(model, plan.recipe, variant, seed, overrides, _digest(described, default=str),
                            plan.launch, start, reward_from=reward, judge_from=judge))
    return out


def proxy_cells(spec, cells: list) -> list:
    """One cell per recipe with `proxy_tune`, pair of models small < large, variant, seed and alpha: the large base
    steered by the small cell's model. Stored under the kind's label of the recipe and a variant naming the small
    model and alpha (`proxy_variant`), so each is a cell of its own in the store and the completeness table."""
    from align_proxy.studies.spec import Cell

    label = CELL_KINDS["proxy-tuning"].display
    out = []
    by_key = {(c.recipe, c.variant, c.model, c.seed): c for c in cells if c.kind == "train"}
    for plan in (p for p in spec.recipes if p.proxy_tune):
        for (i, small), (j, large) in itertools.combinations(enumerate(spec.models), 2):
            for (variant, _), seed, alpha in itertools.product(plan.variants(), spec.seeds, plan.alpha):
                expert = by_key[(plan.recipe, variant, small, seed)]
                described = {"proxy_tune": {"base": large, "expert_cell": expert.config_hash, "alpha": alpha}}
                params = ProxyTuneParams(plan.recipe, variant, small, float(alpha))
                out.append(Cell(large, label(plan.recipe), proxy_variant(variant, small, alpha), seed,
                                {"alpha": float(alpha)}, _digest(described), start_from=expert.config_hash,
                                kind="proxy-tuning", params=params))
    return out


def best_of_n_cells(spec, cells: list) -> list:
    """One cell per reward cell of a recipe with `best_of_n`: the policy's samples ranked by that cell's reward model.
    Stored under the kind's label of the recipe, with the reward cell's model, variant and seed."""
    from align_proxy.studies.spec import Cell

    label = CELL_KINDS["best-of-n"].display
    out = []
    trained = [c for c in cells if c.kind == "train"]
    for plan in (p for p in spec.recipes if p.best_of_n):
        policy = plan.best_of_n.policy
        for rm in [c for c in trained if c.recipe == plan.recipe]:
            start = find_cell(trained, policy, rm.model, rm.seed) if "recipe" in policy else None
            settings = {**plan.best_of_n.settings(), "task": spec.dataset.removeprefix("builtin:"),
                        **({} if start else {"policy": policy["model"]})}
            described = {"best_of_n": settings, "policy_cell": start, "reward_cell": rm.config_hash, "seed": rm.seed}
            out.append(Cell(rm.model, label(plan.recipe), rm.variant, rm.seed, {"seed": rm.seed}, _digest(described),
                            start_from=start, reward_from=rm.config_hash, kind="best-of-n",
                            params=BestOfNParams(**settings, recipe=plan.recipe)))
    return out


def find_cell(cells: list, ref: dict, model: str, seed: int) -> str | None:
    """The hash of the cell a `start_from`/`reward_from`/judge reference names for a cell of `model` and `seed`: the
    referenced recipe's variant, on the reference's own "model" if it names one, else on `model`."""
    if not ref:
        return None
    key = (ref.get("model", model), ref["recipe"], ref["variant"], seed)
    return next(c.config_hash for c in cells if (c.model, c.recipe, c.variant, c.seed) == key)


def proxy_variant(variant: str, small: str, alpha: float) -> str:
    """The store's variant name of a proxy-tuning cell: the expert's variant, from which model, at which alpha."""
    return f"{variant}, from {Path(small).name}, alpha={float(alpha):g}"
