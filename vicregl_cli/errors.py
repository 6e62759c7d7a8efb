"""The one exception type for bad user input, and the one way messages list key names."""

MAX_KEYS_IN_MESSAGE = 20


class UserError(ValueError):
    """Bad input (path, checkpoint, option); the message says what is wrong and how to fix it."""


def key_list(keys: list[str]) -> str:
    """The first 20 names, comma separated, and how many more: error messages about state-dict keys."""
    shown = ", ".join(keys[:MAX_KEYS_IN_MESSAGE])
    more = len(keys) - MAX_KEYS_IN_MESSAGE
    return f"{shown} (and {more} more)" if more > 0 else shown
