"""Decoding-time proxy-tuning (Liu et al. 2024, "Tuning Language Models by Proxy", arXiv 2401.08565): a large
base model M decoded with the logits `s_M + alpha * (s_M+ - s_M-)`, where M+ is a small tuned model (the
expert) and M- its untuned base (the anti-expert).

`ProxyTunedModel` is a causal LM like any other to the evaluation: Hugging Face `generate` (greedy, sampling,
any logits processor), batched with left padding, each of the three models with its own KV cache
(`ProxyCache`), and a forward over whole sequences whose logits give the log-probability of a given
completion under the proxy-tuned distribution (`align_proxy.scoring.completion_logprobs`).

Logits, not log-probabilities, are combined, as in the paper: at one position, `log_softmax(s) = s - lse(s)`
differs from `s` by a constant over the vocabulary, so both give the same next-token distribution after the
softmax (and the same greedy choice, top-k, top-p, temperature); raw logits keep `alpha = 0` bit-for-bit the
base model's, and keep the scale a processor that is not shift-invariant (a repetition penalty) sees the
paper's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from align_proxy.errors import UserInputError


class VocabularyMismatchError(UserInputError, ValueError):
    """Two of the three models do not share one tokenizer: their logits index different tokens."""


def check_vocabularies(tokenizers: dict[str, object], vocab_sizes: dict[str, int]) -> int:
    """The shared vocabulary size (`len(tokenizer)`), or a `VocabularyMismatchError` naming the two models.

    `tokenizers` and `vocab_sizes` (each model's logit rows, `config.vocab_size`) are keyed by a name a user
    recognises (its path or registry name). Identical tokenizers are required: same token-to-id map and same
    special tokens. A model may have more logit rows than tokens (Megatron pads its vocabulary to a multiple
    of 128 x tensor-parallel size): rows past the tokenizer are never a real token, and are dropped.
    """
    (first, reference), *others = tokenizers.items()
    for name, tokenizer in others:
        for what, read in (("vocabulary", lambda t: t.get_vocab()), ("special tokens", _special_tokens)):
            if read(tokenizer) != read(reference):
                raise VocabularyMismatchError(
                    f"proxy-tuning adds logits token by token, so all three models need one tokenizer; {first!r} and "
                    f"{name!r} differ in their {what} ({_difference(read(reference), read(tokenizer))}): use an "
                    "expert and anti-expert trained from a model with the base model's tokenizer")
    size = len(reference)
    for name, rows in vocab_sizes.items():
        if rows < size:
            raise VocabularyMismatchError(f"{name!r} has {rows} logit rows but its tokenizer {size} tokens: the "
                                          "model does not match its tokenizer")
    return size


def _special_tokens(tokenizer) -> dict:
    return {k: str(v) for k, v in tokenizer.special_tokens_map.items()}


def _difference(a: dict, b: dict) -> str:
    """The first thing that differs between two token maps: entries only one has, else a differing value."""
    only_a, only_b = sorted(set(a) - set(b), key=str), sorted(set(b) - set(a), key=str)
    if only_a or only_b:
        return f"{len(a)} against {len(b)} entries; only in the first: {only_a[:5]}, only in the second: {only_b[:5]}"
    key = next(k for k in sorted(a, key=str) if a[k] != b[k])
    return f"{key!r}: {a[key]!r} against {b[key]!r}"


class ProxyCache(Cache):
    """The three models' own KV caches, carried through `generate` as one cache: its length, cropping and
    batch reordering are those of each part."""

    def __init__(self, caches: tuple[Cache, Cache, Cache]):
        super().__init__(layers=[])
        self.caches = caches

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.caches[0].get_seq_length(layer_idx)

    def reset(self) -> None:
        for cache in self.caches:
            cache.reset()

    def crop(self, max_length: int) -> None:
        for cache in self.caches:
            cache.crop(max_length)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for cache in self.caches:
            cache.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for cache in self.caches:
            cache.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for cache in self.caches:
            cache.batch_select_indices(indices)

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return all(cache.is_croppable for cache in self.caches)

    @property
    def is_linear(self) -> list[bool]:
        return self.caches[0].is_linear

    @property
    def is_sliding(self) -> list[bool]:
        return self.caches[0].is_sliding


class ProxyTunedModel(PreTrainedModel, GenerationMixin):
    """`base + alpha * (expert - anti_expert)`, logit by logit, as one causal LM.

    Its config is the base model's with `vocab_size` cut to the shared tokenizer's. Its forward runs the three
    models on the same inputs (each with its part of a `ProxyCache` when one is given) and returns the
    combined logits.
    """

    main_input_name = "input_ids"
    # The wrapper has no attention of its own: each model runs with the implementation it was loaded with.
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = _supports_attention_backend = True

    def __init__(self, base: PreTrainedModel, expert: PreTrainedModel, anti_expert: PreTrainedModel,
                 alpha: float = 1.0, vocab_size: int | None = None):
        config = copy.deepcopy(base.config)
        config.vocab_size = vocab_size or base.config.vocab_size
        super().__init__(config)
        # Not post_init(): it would (re)initialise weights; the three models come trained.
        self.base, self.expert, self.anti_expert = base, expert, anti_expert
        self.alpha = float(alpha)
        self.generation_config = copy.deepcopy(base.generation_config)
        self.eval()

    @property
    def parts(self) -> tuple[PreTrainedModel, PreTrainedModel, PreTrainedModel]:
        return self.base, self.expert, self.anti_expert

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            model_kwargs["cache"] = ProxyCache(tuple(DynamicCache(config=m.config) for m in self.parts))

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: ProxyCache | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0, return_dict: bool = True,
                **kwargs) -> CausalLMOutputWithPast:
        if cache is not None and not isinstance(cache, ProxyCache):
            raise TypeError(f"a proxy-tuned model keeps one cache per model (ProxyCache), got {type(cache).__name__}")
        caches = cache.caches if cache is not None else (None, None, None)
        logits = []
        for model, part in zip(self.parts, caches):
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=part,
                        use_cache=use_cache, logits_to_keep=logits_to_keep, return_dict=True)
            logits.append(out.logits[..., : self.config.vocab_size])
        base, expert, anti = logits
        combined = base if self.alpha == 0 else base + self.alpha * (expert - anti)
        return CausalLMOutputWithPast(logits=combined, cache=cache)


@dataclass(frozen=True)
class ProxyModels:
    """Where the three models come from (registry names or directories), and how strongly to steer."""

    base: str
    expert: str
    anti_expert: str
    alpha: float = 1.0


def trained_from(model_dir: str | Path) -> str:
    """The model a recipe trained `model_dir` from (its run_config.yaml's model name): the natural anti-expert."""
    config_path = Path(model_dir) / "run_config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: the expert was not saved by an align-proxy recipe, so "
                                "its base model is unknown; pass --anti-expert (the model it was trained from)")
    config = yaml.safe_load(config_path.read_text())
    try:
        model = config["model"]
        # A registry name resolves anywhere; a local directory's name is only its last path component.
        return model["path"] if model.get("source") == "local" else model["name"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{config_path} has no model name and path: pass --anti-expert explicitly") from err


def load_proxy_tuned(models: ProxyModels, tokenizer_name: str | None = None,
                     device: str | None = None) -> tuple[ProxyTunedModel, object]:
    """The proxy-tuned model and the shared tokenizer. Tokenizers are checked before any weights load."""
    from align_proxy.models import registry
    from align_proxy.recipe import load_tokenizer

    names = {"base": models.base, "expert": models.expert, "anti-expert": models.anti_expert}
    resolved = {role: registry.resolve(name) for role, name in names.items()}
    tokenizers = {f"{role} {names[role]}": load_tokenizer(r.path, tokenizer_name) for role, r in resolved.items()}
    rows = {f"{role} {names[role]}": AutoConfig.from_pretrained(r.path).vocab_size for role, r in resolved.items()}
    vocab_size = check_vocabularies(tokenizers, rows)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = [AutoModelForCausalLM.from_pretrained(r.path, dtype=torch.float32).to(device).eval()
              for r in resolved.values()]
    return ProxyTunedModel(*loaded, alpha=models.alpha, vocab_size=vocab_size), next(iter(tokenizers.values()))



# --- evaluation: base, proxy-tuned and tuned large models on the recipes' held-out items ---------------------

@dataclass(frozen=True)
class HeldOut:
    """Which held-out items to score on: the ones a recipe run scores its base and trained models on
    (`RecipeArguments`' dataset and evaluation fields), so a proxy-tuned model is compared item by item."""

    dataset: str = "builtin:arith"
    recipe: str = "sft"  # which data format a non-built-in dataset is read in
    eval_size: int = 200
    eval_seed: int = 0
    max_new_tokens: int = 8
    builtin_test_size: int = 200
    dataset_config: str | None = None
    test_split: str = "test"
    tokenizer_name: str | None = None
    # The run's judge (--eval_judge and its sampling): the proxy-tuned model is judged as the run's models were.
    judge: tuple[str, ...] = ()
    judge_weights: tuple[float, ...] | None = None
    num_samples: int = 4
    temperature: float = 1.0

    @classmethod
    def of_run(cls, model_dir: str | Path, **overrides) -> HeldOut:
        """The items the recipe that saved `model_dir` evaluated on (its run_config.yaml), with `overrides`
        (None values are ignored); the defaults without a run_config.yaml."""
        config_path = Path(model_dir) / "run_config.yaml"
        fields = {}
        if config_path.exists():
            config = yaml.safe_load(config_path.read_text()) or {}
            args = config.get("script_args") or {}
            fields = {"dataset": args.get("dataset_name"), "recipe": config.get("recipe"),
                      "eval_size": args.get("eval_size"), "eval_seed": args.get("eval_seed"),
                      "max_new_tokens": args.get("eval_max_new_tokens"),
                      "builtin_test_size": args.get("builtin_test_size"), "dataset_config": args.get("dataset_config"),
                      "test_split": args.get("dataset_test_split"),
                      "tokenizer_name": args.get("tokenizer_name_or_path"),
                      "judge": tuple(args.get("eval_judge") or ()) or None,
                      "judge_weights": tuple(args["eval_judge_weights"]) if args.get("eval_judge_weights") else None,
                      "num_samples": args.get("eval_num_samples"), "temperature": args.get("eval_temperature")}
        fields.update(overrides)
        return cls(**{k: v for k, v in fields.items() if v is not None})

    def evalset(self):
        from align_proxy.data.loading import load_recipe_data
        from align_proxy.evals.suite import EvalSet

        data = load_recipe_data(self.dataset, self.recipe, self.dataset_config, test_split=self.test_split,
                                builtin_train_size=1, builtin_test_size=self.builtin_test_size, eval_seed=self.eval_seed)
        return EvalSet.for_recipe(data.test, data.task, self.eval_size, self.eval_seed)


@dataclass
class ProxyTuningScores:
    """Each model's `align_proxy.evals.suite.EvalResult` on the same held-out items: the large base, the proxy-tuned large
    model, the small tuned model (the expert) and, when given, the large model tuned directly."""

    base: object
    proxy: object
    expert: object
    tuned: object | None = None


def score_proxy_tuning(models: ProxyModels, held_out: HeldOut, tuned: str | None = None) -> ProxyTuningScores:
    """Score the base, proxy-tuned, expert (and tuned) models; every check runs before any model generates."""
    from align_proxy.models import registry
    from align_proxy.recipe import load_tokenizer
    from align_proxy.evals.suite import score_policy

    evalset = held_out.evalset()
    tuned_path = None
    if tuned is not None:
        tuned_path = registry.resolve(tuned).path
        check_vocabularies({f"base {models.base}": load_tokenizer(registry.resolve(models.base).path,
                                                                    held_out.tokenizer_name),
                            f"tuned {tuned}": load_tokenizer(tuned_path, held_out.tokenizer_name)}, {})
    model, tokenizer = load_proxy_tuned(models, held_out.tokenizer_name)
    score = lambda m: score_policy(m, tokenizer, evalset, held_out.max_new_tokens)  # noqa: E731
    scores = ProxyTuningScores(score(model.base), score(model), score(model.expert))
    if held_out.judge:  # judged as the run was: the large base, and the proxy-tuned model against it
        from align_proxy.evals.judge import JudgeEvaluation
        from align_proxy.evals.suite import EvalResult

        judged = JudgeEvaluation.of_held_out(tokenizer, evalset, held_out)
        scores.base = EvalResult.merged([scores.base, judged.judge_model(model.base, None, "large base")])
        scores.proxy = EvalResult.merged([scores.proxy, judged.judge_model(model, model.base, "proxy-tuned model")])
    if tuned_path is not None:
        device = model.device
        del model
        scores.tuned = score(AutoModelForCausalLM.from_pretrained(tuned_path, dtype=torch.float32).to(device).eval())
    return scores
