"""One recipe run, from its parsed arguments to its results: what every recipe script shares.

A recipe (`recipes/dpo.py`, ...) reads top to bottom: `prepare_run` resolves the model, loads and validates
the data before any weights are read and plans the proxy-speed defaults; `run.apply_speed_plan()` sets them,
printing each changed setting (before -> after, and why), and writes `run_config.yaml`; `run.evaluation()` is
the recipe kind's evaluation (`align_proxy.kinds`), which scores the base model (`run.evaluate_base`,
`align_proxy.base_eval`) and later the trained one; the script builds its TRL trainer and trains; `run.finish`
saves the model (`align_proxy.outputs`), evaluates it the same way and writes `loss_curve.png` and, last,
`metrics.json` (`align_proxy.run_metrics`). A run whose loss diverges (`align_proxy.divergence`) stops early and
finishes with its divergence recorded. The arguments and their parser are `align_proxy.recipe_arguments`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import PartialState
from transformers import AutoTokenizer
from trl import ModelConfig, get_peft_config

from align_proxy import base_eval
from align_proxy.chat_template import install_chat_template
from align_proxy.checkpoints import resume_point
from align_proxy.data.loading import RecipeData, load_recipe_data
from align_proxy.data.mixture import load_mixture
from align_proxy.data.validation import validate_dataset
from align_proxy.divergence import DivergenceWatch
from align_proxy.errors import RecipeArgumentError, UserInputError, show_tracebacks
from align_proxy.files import atomic_write
from align_proxy.kinds import KINDS, RecipeKind, recipe_kind
from align_proxy.lifetime import die_with_study_cell
from align_proxy.models import ladder_spec, registry
from align_proxy.models.tokenizer import build_tokenizer
from align_proxy.outputs import check_writable, save_final_model
from align_proxy.recipe_arguments import (EXPLICIT_KEYS, RecipeArguments, RecipeParser, make_parser,
                                         template_argument)
from align_proxy.run_metrics import RunMetrics, Scores, Training, format_comparison, plot_loss_curve
from align_proxy.speed import SpeedPlan, plan_proxy_speed

# Recipes, kinds.py ("align_proxy.recipe:RecipeArguments") and tests name the arguments here.
__all__ = ["EXPLICIT_KEYS", "RecipeArgumentError", "RecipeArguments", "RecipeParser", "RecipeRun", "load_tokenizer",
           "make_parser", "prepare_run", "run_script"]


def run_script(recipe: str, main) -> None:
    """A recipe script's entry (`python recipes/dpo.py ...`, `accelerate launch ... recipes/dpo.py ...`): parse the
    command line the TRL way and run `main`. A user error (bad data, a bad flag, a missing model or chat template:
    `align_proxy.errors.UserInputError`) ends with its message and exit code 2, as argparse's own errors do;
    anything else keeps its traceback, and so does a user error with ALIGN_PROXY_DEBUG=1."""
    args = make_parser(recipe).parse_args_and_config()
    try:
        main(*args)
    except UserInputError as err:
        if show_tracebacks():
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _load_data(recipe: str, script_args: RecipeArguments, seed: int) -> RecipeData:
    """The run's data: the `datasets:` mixture when the config has one (and `--dataset_name` is ignored, as TRL's
    scripts ignore it then), else `--dataset_name`."""
    sizes = dict(builtin_train_size=script_args.builtin_train_size, builtin_test_size=script_args.builtin_test_size,
                 seed=seed, eval_seed=script_args.eval_seed)
    if script_args.datasets:
        if script_args.dataset_name:
            print(f"[align-proxy] data: the config's datasets: mixture; --dataset_name {script_args.dataset_name} is "
                  "ignored, as TRL does", flush=True)
        return load_mixture(script_args.datasets, script_args.mix, recipe, script_args.streaming,
                            script_args.test_split_size, **sizes)
    if script_args.mix:
        raise RecipeArgumentError(f"--mix {' '.join(script_args.mix)}: the config has no datasets: mixture to share "
                                  "out; add one (a list of {path, fraction} entries) or drop --mix")
    return load_recipe_data(script_args.dataset_name, recipe, script_args.dataset_config,
                            script_args.dataset_train_split, script_args.dataset_test_split, **sizes)


def _is_ladder_rung(name: str) -> bool:
    return name in {r.name for r in ladder_spec.LadderSpec().rungs}


def load_tokenizer(model_name: str, tokenizer_name: str | None):
    """The tokenizer, loaded before the model so data checks need no weights."""
    if tokenizer_name is None and _is_ladder_rung(model_name):
        return build_tokenizer()
    source = tokenizer_name or model_name
    if source in registry.CLIMB:
        # The proxies' tokenizer is Llama-2's: no need to fetch a checkpoint to check the data.
        cached = registry.climb_cache_dir(registry.CLIMB[source])
        source = str(cached) if (cached / "tokenizer_config.json").exists() else registry.LLAMA2_TOKENIZER
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise RecipeArgumentError(f"could not load a tokenizer from {source!r} ({err}); pass one with "
                                  "--tokenizer_name_or_path (a local directory or Hub id)") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class RecipeRun:
    """One run between its parsed arguments and its results: the resolved model, the checked data, the speed plan."""

    recipe: str
    script_args: RecipeArguments
    training_args: object  # the trainer's TRL config
    model_args: ModelConfig
    model: registry.ResolvedModel
    tokenizer: object
    data: RecipeData
    speed: SpeedPlan | None = None  # the proxy-speed defaults planned for this run (set by `apply_speed_plan`)
    divergence: DivergenceWatch | None = None  # set by prepare_run; the trainer calls it at every logged loss
    # An RL run's `align_proxy.evals.rl.RewardCurve` (--curve_every), set by track_reward_curve.
    reward_curve: object | None = None
    judge: object | None = None  # --eval_judge's `align_proxy.rewards.RewardSet`, built once by prepare_run's check
    settled: bool = False  # True once `apply_speed_plan` made the configs what the trainer gets

    @property
    def kind(self) -> RecipeKind:
        return recipe_kind(self.recipe)

    @property
    def output_dir(self) -> Path:
        return Path(self.training_args.output_dir)

    @property
    def is_main(self) -> bool:
        return PartialState().is_main_process

    @functools.cached_property
    def evalset(self):
        """Held-out items scored before and after training: the test split plus the task's sets."""
        from align_proxy.evals.suite import EvalSet

        args = self.script_args
        return EvalSet.for_recipe(self.data.test, self.data.task, args.eval_size, args.eval_seed)

    def evaluation(self, **options):
        """The recipe kind's evaluation of this run (`kind.evaluation`), with the run's lm-eval tasks beside it when
        it asks for some: call it on a model directory; `options` are what the kind's evaluation takes beyond the
        run (DPO's `beta`, the RL recipes' `rewards`)."""
        from align_proxy.evals.lm_harness import LmEvalEvaluation, LmEvalSettings
        from align_proxy.evals.suite import Evaluations

        evaluation = self.kind.evaluation_class.for_run(self, **options)
        if self.is_main and self.kind.family != "rl":  # the RL evaluation samples prompts: its own account
            print(f"[align-proxy] {self.evalset.describe(policy=self.kind.policy)}", flush=True)
        settings = LmEvalSettings.from_args(self.script_args)
        parts = [evaluation]
        if self.script_args.eval_judge and self.kind.family == "policy":  # an RL evaluation judges its own samples
            from align_proxy.evals.judge import JudgeEvaluation

            parts.append(JudgeEvaluation.for_run(self))
        if settings:
            parts.append(LmEvalEvaluation(self.tokenizer, settings))
        return Evaluations(tuple(parts)) if len(parts) > 1 else evaluation

    def track_reward_curve(self, rewards) -> None:
        """RL runs: score the policy every --curve_every steps (proxy and gold reward, KL), kept in metrics.json."""
        from align_proxy.evals.rl import RewardCurve

        self.reward_curve = RewardCurve.for_run(self, rewards)

    def apply_speed_plan(self) -> SpeedPlan | None:
        """Set the proxy-speed plan's values in `training_args` and `model_args` (`align_proxy.speed`; nothing with
        --proxy_speed false), print each changed setting as `setting: before -> after (why)`, and write the final
        configs to run_config.yaml, the changes under `speed_plan`. Before this the configs are the user's; after it,
        what the trainer gets."""
        if self.speed:
            self.speed.apply(self.training_args, self.model_args)
            if self.is_main:
                print(f"[align-proxy] {self.speed.diff()}", flush=True)
        # After the plan: it may choose the attention implementation the model is loaded with.
        self.training_args.model_init_kwargs = {
            "revision": self.model_args.model_revision,
            "attn_implementation": self.model_args.attn_implementation,
            "dtype": self.model_args.dtype,
            **(self.training_args.model_init_kwargs or {}),
        }
        self.settled = True
        self.write_config()
        return self.speed

    def trainer_kwargs(self) -> dict:
        """What every TRL trainer takes from the run: the model path (TRL loads it, and DPO its
        reference, from there), the config, the checked data, the tokenizer, LoRA if asked, and the
        callbacks (speed, divergence)."""
        if not self.settled:
            raise RuntimeError("the trainer would get the configs before the proxy-speed plan: call "
                               "run.apply_speed_plan() after prepare_run (see recipes/sft.py)")
        return {
            "model": self.model.path,
            "args": self.training_args,
            "train_dataset": self.data.train,
            "eval_dataset": self.data.test if self.training_args.eval_strategy != "no" else None,
            "processing_class": self.tokenizer,
            "peft_config": get_peft_config(self.model_args),
            "callbacks": [*(self.speed.callbacks() if self.speed else []),
                          *([self.divergence] if self.divergence else []),
                          *([self.reward_curve.callback] if self.reward_curve else [])],
        }

    def evaluate_base(self, evaluation):
        """Score the base model (`align_proxy.base_eval`: once per evaluation setup with --base_eval_cache) on the
        main process while the other ranks wait; None on the others, or when `--eval_before false`."""
        return base_eval.evaluate_base(self, evaluation)

    def finish(self, trainer, evaluation, base) -> RunMetrics | None:
        """Save, evaluate the trained model, and write the loss curve and, last, `metrics.json` (atomically: its
        presence marks a finished run, so a run killed while saving is never mistaken for one). A diverged run
        is neither saved nor evaluated: one line says where it diverged, and metrics.json records it. Returns
        the run's metrics on the main process, None on the others."""
        diverged = self.divergence.found if self.divergence else None
        if diverged is None:
            save_final_model(trainer, self.tokenizer, self.output_dir)  # staged; LoRA merged
        record = None
        summary = _distributed_summary(trainer)
        _release_training_memory(trainer)
        if self.is_main:
            trained = None
            if diverged is not None:
                print(f"[align-proxy] training diverged at step {diverged.step}: loss {diverged.loss:.4g} (limit "
                      f"{self.script_args.divergence_threshold:g}, --divergence_threshold); the model is not saved or "
                      f"evaluated, and {self.output_dir / 'metrics.json'} records the divergence", flush=True)
            else:
                print(f"[align-proxy] evaluating trained model in {self.output_dir} ...", flush=True)
                trained = evaluation(str(self.output_dir))
            record = self._record(trainer, summary, base, trained, diverged)
            plot_loss_curve(record.train.log_history, self.output_dir / "loss_curve.png", self.recipe)
            record.write(self.output_dir)
            if trained is not None:
                print(format_comparison(self.recipe, self.model.name, base.metrics if base else {}, trained.metrics),
                      flush=True)
        PartialState().wait_for_everyone()
        return record

    def _record(self, trainer, summary, base, trained, diverged) -> RunMetrics:
        scores = Scores(base.metrics if base else {}, trained.metrics if trained else {},
                        base.items if base else {}, trained.items if trained else {},
                        base.details if base else {}, trained.details if trained else {})
        training = Training(summary, trainer.state.global_step, trainer.state.log_history,
                            self.reward_curve.points if self.reward_curve else [])
        return RunMetrics(self.recipe, dataclasses.asdict(self.model), self.data.source,
                          self.speed.record() if self.speed else None, training, scores, diverged)

    def write_config(self) -> None:
        resolved = {
            "recipe": self.recipe,
            "model": dataclasses.asdict(self.model),
            "script_args": _jsonable(self.script_args),
            "model_args": _jsonable(self.model_args),
            "training_args": _jsonable(self.training_args.to_dict()),
            "speed_plan": self.speed.config_section() if self.speed else None,
        }
        if self.is_main:
            atomic_write(self.output_dir / "run_config.yaml", yaml.safe_dump(resolved, sort_keys=False))


