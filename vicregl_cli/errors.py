"""The one exception type for bad user input, and the one way messages list key names."""

MAX_KEYS_IN_MESSAGE = 20
# torch's DataLoader re-raises a worker's exception as the same type, its message the worker's traceback
WORKER_WRAPPER = "Caught UserError in DataLoader worker"


class UserError(ValueError):
    """Bad input (path, checkpoint, option); the message says what is wrong and how to fix it. Re-raised
    from a DataLoader worker process, it keeps the worker's one line, not the traceback torch wraps it in."""

    def __init__(self, message: str = "") -> None:
        if message.startswith(WORKER_WRAPPER):
            message = message.rstrip().splitlines()[-1].split(f"{__name__}.UserError: ", 1)[-1]
        super().__init__(message)


def key_list(keys: list[str]) -> str:
    """The first 20 names, comma separated, and how many more: error messages about state-dict keys."""
    shown = ", ".join(keys[:MAX_KEYS_IN_MESSAGE])
    more = len(keys) - MAX_KEYS_IN_MESSAGE
    return f"{shown} (and {more} more)" if more > 0 else shown
