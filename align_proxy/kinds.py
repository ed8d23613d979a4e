"""The recipe kinds and the cell kinds: what makes up each recipe and each kind of study cell, declared once.

Recipe kinds are read by the spec check, data loading and validation, speed planning, the CLI, the study runner
and the recipe scripts' parsers. Adding a recipe is its script (`recipes/<name>.py`) plus one `RecipeKind` here (or
`register` from your own code).

Cell kinds (`CellKind`: train, proxy-tuning, best-of-n) say how a study spec expands into cells of that kind, what
command runs one, what its typed parameters are, the name the store and report show, and which analysis and report
section read it. Adding one is an entry here (or `register_cell_kind`) plus its entry module in `align_proxy/cells/`.

Classes and functions are named by import path and loaded on first use, so these tables import neither torch nor
TRL nor the study code.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from align_proxy.install import recipes_dir
from align_proxy.data.formats import (CONVERSATIONAL_LM, IMPLICIT_PREFERENCE, LANGUAGE_MODELING, PREFERENCE,
                                      PROMPT_COMPLETION, PROMPT_ONLY, TrlFormat)

RECIPE_ARGUMENTS = "align_proxy.recipe:RecipeArguments"
TEMPLATED_ARGUMENTS = "align_proxy.recipe_arguments:ChatTemplateArguments"  # for a TRL config without the flag
RL_ARGUMENTS = "align_proxy.rl:RLArguments"
POLICY_EVALUATION = "align_proxy.evals.suite:PolicyEvaluation"
RL_EVALUATION = "align_proxy.evals.rl:RLEvaluation"


def load_object(path: str):
    """`package.module:Name` imported."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class RecipeKind:
    name: str
    config: str  # the trainer's TRL config class (what `--config` YAML fills)
    trainer: str  # the TRL trainer class the script builds
    # Accepted data formats, most specific first: the first whose columns are present wins.
    formats: tuple[TrlFormat, ...]
    task_format: str  # what a built-in task yields for it (`ArithmeticTask.splits`): "sft", "preference" or "rl"
    primary_metric: str  # what a study's headline judges it on unless the spec names another: what it is for
    evaluation: str  # the evaluation class: scores a model before and after training, names its base-eval cache kind
    # How long one row of a micro-batch is, for speed planning: "sequence" (max_length), "pair" (chosen and
    # rejected, 2 x max_length) or "rollout" (prompt + generated completion).
    row: str = "sequence"
    arguments: str = RECIPE_ARGUMENTS  # the script's arguments class (RecipeArguments or a subclass)
    model_arguments: str = "trl:ModelConfig"  # the model's: --model_name_or_path, dtype, LoRA
    script: str | None = None  # default: recipes/<name>.py in the source checkout
    # What the recipe trains, said once: "policy" (a causal LM from fixed data), "rl" (a causal LM from its own
    # samples) or "reward" (a reward model). Everything that asks "is it RL?" or "is it a policy?" reads this.
    family: str = "policy"

    @property
    def config_class(self) -> type:
        return load_object(self.config)

    @property
    def arguments_class(self) -> type:
        return load_object(self.arguments)

    @property
    def flag_classes(self) -> tuple[type, type, type]:
        """The dataclasses a recipe's flags and `--config` YAML fill, in the parser's order: its arguments, its
        TRL config, its model arguments (what a study's grid keys must be fields of)."""
        return self.arguments_class, self.config_class, load_object(self.model_arguments)

    @property
    def trainer_class(self) -> type:
        return load_object(self.trainer)

    @property
    def evaluation_class(self) -> type:
        return load_object(self.evaluation)

    @property
    def imports(self) -> tuple[str, ...]:
        """The modules a run of this kind imports (what a study's cell server imports once for all its cells)."""
        return tuple(dict.fromkeys(path.partition(":")[0] for path in (self.trainer, self.arguments, self.evaluation)))

    @property
    def script_path(self) -> Path:
        # The checkout's recipes/, or the copy an installed package ships (align_proxy/install.py).
        return Path(self.script) if self.script else recipes_dir() / f"{self.name}.py"

    @property
    def policy(self) -> bool:
        """Whether it trains a causal LM (what `--lm_eval_tasks` scores and proxy-tuning steers), not a reward model."""
        return self.family != "reward"

    @property
    def judged_metrics(self) -> tuple[str, ...]:
        """What `--eval_judge` adds to its evaluation (`align_proxy.evals.judge`, `align_proxy.evals.rl`): a policy
        trained from fixed data gets judged replies with win rates against the item's reference and the base; an
        RL policy the judge's score of its own samples, beside its rewards; a reward model writes nothing."""
        return {"policy": ("judge_reward", "win_rate_vs_reference", "win_rate_vs_base", "length_controlled_win_rate"),
                "rl": ("judge_reward",)}.get(self.family, ())

    @property
    def judged(self) -> bool:
        """Whether `--eval_judge` judges its replies."""
        return bool(self.judged_metrics)

    @property
    def generates(self) -> bool:
        """Whether the trainer samples its own completions (the RL trainers): speed planning leaves those alone."""
        return self.family == "rl"


