"""The one kind of error a user fixes rather than reports: bad data, a bad flag or spec, a model or template that is
not there. Each error class of that kind subclasses `UserInputError` beside its own base (`ValueError`,
`RuntimeError`), and its message names the file, column, key or flag and says what to do. A recipe script ends on
one with that message and exit code 2 (`align_proxy.recipe.run_script`), as the `align-proxy` command does; any
other exception is a bug and keeps its traceback."""


class UserInputError(Exception):
    """Input the user can fix; the message says where and how."""
