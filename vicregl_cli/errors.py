"""The one exception type for bad user input: the CLI prints its message and exits 1, with no traceback."""


class UserError(ValueError):
    """Bad input (path, checkpoint, option); the message says what is wrong and how to fix it."""
