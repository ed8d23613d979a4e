"""A transfer study's numbers: each recipe variant's gain per model with an interval, how the gains
carry from small models to large, a fit against scale, and a headline per recipe a researcher can act on.

Finished cells in, one JSON-ready dict out (nan becomes None); the report only draws what is here.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from align_proxy.recipe import METRIC_LABELS
from align_proxy.studies.stats import (
    Interval,
    fit_gain_vs_scale,
    gain_interval,
    rank_agreement,
    ratio_interval,
    sign_agreement,
)
from align_proxy.studies.store import CellResult

SCHEMA_VERSION = 1
# Below this share of variant pairs ordered alike at both ends, small-scale rankings are not trusted.
TRUSTED_DECISION_ACCURACY = 0.75


def higher_is_better(metric: str) -> bool | None:
    """True or False; None for a metric with no better direction (KL to the reference, length)."""
    return METRIC_LABELS.get(metric, (metric, True))[1]


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, (metric, True))[0]


@dataclass(frozen=True)
class _Bootstrap:
    confidence: float
    n_resamples: int

    def interval(self, key: tuple, arrays: list[np.ndarray]) -> Interval:
        # A stable seed per quantity: reruns give the same numbers, quantities do not share draws.
        return gain_interval(arrays, self.confidence, self.n_resamples, seed=_seed_of(key))

    def ratio(self, key: tuple, small: list[np.ndarray], large: list[np.ndarray]) -> Interval:
        return ratio_interval(small, large, self.confidence, self.n_resamples, seed=_seed_of(key))


def _seed_of(key: tuple) -> int:
    return zlib.crc32(repr(key).encode())


def verdict(gain: Interval, metric: str, n_values: int = 2) -> str:
    """'helps' / 'hurts' when the interval excludes 0 on the better / worse side, else 'unclear'.

    A single number (one seed, no per-item scores) has no spread to judge by, so it is 'unclear'.
    """
    if n_values < 2 or math.isnan(gain.low) or math.isnan(gain.high):
        return "unclear"
    if higher_is_better(metric) is None:  # KL, response length: a change, neither good nor bad
        return "rises" if gain.low > 0 else "falls" if gain.high < 0 else "unclear"
    sign = 1.0 if higher_is_better(metric) else -1.0
    low, high = sorted((sign * gain.low, sign * gain.high))
    return "helps" if low > 0 else "hurts" if high < 0 else "unclear"


def _direction(estimate: float, metric: str) -> str:
    improvement = _improvement(estimate, metric)
    # Float noise of an exactly-zero planted or tied gain is no direction.
    return "same" if abs(improvement) < 1e-12 else "better" if improvement > 0 else "worse"


def _improvement(gain: float, metric: str) -> float:
    """The gain signed so that larger is better, whatever the metric's direction."""
    return gain if higher_is_better(metric) else -gain


# --- per-seed arrays --------------------------------------------------------------------------

def _paired(cell: CellResult, metric: str) -> bool:
    base, trained = cell.items_base.get(metric), cell.items_trained.get(metric)
    return bool(base) and bool(trained) and len(base) == len(trained)


def _seed_arrays(cells: list[CellResult], metric: str) -> dict:
    """Per-seed base, trained and gain arrays: per item when every seed has paired item scores,
    else one aggregate value per seed (so seeds still resample, items cannot)."""
    cells = [c for c in cells if metric in c.base and metric in c.trained]
    per_item = bool(cells) and all(_paired(c, metric) for c in cells)
    if per_item:
        base = [np.asarray(c.items_base[metric], dtype=float) for c in cells]
        trained = [np.asarray(c.items_trained[metric], dtype=float) for c in cells]
    else:
        base = [np.array([c.base[metric]], dtype=float) for c in cells]
        trained = [np.array([c.trained[metric]], dtype=float) for c in cells]
    return {"seeds": [c.seed for c in cells], "per_item": per_item, "base": base, "trained": trained,
            "gain": [t - b for t, b in zip(trained, base)]}


def _mean(arrays: list[np.ndarray]) -> float:
    return float(np.mean([a.mean() for a in arrays])) if arrays else math.nan


