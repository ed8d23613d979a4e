"""What every recipe script shares: arguments and their parser, preparing a run, and finishing it.

A recipe (`recipes/dpo.py`, ...) reads top to bottom: `prepare_run` resolves the model, loads and validates
the data before any weights are read and applies the proxy-speed plan; `run.evaluation()` is the recipe
kind's evaluation (`align_proxy.kinds`), which scores the base model (`run.evaluate_base`) and later the
trained one; the script builds its TRL trainer and trains; `run.finish` saves the model, evaluates it the same
way and writes `run_config.yaml`, `loss_curve.png` and, last, `metrics.json` (`align_proxy.run_metrics`).
A run whose loss diverges (`align_proxy.divergence`) stops early and finishes with its divergence recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import PartialState
from transformers import AutoTokenizer
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from align_proxy.checkpoints import resume_point
from align_proxy.data.loading import RecipeData, load_recipe_data
from align_proxy.data.validation import validate_dataset
from align_proxy.divergence import DivergenceWatch
from align_proxy.files import atomic_write, files_stamp
from align_proxy.kinds import KINDS, RecipeKind, recipe_kind
from align_proxy.lifetime import die_with_study_cell
from align_proxy.models import ladder, registry
from align_proxy.models.tokenizer import build_tokenizer
from align_proxy.outputs import check_writable, publish_model, reset_staging, staging_dir
from align_proxy.run_metrics import RunMetrics, Scores, Training, format_comparison, plot_loss_curve
from align_proxy.speed import ALIASES, SpeedPlan, plan_proxy_speed

EXPLICIT_KEYS = "_explicit_keys"  # where RecipeParser leaves the user's keys, on the script arguments
logger = logging.getLogger("align_proxy")


@dataclass
class RecipeArguments(ScriptArguments):
    """TRL's script arguments plus what align-proxy adds: tokenizer, built-in task sizes, evaluation."""

    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use when the model directory has none (e.g. the Llama-2 "
                                        "tokenizer for converted CLIMB proxies). Defaults to the model's own."})
    builtin_train_size: int = field(default=2000, metadata={"help": "Training examples drawn from a built-in task."})
    builtin_test_size: int = field(default=200, metadata={"help": "Held-out examples drawn from a built-in task."})
    eval_size: int = field(default=200, metadata={"help": "Held-out items per metric for before/after evaluation."})
    eval_before: bool = field(default=True, metadata={"help": "Evaluate the base model before training, so the "
                                                                "gain is explicit."})
    eval_max_new_tokens: int = field(default=8, metadata={"help": "Generation length for task accuracy."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the held-out items, kept apart from --seed so runs "
                                                         "with different training seeds are scored on the same items "
                                                         "(paired comparisons, one base evaluation for all)."})
    base_eval_cache: str | None = field(default=None, metadata={"help": "Directory of base-model evaluations shared "
                                                                        "between runs (a transfer study sets it): a base "
                                                                        "model is scored once per evaluation setup."})
    proxy_speed: bool = field(default=True, metadata={"help": (
        "Proxy-aware speed defaults (align_proxy/speed.py): no gradient checkpointing for models that fit; on a GPU "
        "also padding-free batches with varlen attention, SFT packing, compiled decoder layers, precomputed DPO "
        "reference log-probs, a micro-batch sized to free memory and data-loader workers. Never overrides a key you "
        "set; false keeps TRL's defaults.")})
    lm_eval_tasks: list[str] | None = field(default=None, metadata={"help": (
        "lm-evaluation-harness tasks scored on the base and the trained model beside the built-in metrics "
        "(`pip install -e '.[lm-eval]'`): task names, comma-separated (piqa,arc_easy,hellaswag), or task YAML paths; "
        "arith_mc is shipped and runs offline. Recorded per item as lm_eval:TASK/METRIC (acc, acc_norm, and for "
        "multiple choice logprob, logprob_per_byte). Checked, data included, before any model is read.")})
    lm_eval_limit: int | None = field(default=None, metadata={"help": "Items per lm-eval task (its first N); "
                                                                       "default: all."})
    lm_eval_num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples per lm-eval prompt; "
                                                                             "default: each task's own (0 for most)."})
    lm_eval_batch_size: int = field(default=32, metadata={"help": "Batch size of lm-eval's scoring."})
    divergence_threshold: float = field(default=1e4, metadata={"help": (
        "A logged training loss larger than this in size stops the run as diverged (also any loss or gradient "
        "norm that is NaN or infinite, whatever this is): metrics.json records the step and loss, the model is "
        "neither saved nor evaluated, and a study marks the cell diverged. Checked every logging_steps; inf turns "
        "the size check off.")})


