"""Format and length rewards: shaping terms added to a task or learned reward, never the goal itself.

A policy sampled at temperature 1 often answers and then keeps writing (`"47 12+3=..."`): the gold
reward still counts the leading answer, so nothing teaches it to stop. These rewards do.
"""

from __future__ import annotations

import re

from trl.rewards import get_soft_overlong_punishment

from align_proxy.rewards.arith import _text

_BARE_INTEGER = re.compile(r"\s*-?\d+\s*")


def answer_format(prompts: list, completions: list, **kwargs) -> list[float]:
    """1.0 where the completion is a whole number and nothing else (it stopped after answering), else 0.0.

    Says nothing about whether the number is right: pair it with a gold or learned reward.

    >>> answer_format(["12+35="] * 3, ["47", "47 12+3=", "x"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if _BARE_INTEGER.fullmatch(_text(c)) else 0.0 for c in completions]


class OverlongPenalty:
    """DAPO's soft overlong punishment (TRL's `get_soft_overlong_punishment`) with the run's own limits:
    0 up to three quarters of `max_completion_length` tokens, then falling linearly to -1 at the limit.

    Built from the run's TRL config (a reward factory, see `rewards.FACTORIES`), so the penalty follows
    `--max_completion_length` instead of a second length flag.

    >>> penalty = OverlongPenalty(max_completion_length=8)
    >>> penalty(["1+1="] * 3, ["2", "2222222", "22222222"], completion_ids=[[5, 2], [5] * 7, [5] * 8])
    [0.0, -0.5, -1.0]
    """

    __name__ = "overlong_penalty"

    def __init__(self, max_completion_length: int):
        # A quarter of the budget as the soft zone: long enough to be a gradient, short enough that
        # completions of normal length are never penalised.
        self._punish = get_soft_overlong_punishment(max_completion_length, max(1, max_completion_length // 4))

    @classmethod
    def from_config(cls, config) -> OverlongPenalty:
        return cls(config.max_completion_length)

    def __call__(self, prompts: list, completions: list, completion_ids: list[list[int]] | None = None,
                 **kwargs) -> list[float]:
        if completion_ids is None:
            raise ValueError("overlong_penalty needs completion_ids (token ids of each completion), which TRL "
                             "passes to every reward; pass them when calling it yourself")
        return self._punish(completion_ids=completion_ids)
