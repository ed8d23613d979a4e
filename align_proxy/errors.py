"""The one kind of error a user fixes rather than reports: bad data, a bad flag or spec, a model or template that is
not there. Each error class of that kind subclasses `UserInputError` beside its own base (`ValueError`,
`RuntimeError`), and its message names the file, column, key or flag and says what to do. A recipe script ends on
one with that message and exit code 2 (`align_proxy.recipe.run_script`), as the `align-proxy` command does; any
other exception is a bug and keeps its traceback. `ALIGN_PROXY_DEBUG=1` shows a user error's traceback too, and so
does the command's `--debug` (a recipe's `--debug` is transformers' own `TrainingArguments.debug`)."""

import os

DEBUG_VARIABLE = "ALIGN_PROXY_DEBUG"


class UserInputError(Exception):
    """Input the user can fix; the message says where and how."""


def show_tracebacks() -> bool:
    """Whether user errors keep their traceback (`ALIGN_PROXY_DEBUG=1`), for someone debugging align-proxy itself."""
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


class RecipeArgumentError(UserInputError, ValueError):
    """A recipe's flags that cannot run: no model, a tokenizer that does not load, a flag the recipe cannot use."""


class UnknownNameError(UserInputError, KeyError):
    """A name that is not registered (a built-in task, a reward); the message lists the known ones. A KeyError, as a
    lookup's miss is, printed as its message rather than KeyError's quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(UserInputError, ImportError):
    """A flag that needs an optional package this environment lacks; the message names the extra to install."""