class RecipeParser(TrlParser):
    """`TrlParser` that also records which fields the user set: a key of the `--config` YAML or a flag on the
    command line, read by argparse itself (aliases, `--no_x`, abbreviations), never guessed from values. Speed
    planning reads them, so it never replaces a value the user chose."""

    def parse_args_and_config(self, args=None, return_remaining_strings=False, fail_with_unknown_args=True,
                              separate_remaining_strings=False):
        args = list(args) if args is not None else sys.argv[1:]
        explicit = self.explicit_keys(args)
        outputs = super().parse_args_and_config(args, return_remaining_strings, fail_with_unknown_args,
                                                separate_remaining_strings)
        setattr(outputs[0], EXPLICIT_KEYS, explicit)
        return outputs

    def explicit_keys(self, args: list[str]) -> frozenset[str]:
        args, keys = list(args), set()
        if "--config" in args:
            at = args.index("--config")
            try:
                with open(args[at + 1]) as handle:
                    config = yaml.safe_load(handle)
                keys |= set(config) - {"env"} if isinstance(config, dict) else set()
            except (IndexError, OSError, yaml.YAMLError):
                pass  # TrlParser reports a missing or broken config itself
            del args[at:at + 2]
        # Parse the flags with every default suppressed: what lands in the namespace is what the user typed.
        saved = [(action, action.default, action.required) for action in self._actions]
        try:
            for action in self._actions:
                action.default, action.required = argparse.SUPPRESS, False
            namespace, _ = argparse.ArgumentParser.parse_known_args(self, args)
        finally:
            for action, default, required in saved:
                action.default, action.required = default, required
        keys |= set(vars(namespace))
        return frozenset(keys | {ALIASES[k] for k in keys if k in ALIASES})


def make_parser(recipe: str, prog: str | None = None) -> RecipeParser:
    """`--config FILE.yaml` plus command-line overrides, the TRL way, over the recipe kind's arguments class,
    its TRL config and `trl.ModelConfig` (`align_proxy.kinds`).

    Without a GPU, `use_cpu` and fp32 become the defaults (TRL defaults to bf16, which transformers
    refuses on a CPU-only machine); a config file or flag still wins.
    """
    kind = recipe_kind(recipe)
    parser = RecipeParser((kind.arguments_class, kind.config_class, ModelConfig), prog=prog)
    if not torch.cuda.is_available():
        parser.set_defaults(use_cpu=True, bf16=False)
    return parser


