"""Chat templates for every recipe (`--chat_template_path`): a template shipped with align-proxy, chosen by name, or
a Jinja file. Base models have none, and conversational data (TRL's `messages`, conversational prompt-completion
and preference rows, conversational RL prompts) reaches a model only through one. The run installs the template on
the tokenizer before the data is checked, so validation, training, evaluation and the saved model all read it."""

from __future__ import annotations

from pathlib import Path

from align_proxy.errors import UserInputError
from align_proxy.install import recipes_dir

TEMPLATE_SUFFIXES = (".jinja", ".j2")  # what TRL reads as a template file (any other value it takes for a model id)


class ChatTemplateError(UserInputError, ValueError):
    """A --chat_template_path that names no shipped template and no template file."""


def shipped_dir() -> Path:
    return recipes_dir() / "chat_templates"


def shipped_templates() -> list[str]:
    """The names of the templates shipped with align-proxy (`minimal`)."""
    return sorted(p.stem for p in shipped_dir().glob("*.jinja"))


def resolve_chat_template(value: str) -> Path:
    """The template file a --chat_template_path value names: a shipped template's name, or a .jinja/.j2 file."""
    shipped = shipped_dir() / f"{value}.jinja"
    if "/" not in value and shipped.is_file():
        return shipped
    path = Path(value).expanduser()
    if path.is_file() and path.suffix in TEMPLATE_SUFFIXES:
        return path.resolve()
    if path.is_dir():
        hint = (f"{value} is a directory: to use the chat template of the tokenizer saved there, pass "
                f"--tokenizer_name_or_path {value}")
    elif path.is_file():
        hint = f"{value} is not a Jinja template file (name it *.jinja or *.j2)"
    else:
        hint = f"no template named {value!r} ships with align-proxy and no file {value} exists"
    raise ChatTemplateError(f"--chat_template_path {value}: {hint}. Shipped templates: "
                            f"{', '.join(shipped_templates())} (in {shipped_dir()}); or give a .jinja file.")


def install_chat_template(tokenizer, value: str) -> Path:
    """Put the template `value` names on `tokenizer` (it is saved with the model) and return its file."""
    path = resolve_chat_template(value)
    tokenizer.chat_template = path.read_text()
    return path
