"""A recipe's command line: the arguments align-proxy adds to TRL's, and the parser that reads them.

`make_parser(recipe)` is TRL's `--config FILE.yaml` plus flags over the recipe kind's dataclasses
(`align_proxy.kinds`); `RecipeParser` also records which keys the user set, so the proxy-speed plan
(`align_proxy.speed`) never replaces a value the user chose.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field

import torch
import yaml
from trl import DatasetMixtureConfig, ScriptArguments, TrlParser

from align_proxy.kinds import recipe_kind
from align_proxy.speed import ALIASES

EXPLICIT_KEYS = "_explicit_keys"  # where RecipeParser leaves the user's keys, on the script arguments


@dataclass
class RecipeArguments(ScriptArguments, DatasetMixtureConfig):
    """TRL's script arguments and dataset mixture (`datasets:` in the YAML, as `trl sft --config` takes it:
    `align_proxy.data.mixture`) plus what align-proxy adds: tokenizer, built-in task sizes, evaluation."""

    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use when the model directory has none (e.g. the Llama-2 "
                                        "tokenizer for converted CLIMB proxies). Defaults to the model's own."})
    mix: list[str] | None = field(default=None, metadata={"help": (
        "Shares of the `datasets:` mixture, as ID=SHARE (e.g. arith-3digit=0.3; an ID is a built-in task's name or a "
        "file's stem): the named dataset gets its share, the others split the rest in their fractions' proportions. "
        "A study's grid key mix.ID sets it.")})
    builtin_train_size: int = field(default=2000, metadata={"help": "Training examples drawn from a built-in task."})
    builtin_test_size: int = field(default=200, metadata={"help": "Held-out examples drawn from a built-in task."})
    eval_size: int = field(default=200, metadata={"help": "Held-out items per metric for before/after evaluation."})
    eval_before: bool = field(default=True, metadata={"help": "Evaluate the base model before training, so the "
                                                                "gain is explicit."})
    eval_max_new_tokens: int = field(default=8, metadata={"help": "Generation length for task accuracy and judged "
                                                                   "replies."})
    eval_num_samples: int = field(default=4, metadata={"help": "Replies sampled per held-out prompt for judged and RL "
                                                               "metrics (judge or reward, win rates, KL, length)."})
    eval_judge: list[str] | None = field(default=None, metadata={"help": (
        "Judge of sampled replies (sft, dpo): any --reward_funcs spec (a registered reward, module:function, a "
        "reward-model directory), several summed with --eval_judge_weights. Adds judge reward, win rates against "
        "the reference reply and against the base model, and reply length (evals/judge.py).")})
    eval_judge_weights: list[float] | None = field(default=None, metadata={"help": "One weight per --eval_judge "
                                                                                   "spec (default 1.0 each)."})
    eval_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of judged replies."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the held-out items, kept apart from --seed so runs "
                                                         "with different training seeds are scored on the same items "
                                                         "(paired comparisons, one base evaluation for all)."})
    base_eval_cache: str | None = field(default=None, metadata={"help": (
        "Directory of base-model evaluations shared between runs (a transfer study sets it): a base model is "
        "scored once per evaluation setup.")})
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


# One help text for --chat_template_path, whichever class carries it (`template_argument`).
CHAT_TEMPLATE_HELP = (
    "Chat template for conversational data when the tokenizer has none (base models): the name of one shipped "
    "with align-proxy (`minimal`: User:/Assistant: turns, generation markers for assistant_only_loss) or a "
    ".jinja/.j2 file. Installed on the tokenizer before the data is checked and saved with the model.")


@dataclass
class ChatTemplateArguments(RecipeArguments):
    """`RecipeArguments` plus --chat_template_path, for the recipes whose TRL config lacks it (DPO, GRPO, RLOO):
    SFT's and the reward trainer's configs carry their own. Every recipe takes the flag in one of the two places
    (`template_argument`), and the run installs the template the same way for all (`align_proxy.chat_template`)."""

    chat_template_path: str | None = field(default=None, metadata={"help": CHAT_TEMPLATE_HELP})


def template_argument(script_args, training_args) -> tuple[object, str | None]:
    """Which of a run's argument objects carries --chat_template_path (the TRL config where it has the field, else
    the script arguments), and its value."""
    holder = training_args if hasattr(training_args, "chat_template_path") else script_args
    return holder, getattr(holder, "chat_template_path", None)


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
    """`--config FILE.yaml` plus command-line overrides, the TRL way, over the recipe kind's flag classes: its
    arguments class, its TRL config and `trl.ModelConfig` (`RecipeKind.flag_classes`).

    Without a GPU, `use_cpu` and fp32 become the defaults (TRL defaults to bf16, which transformers
    refuses on a CPU-only machine); a config file or flag still wins.
    """
    kind = recipe_kind(recipe)
    carriers = [c.__name__ for c in (kind.arguments_class, kind.config_class)
                if "chat_template_path" in {f.name for f in dataclasses.fields(c)}]
    if len(carriers) != 1:  # none: the recipe would lack the flag; two: argparse refuses the duplicate
        raise TypeError(f"the {recipe} recipe's --chat_template_path is carried by {carriers or 'neither class'}: "
                        "exactly one of its arguments class and TRL config must have it (ChatTemplateArguments)")
    parser = RecipeParser(kind.flag_classes, prog=prog)
    if not torch.cuda.is_available():
        parser.set_defaults(use_cpu=True, bf16=False)
    return parser