def prepare_run(recipe: str, script_args: RecipeArguments, training_args, model_args: ModelConfig) -> RecipeRun:
    """Everything before the speed plan is applied: data checked first, then the model resolved (building the
    offline ladder on first use) and the proxy-speed plan decided, not yet applied: the recipe calls
    `run.apply_speed_plan()` next, where its changes show."""
    die_with_study_cell()  # a worker of a study cell's `accelerate launch` must not outlive the study
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    kind = recipe_kind(recipe)
    name = model_args.model_name_or_path
    if not name:
        raise RecipeArgumentError("no model given: pass --model_name_or_path (a ladder rung such as 'ladder-m', "
                                  f"{', '.join(registry.CLIMB)}, a local directory or a Hub id)")
    # `true` means the newest complete checkpoint in output_dir; a half-saved one is never resumed from.
    training_args.resume_from_checkpoint = resume_point(training_args.output_dir, training_args.resume_from_checkpoint)
    tokenizer = load_tokenizer(name, script_args.tokenizer_name_or_path)
    holder, template = template_argument(script_args, training_args)
    if template:
        # On the tokenizer before the data is checked: validation, training, evaluation and the saved model read it.
        # The flag keeps the file's path, which TRL's SFT and reward trainers read the same template from.
        holder.chat_template_path = str(install_chat_template(tokenizer, template))
    data = _load_data(recipe, script_args, training_args.seed)
    max_length = getattr(training_args, "max_length", None)
    validate_dataset(data.train, recipe, data.source, script_args.dataset_train_split, tokenizer, max_length)
    validate_dataset(data.test, recipe, data.source, script_args.dataset_test_split, tokenizer, max_length)

    # Before any model loads (or a ladder rung is built); after the data checks (lm-eval's tasks and data among
    # them), so bad data leaves no output_dir.
    _check_lm_eval_tasks(kind, script_args)
    judge = _check_judge(kind, script_args)
    check_writable(training_args.output_dir)
    model = registry.resolve(name)
    model_args.model_name_or_path = model.path
    speed = plan_proxy_speed(kind, script_args, training_args, model_args, model.parameters,
                             getattr(script_args, EXPLICIT_KEYS, None))
    return RecipeRun(recipe, script_args, training_args, model_args, model, tokenizer, data, speed,
                     DivergenceWatch(script_args.divergence_threshold), judge=judge)


