"""The recipe kinds: what makes up each recipe, declared once and read by the spec check, data loading and
validation, speed planning, the CLI, the study runner and the recipe scripts' parsers.

Adding a recipe is its script (`recipes/<name>.py`) plus one `RecipeKind` here (or `register` from your own
code). Classes are named by import path and loaded on first use, so this table imports neither torch nor TRL.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path

from align_proxy.install import recipes_dir
from align_proxy.data.formats import (CONVERSATIONAL_LM, IMPLICIT_PREFERENCE, LANGUAGE_MODELING, PREFERENCE,
                                      PROMPT_COMPLETION, PROMPT_ONLY, TrlFormat)

RECIPE_ARGUMENTS = "align_proxy.recipe:RecipeArguments"
RL_ARGUMENTS = "align_proxy.rl:RLArguments"
POLICY_EVALUATION = "align_proxy.evals.suite:PolicyEvaluation"


def load_object(path: str):
    """`package.module:Name` imported."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class RecipeKind:
    name: str
    config: str  # the trainer's TRL config class (what `--config` YAML fills)
    trainer: str  # the TRL trainer class the script builds
    formats: tuple[TrlFormat, ...]  # accepted data formats, most specific first: the first whose columns are present wins
    task_format: str  # what a built-in task yields for it (`ArithmeticTask.splits`): "sft", "preference" or "rl"
    primary_metric: str  # what a study's headline judges it on unless the spec names another: what it is for
    evaluation: str  # the evaluation class: scores a model before and after training, names its base-eval cache kind
    # How long one row of a micro-batch is, for speed planning: "sequence" (max_length), "pair" (chosen and
    # rejected, 2 x max_length) or "rollout" (prompt + generated completion).
    row: str = "sequence"
    arguments: str = RECIPE_ARGUMENTS  # the script's arguments class (RecipeArguments or a subclass)
    script: str | None = None  # default: recipes/<name>.py in the source checkout
    policy: bool = True  # it trains a causal LM (what `--lm_eval_tasks` scores), not a reward model

    @property
    def config_class(self) -> type:
        return load_object(self.config)

    @property
    def arguments_class(self) -> type:
        return load_object(self.arguments)

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
    def generates(self) -> bool:
        """Whether the trainer samples its own completions (the RL trainers): speed planning leaves those alone."""
        return self.row == "rollout"


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
               (PREFERENCE, IMPLICIT_PREFERENCE), "preference", "task_accuracy", POLICY_EVALUATION, row="pair"),
    # A reward model is another model than the base policy (a fresh score head): its own evaluation.
    RecipeKind("reward", "trl.trainer.reward_config:RewardConfig", "trl.trainer.reward_trainer:RewardTrainer",
               (PREFERENCE, IMPLICIT_PREFERENCE), "preference", "preference_accuracy",
               "align_proxy.evals.suite:RewardModelEvaluation", row="pair", policy=False),
    RecipeKind("grpo", "trl.trainer.grpo_config:GRPOConfig", "trl.trainer.grpo_trainer:GRPOTrainer",
               (PROMPT_ONLY,), "rl", "task_accuracy", "align_proxy.evals.rl:RLEvaluation", row="rollout", arguments=RL_ARGUMENTS),
    RecipeKind("rloo", "trl.trainer.rloo_config:RLOOConfig", "trl.trainer.rloo_trainer:RLOOTrainer",
               (PROMPT_ONLY,), "rl", "task_accuracy", "align_proxy.evals.rl:RLEvaluation", row="rollout", arguments=RL_ARGUMENTS),
):
    register(_kind)