KINDS: dict[str, RecipeKind] = {}


def register(kind: RecipeKind) -> RecipeKind:
    """Add a recipe kind (a name already taken is replaced: a test or a fork can swap one in)."""
    KINDS[kind.name] = kind
    return kind


def recipe_kind(name: str) -> RecipeKind:
    """The kind named `name`, or a ValueError listing the known ones (with a did-you-mean)."""
    if name in KINDS:
        return KINDS[name]
    near = difflib.get_close_matches(str(name), KINDS, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise ValueError(f"unknown recipe {name!r}{hint}; available: {', '.join(KINDS)}")


# Preference recipes learn from (prompt, chosen, rejected); the RL ones generate their own completions, so only
# prompts are needed, and other columns (a built-in task's `answer`) reach the reward functions.
for _kind in (
    RecipeKind("sft", "trl.trainer.sft_config:SFTConfig", "trl.trainer.sft_trainer:SFTTrainer",
               (PROMPT_COMPLETION, LANGUAGE_MODELING, CONVERSATIONAL_LM), "sft", "task_accuracy", POLICY_EVALUATION),
    RecipeKind("dpo", "trl.trainer.dpo_config:DPOConfig", "trl.trainer.dpo_trainer:DPOTrainer",
               (PREFERENCE, IMPLICIT_PREFERENCE), "preference", "task_accuracy", POLICY_EVALUATION, row="pair",
               arguments=TEMPLATED_ARGUMENTS),
    # A reward model is another model than the base policy (a fresh score head): its own evaluation.
    RecipeKind("reward", "trl.trainer.reward_config:RewardConfig", "trl.trainer.reward_trainer:RewardTrainer",
               (PREFERENCE, IMPLICIT_PREFERENCE), "preference", "preference_accuracy",
               "align_proxy.evals.suite:RewardModelEvaluation", row="pair", family="reward"),
    RecipeKind("grpo", "trl.trainer.grpo_config:GRPOConfig", "trl.trainer.grpo_trainer:GRPOTrainer",
               (PROMPT_ONLY,), "rl", "task_accuracy", RL_EVALUATION, "rollout", RL_ARGUMENTS, family="rl"),
    RecipeKind("rloo", "trl.trainer.rloo_config:RLOOConfig", "trl.trainer.rloo_trainer:RLOOTrainer",
               (PROMPT_ONLY,), "rl", "task_accuracy", RL_EVALUATION, "rollout", RL_ARGUMENTS, family="rl"),
):
    register(_kind)


@dataclass(frozen=True)
class CellKind:
    """One kind of study cell. Every field but `name` and `label` is an import path, loaded on first use."""

    name: str
    # The name the store, the completeness table and the report give a cell of this kind of `recipe`'s models
    # (`label.format(recipe=...)`): old stores and reports keep these exact names.
    label: str
    # `function(spec, cells) -> list[Cell]`: this kind's cells of a spec, given the cells of the kinds before it.
    expand: str
    # `function(cell, config, cell_dir, base_evals, start_model, reward_model) -> argv`: its command line.
    command: str
    # The module `python -m` runs for a cell of this kind; None: the cell's recipe script (`RecipeKind.script_path`).
    entry: str | None = None
    # Its typed parameters (a dataclass with `to_json`/`from_json`), carried by the cell, its metrics file and its
    # stored result; None: a cell of this kind is described by its recipe and overrides alone.
    params: str | None = None
    analysis: str = ""  # the analysis section (`module:function`) that reads its results
    report: str = ""  # the id of the report section that draws them (`studies/report/sections.py`)

    def display(self, recipe: str) -> str:
        """The store's recipe name of this kind's cells of `recipe` ('sft (proxy-tuned)')."""
        return self.label.format(recipe=recipe)

    @property
    def params_class(self) -> type | None:
        return load_object(self.params) if self.params else None

    def read_params(self, raw: dict | None):
        """The typed parameters from their JSON (`to_json()`), or None for a kind without any."""
        return self.params_class.from_json(raw) if self.params and raw is not None else None

    def expand_cells(self, spec, cells: list) -> list:
        return load_object(self.expand)(spec, cells)

    def argv(self, cell, config: str | None, cell_dir: Path, base_evals: Path, start_model: Path | None,
             reward_model: Path | None, judge_model: Path | None = None) -> list[str]:
        """The cell's command line; `judge_model` only for a cell judged by another cell's reward model (a train
        cell's `judge_from`)."""
        judged = {"judge_model": judge_model} if judge_model is not None else {}
        return load_object(self.command)(cell, config, cell_dir, base_evals, start_model, reward_model, **judged)

    @property
    def entry_path(self) -> Path | None:
        """The entry module's file, found by the import system (what a runner that runs files is given)."""
        if self.entry is None:
            return None
        spec = importlib.util.find_spec(self.entry)
        if spec is None or not spec.origin:
            raise ValueError(f"cell kind {self.name!r}: its entry module {self.entry} is not importable")
        return Path(spec.origin)


CELL_KINDS: dict[str, CellKind] = {}
TRAIN = "train"


def register_cell_kind(kind: CellKind) -> CellKind:
    """Add a cell kind; cells expand kind by kind in the order they were registered (a kind's cells may name the
    cells of the kinds before it, as a proxy-tuning cell names the train cell whose model is its expert)."""
    CELL_KINDS[kind.name] = kind
    return kind


def cell_kind(name: str) -> CellKind:
    """The cell kind named `name`, or a ValueError listing the known ones."""
    if name in CELL_KINDS:
        return CELL_KINDS[name]
    raise ValueError(f"unknown cell kind {name!r}; available: {', '.join(CELL_KINDS)}")


_EXPAND, _COMMAND, _ANALYSIS = ("align_proxy.studies.cell_kinds", "align_proxy.studies.cell_runs",
                                "align_proxy.studies.analysis")
for _cell_kind in (
    CellKind(TRAIN, "{recipe}", f"{_EXPAND}:train_cells", f"{_COMMAND}:cell_argv",
             analysis=f"{_ANALYSIS}.gains:gain_section", report="gains"),
    # A proxy-tuning cell trains nothing: it steers a large base by a small train cell's model at decoding time.
    CellKind("proxy-tuning", "{recipe} (proxy-tuned)", f"{_EXPAND}:proxy_cells", f"{_COMMAND}:proxy_cell_argv",
             "align_proxy.cells.proxy_tune", "align_proxy.cells.params:ProxyTuneParams",
             f"{_ANALYSIS}.gap_closed:gap_closed_section", "gap_closed"),
    # Nor does a best-of-n cell: it ranks a fixed policy's samples by a reward cell's model.
    CellKind("best-of-n", "{recipe} (best-of-n)", f"{_EXPAND}:best_of_n_cells", f"{_COMMAND}:best_of_n_cell_argv",
             "align_proxy.cells.best_of_n", "align_proxy.cells.params:BestOfNParams",
             f"{_ANALYSIS}.overoptimization:overoptimization_section", "overoptimization"),
):
    register_cell_kind(_cell_kind)