def _is_ladder_rung(name: str) -> bool:
    return name in {r.name for r in ladder.LadderSpec().rungs}


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
        raise ValueError(f"could not load a tokenizer from {source!r} ({err}); pass one with "
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
    speed: SpeedPlan | None = None  # the proxy-speed defaults this run got
    divergence: DivergenceWatch | None = None  # set by prepare_run; the trainer calls it at every logged loss
    reward_curve: object | None = None  # an RL run's `align_proxy.evals.rl.RewardCurve` (--curve_every), set by track_reward_curve

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

        return EvalSet.for_recipe(self.data.test, self.data.task, self.script_args.eval_size, self.script_args.eval_seed)

    def evaluation(self, **options):
        """The recipe kind's evaluation of this run (`kind.evaluation`), with the run's lm-eval tasks beside it when
        it asks for some: call it on a model directory; `options` are what the kind's evaluation takes beyond the
        run (DPO's `beta`, the RL recipes' `rewards`)."""
        from align_proxy.evals.lm_harness import LmEvalEvaluation, LmEvalSettings
        from align_proxy.evals.suite import Evaluations

        evaluation = self.kind.evaluation_class.for_run(self, **options)
        settings = LmEvalSettings.from_args(self.script_args)
        return Evaluations((evaluation, LmEvalEvaluation(self.tokenizer, settings))) if settings else evaluation

    def track_reward_curve(self, rewards) -> None:
        """RL runs: score the policy every --curve_every steps (proxy and gold reward, KL), kept in metrics.json."""
        from align_proxy.evals.rl import RewardCurve

        self.reward_curve = RewardCurve.for_run(self, rewards)

    def trainer_kwargs(self) -> dict:
        """What every TRL trainer takes from the run: the model path (TRL loads it, and DPO its
        reference, from there), the config, the checked data, the tokenizer, LoRA if asked, and the
        callbacks (speed, divergence)."""
        return {
            "model": self.model.path,
            "args": self.training_args,
            "train_dataset": self.data.train,
            "eval_dataset": self.data.test if self.training_args.eval_strategy != "no" else None,
            "processing_class": self.tokenizer,
            "peft_config": get_peft_config(self.model_args),
            "callbacks": [*(self.speed.callbacks() if self.speed else []), *([self.divergence] if self.divergence else []),
                          *([self.reward_curve.callback] if self.reward_curve else [])],
        }

    def evaluate_base(self, evaluation):
        """Score the base model on the main process while the other ranks wait; None on the others, or when
        `--eval_before false`."""
        from align_proxy.evals.suite import EvalResult, Evaluations

        base = None
        if self.script_args.eval_before and self.is_main:
            cache = self.script_args.base_eval_cache
            # Cached part by part: an SFT and a GRPO run of one model share its lm-eval scores.
            base = EvalResult.merged([self._base_from_cache(Path(cache), part) if cache else
                                      self._evaluate_base_now(part) for part in Evaluations.parts_of(evaluation)])
        PartialState().wait_for_everyone()
        return base

    def _evaluate_base_now(self, evaluation):
        print(f"[align-proxy] evaluating base model {self.model.name} ...", flush=True)
        return evaluation(self.model.path)

    def base_cache_key(self, evaluation) -> dict:
        """Everything a base score depends on. Training seed and hyperparameters are not in it (held-out items
        follow `eval_seed`, and DPO's implicit reward of the base against itself is 0 whatever beta); nor is the
        recipe, beyond the evaluation's own key: its kind (SFT and DPO score a policy on the same items in the
        same way, so they share "policy"; a reward model is another model; an RL evaluation samples) and what
        else it depends on."""
        args = self.script_args
        return {"model": self.model.path, "weights": files_stamp(self.model.path),
                "tokenizer": args.tokenizer_name_or_path, "dataset": args.dataset_name,
                "dataset_files": files_stamp(args.dataset_name), "dataset_config": args.dataset_config,
                "test_split": args.dataset_test_split, "builtin_test_size": args.builtin_test_size,
                "eval_size": args.eval_size, "eval_seed": args.eval_seed,
                "eval_max_new_tokens": args.eval_max_new_tokens, **evaluation.cache_key()}

    def _base_from_cache(self, cache: Path, evaluation):
        """The base evaluation shared by every run with the same key; the lock makes concurrent runs of one
        study wait for one evaluation."""
        from filelock import FileLock

        from align_proxy.evals.suite import EvalResult

        key = self.base_cache_key(evaluation)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = cache / f"{key['evaluation']}-{self.model.name.replace('/', '--')}-{digest}.json"
        cache.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if path.exists():
                print(f"[align-proxy] base model {self.model.name}: evaluation reused from {path}", flush=True)
                cached = json.loads(path.read_text())
                return EvalResult(cached["metrics"], cached["items"])
            result = self._evaluate_base_now(evaluation)
            atomic_write(path, json.dumps({"key": key, "metrics": result.metrics, "items": result.items}))
            return result

    def save_model(self, trainer) -> None:
        """Save the final model in Hugging Face format; a LoRA run saves the adapter in `adapter/`
        and the merged model at the top, so the output loads with `from_pretrained` either way."""
        from peft import PeftModel

        # Saved into a staging folder, then renamed into place (align_proxy/outputs.py): never half a model.
        if self.is_main:
            reset_staging(self.output_dir)
        PartialState().wait_for_everyone()
        staging = staging_dir(self.output_dir)
        trainer.save_model(str(staging))
        model = trainer.accelerator.unwrap_model(trainer.model)
        if isinstance(model, PeftModel) and self.is_main:
            model.save_pretrained(str(staging / "adapter"))
            model.merge_and_unload().save_pretrained(str(staging))
            for leftover in ("adapter_model.safetensors", "adapter_config.json"):
                (staging / leftover).unlink(missing_ok=True)
        if self.is_main:
            self.tokenizer.save_pretrained(str(staging))
            publish_model(self.output_dir)
        PartialState().wait_for_everyone()

    def finish(self, trainer, evaluation, base) -> RunMetrics | None:
        """Save, evaluate the trained model, and write the loss curve and, last, `metrics.json` (atomically: its
        presence marks a finished run, so a run killed while saving is never mistaken for one). A diverged run
        is neither saved nor evaluated: one line says where it diverged, and metrics.json records it. Returns
        the run's metrics on the main process, None on the others."""
        diverged = self.divergence.found if self.divergence else None
        if diverged is None:
            self.save_model(trainer)
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
            atomic_write(self.output_dir / "metrics.json", json.dumps(record.to_json(), indent=2))
            if trained is not None:
                print(format_comparison(self.recipe, self.model.name, base.metrics if base else {}, trained.metrics),
                      flush=True)
        PartialState().wait_for_everyone()
        return record

    def _record(self, trainer, summary, base, trained, diverged) -> RunMetrics:
        scores = Scores(base.metrics if base else {}, trained.metrics if trained else {},
                        base.items if base else {}, trained.items if trained else {})
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
            "speed": self.speed.record() if self.speed else None,
        }
        if self.is_main:
            atomic_write(self.output_dir / "run_config.yaml", yaml.safe_dump(resolved, sort_keys=False))


