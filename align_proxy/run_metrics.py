"""What one recipe run or study cell writes to `metrics.json`: the one schema its writers (`align_proxy.recipe`,
the cell entry modules in `align_proxy.cells`) and its readers (the study's store and runner) use, plus the
console table and loss plot a run ends with. Torch-free.

The layout of metrics.json:

    {"recipe", "kind", "model": {name, path, parameters, source}, "dataset", "speed",
     "train": {"distributed", "global_step", "log_history", "final"[, "curve"]},
     "eval": {"base", "trained", "gain", "items": {"base", "trained"}},
     "diverged": null | {"step", "loss"}[, "params": the cell kind's parameters]}

A diverged run (`align_proxy.divergence`) has its base evaluation and its log, and no trained scores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from align_proxy.files import atomic_write
from align_proxy.kinds import TRAIN, cell_kind
from align_proxy.metrics import metric

METRICS_FILE = "metrics.json"  # in the run's output directory (a study cell's directory)


def gains(base: dict[str, float], trained: dict[str, float]) -> dict[str, float]:
    """Trained minus base for every metric both have (for NLL, negative is better).

    >>> gains({"a": 0.5, "b": 1.0}, {"a": 0.75, "c": 2.0})
    {'a': 0.25}
    """
    return {key: trained[key] - base[key] for key in trained if key in base}


@dataclass(frozen=True)
class Divergence:
    """Where training stopped because its loss exploded or stopped being a number."""

    step: int
    loss: float

    def to_json(self) -> dict:
        return {"step": self.step, "loss": self.loss}

    @classmethod
    def from_json(cls, raw: dict | None) -> Divergence | None:
        return cls(int(raw["step"]), float(raw["loss"])) if raw else None


@dataclass(frozen=True)
class Scores:
    """Held-out scores of the base and the trained model: totals per metric, and per-item scores on the same
    items in the same order (what a paired bootstrap over items needs)."""

    base: dict[str, float] = field(default_factory=dict)
    trained: dict[str, float] = field(default_factory=dict)
    items_base: dict[str, list[float]] = field(default_factory=dict)
    items_trained: dict[str, list[float]] = field(default_factory=dict)
    # What the evaluations recorded beside their metrics (`EvalResult.details`): the judge, its length-controlled
    # win rate. Written only when there is some, so a run without a judge writes what it always did.
    details_base: dict[str, dict] = field(default_factory=dict)
    details_trained: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"base": self.base, "trained": self.trained, "gain": gains(self.base, self.trained),
                "items": {"base": self.items_base, "trained": self.items_trained},
                **({"details": {"base": self.details_base, "trained": self.details_trained}}
                   if self.details_base or self.details_trained else {})}

    @classmethod
    def from_json(cls, raw: dict) -> Scores:
        items, details = raw.get("items", {}), raw.get("details", {})
        return cls(raw.get("base", {}), raw.get("trained", {}), items.get("base", {}), items.get("trained", {}),
                   details.get("base", {}), details.get("trained", {}))


@dataclass(frozen=True)
class Training:
    distributed: dict = field(default_factory=dict)  # how the run was spread: type, processes, device, engine, ZeRO
    global_step: int = 0
    log_history: list[dict] = field(default_factory=list)  # the trainer's log: the loss curve
    # An RL run's reward curve (--curve_every): proxy and gold reward and KL to the reference by step.
    curve: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"distributed": self.distributed, "global_step": self.global_step, "log_history": self.log_history,
                "final": self.log_history[-1] if self.log_history else {},
                **({"curve": self.curve} if self.curve else {})}

    @classmethod
    def from_json(cls, raw: dict) -> Training:
        return cls(raw.get("distributed", {}), raw.get("global_step", 0), raw.get("log_history", []),
                   raw.get("curve", []))


@dataclass(frozen=True)
class RunMetrics:
    """One run's metrics.json: a recipe run's (kind "train"), or a cell's of another kind with its typed parameters
    (`align_proxy.kinds.CellKind.params`: `align_proxy.cells.params`)."""

    recipe: str  # the recipe whose models the run trained or evaluated ("sft", also for its proxy-tuning cells)
    model: dict  # the resolved model: name, path, parameters, source
    dataset: str
    speed: dict | None
    train: Training
    scores: Scores
    diverged: Divergence | None = None
    kind: str = TRAIN
    # A best-of-n cell's curve is train.curve, in the layout an RL run's has (one point per n); its parameters name
    # its policy, reward model, gold reward, pool (n, prompts) and sampling.
    params: object | None = None

    def to_json(self) -> dict:
        return {"recipe": self.recipe, "kind": self.kind, "model": self.model, "dataset": self.dataset,
                "speed": self.speed, "train": self.train.to_json(), "eval": self.scores.to_json(),
                "diverged": self.diverged.to_json() if self.diverged else None,
                **({"params": self.params.to_json()} if self.params is not None else {})}

    def write(self, directory: Path) -> Path:
        """`directory`/metrics.json, written atomically: a run's last act, so its presence means the run finished."""
        return atomic_write(Path(directory) / METRICS_FILE, json.dumps(self.to_json(), indent=2))

    @classmethod
    def read(cls, directory: Path) -> RunMetrics:
        return cls.from_json(json.loads((Path(directory) / METRICS_FILE).read_text()))

    @classmethod
    def from_json(cls, raw: dict) -> RunMetrics:
        kind, params = _kind_and_params(raw)
        return cls(raw.get("recipe", ""), raw.get("model", {}), raw.get("dataset", ""), raw.get("speed"),
                   Training.from_json(raw.get("train", {})), Scores.from_json(raw.get("eval", {})),
                   Divergence.from_json(raw.get("diverged")), kind, cell_kind(kind).read_params(params))


