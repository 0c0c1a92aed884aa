"""The error type of the command line: what the user got wrong, said in one line."""


class UserError(Exception):
    """An error caused by the user's input, reported as one line and a non-zero exit."""
