"""Reward functions with TRL's signature `fn(prompts, completions, **kwargs) -> list[float]`.

Name a reward in a config (`reward_funcs`) by:

- a registered name: `arith_exact_match`, `arith_digit_overlap` (the built-in tasks' gold rewards),
  `answer_format` (format) or `overlong_penalty` (length; follows the run's `max_completion_length`);
- a dotted path: `align_proxy.rewards.arith:exact_match`, `my_package.my_module:my_reward`;
- a directory written by `recipes/reward.py`, or a reward model's Hub id (`owner/name`): as a learned reward.

`load_rewards` turns a config's list into a `RewardSet`: every reward checked on every call (one
finite number per completion, or an error naming it) and weighted by TRL's `reward_weights`.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Callable

from align_proxy.errors import UnknownNameError
from align_proxy.rewards import arith, shaping
from align_proxy.rewards.combine import CheckedReward, RewardError, RewardSet, check_signature
from align_proxy.rewards.learned import LearnedReward, check_hub_reward_model, is_hub_id, is_reward_model_dir

REWARDS: dict[str, Callable] = {
    "arith_exact_match": arith.exact_match,
    "arith_digit_overlap": arith.digit_overlap,
    "answer_format": shaping.answer_format,
}
# Rewards built from the run's TRL config (GRPOConfig / RLOOConfig), because they depend on it.
FACTORIES: dict[str, Callable] = {
    "overlong_penalty": shaping.OverlongPenalty.from_config,
}

__all__ = ["REWARDS", "FACTORIES", "RewardError", "RewardSet", "check_reward_spec", "get_reward", "load_rewards",
           "reward_identity"]


def get_reward(name: str, config=None) -> Callable:
    """A registered reward, a learned reward model's directory, or `module.path:function` imported on demand.

    >>> get_reward("arith_exact_match") is arith.exact_match
    True
    >>> get_reward("align_proxy.rewards.arith:digit_overlap") is arith.digit_overlap
    True
    >>> get_reward("rewards.arith:digit_overlap") is arith.digit_overlap  # the spelling before one namespace
    True
    """
    if name in REWARDS:
        return REWARDS[name]
    if name in FACTORIES:
        if config is None:
            raise ValueError(f"reward {name!r} is built from the run's config: pass it (a GRPOConfig or RLOOConfig)")
        return FACTORIES[name](config)
    if is_reward_model_dir(name) or is_hub_id(name):
        return LearnedReward(name)
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise UnknownNameError(f"unknown reward {name!r}: registered rewards are {', '.join([*REWARDS, *FACTORIES])}; "
                               "or give a dotted path such as 'align_proxy.rewards.arith:exact_match', or the output "
                               "directory of recipes/reward.py for a learned reward (none exists at that path)")
    module_name = _own_module(module_name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UnknownNameError(f"cannot import reward {name!r}: {err}") from err
    if not hasattr(module, attr):
        near = difflib.get_close_matches(attr, [n for n in dir(module) if not n.startswith("_")], n=1)
        hint = f" (did you mean {module_name}:{near[0]}?)" if near else ""
        raise UnknownNameError(f"cannot import reward {name!r}: module {module_name} has no {attr!r}{hint}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"reward {name!r} is not callable")
    return fn


def check_reward_spec(name: str) -> None:
    """`get_reward`'s checks, without loading anything heavy (a study checks its judge before any cell runs): a
    reward-model directory is recognised, not loaded, and a config-built reward needs no config yet."""
    if name in FACTORIES or is_reward_model_dir(name):
        return
    if is_hub_id(name):
        check_hub_reward_model(name)  # its config only
        return
    get_reward(name)


def reward_identity(spec: str) -> dict:
    """Which reward a spec names (a judge's identity in metrics.json and reports): the spec, the directory or source
    file it comes from (a reward model's directory, or the file defining a reward function), and a SHA-256 of that
    content, so results judged by a changed judge can be told from the rest. A Hub id is hashed as the snapshot in
    the local Hugging Face cache; none there: its path and hash are None."""
    if is_reward_model_dir(spec):
        path = Path(spec).expanduser().resolve()
    elif is_hub_id(spec):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            path = Path(snapshot_download(spec, local_files_only=True))
        except LocalEntryNotFoundError:
            path = None
    else:
        fn = FACTORIES.get(spec) or get_reward(spec)
        source = inspect.getsourcefile(fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn))
        path = Path(source).resolve() if source else None
    if path is None or not path.exists():
        return {"spec": spec, "path": None, "sha256": None}
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return {"spec": spec, "path": str(path), "sha256": digest.hexdigest()}


def _own_module(module_name: str) -> str:
    """`rewards.arith` (configs written when the project's rewards installed as a top-level package) is
    `align_proxy.rewards.arith`; any other module path is itself."""
    if module_name.partition(".")[0] in ("rewards", "evals"):
        try:
            if importlib.util.find_spec(f"align_proxy.{module_name}") is not None:
                return f"align_proxy.{module_name}"
        except ModuleNotFoundError:  # a missing parent package: not one of ours, so the name stays as given
            pass
    return module_name


def _display_name(spec: str, fn: Callable) -> str:
    """What metrics and logs call a reward: its registered name, else the function's own name."""
    if spec in REWARDS or spec in FACTORIES:
        return spec
    return getattr(fn, "__name__", type(fn).__name__)


def load_rewards(specs: list[str] | None, weights: list[float] | None = None, config=None) -> RewardSet:
    """The configured rewards, checked and weighted (no weights: 1.0 each, as TRL defaults).

    Names are made unique in config order (`learned_reward`, `learned_reward_2`), since metrics are keyed
    by them.
    """
    if not specs:
        raise RewardError("no reward given: pass --reward_funcs (e.g. arith_exact_match, or the output directory "
                          "of recipes/reward.py for a learned reward); see rewards/__init__.py for every form")
    names, funcs = [], []
    for spec in specs:
        fn = get_reward(spec, config)
        name = base = _display_name(spec, fn)
        suffix = 2
        while name in names:
            name, suffix = f"{base}_{suffix}", suffix + 1
        check_signature(name, fn)
        names.append(name)
        funcs.append(CheckedReward(name, fn))
    return RewardSet(names, funcs, [1.0] * len(funcs) if weights is None else [float(w) for w in weights])