# Files written before cells had kinds marked a proxy-tuning cell by a "proxy" key and a best-of-n cell by a
# "best_of_n" key (and a recipe name "sft (proxy-tuned)" or "best-of-n"); they read as the kinds they were.
_OLD_LAYOUT = {"proxy": "proxy-tuning", "best_of_n": "best-of-n"}


def _kind_and_params(raw: dict) -> tuple[str, dict | None]:
    if "kind" in raw:
        return raw["kind"], raw.get("params")
    return next(((kind, raw[key]) for key, kind in _OLD_LAYOUT.items() if raw.get(key)), (TRAIN, None))


def format_comparison(recipe: str, model_name: str, base: dict, trained: dict) -> str:
    """A plain-text table of base vs trained metrics: the change, and whether it is better or worse by the
    metric's direction (`align_proxy.metrics`); one run has no interval, and the table says so.

    >>> print(format_comparison("sft", "m", {"completion_nll": 1.0}, {"completion_nll": 1.5}))  # doctest: +NORMALIZE_WHITESPACE
    <BLANKLINE>
    sft on m: base vs trained
    metric                                        base   trained      gain
    completion NLL (nats/token)                 1.0000    1.5000   +0.5000 worse
    one run, one seed: no interval on these changes (run a study for intervals: align-proxy study)
    """
    lines = [f"\n{recipe} on {model_name}: base vs trained", f"{'metric':40s} {'base':>9s} {'trained':>9s} {'gain':>9s}"]
    for key, value in trained.items():
        info = metric(key)
        if key in base:
            gain = value - base[key]
            lines.append(f"{info.label:40s} {base[key]:9.4f} {value:9.4f} {gain:+9.4f} {info.judge(gain)}")
        else:
            lines.append(f"{info.label:40s} {'-':>9s} {value:9.4f}")
    lines.append("one run, one seed: no interval on these changes (run a study for intervals: align-proxy study)")
    return "\n".join(lines)


def plot_loss_curve(history: list[dict], path: Path, recipe: str) -> None:
    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*points), marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{recipe}: training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