def prepare_run(recipe: str, script_args: RecipeArguments, training_args, model_args: ModelConfig) -> RecipeRun:
    """Everything before the base evaluation: data checked first, then the model resolved (building the
    offline ladder on first use), the proxy-speed plan applied and the resolved config written."""
    die_with_study_cell()  # a worker of a study cell's `accelerate launch` must not outlive the study
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    kind = recipe_kind(recipe)
    name = model_args.model_name_or_path
    if not name:
        raise ValueError("no model given: pass --model_name_or_path (a ladder rung such as 'ladder-m', "
                         f"{', '.join(registry.CLIMB)}, a local directory or a Hub id)")
    # `true` means the newest complete checkpoint in output_dir; a half-saved one is never resumed from.
    training_args.resume_from_checkpoint = resume_point(training_args.output_dir, training_args.resume_from_checkpoint)
    tokenizer = load_tokenizer(name, script_args.tokenizer_name_or_path)
    data = load_recipe_data(
        script_args.dataset_name, recipe, script_args.dataset_config, script_args.dataset_train_split,
        script_args.dataset_test_split, script_args.builtin_train_size, script_args.builtin_test_size,
        seed=training_args.seed, eval_seed=script_args.eval_seed,
    )
    max_length = getattr(training_args, "max_length", None)
    template = getattr(training_args, "chat_template_path", None)
    validate_dataset(data.train, recipe, data.source, script_args.dataset_train_split, tokenizer, max_length, template)
    validate_dataset(data.test, recipe, data.source, script_args.dataset_test_split, tokenizer, max_length, template)

    # Before any model loads (or a ladder rung is built); after the data checks (lm-eval's tasks and data among
    # them), so bad data leaves no output_dir.
    _check_lm_eval_tasks(kind, script_args)
    check_writable(training_args.output_dir)
    model = registry.resolve(name)
    model_args.model_name_or_path = model.path
    speed = plan_proxy_speed(kind, script_args, training_args, model_args, model.parameters,
                             getattr(script_args, EXPLICIT_KEYS, None))
    speed.apply(training_args, model_args)
    if PartialState().is_main_process:
        print(f"[align-proxy] {speed.summary()}", flush=True)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    run = RecipeRun(recipe, script_args, training_args, model_args, model, tokenizer, data, speed,
                    DivergenceWatch(script_args.divergence_threshold))
    run.write_config()
    return run


def _check_lm_eval_tasks(kind: RecipeKind, script_args: RecipeArguments) -> None:
    """lm-eval tasks, their data included, are checked before any model loads or trains: an unknown name or a Hub
    dataset out of reach fails here, naming the task and the fix (`align_proxy.evals.lm_harness.load_tasks`)."""
    if not script_args.lm_eval_tasks:
        return
    if not kind.policy:
        policies = ", ".join(k.name for k in KINDS.values() if k.policy)
        raise ValueError(f"--lm_eval_tasks scores a language model, and the {kind.name} recipe trains none: drop the "
                         f"flag, or set it on a recipe that does ({policies})")
    from align_proxy.evals.lm_harness import load_tasks

    if PartialState().is_main_process:  # the main process evaluates; it alone reads the data
        load_tasks(script_args.lm_eval_tasks)


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
