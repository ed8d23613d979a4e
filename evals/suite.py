"""Before/after evaluation shared by every recipe: what to measure and how gains are reported.

Evaluations are data: `EvalSet` holds the held-out items, and the generic runners below score a
policy or a reward model on whatever items are present. Every number is computed by a shipped
`evaluate` metric (see `evals/metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from align_proxy.data.tasks import ArithmeticTask, parse_answer
from evals.metrics import load_metric
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


def _likelihood_items(test: Dataset) -> tuple[Dataset | None, Dataset | None]:
    """Preference pairs and gold completions found in a test split, in any accepted TRL format."""
    text_columns = [c for c in ("prompt", "chosen", "rejected", "completion", "text") if c in test.column_names]
    if not len(test) or not text_columns:
        return None, None
    if not all(isinstance(test[0][c], str) for c in text_columns):
        # Conversational rows are scored the way TRL trains on them only through the chat template's
        # rendering; rather than guess it, the task's own held-out sets are scored instead.
        print("[align-proxy] conversational test split: its likelihood metrics are skipped")
        return None, None
    if {"chosen", "rejected"} <= set(test.column_names):
        pairs = _with_prompt(test)
        return pairs, Dataset.from_dict({"prompt": pairs["prompt"], "completion": pairs["chosen"]})
    if "completion" in test.column_names:
        return None, test
    if "text" in test.column_names:
        return None, Dataset.from_dict({"prompt": [""] * len(test), "completion": test["text"]})
    return None, None


def _with_prompt(pairs: Dataset) -> Dataset:
    if "prompt" in pairs.column_names:
        return pairs
    # Implicit-prompt preference data: score the whole sequences.
    return pairs.add_column("prompt", [""] * len(pairs))


def _texts(column) -> list[str]:
    values = list(column)
    if values and not isinstance(values[0], str):
        raise TypeError("conversational evaluation data is not supported yet: pass standard (string) columns")
    return values


def _load(cls, path: str, **kwargs):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return cls.from_pretrained(path, dtype=torch.float32, **kwargs).to(device)


@dataclass
class EvalResult:
    """Aggregate metrics, and per-item scores on the same items in the same order, so a base and
    a trained model can be compared item by item (paired bootstrap over items and seeds)."""

    metrics: dict[str, float] = field(default_factory=dict)
    items: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float, items: list[float]) -> None:
        self.metrics[name] = value
        self.items[name] = [float(x) for x in items]


def _preference(result: EvalResult, prefix: str, chosen: list[float], rejected: list[float]) -> None:
    scored = load_metric("preference_accuracy").compute(chosen_scores=chosen, rejected_scores=rejected)
    margins = [c - r for c, r in zip(chosen, rejected)]
    result.add(f"{prefix}_accuracy", scored["accuracy"], [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins])
    result.add(f"{prefix}_margin", scored["mean_margin"], margins)


def evaluate_policy(model_path: str, tokenizer, evalset: EvalSet, reference_path: str | None = None,
                    beta: float | None = None, max_new_tokens: int = 8) -> EvalResult:
    """Task accuracy, completion NLL and preference accuracy of a causal LM.

    Preference accuracy ranks chosen over rejected by the policy's own log-likelihood, which is
    comparable between a base model and a trained one. With a `reference_path` (DPO), the implicit
    reward beta * log(pi / pi_ref) is scored too; for the reference itself it is 0 by definition,
    so its accuracy is 0.5 (ties count half).
    """
    model = _load(AutoModelForCausalLM, model_path)
    result = EvalResult()
    if evalset.task_prompts is not None and evalset.task is not None:
        generations = greedy_generations(model, tokenizer, _texts(evalset.task_prompts["prompt"]), max_new_tokens)
        predictions = [parse_answer(g) or "" for g in generations]
        references = list(evalset.task_prompts["answer"])
        scored = load_metric("task_accuracy").compute(predictions=predictions, references=references)
        result.add("task_accuracy", scored["accuracy"], [p == r for p, r in zip(predictions, references)])
    if evalset.completions is not None:
        sums, counts = completion_logprobs(model, tokenizer, _texts(evalset.completions["prompt"]),
                                           _texts(evalset.completions["completion"]))
        nll = load_metric("completion_nll").compute(sum_logprobs=sums, num_tokens=counts)["nll"]
        result.add("completion_nll", nll, [-s / n for s, n in zip(sums, counts)])
    if evalset.pairs is not None:
        prompts = _texts(evalset.pairs["prompt"])
        chosen_texts, rejected_texts = _texts(evalset.pairs["chosen"]), _texts(evalset.pairs["rejected"])
        chosen, _ = completion_logprobs(model, tokenizer, prompts, chosen_texts)
        rejected, _ = completion_logprobs(model, tokenizer, prompts, rejected_texts)
        _preference(result, "preference", chosen, rejected)
        if reference_path == model_path:
            # The reference against itself: every implicit reward is 0 by definition.
            _preference(result, "implicit_reward", [0.0] * len(prompts), [0.0] * len(prompts))
        elif reference_path is not None and beta is not None:
            del model
            reference = _load(AutoModelForCausalLM, reference_path)
            ref_chosen, _ = completion_logprobs(reference, tokenizer, prompts, chosen_texts)
            ref_rejected, _ = completion_logprobs(reference, tokenizer, prompts, rejected_texts)
            _preference(result, "implicit_reward", [beta * (c - r) for c, r in zip(chosen, ref_chosen)],
                        [beta * (c - r) for c, r in zip(rejected, ref_rejected)])
    return result


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
    prompts = _texts(evalset.pairs["prompt"])
    chosen = reward_scores(model, tokenizer, prompts, _texts(evalset.pairs["chosen"]))
    rejected = reward_scores(model, tokenizer, prompts, _texts(evalset.pairs["rejected"]))
    _preference(result, "preference", chosen, rejected)
    return result


def gains(base: dict[str, float], trained: dict[str, float]) -> dict[str, float]:
    """Trained minus base for every metric both have (for NLL, negative is better)."""
    return {key: trained[key] - base[key] for key in trained if key in base}
