"""Before/after evaluation shared by every recipe: what to measure and how gains are reported.

Evaluations are data: `EvalSet` holds the held-out items, and the generic runners below score a
policy or a reward model on whatever items are present. Each item is scored by the rules of
`align_proxy.metrics`, and every total is derived from those per-item scores there.
`PolicyEvaluation` and `RewardModelEvaluation` (and `align_proxy.evals.rl.RLEvaluation`) are what a recipe kind
evaluates with (`align_proxy.kinds`): built from a run, called on a model directory, each knows its
kind, which names the base-evaluation cache it shares, and what else that cache's key holds. A run that
asks for lm-eval tasks adds `align_proxy.evals.lm_harness.LmEvalEvaluation` beside it (`Evaluations`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl.data_utils import extract_prompt, is_conversational

from align_proxy.data.tasks import ArithmeticTask, parse_answer
from align_proxy.data.validation import DatasetFormatError
from align_proxy.metrics import aggregate, exact_match, preference_win
from align_proxy.scoring import completion_logprobs, greedy_generations, reward_scores


@dataclass
class EvalSet:
    """Held-out items; each metric runs only when its items are present."""

    pairs: Dataset | None = None  # prompt / chosen / rejected: preference accuracy
    completions: Dataset | None = None  # prompt / completion: completion NLL
    task: ArithmeticTask | None = None
    task_prompts: Dataset | None = None  # prompt / answer: task accuracy by greedy generation

    @classmethod
    def for_recipe(cls, test: Dataset, task: ArithmeticTask | None, size: int, seed: int = 0) -> EvalSet:
        """What a recipe's run is judged on: a built-in task's own held-out sets, whatever the recipe
        (so every recipe's runs on a model share one base evaluation, item for item), or else the
        recipe's test split."""
        if task is not None:
            return cls(task.preference(size, split="test", seed=seed), task.sft(size, split="test", seed=seed),
                       task, task.evaluation(size, seed=seed))
        return cls(*_likelihood_items(test.select(range(min(size, len(test))))))

    def describe(self, policy: bool = True) -> str:
        """What a run measures on these items and why any metric is left out: one line, printed before the base
        model is scored (a reward model is scored on the pairs alone)."""
        measured, left_out = [], []
        if policy:
            if self.task_prompts is not None:
                measured.append(f"task accuracy on {len(self.task_prompts)} greedy replies")
            else:
                left_out.append("task accuracy (it checks greedy replies against a built-in task's gold answers)")
            if self.completions is not None:
                measured.append(f"completion NLL on {len(self.completions)} completions")
            else:
                left_out.append("completion NLL (the test split holds no completion or chosen reply)")
        if self.pairs is not None:
            measured.append(f"preference accuracy on {len(self.pairs)} pairs")
        else:
            left_out.append("preference accuracy (the test split holds no chosen/rejected pairs)")
        return (f"held-out evaluation: {'; '.join(measured) or 'nothing'}"
                + (f"; not measured: {'; '.join(left_out)}" if left_out else ""))


def _likelihood_items(test: Dataset) -> tuple[Dataset | None, Dataset | None]:
    """Preference pairs and gold completions found in a test split, in any TRL format a recipe accepts, text or
    conversational. Conversational items are scored as TRL's trainers render them for training
    (`align_proxy.scoring`): a preference pair without an explicit prompt has it extracted as DPO's trainer does
    (`trl.data_utils.extract_prompt`), and a `messages` row is scored on its last assistant turn given the turns
    before it. A split in no such format is named, never silently skipped."""
    columns = set(test.column_names)
    if not len(test):
        return None, None
    conversational = is_conversational(test[0])
    if {"chosen", "rejected"} <= columns:
        pairs = _with_prompt(test, conversational)
        return pairs, Dataset.from_dict({"prompt": pairs["prompt"], "completion": pairs["chosen"]})
    if {"prompt", "completion"} <= columns:
        return None, test
    if "text" in columns:
        return None, Dataset.from_dict({"prompt": [""] * len(test), "completion": test["text"]})
    if "messages" in columns:
        return None, _last_turns(test)
    return None, None


def _with_prompt(pairs: Dataset, conversational: bool) -> Dataset:
    if "prompt" in pairs.column_names:
        return pairs
    if conversational:  # the shared leading messages are the prompt, as DPO's trainer extracts it
        return pairs.map(extract_prompt)
    # Implicit-prompt text pairs: score the whole sequences.
    return pairs.add_column("prompt", [""] * len(pairs))


def _last_turns(rows: Dataset) -> Dataset:
    """A conversational language-modeling split as prompt-completion items: each conversation's last assistant
    turn, given every turn before it."""
    prompts, completions = [], []
    for i, messages in enumerate(rows["messages"]):
        last = max((j for j, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise DatasetFormatError(f"test split, row {i}: a `messages` conversation with no assistant turn has no "
                                     "reply to score; give each held-out conversation an assistant reply")
        prompts.append(messages[:last])
        completions.append([messages[last]])
    return Dataset.from_dict({"prompt": prompts, "completion": completions})


def _load(cls, path: str, **kwargs):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return cls.from_pretrained(path, dtype=torch.float32, **kwargs).to(device)


@dataclass
class EvalResult:
    """Aggregate metrics, and per-item scores on the same items in the same order, so a base and
    a trained model can be compared item by item (paired bootstrap over items and seeds)."""

    metrics: dict[str, float] = field(default_factory=dict)
    items: dict[str, list[float]] = field(default_factory=dict)
    # What an evaluation records beside its metrics, by name: the judge's identity, the length-controlled win rate.
    details: dict[str, dict] = field(default_factory=dict)

    def add(self, name: str, items: list[float], **totals) -> None:
        """A metric's per-item scores, and its total derived from them (`align_proxy.metrics.aggregate`;
        `totals`: what a per-token metric adds up, `tokens` and `sums`)."""
        self.items[name] = [float(x) for x in items]
        self.metrics[name] = aggregate(name, self.items[name], **totals)

    @classmethod
    def merged(cls, results: list[EvalResult]) -> EvalResult:
        """Several evaluations' results of one model as one (their metric names are distinct)."""
        merged = cls()
        for result in results:
            merged.metrics.update(result.metrics)
            merged.items.update(result.items)
            merged.details.update(result.details)
        return merged


def _preference(result: EvalResult, prefix: str, chosen: list[float], rejected: list[float]) -> None:
    margins = [c - r for c, r in zip(chosen, rejected)]
    result.add(f"{prefix}_accuracy", [preference_win(m) for m in margins])
    result.add(f"{prefix}_margin", margins)


def evaluate_policy(model_path: str, tokenizer, evalset: EvalSet, reference_path: str | None = None,
                    beta: float | None = None, max_new_tokens: int = 8) -> EvalResult:
    """Task accuracy, completion NLL and preference accuracy of a causal LM.

    Preference accuracy ranks chosen over rejected by the policy's own log-likelihood, which is
    comparable between a base model and a trained one. With a `reference_path` (DPO), the implicit
    reward beta * log(pi / pi_ref) is scored too; for the reference itself it is 0 by definition,
    so its accuracy is 0.5 (ties count half).
    """
    model = _load(AutoModelForCausalLM, model_path)
    result, (chosen, rejected) = _score_policy(model, tokenizer, evalset, max_new_tokens)
    if evalset.pairs is not None:
        prompts = list(evalset.pairs["prompt"])
        if reference_path == model_path:
            # The reference against itself: every implicit reward is 0 by definition.
            _preference(result, "implicit_reward", [0.0] * len(prompts), [0.0] * len(prompts))
        elif reference_path is not None and beta is not None:
            del model
            reference = _load(AutoModelForCausalLM, reference_path)
            ref_chosen, _ = completion_logprobs(reference, tokenizer, prompts, list(evalset.pairs["chosen"]))
            ref_rejected, _ = completion_logprobs(reference, tokenizer, prompts, list(evalset.pairs["rejected"]))
            _preference(result, "implicit_reward", [beta * (c - r) for c, r in zip(chosen, ref_chosen)],
                        [beta * (c - r) for c, r in zip(rejected, ref_rejected)])
    return result


def score_policy(model, tokenizer, evalset: EvalSet, max_new_tokens: int = 8) -> EvalResult:
    """Task accuracy, completion NLL and preference accuracy of a loaded causal LM: anything whose forward returns
    logits and which has a `generate`, a proxy-tuned model too (`align_proxy.proxy_tuning`)."""
    return _score_policy(model, tokenizer, evalset, max_new_tokens)[0]


def _score_policy(model, tokenizer, evalset: EvalSet, max_new_tokens: int) -> tuple[EvalResult, tuple[list, list]]:
    """`score_policy`, and the chosen and rejected completions' log-probabilities (DPO's implicit reward reuses them)."""
    result, chosen, rejected = EvalResult(), [], []
    if evalset.task_prompts is not None and evalset.task is not None:
        generations = greedy_generations(model, tokenizer, list(evalset.task_prompts["prompt"]), max_new_tokens)
        predictions = [parse_answer(g) or "" for g in generations]
        references = list(evalset.task_prompts["answer"])
        result.add("task_accuracy", [exact_match(p, r) for p, r in zip(predictions, references)])
    if evalset.completions is not None:
        sums, counts = completion_logprobs(model, tokenizer, list(evalset.completions["prompt"]),
                                           list(evalset.completions["completion"]))
        result.add("completion_nll", [-s / n for s, n in zip(sums, counts)], tokens=counts, sums=[-s for s in sums])
    if evalset.pairs is not None:
        prompts = list(evalset.pairs["prompt"])
        chosen, _ = completion_logprobs(model, tokenizer, prompts, list(evalset.pairs["chosen"]))
        rejected, _ = completion_logprobs(model, tokenizer, prompts, list(evalset.pairs["rejected"]))
        _preference(result, "preference", chosen, rejected)
    return result, (chosen, rejected)


def evaluate_reward_model(model_path: str, tokenizer, evalset: EvalSet, seed: int = 0) -> EvalResult:
    """Preference accuracy of a reward model: how often it scores chosen above rejected.

    A base causal LM gets a freshly initialised score head (seeded), as the reward trainer gives
    it, so the base figure is what training starts from: near chance.
    """
    result = EvalResult()
    if evalset.pairs is None:
        return result
    torch.manual_seed(seed)
    model = _load(AutoModelForSequenceClassification, model_path, num_labels=1)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    prompts = list(evalset.pairs["prompt"])
    chosen = reward_scores(model, tokenizer, prompts, list(evalset.pairs["chosen"]))
    rejected = reward_scores(model, tokenizer, prompts, list(evalset.pairs["rejected"]))
    _preference(result, "preference", chosen, rejected)
    return result


@dataclass
class PolicyEvaluation:
    """SFT's and DPO's evaluation: `evaluate_policy` against the run's base model as reference. Its kind is
    "policy": both recipes score a policy on the same items in the same way, so a study scores each base
    model once for both."""

    tokenizer: object
    evalset: EvalSet
    reference_path: str | None = None
    beta: float | None = None  # DPO's: its implicit reward beta * log(pi / pi_ref) is scored too
    max_new_tokens: int = 8
    kind: ClassVar[str] = "policy"

    @classmethod
    def for_run(cls, run, beta: float | None = None) -> PolicyEvaluation:
        return cls(run.tokenizer, run.evalset, run.model.path, beta, run.script_args.eval_max_new_tokens)

    def cache_key(self) -> dict:
        """What a base evaluation depends on beyond the held-out items (`align_proxy.base_eval.base_cache_key`)."""
        return {"evaluation": self.kind}

    def __call__(self, model_path: str) -> EvalResult:
        return evaluate_policy(model_path, self.tokenizer, self.evalset, reference_path=self.reference_path,
                               beta=self.beta, max_new_tokens=self.max_new_tokens)


@dataclass
class RewardModelEvaluation:
    """The reward recipe's evaluation: `evaluate_reward_model`. Its kind is "reward_model": a base model with a
    fresh score head is another model than the base policy, with its own base evaluation."""

    tokenizer: object
    evalset: EvalSet
    seed: int = 0
    kind: ClassVar[str] = "reward_model"

    @classmethod
    def for_run(cls, run) -> RewardModelEvaluation:
        return cls(run.tokenizer, run.evalset, run.script_args.eval_seed)

    def cache_key(self) -> dict:
        return {"evaluation": self.kind}

    def __call__(self, model_path: str) -> EvalResult:
        return evaluate_reward_model(model_path, self.tokenizer, self.evalset, seed=self.seed)


@dataclass
class Evaluations:
    """A run's evaluations together: its recipe kind's, and the lm-eval tasks it asks for (`align_proxy.evals.lm_harness`).
    Called, they score one model and their results merge; a base evaluation is cached part by part
    (`RecipeRun.evaluate_base`), so runs of different recipes share what they have in common."""

    parts: tuple

    @staticmethod
    def parts_of(evaluation) -> tuple:
        return evaluation.parts if isinstance(evaluation, Evaluations) else (evaluation,)

    def __call__(self, model_path: str) -> EvalResult:
        return EvalResult.merged([part(model_path) for part in self.parts])
