"""TRL's dataset formats, by the columns that make each one (the recipe kinds in `align_proxy.kinds` say
which formats each recipe accepts; `align_proxy.data.validation` checks a dataset against them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrlFormat:
    name: str
    columns: tuple[str, ...]
    prompt_column: str | None = None

    def describe(self) -> str:
        return f"TRL's {self.name} format (columns: {', '.join(self.columns)})"


LANGUAGE_MODELING = TrlFormat("language-modeling", ("text",))
CONVERSATIONAL_LM = TrlFormat("conversational language-modeling", ("messages",))
PROMPT_COMPLETION = TrlFormat("prompt-completion", ("prompt", "completion"), prompt_column="prompt")
PREFERENCE = TrlFormat("preference", ("prompt", "chosen", "rejected"), prompt_column="prompt")
IMPLICIT_PREFERENCE = TrlFormat("implicit-prompt preference", ("chosen", "rejected"))
PROMPT_ONLY = TrlFormat("prompt-only", ("prompt",), prompt_column="prompt")
