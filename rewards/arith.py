"""Gold rewards for the built-in arithmetic tasks, with TRL's reward-function signature.

TRL calls `fn(prompts, completions, **kwargs)` with the batch's other dataset columns as keyword
arguments and expects one float per completion. The gold answer comes from the `answer` column
when the dataset has one, else it is recomputed from the prompt itself.
"""

from __future__ import annotations

from align_proxy.data.tasks import parse_answer, parse_prompt


def _text(completion) -> str:
    # Conversational completions are lists of messages; score the assistant's text.
    if isinstance(completion, list):
        return "".join(message["content"] for message in completion)
    return completion


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return prompt[-1]["content"]
    return prompt


def exact_match(prompts: list, completions: list, answer: list[str] | None = None, **kwargs) -> list[float]:
    """1.0 where the completion starts with the gold answer as a whole number, else 0.0.

    >>> exact_match(["12+35=", "9-4="], ["47", " 6"])
    [1.0, 0.0]
    >>> exact_match(["12+35="], ["470"], answer=["47"])
    [0.0]
    """
    golds = answer if answer is not None else [parse_prompt(_prompt_text(p)).answer for p in prompts]
    return [1.0 if parse_answer(_text(c)) == gold else 0.0 for c, gold in zip(completions, golds)]


def digit_overlap(prompts: list, completions: list, answer: list[str] | None = None, **kwargs) -> list[float]:
    """Partial credit: the share of gold digits right in place (right-aligned), 0.0 if unparsable.

    Denser than `exact_match`, so an RL run on a weak base model gets signal before it is ever
    exactly right.

    >>> digit_overlap(["12+35="], ["46"])
    [0.5]
    >>> digit_overlap(["12+35="], ["x"])
    [0.0]
    """
    golds = answer if answer is not None else [parse_prompt(_prompt_text(p)).answer for p in prompts]
    scores = []
    for completion, gold in zip(completions, golds):
        guess = parse_answer(_text(completion))
        if guess is None:
            scores.append(0.0)
            continue
        width = max(len(gold), len(guess))
        same = sum(a == b for a, b in zip(gold.rjust(width), guess.rjust(width)))
        scores.append(same / width)
    return scores
