"""Errors the CLI turns into one line and a non-zero exit, never a traceback."""


class LabError(Exception):
    """A failure the user can act on. exit_code 2 = bad input, 1 = the run itself failed."""

    exit_code = 1


class UsageError(LabError):
    """Bad input: a wrong topology, parameter, kernel reference or option."""

    exit_code = 2


class BootError(LabError):
    """A guest did not come up; the message carries the tail of its console."""
