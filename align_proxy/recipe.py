"""What every recipe script shares: arguments, preparing a run, and writing its results.

A recipe (`recipes/dpo.py`, ...) reads top to bottom: `prepare_run` resolves the model, loads and
validates the data before any weights are read, evaluates the base model, then the script builds
its TRL trainer and trains, and `RecipeRun.finish` saves the model, evaluates it the same way and
writes `run_config.yaml`, `metrics.json` and `loss_curve.png` to the output directory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml
from accelerate import PartialState
from transformers import AutoTokenizer
from trl import ModelConfig, ScriptArguments, get_peft_config

from align_proxy.checkpoints import resume_point
from align_proxy.data.loading import RecipeData, load_recipe_data
from align_proxy.data.validation import validate_dataset
from align_proxy.files import atomic_write
from align_proxy.lifetime import die_with_study_cell
from align_proxy.models import ladder, registry
from align_proxy.models.tokenizer import build_tokenizer
from align_proxy.outputs import check_writable, publish_model, reset_staging, staging_dir
from align_proxy.speed import RecipeParser, SpeedPlan, apply_proxy_speed

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


def make_parser(config_class: type, prog: str | None = None, script_class: type = RecipeArguments) -> RecipeParser:
    """`--config FILE.yaml` plus command-line overrides, the TRL way.

    Without a GPU, `use_cpu` and fp32 become the defaults (TRL defaults to bf16, which transformers
    refuses on a CPU-only machine); a config file or flag still wins. A recipe with arguments of its
    own (the RL recipes' rewards) passes a subclass of `RecipeArguments` as `script_class`.
    """
    parser = RecipeParser((script_class, config_class, ModelConfig), prog=prog)  # a TrlParser that knows your keys
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


def files_stamp(location: str | None) -> list | None:
    """Names, sizes and modification times of a local file or directory (None for a Hub id), so a
    cache keyed on a path notices when what lies there changes."""
    path = Path(location).expanduser() if location else None
    if path is None or not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(f.relative_to(path) if path.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns]
            for f in files]


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
    recipe: str
    script_args: RecipeArguments
    training_args: object  # the trainer's TRL config
    model_args: ModelConfig
    model: registry.ResolvedModel
    tokenizer: object
    data: RecipeData
    evaluator: Callable[[RecipeRun, str], object]  # the recipe's own: (run, model directory) -> EvalResult
    base: object | None = None  # the base model's EvalResult, when evaluated
    # What else the recipe's evaluation depends on (an RL evaluation: its rewards and sampling), added to
    # the base-evaluation cache key; an "evaluation" entry names its kind.
    evaluation_key: dict | None = None
    speed: SpeedPlan | None = None  # the proxy-speed defaults this run got

    def evaluate(self, model_path: str):
        return self.evaluator(self, model_path)

    @property
    def base_metrics(self) -> dict:
        return self.base.metrics if self.base else {}

    @property
    def output_dir(self) -> Path:
        return Path(self.training_args.output_dir)

    @functools.cached_property
    def evalset(self):
        """Held-out items scored before and after training: the test split plus the task's sets."""
        from evals.suite import EvalSet

        return EvalSet.for_recipe(self.data.test, self.data.task, self.script_args.eval_size, self.script_args.eval_seed)

    def trainer_kwargs(self) -> dict:
        """What every TRL trainer takes from the run: the model path (TRL loads it, and DPO its
        reference, from there), the config, the checked data, the tokenizer and LoRA if asked."""
        return {
            "model": self.model.path,
            "args": self.training_args,
            "train_dataset": self.data.train,
            "eval_dataset": self.data.test if self.training_args.eval_strategy != "no" else None,
            "processing_class": self.tokenizer,
            "peft_config": get_peft_config(self.model_args),
            "callbacks": self.speed.callbacks() if self.speed else [],
        }

    @property
    def is_main(self) -> bool:
        return PartialState().is_main_process

    def evaluate_base(self) -> None:
        """Score the base model on the main process while the other ranks wait."""
        if self.script_args.eval_before and self.is_main:
            cache = self.script_args.base_eval_cache
            self.base = self._base_from_cache(Path(cache)) if cache else self._evaluate_base_now()
        PartialState().wait_for_everyone()

    def _evaluate_base_now(self):
        print(f"[align-proxy] evaluating base model {self.model.name} ...", flush=True)
        return self.evaluate(self.model.path)

    def _base_from_cache(self, cache: Path):
        """The base evaluation shared by every run with the same model and held-out items.

        The key is everything the base score depends on; training seed and hyperparameters are not in
        it (held-out items follow `eval_seed`, and DPO's implicit reward of the base against itself is
        0 whatever beta); nor is the recipe, beyond the kind of evaluation it runs: "policy" unless the
        recipe's `evaluation_key` names another (a reward model is another model; an RL evaluation samples).
        The lock makes concurrent runs of one study wait for one evaluation.
        """
        from filelock import FileLock

        from evals.suite import EvalResult

        args = self.script_args
        # SFT and DPO score a policy on the same items in the same way, so they share the "policy" kind.
        key = {"evaluation": "policy", "model": self.model.path, "weights": files_stamp(self.model.path),
               "tokenizer": args.tokenizer_name_or_path, "dataset": args.dataset_name,
               "dataset_files": files_stamp(args.dataset_name), "dataset_config": args.dataset_config,
               "test_split": args.dataset_test_split, "builtin_test_size": args.builtin_test_size,
               "eval_size": args.eval_size, "eval_seed": args.eval_seed,
               "eval_max_new_tokens": args.eval_max_new_tokens, **(self.evaluation_key or {})}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = cache / f"{key['evaluation']}-{self.model.name.replace('/', '--')}-{digest}.json"
        cache.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if path.exists():
                print(f"[align-proxy] base model {self.model.name}: evaluation reused from {path}", flush=True)
                cached = json.loads(path.read_text())
                return EvalResult(cached["metrics"], cached["items"])
            result = self._evaluate_base_now()
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

    def finish(self, trainer) -> dict:
        """Save, evaluate the trained model, and write the run's metrics and loss curve.

        `metrics.json` is written last, atomically: its presence marks a finished run, so a run
        killed while saving is never mistaken for one.
        """
        self.save_model(trainer)
        metrics = {}
        if self.is_main:
            print(f"[align-proxy] evaluating trained model in {self.output_dir} ...", flush=True)
            trained = self.evaluate(str(self.output_dir))
            metrics = self._metrics(trainer, trained)
            atomic_write(self.output_dir / "metrics.json", json.dumps(metrics, indent=2))
            _plot_loss_curve(metrics["train"]["log_history"], self.output_dir / "loss_curve.png", self.recipe)
            print(format_comparison(self.recipe, self.model.name, self.base_metrics, trained.metrics), flush=True)
        PartialState().wait_for_everyone()
        return metrics

    def _metrics(self, trainer, trained) -> dict:
        from evals.suite import gains

        base = self.base_metrics
        history = trainer.state.log_history
        return {
            "recipe": self.recipe,
            "model": dataclasses.asdict(self.model),
            "dataset": self.data.source,
            "speed": self.speed.record() if self.speed else None,
            "train": {
                "distributed": _distributed_summary(trainer),
                "global_step": trainer.state.global_step,
                "log_history": history,
                "final": history[-1] if history else {},
            },
            "eval": {
                "base": base,
                "trained": trained.metrics,
                "gain": gains(base, trained.metrics),
                # Per-item scores, paired across base and trained: what a bootstrap over items needs.
                "items": {"base": self.base.items if self.base else {}, "trained": trained.items},
            },
        }

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


def prepare_run(recipe: str, script_args: RecipeArguments, training_args, model_args: ModelConfig,
                evaluate: Callable[[RecipeRun, str], dict], evaluation_key: dict | None = None) -> RecipeRun:
    """Everything before the trainer: data checked first, then the model resolved (building the
    offline ladder on first use), the resolved config written, and the base model evaluated."""
    die_with_study_cell()  # a worker of a study cell's `accelerate launch` must not outlive the study
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
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

    # Before any model loads (or a ladder rung is built); after the data checks, so bad data leaves no output_dir.
    check_writable(training_args.output_dir)
    model = registry.resolve(name)
    model_args.model_name_or_path = model.path
    speed = apply_proxy_speed(recipe, script_args, training_args, model_args, model.parameters)
    if PartialState().is_main_process:
        print(f"[align-proxy] {speed.summary()}", flush=True)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    run = RecipeRun(recipe, script_args, training_args, model_args, model, tokenizer, data, evaluate,
                    evaluation_key=evaluation_key, speed=speed)
    run.write_config()
    run.evaluate_base()
    return run


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


METRIC_LABELS = {
    "task_accuracy": ("task accuracy (greedy, held-out)", True),
    "preference_accuracy": ("preference accuracy (held-out)", True),
    "implicit_reward_accuracy": ("implicit-reward accuracy (vs base)", True),
    "completion_nll": ("completion NLL (nats/token)", False),
    "preference_margin": ("preference margin", True),
    "implicit_reward_margin": ("implicit-reward margin", True),
    # RL evaluation (evals/rl.py), on completions sampled as in training. KL and length have no better
    # direction (None): a KL of 0 is the untrained policy, not the goal.
    "reward": ("reward (weighted, as trained)", True),
    "gold_reward": ("gold reward (sampled, held-out)", True),
    "learned_reward": ("learned-RM reward (sampled)", True),
    "kl_to_reference": ("KL to reference (nats/seq)", None),
    "response_length": ("response length (tokens)", None),
}


def format_comparison(recipe: str, model_name: str, base: dict, trained: dict) -> str:
    """A plain-text table of base vs trained metrics, with the gain and whether it helped."""
    lines = [f"\n{recipe} on {model_name}: base vs trained", f"{'metric':40s} {'base':>9s} {'trained':>9s} {'gain':>9s}"]
    for key, value in trained.items():
        label, higher_is_better = METRIC_LABELS.get(key, (key, True))
        if key in base:
            gain = value - base[key]
            better = higher_is_better is not None and (gain > 0 if higher_is_better else gain < 0)
            lines.append(f"{label:40s} {base[key]:9.4f} {value:9.4f} {gain:+9.4f} {'better' if better else ''}")
        else:
            lines.append(f"{label:40s} {'-':>9s} {value:9.4f}")
    return "\n".join(lines)


def _plot_loss_curve(history: list[dict], path: Path, recipe: str) -> None:
    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*points), marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{recipe}: training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
