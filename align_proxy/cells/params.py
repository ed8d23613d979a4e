"""The typed parameters of the cell kinds that are not recipe runs: what a cell, its metrics file and its stored
result carry (`CellKind.params`), and the spec's plan a best-of-n cell is expanded from. Torch-free, and free of
the study code, so a producer can write them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ProxyTuneParams:
    """A proxy-tuning cell: its large base (the cell's model) steered by the small model `small` tuned by `recipe`'s
    `variant` (the expert, a train cell's model, saved in `expert` once run; `small` itself is the anti-expert), at
    strength `alpha`."""

    recipe: str
    variant: str
    small: str
    alpha: float
    expert: str | None = None  # the expert's directory: known when the cell runs, not when the spec expands

    def to_json(self) -> dict:
        raw = asdict(self)
        return raw if self.expert is not None else {k: v for k, v in raw.items() if k != "expert"}

    @classmethod
    def from_json(cls, raw: dict) -> ProxyTuneParams:
        return cls(raw["recipe"], raw["variant"], raw["small"], float(raw["alpha"]), raw.get("expert"))


@dataclass(frozen=True)
class BestOfNPlan:
    """A reward recipe's best-of-n cells (the spec's `best_of_n:`): `policy` samples `n` completions per held-out
    prompt (`prompts` of them, the task's own), and each of the recipe's reward models picks the best of every n <= N
    (`align_proxy.cells.best_of_n`); `gold` scores them: a reward name, `module:function` or a reward-model
    directory (None: the built-in task's exact match). `policy` is {"recipe", "variant", "model"}, a cell of an earlier recipe,
    or {"model"}, a model as `models` names them."""

    policy: dict
    n: int = 64
    prompts: int = 128
    gold: str | None = None
    temperature: float = 1.0
    max_new_tokens: int = 8

    def settings(self) -> dict:
        """What a cell's result depends on besides its two models (part of its hash and its command line)."""
        return {"n": self.n, "prompts": self.prompts, "gold": self.gold, "temperature": self.temperature,
                "max_new_tokens": self.max_new_tokens}


@dataclass(frozen=True)
class BestOfNParams:
    """A best-of-n cell: `n` samples per held-out prompt of `task` (`prompts` of them) from a fixed policy, ranked by
    one reward model; `gold` is the true reward (None: the task's exact match). `policy` is a model the spec names,
    or None when the policy is a train cell's model (`Cell.start_from`); once run, the metrics file names the
    policy and `reward_model` directories and how many distinct samples a prompt drew on average."""

    n: int
    prompts: int
    gold: str | None
    temperature: float
    max_new_tokens: int
    task: str
    policy: str | None = None
    recipe: str | None = None  # the reward recipe whose model ranks the samples (the store names the cell by it)
    reward_model: str | None = None
    distinct_per_prompt: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "gold"}

    @classmethod
    def from_json(cls, raw: dict) -> BestOfNParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})