# --- sections ----------------------------------------------------------------------------------

def _gain_records(groups: dict, models: dict[str, int], boot: _Bootstrap) -> tuple[list[dict], dict]:
    records, arrays_of = [], {}
    for (recipe, variant, model), cells in groups.items():
        for metric in _metrics_of(cells):
            arrays = _seed_arrays(cells, metric)
            if not arrays["seeds"]:
                continue
            key = (recipe, variant, model, metric)
            gain = boot.interval(("gain",) + key, arrays["gain"])
            n_values = sum(a.size for a in arrays["gain"])
            arrays_of[key] = arrays
            records.append({
                "recipe": recipe, "variant": variant, "model": model, "parameters": models[model],
                "metric": metric, "n_seeds": len(arrays["seeds"]), "seeds": arrays["seeds"],
                "per_item": arrays["per_item"], "n_items": int(arrays["gain"][0].size) if arrays["per_item"] else 0,
                "base_mean": _mean(arrays["base"]), "trained_mean": _mean(arrays["trained"]),
                "trained": boot.interval(("trained",) + key, arrays["trained"]).to_dict(),
                "gain": gain.to_dict(), "improvement": _improvement(gain.estimate, metric),
                "direction": _direction(gain.estimate, metric), "verdict": verdict(gain, metric, n_values)})
    return records, arrays_of


def _metrics_of(cells: list[CellResult]) -> list[str]:
    found = {m for c in cells for m in c.trained if m in c.base}
    known = [m for m in METRIC_LABELS if m in found]
    return known + sorted(found - set(known))


def _base_records(results: list[CellResult], models: dict[str, int], boot: _Bootstrap) -> list[dict]:
    """Base scores per recipe (a reward model's base has a fresh score head, unlike a policy's) and model;
    an evaluation shared by several cells counts once."""
    by_key: dict[tuple, dict[tuple, np.ndarray]] = defaultdict(dict)
    for cell in results:
        for metric, value in cell.base.items():
            items = cell.items_base.get(metric) or [value]
            by_key[(cell.recipe, cell.model, metric)][tuple(items)] = np.asarray(items, dtype=float)
    records = []
    for (recipe, model, metric), unique in by_key.items():
        arrays = list(unique.values())
        records.append({"recipe": recipe, "model": model, "parameters": models[model],
                        "metric": metric, "n_evaluations": len(arrays),
                        "base": boot.interval(("base", recipe, model, metric), arrays).to_dict()})
    return records


