"""Check a dataset against the TRL format a recipe expects, before any model is loaded.

Every error names the source (file, Hub id or built-in task), the split, the column and the
format TRL expects, and says what to change.
"""

from __future__ import annotations

import difflib
from datasets import Dataset

from align_proxy.data.formats import TrlFormat
from align_proxy.errors import UserInputError
from align_proxy.kinds import recipe_kind


class DatasetFormatError(UserInputError, ValueError):
    """The dataset does not fit the recipe; the message says where and how to fix it."""


def detect_format(columns: list[str], recipe: str) -> TrlFormat | None:
    for fmt in recipe_kind(recipe).formats:
        if set(fmt.columns) <= set(columns):
            return fmt
    return None


def validate_dataset(dataset: Dataset, recipe: str, source: str, split: str, tokenizer=None,
                     max_length: int | None = None) -> TrlFormat:
    """Return the TRL format `dataset` is in, or raise `DatasetFormatError` saying what is wrong. Conversational
    data needs a chat template on `tokenizer` (a run installs --chat_template_path's before it checks the data)."""
    where = f"{source} (split '{split}')"
    recipe_kind(recipe)  # an unknown recipe fails here, naming the known ones
    if len(dataset) == 0:
        raise DatasetFormatError(f"{where} has no rows: the {recipe} recipe needs at least one example.")
    fmt = detect_format(dataset.column_names, recipe)
    if fmt is None:
        raise DatasetFormatError(_missing_columns_message(dataset.column_names, recipe, where))
    for column in fmt.columns:
        _check_column(dataset, column, where, fmt)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None) is None:
        _check_renderable(dataset, fmt, where)
    if tokenizer is not None and max_length is not None and fmt.prompt_column is not None:
        _check_prompt_lengths(dataset, fmt, where, tokenizer, max_length)
    return fmt


def _missing_columns_message(columns: list[str], recipe: str, where: str) -> str:
    expected = recipe_kind(recipe).formats
    # Report against the accepted format this dataset is closest to.
    closest = max(expected, key=lambda f: len(set(f.columns) & set(columns)))
    missing = [c for c in closest.columns if c not in columns]
    hints = []
    for column in missing:
        near = difflib.get_close_matches(column, columns, n=1, cutoff=0.6)
        hints.append(f"'{column}'" + (f" (found '{near[0]}': rename it)" if near else ""))
    accepted = "; or ".join(f.describe() for f in expected)
    return (
        f"{where} is missing column {', '.join(hints)}. It has columns: {', '.join(columns) or 'none'}. "
        f"The {recipe} recipe expects {accepted}."
    )


def _check_column(dataset: Dataset, column: str, where: str, fmt: TrlFormat) -> None:
    feature = dataset.features[column]
    if _is_string(feature) or _is_messages(feature):
        nulls = dataset.data.column(column).null_count
        if nulls:
            raise DatasetFormatError(
                f"{where}: column '{column}' has {nulls} empty (null) value(s); {fmt.describe()} needs every "
                "row filled. Drop or fill those rows."
            )
        return
    raise DatasetFormatError(
        f"{where}: column '{column}' holds {_type_name(feature)} values, but {fmt.describe()} needs strings "
        "(or, for conversational data, lists of {'role', 'content'} messages). Convert the column to text."
    )


def _check_renderable(dataset: Dataset, fmt: TrlFormat, where: str) -> None:
    """Conversational columns reach the model through the tokenizer's chat template: without one, TRL fails
    at its first batch (or its first rollout), after the model is loaded and the base model evaluated."""
    conversational = [c for c in fmt.columns if _is_messages(dataset.features[c])]
    if conversational:
        raise DatasetFormatError(
            f"{where}: column '{conversational[0]}' is conversational (lists of messages), but the tokenizer has no "
            "chat template to render it. Give the recipe one: --chat_template_path minimal (shipped with "
            "align-proxy: User:/Assistant: turns, generation markers for assistant_only_loss) or a .jinja file; or "
            "use a chat model's tokenizer (--tokenizer_name_or_path); or convert the column to text."
        )


def _is_string(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _is_messages(feature) -> bool:
    inner = getattr(feature, "feature", None)  # datasets.List / Sequence of message dicts
    return isinstance(inner, dict) and {"role", "content"} <= set(inner)


def _type_name(feature) -> str:
    return getattr(feature, "dtype", None) or type(feature).__name__


def _check_prompt_lengths(dataset: Dataset, fmt: TrlFormat, where: str, tokenizer, max_length: int) -> None:
    """TRL truncates each example to `max_length`; if every prompt already fills it, nothing is
    left to train on. Checked on up to 2,000 rows, which is enough to tell "everywhere"."""
    prompts = dataset.select(range(min(len(dataset), 2000)))[fmt.prompt_column]
    if not isinstance(prompts[0], str):
        return  # conversational prompts are rendered by the chat template inside TRL
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    if min(lengths) >= max_length:
        raise DatasetFormatError(
            f"{where}: every prompt in column '{fmt.prompt_column}' is at least {min(lengths)} tokens long, "
            f"but max_length is {max_length}, so truncation would leave no completion tokens to train on. "
            f"Raise --max_length (the longest prompt is {max(lengths)} tokens) or shorten the prompts."
        )
