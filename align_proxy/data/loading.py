"""One place that turns a recipe's `--dataset_name` into train and test splits.

A name is a built-in task (`builtin:arith`), a local file (json, jsonl, parquet, csv) or folder
of such files, or a Hugging Face Hub dataset id. Local data without a test split gets a seeded
held-out share, so every recipe can evaluate before and after training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from datasets import DatasetDict, load_dataset

from align_proxy.data.tasks import BUILTIN_PREFIX, ArithmeticTask, get_task
from align_proxy.data.validation import DatasetFormatError
from align_proxy.kinds import recipe_kind

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class RecipeData:
    train: object  # datasets.Dataset
    test: object
    source: str  # how errors name it: a path, a Hub id or builtin:<task>
    task: ArithmeticTask | None  # set for built-in tasks: enables gold task accuracy


def load_recipe_data(name: str | None, recipe: str, config: str | None = None, train_split: str = "train",
                     test_split: str = "test", builtin_train_size: int = 2000, builtin_test_size: int = 200,
                     seed: int = 0, test_fraction: float = 0.1, eval_seed: int | None = None) -> RecipeData:
    """Train and test splits of a recipe's data. `seed` draws built-in training examples; `eval_seed`
    (default: `seed`) fixes the held-out rows, so runs that differ only in seed are scored on the same items."""
    eval_seed = seed if eval_seed is None else eval_seed
    if not name:
        raise DatasetFormatError("no dataset given: pass --dataset_name (a built-in task such as 'builtin:arith', "
                                 "a local .json/.jsonl/.parquet/.csv file, or a Hub dataset id)")
    if name.startswith(BUILTIN_PREFIX):
        task = get_task(name)
        splits = task.splits(recipe_kind(recipe).task_format, builtin_train_size, builtin_test_size, seed=seed, eval_seed=eval_seed)
        return RecipeData(splits["train"], splits["test"], name, task)
    path = Path(name).expanduser()
    if path.exists():
        splits = _load_local(path)
    else:
        splits = _load_hub(name, config)
    if train_split not in splits:
        raise DatasetFormatError(f"{name} has no split '{train_split}' (it has: {', '.join(splits)}); "
                                 "choose one with --dataset_train_split")
    if test_split in splits:
        return RecipeData(splits[train_split], splits[test_split], name, None)
    # No held-out split: carve one, seeded, so before/after evaluation never sees training rows.
    train = splits[train_split]
    if len(train) < 2:
        # Too small to hold anything out: an empty test split, which validation then reports.
        return RecipeData(train, train.select([]), name, None)
    parts = train.train_test_split(test_size=max(1, int(len(train) * test_fraction)), seed=eval_seed)
    return RecipeData(parts["train"], parts["test"], name, None)


def _load_local(path: Path) -> DatasetDict:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in FILE_BUILDERS)
        if not files:
            raise DatasetFormatError(f"{path} holds no data files: expected {', '.join(FILE_BUILDERS)} files")
        suffix = files[0].suffix
        by_split = {p.stem: str(p) for p in files if p.suffix == suffix}
        data_files = by_split if "train" in by_split else {"train": [str(p) for p in files if p.suffix == suffix]}
    else:
        suffix = path.suffix
        if suffix not in FILE_BUILDERS:
            raise DatasetFormatError(f"{path}: unsupported file type '{suffix}'; use one of "
                                     f"{', '.join(FILE_BUILDERS)}")
        data_files = {"train": str(path)}
        if path.stat().st_size == 0:
            raise DatasetFormatError(f"{path} is empty: a recipe needs at least one example in it.")
    if FILE_BUILDERS[suffix] == "json":
        for file in [path] if path.is_file() else [f for f in files if f.suffix == suffix]:
            check_json_file(file)
    try:
        return load_dataset(FILE_BUILDERS[suffix], data_files=data_files)
    except Exception as err:  # noqa: BLE001 - parser errors from arrow are opaque; name the file
        if "corresponds to no data" in str(err):  # datasets' words for a file with a header and no rows
            raise DatasetFormatError(f"{path} has no rows: a recipe needs at least one example in it.") from err
        raise DatasetFormatError(f"could not read {path} as {FILE_BUILDERS[suffix]}: {err}") from err


def check_json_file(path: Path) -> None:
    """A JSON document or JSON Lines (one object a line, as `datasets` reads either extension) that
    parses; else a `DatasetFormatError` naming the file, line and column (arrow's own error names neither)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        json.loads(text)
        return
    except json.JSONDecodeError as whole:
        lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        looks_like_lines = path.suffix == ".jsonl" or (lines and _parses_to_object(lines[0][1]))
        if not looks_like_lines:
            raise DatasetFormatError(f"{path}, line {whole.lineno} column {whole.colno}: not valid JSON ({whole.msg}). "
                                     "A .json file holds one JSON document (a list of objects) or one JSON object "
                                     "per line; fix that line.") from None
    for number, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetFormatError(f"{path}, line {number} column {err.colno}: not valid JSON ({err.msg}). Each "
                                     "line of a JSON Lines file is one complete JSON object; fix that line.") from None
        if not isinstance(row, dict):
            raise DatasetFormatError(f"{path}, line {number}: a JSON {type(row).__name__}, not an object. Each line of "
                                     "a JSON Lines file is one object of named columns, e.g. "
                                     '{"prompt": "...", "completion": "..."}.')


def _parses_to_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _load_hub(name: str, config: str | None) -> DatasetDict:
    try:
        return load_dataset(name, name=config)
    except Exception as err:  # noqa: BLE001 - offline, missing or private all need the same advice
        raise DatasetFormatError(
            f"could not load dataset {name!r} from the Hugging Face Hub ({type(err).__name__}: {err}). It is not "
            "a local file either. Offline, use a built-in task (e.g. 'builtin:arith') or a local "
            ".json/.jsonl/.parquet/.csv file."
        ) from err
