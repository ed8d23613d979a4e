"""Reward functions with TRL's signature `fn(prompts, completions, **kwargs) -> list[float]`.

Look one up by its registered name (`arith_exact_match`) or by dotted path
(`rewards.arith:exact_match`, `my_package.my_module:my_reward`).
"""

from __future__ import annotations

import importlib
from typing import Callable

from rewards import arith

REWARDS: dict[str, Callable] = {
    "arith_exact_match": arith.exact_match,
    "arith_digit_overlap": arith.digit_overlap,
}


def get_reward(name: str) -> Callable:
    """A registered reward, or `module.path:function` imported on demand.

    >>> get_reward("arith_exact_match") is arith.exact_match
    True
    >>> get_reward("rewards.arith:digit_overlap") is arith.digit_overlap
    True
    """
    if name in REWARDS:
        return REWARDS[name]
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise KeyError(f"unknown reward {name!r}: registered rewards are {', '.join(REWARDS)}, "
                       "or give a dotted path such as 'rewards.arith:exact_match'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise KeyError(f"cannot import reward {name!r}: {err}") from err
    if not callable(fn):
        raise TypeError(f"reward {name!r} is not callable")
    return fn
