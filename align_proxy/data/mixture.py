"""Dataset mixtures, the form `trl sft --config` takes: `datasets:` in a recipe's YAML (TRL's `DatasetMixtureConfig`,
each entry a `DatasetConfig`: path, name, data_dir, data_files, split, columns and an optional `fraction`), for every
recipe, with built-in tasks and local files among the entries:

    datasets:
      - {path: builtin:arith, fraction: 0.7}
      - {path: builtin:arith-3digit, fraction: 0.3}

- Each entry loads as `--dataset_name` would (`align_proxy.data.loading`): a built-in task, a local file or folder, or
  a Hub dataset; its `split` is the training split and `columns` are selected.
- Fractions follow TRL's rule (`trl.scripts.utils.get_dataset`, whose rule is inline there, so it is restated here
  and tests/test_mixture.py checks the two agree): normalised to sum to 1, and the mixture is the largest in which no
  dataset is oversampled, the first round(w * N) rows of each.
- `--mix ID=SHARE` (repeatable; a study's grid key `mix.ID`) sets one entry's share and scales the others' fractions to
  the rest, so a grid over one dataset's share keeps the others' proportions. An entry's ID is its built-in task's
  name (`arith-3digit`), else its file's or Hub id's last part without the extension.
- The held-out split is every entry's own held-out split, concatenated: it does not depend on the fractions, so the
  variants of a grid over a share are scored on the same items. Gold task accuracy is the first built-in task's.
"""

from __future__ import annotations

from pathlib import Path

from align_proxy.data.tasks import BUILTIN_PREFIX
from align_proxy.errors import RecipeArgumentError


def dataset_id(path: str) -> str:
    """The ID `--mix` and a study's `mix.ID` name an entry by.

    >>> dataset_id("builtin:arith-3digit"), dataset_id("/data/chat.jsonl"), dataset_id("trl-lib/tldr")
    ('arith-3digit', 'chat', 'tldr')
    """
    if path.startswith(BUILTIN_PREFIX):
        return path.removeprefix(BUILTIN_PREFIX)
    return Path(path.rstrip("/")).stem


def _entries(datasets: list) -> list[dict]:
    """The mixture's entries as dicts, whether TRL's parser made them `DatasetConfig`s or they are still raw YAML."""
    from dataclasses import asdict, is_dataclass

    return [asdict(d) if is_dataclass(d) else dict(d) for d in datasets]


def apply_shares(datasets: list, mix: list[str] | None, where: str = "--mix") -> list[dict]:
    """The entries with `--mix ID=SHARE` applied: each named entry gets its share, the others split the rest in the
    proportions of their own fractions (equally when they have none).

    >>> entries = [{"path": "builtin:arith", "fraction": 0.6}, {"path": "builtin:arith-3digit", "fraction": 0.4}]
    >>> [round(e["fraction"], 6) for e in apply_shares(entries, ["arith-3digit=0.1"])]
    [0.9, 0.1]
    """
    entries = _entries(datasets)
    if not mix:
        return entries
    ids = [dataset_id(e["path"]) for e in entries]
    shares: dict[str, float] = {}
    for item in mix:
        name, _, value = str(item).partition("=")
        if name not in ids:
            raise RecipeArgumentError(f"{where} {item}: the mixture has no dataset {name!r}; its datasets: "
                                      f"{', '.join(ids) or 'none (add datasets: to the config)'}")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not 0.0 < share < 1.0:
            raise RecipeArgumentError(f"{where} {item}: give a share strictly between 0 and 1, as ID=SHARE "
                                      f"(e.g. {name}=0.3)")
        shares[name] = share
    rest = 1.0 - sum(shares.values())
    others = [i for i in ids if i not in shares]
    if (rest <= 0.0) if others else (abs(rest) > 1e-9):
        raise RecipeArgumentError(f"{where}: the shares {', '.join(f'{k}={v:g}' for k, v in shares.items())} "
                                  f"leave {rest:g} for the other {len(others)} dataset(s)")
    weights = {i: e.get("fraction") or 1.0 for e, i in zip(entries, ids) if i not in shares}
    for entry, i in zip(entries, ids):
        entry["fraction"] = shares[i] if i in shares else rest * weights[i] / sum(weights.values())
    return entries


def mixed(datasets: list, lengths: list[int]) -> list[int]:
    """How many rows of each dataset the mixture keeps: all of them without fractions, else TRL's rule.

    >>> mixed([{"fraction": 0.9}, {"fraction": 0.1}], [2000, 2000])
    [2000, 222]
    """
    fractions = [e.get("fraction") for e in _entries(datasets)]
    if all(f is None for f in fractions):
        return list(lengths)
    if any(f is None for f in fractions):
        raise RecipeArgumentError("datasets: set `fraction` for every dataset of the mixture or for none of them "
                                  "(TRL's rule)")
    weights = [f / sum(fractions) for f in fractions]
    total = min(n / w for n, w in zip(lengths, weights) if w > 0)
    return [round(w * total) for w in weights]


def load_mixture(datasets: list, mix: list[str] | None, recipe: str, streaming: bool = False,
                 test_split_size: float | None = None, **loading):
    """The mixture's `RecipeData` (`loading.RecipeData`): training rows mixed as above, every entry's held-out rows."""
    from datasets import concatenate_datasets

    from align_proxy.data.loading import RecipeData, load_recipe_data

    if streaming or test_split_size is not None:
        raise RecipeArgumentError("datasets: streaming and test_split_size are not supported: align-proxy evaluates "
                                  "on every dataset's own held-out split, which a fraction does not change; remove "
                                  "them")
    entries = apply_shares(datasets, mix)
    parts = []
    for entry in entries:
        unsupported = [k for k in ("data_dir", "data_files") if entry.get(k)]
        if unsupported:
            raise RecipeArgumentError(f"datasets: {entry['path']}: {', '.join(unsupported)} is not supported; give "
                                      "the file or folder as `path`")
        data = load_recipe_data(entry["path"], recipe, entry.get("name"), train_split=entry.get("split") or "train",
                                **loading)
        columns = entry.get("columns")
        if columns:
            data.train, data.test = data.train.select_columns(columns), data.test.select_columns(columns)
        parts.append(data)
    keep = mixed(entries, [len(p.train) for p in parts])
    for entry, part, n in zip(entries, parts, keep):
        share = f" ({entry['fraction']:.0%})" if entry.get("fraction") is not None else ""
        print(f"[align-proxy] mixture: {n} of {len(part.train)} training rows of {part.source}{share}", flush=True)
    source = "the dataset mixture (" + ", ".join(p.source for p in parts) + ")"
    task = next((p.task for p in parts if p.task is not None), None)
    return RecipeData(concatenate_datasets([p.train.select(range(n)) for p, n in zip(parts, keep)]),
                      concatenate_datasets([p.test for p in parts]), source, task)
