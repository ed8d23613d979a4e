"""Checked rewards and their weighted combination: what an RL recipe trains on and evaluates with.

TRL sums the rewards it is given with `reward_weights`; this module makes every reward fail loudly,
by name, when it breaks TRL's contract (one finite number per completion), instead of TRL turning a
`None` into a silent NaN or a string into an opaque tensor error mid-run.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Callable

from align_proxy.errors import UserInputError


class RewardError(UserInputError, ValueError):
    """A reward that cannot be used: not a reward model, or one that broke TRL's reward contract; the message names
    the reward and what is wrong."""


def _preview(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(value) -> str:
    return "None" if value is None else f"{type(value).__name__} {_preview(value)}"


def check_reward_values(name: str, values, completions: list) -> list[float]:
    """`values` as a list of floats, or a `RewardError` naming the reward, the completion and why.

    >>> check_reward_values("gold", [1, 0.5], ["47", "x"])
    [1.0, 0.5]
    >>> check_reward_values("gold", [1.0], ["47", "x"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    align_proxy.rewards.combine.RewardError: reward 'gold' returned 1 value(s) for 2 completions: ...
    """
    if hasattr(values, "tolist"):  # a tensor or numpy array
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise RewardError(f"reward {name!r} returned {_describe(values)}: a reward returns a "
                          f"list with one number per completion ({len(completions)} here)")
    if len(values) != len(completions):
        raise RewardError(f"reward {name!r} returned {len(values)} value(s) for {len(completions)} completions: a "
                          "reward returns one number per completion, in order")
    checked = []
    for i, value in enumerate(values):
        where = f"completion {i} ({_preview(completions[i])})"
        if not isinstance(value, numbers.Real):
            raise RewardError(f"reward {name!r} returned {_describe(value)} for {where}: rewards must be numbers "
                              "(float or int); return 0.0 where a completion earns nothing")
        if not math.isfinite(value):
            raise RewardError(f"reward {name!r} returned {value} for {where}: rewards must be finite numbers")
        checked.append(float(value))
    return checked


class CheckedReward:
    """A reward with TRL's signature whose every output is checked (see `check_reward_values`).

    TRL names a reward's logged metrics (`rewards/<name>/mean`) after its `__name__`, so the wrapper
    carries the name the config gave it.
    """

    def __init__(self, name: str, fn: Callable):
        self.__name__ = name
        self.fn = fn

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        return check_reward_values(self.__name__, self.fn(prompts=prompts, completions=completions, **kwargs),
                                   completions)


def check_signature(name: str, fn: Callable) -> None:
    """Refuse, at start-up, a reward that cannot be called as TRL calls it: `fn(prompts=, completions=,
    completion_ids=, <dataset columns>=, ...)`."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return  # builtins without a signature: their outputs are still checked on every call
    kinds = {p.kind for p in params}
    names = {p.name for p in params}
    takes_extra = inspect.Parameter.VAR_KEYWORD in kinds
    missing = [arg for arg in ("prompts", "completions") if arg not in names and not takes_extra]
    if missing or not takes_extra:
        raise RewardError(
            f"reward {name!r} has signature {inspect.signature(fn)}, but TRL calls rewards as "
            "fn(prompts, completions, **kwargs) (completion_ids and the dataset's other columns arrive as keyword "
            "arguments): " + (f"add {', '.join(missing)} and **kwargs" if missing else "add **kwargs")
        )


@dataclass
class RewardSet:
    """The rewards a run optimises, in config order, and their weights (TRL's `reward_weights`)."""

    names: list[str]
    funcs: list[CheckedReward]  # what the TRL trainer is given
    weights: list[float]

    def __post_init__(self):
        if len(self.weights) != len(self.funcs):
            raise RewardError(f"{len(self.weights)} reward weight(s) for {len(self.funcs)} reward(s) "
                              f"({', '.join(self.names)}): give one weight per reward with --reward_weights, "
                              "or none for equal weights of 1.0")

    def score(self, prompts: list, completions: list, **kwargs) -> tuple[dict[str, list[float]], list[float]]:
        """Each reward's values by name, and their weighted sum per completion, as TRL combines them."""
        per_reward = {name: fn(prompts, completions, **kwargs) for name, fn in zip(self.names, self.funcs)}
        total = [sum(w * per_reward[name][i] for name, w in zip(self.names, self.weights))
                 for i in range(len(completions))]
        return per_reward, total
