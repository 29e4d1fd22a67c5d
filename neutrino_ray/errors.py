"""Errors that mean "bad input or bad arguments": the CLI prints them as one line and exits 2."""


class InputError(ValueError):
    """Bad input data or arguments; the message names the file, the event or row, and the problem."""