def _check_lm_eval_tasks(kind: RecipeKind, script_args: RecipeArguments) -> None:
    """lm-eval tasks, their data included, are checked before any model loads or trains: an unknown name or a Hub
    dataset out of reach fails here, naming the task and the fix (`align_proxy.evals.lm_harness.load_tasks`)."""
    if not script_args.lm_eval_tasks:
        return
    if not kind.policy:
        policies = ", ".join(k.name for k in KINDS.values() if k.policy)
        raise RecipeArgumentError(f"--lm_eval_tasks scores a language model, and the {kind.name} recipe trains none: "
                                  f"drop the flag, or set it on a recipe that does ({policies})")
    from align_proxy.evals.lm_harness import load_tasks

    if PartialState().is_main_process:  # the main process evaluates; it alone reads the data
        load_tasks(script_args.lm_eval_tasks)


def _check_judge(kind: RecipeKind, script_args: RecipeArguments):
    """--eval_judge, checked before the policy loads and built once: the recipe must train a policy,
    and each spec must name a reward (`align_proxy.rewards.load_rewards` raises naming the bad one). None without
    the flag."""
    if not script_args.eval_judge:
        return None
    if not kind.judged:
        raise RecipeArgumentError(f"--eval_judge judges the replies of a policy (sft, dpo, grpo, rloo); the "
                                  f"{kind.name} recipe trains a reward model, which writes none")
    from align_proxy.rewards import load_rewards

    return load_rewards(script_args.eval_judge, script_args.eval_judge_weights)


def _release_training_memory(trainer) -> None:
    """Before the trained model is evaluated (loaded afresh from output_dir): free what training held on the GPU,
    the optimizer's moments, gradients and the policy itself, so evaluation's batches have the room. Nothing to do
    on CPU; under DeepSpeed its engine owns the weights and their placement."""
    if trainer.accelerator.device.type != "cuda" or trainer.is_deepspeed_enabled:
        return
    import gc

    trainer.optimizer = trainer.lr_scheduler = None
    trainer.accelerator.free_memory()  # drops accelerate's references to the prepared optimizer and model
    trainer.model.zero_grad(set_to_none=True)
    trainer.model.to("cpu")
    gc.collect()
    torch.cuda.empty_cache()


def _distributed_summary(trainer) -> dict:
    """How the run was distributed, read off the live trainer (the DeepSpeed engine, if any)."""
    state = trainer.accelerator.state
    plugin = getattr(state, "deepspeed_plugin", None)
    return {
        "type": str(state.distributed_type),
        "num_processes": state.num_processes,
        "device": state.device.type,
        "engine": type(trainer.model_wrapped).__name__,
        "zero_stage": plugin.zero_stage if plugin is not None else None,
    }