def _transfer_records(gains: list[dict], arrays_of: dict, models: dict[str, int], order: list[str],
                      boot: _Bootstrap) -> list[dict]:
    by_recipe_metric: dict[tuple, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for g in gains:
        by_recipe_metric[(g["recipe"], g["metric"])][g["model"]][g["variant"]] = g
    records = []
    for (recipe, metric), per_model in by_recipe_metric.items():
        present = [m for m in order if m in per_model]
        for small, large in combinations(present, 2):
            shared = sorted(per_model[small].keys() & per_model[large].keys())
            ratios = {v: boot.ratio(("ratio", recipe, v, metric, small, large),
                                    arrays_of[(recipe, v, small, metric)]["gain"],
                                    arrays_of[(recipe, v, large, metric)]["gain"]).to_dict() for v in shared}
            estimates = [{v: per_model[m][v]["gain"]["estimate"] for v in shared} for m in (small, large)]
            improvements = [{v: per_model[m][v]["improvement"] for v in shared} for m in (small, large)]
            records.append({"recipe": recipe, "metric": metric, "small": small, "large": large,
                            "small_parameters": models[small], "large_parameters": models[large],
                            "variants": shared, "ratios": ratios,
                            "sign_agreement": sign_agreement(*estimates),
                            "rank_agreement": rank_agreement(*improvements)})
    return records


def _fit_records(arrays_of: dict, models: dict[str, int], target: tuple[str, float] | None,
                 confidence: float) -> list[dict]:
    """gain ~ log10(parameters) per recipe variant and metric, one point per seed per model, so the
    prediction interval is for one run at the target size, seed noise included."""
    points: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for (recipe, variant, model, metric), arrays in arrays_of.items():
        points[(recipe, variant, metric)] += [(models[model], float(g.mean())) for g in arrays["gain"]]
    records = []
    for (recipe, variant, metric), pts in points.items():
        params = [p for p, _ in pts]
        if len(set(params)) < 3 or min(params) <= 0:  # a model of unknown size (0) has no place on the axis
            continue
        target_parameters = target[1] if target else max(params)
        fit = fit_gain_vs_scale(params, [g for _, g in pts], target_parameters, confidence)
        records.append({"recipe": recipe, "variant": variant, "metric": metric, "points": sorted(pts),
                        "slope": fit.slope, "intercept": fit.intercept, "r_squared": fit.r_squared,
                        "n_points": fit.n_points, "target": target[0] if target else None,
                        "target_parameters": target[1] if target else None,
                        "extrapolation_factor": target[1] / max(params) if target else None,
                        "prediction": fit.prediction.to_dict() if target else None})
    return records


def _completeness(results: list[CellResult], order: list[str], cells: list[dict] | None) -> dict:
    """Cells finished per recipe and model, and which are missing. Without the study's cell list, the
    expected grid is every recipe variant and seed seen in any result, on every model."""
    done = {(c.recipe, c.variant, c.model, c.seed) for c in results}
    if cells is not None:
        expected = {(c["recipe"], c["variant"], c["model"], c["seed"]): c.get("status", "pending") for c in cells}
    else:
        variants = sorted({(c.recipe, c.variant) for c in results})
        seeds = sorted({c.seed for c in results})
        expected = {(r, v, m, s): "not run" for (r, v) in variants for m in order for s in seeds}
    for key in done:
        expected[key] = "done"
    table = defaultdict(lambda: {"done": 0, "expected": 0})
    for (recipe, _, model, _), status in expected.items():
        table[(recipe, model)]["expected"] += 1
        table[(recipe, model)]["done"] += status == "done"
    missing = [{"recipe": r, "variant": v, "model": m, "seed": s, "status": status}
               for (r, v, m, s), status in sorted(expected.items(), key=lambda kv: str(kv[0])) if status != "done"]
    return {"expected": len(expected), "done": len(expected) - len(missing), "complete": bool(expected) and not missing,
            "expected_from": "study cells" if cells is not None else "inferred from finished cells",
            "by_recipe_model": [{"recipe": r, "model": m, **counts} for (r, m), counts in sorted(table.items(),
                                key=lambda kv: (kv[0][0], order.index(kv[0][1]) if kv[0][1] in order else 0))],
            "missing": missing, "models_without_results": [m for m in order if m not in {c.model for c in results}]}


# --- headline ----------------------------------------------------------------------------------

def _headline(recipe: str, metric: str, gains: list[dict], transfer: list[dict], fits: list[dict],
              order: list[str], target: tuple[str, float] | None) -> dict:
    mine = [g for g in gains if g["recipe"] == recipe and g["metric"] == metric]
    scales = [_scale_entry(model, [g for g in mine if g["model"] == model]) for model in order
              if any(g["model"] == model for g in mine)]
    entry = {"recipe": recipe, "metric": metric, "metric_label": metric_label(metric),
             "higher_is_better": higher_is_better(metric), "scales": scales,
             "recommended_variant": scales[-1]["best_variant"] if scales else None,
             "transfer": _transfer_summary(scales, transfer, recipe, metric), "prediction": None}
    wanted = (recipe, entry["recommended_variant"], metric)
    fit = next((f for f in fits if (f["recipe"], f["variant"], f["metric"]) == wanted), None)
    if fit and target:
        entry["prediction"] = {"target": target[0], "target_parameters": target[1], "variant": fit["variant"],
                               "gain": fit["prediction"], "extrapolation_factor": fit["extrapolation_factor"],
                               "verdict": verdict(Interval(**fit["prediction"]), metric),
                               # An accuracy gains at most 1: a straight line in log(parameters) that
                               # leaves [-1, 1] before the target has to bend first.
                               "beyond_range": metric.endswith("_accuracy") and
                               (fit["prediction"]["high"] > 1 or fit["prediction"]["low"] < -1)}
    entry["confidence"] = _confidence(entry)
    entry["conclusion"] = _conclusion(entry)
    return entry


def _scale_entry(model: str, rows: list[dict]) -> dict:
    best = max(rows, key=lambda g: (g["improvement"], g["variant"]))
    return {"model": model, "parameters": best["parameters"], "best_variant": best["variant"],
            "gain": best["gain"], "verdict": best["verdict"],
            "variants": {g["variant"]: {"gain": g["gain"], "verdict": g["verdict"]} for g in rows}}


def _transfer_summary(scales: list[dict], transfer: list[dict], recipe: str, metric: str) -> dict | None:
    if len(scales) < 2:
        return None
    first, last = scales[0], scales[-1]
    ends = {first["verdict"], last["verdict"]}
    transfers = ("yes" if len(ends) == 1 and "unclear" not in ends else
                 "no" if ends == {"helps", "hurts"} else "unclear")
    pair = next(t for t in transfer if (t["recipe"], t["metric"], t["small"], t["large"]) ==
                (recipe, metric, first["model"], last["model"]))
    return {"smallest": first["model"], "largest": last["model"], "verdict_smallest": first["verdict"],
            "verdict_largest": last["verdict"], "transfers": transfers,
            "same_best_variant": first["best_variant"] == last["best_variant"],
            "sign_agreement": pair["sign_agreement"], "rank_agreement": pair["rank_agreement"]}


def _confidence(entry: dict) -> str:
    """high: one decisive verdict at every scale, rankings carry, and the prediction agrees;
    medium: the same decisive verdict at the smallest and largest scale; low: anything else."""
    transfer = entry["transfer"]
    if transfer is None or transfer["transfers"] != "yes":
        return "low"
    accuracy = transfer["rank_agreement"]["decision_accuracy"]
    ranks_ok = accuracy is None or math.isnan(accuracy) or accuracy >= TRUSTED_DECISION_ACCURACY
    every_scale = len({s["verdict"] for s in entry["scales"]}) == 1
    prediction = entry["prediction"]
    prediction_ok = prediction is None or prediction["verdict"] == transfer["verdict_largest"]
    return "high" if every_scale and ranks_ok and prediction_ok else "medium"


def _conclusion(entry: dict) -> str:
    scales = entry["scales"]
    if not scales:
        return "no finished cells yet"
    largest = scales[-1]["verdict"]
    action = {"hurts": "do not spend a large run on it", "unclear": "no evidence yet to justify a large run",
              "helps": {"high": "worth a large run", "medium": "probably worth a large run",
                        "low": "promising at the largest rung, not yet consistent across scales"
                        if entry["transfer"] else "promising, but run more sizes before deciding"}[entry["confidence"]],
              }[largest]
    parts = [f"{action}: {_pattern(scales)}"]
    transfer = entry["transfer"]
    if transfer:
        accuracy = transfer["rank_agreement"]["decision_accuracy"]
        ranks = "" if accuracy is None or math.isnan(accuracy) else f" (decision accuracy {accuracy:.2f})"
        if transfer["rank_agreement"]["n_variants"] < 2:
            parts.append(f"one variant tried ({scales[-1]['best_variant']})")
        elif transfer["same_best_variant"]:
            parts.append(f"{scales[0]['best_variant']} best at both ends{ranks}")
        else:
            parts.append(f"best variant changes: {scales[0]['best_variant']} at {scales[0]['model']}, "
                         f"{scales[-1]['best_variant']} at {scales[-1]['model']}{ranks}")
    else:
        parts.append(f"only {scales[0]['model']} has results, so nothing yet on transfer")
    if entry["prediction"]:
        p = entry["prediction"]
        g = p["gain"]
        factor = p["extrapolation_factor"]
        reach = f"{factor:.0f}x beyond the largest rung: an extrapolation" if factor > 1 else "within the rungs"
        parts.append(f"predicted {g['estimate']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}] at {p['target']} "
                     f"for {p['variant']} ({reach})")
        if p.get("beyond_range"):
            parts.append("that interval leaves the range an accuracy can gain, so the log-linear trend must bend "
                         "before the target: trust its sign, not its size")
    return "; ".join(parts)


def _pattern(scales: list[dict]) -> str:
    verdicts = [s["verdict"] for s in scales]
    if len(set(verdicts)) == 1:
        word = {"helps": "helps", "hurts": "hurts", "unclear": "no clear effect"}[verdicts[0]]
        return f"{word} at every scale" if len(scales) > 1 else f"{word} at {scales[0]['model']}"
    groups = defaultdict(list)
    for s in scales:
        groups[s["verdict"]].append(s["model"])
    return "; ".join(f"{v} at {', '.join(ms)}" for v, ms in groups.items())


# --- entry point -------------------------------------------------------------------------------

def analyse(results: list[CellResult], models: dict[str, int], primary_metrics: dict[str, str],
            target: tuple[str, float] | None = None, confidence: float = 0.95, n_resamples: int = 2000,
            cells: list[dict] | None = None, starts: dict[str, dict] | None = None) -> dict:
    """Every number of a study's report, JSON-ready (json.dumps(..., allow_nan=False) works).

    `models` maps name -> parameters (models with no results yet count as missing); `primary_metrics`
    maps recipe -> the metric its headline is judged on; `target` is (name, parameters) to predict
    gains at; `cells` (ResultStore.cells()) lists the study's cells, else the grid is inferred; `starts`
    maps recipe -> the {"recipe", "variant"} its cells started from (their gains are over that model).
    """
    models = {**{c.model: c.parameters for c in results}, **models}
    order = sorted(models, key=lambda m: (models[m], m))
    boot = _Bootstrap(confidence, n_resamples)
    groups = defaultdict(list)
    for cell in sorted(results, key=lambda c: (c.recipe, c.variant, models[c.model], c.seed)):
        groups[(cell.recipe, cell.variant, cell.model)].append(cell)
    gains, arrays_of = _gain_records(groups, models, boot)
    transfer = _transfer_records(gains, arrays_of, models, order, boot)
    fits = _fit_records(arrays_of, models, target, confidence)
    recipes = _ordered({c.recipe for c in results}, list(primary_metrics))
    metrics = _ordered({g["metric"] for g in gains}, list(METRIC_LABELS))
    headline = [_headline(r, _primary(r, primary_metrics, gains), gains, transfer, fits, order, target)
                for r in recipes]
    for entry in headline:
        start = (starts or {}).get(entry["recipe"])
        entry["starts_from"] = start
        if start:
            entry["conclusion"] += (f"; gains are over the model {start['recipe']} ({start['variant']}) trained, "
                                    "which each cell started from")
    return _jsonable({
        "schema": SCHEMA_VERSION, "confidence": confidence, "n_resamples": n_resamples,
        "models": [{"name": m, "parameters": models[m]} for m in order],
        "target": {"name": target[0], "parameters": target[1]} if target else None,
        "seeds": sorted({c.seed for c in results}),
        "recipes": {r: sorted({c.variant for c in results if c.recipe == r}) for r in recipes},
        "metrics": {m: {"label": metric_label(m), "higher_is_better": higher_is_better(m)} for m in metrics},
        "completeness": _completeness(results, order, cells), "headline": headline,
        "base": _base_records(results, models, boot), "gains": gains, "transfer": transfer, "fits": fits})


def _ordered(names: set[str], preferred: list[str]) -> list[str]:
    """`names` in the order of `preferred`, the others after it alphabetically."""
    return sorted(names, key=lambda n: (preferred.index(n) if n in preferred else len(preferred), n))


def _primary(recipe: str, primary_metrics: dict[str, str], gains: list[dict]) -> str:
    measured = [g["metric"] for g in gains if g["recipe"] == recipe]
    wanted = primary_metrics.get(recipe)
    return wanted if wanted in measured or not measured else measured[0]


def _jsonable(value):
    """nan/inf -> None, numpy scalars -> Python, tuples -> lists: what json.dumps(allow_nan=False) takes."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
