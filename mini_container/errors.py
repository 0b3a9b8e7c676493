"""One exception family for the engine.

Every error a user can cause (a missing image, a bad flag, a missing executable) is a
`ContainerError` whose message says what failed, on what, and what to do next. The command line
prints that message on one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class ContainerError(Exception):
    """Base of every error the engine reports to a user."""

    exit_code = 125  # docker's code for "the engine itself failed"


class NotRootError(ContainerError):
    """The engine needs root (rootless containers are not supported yet)."""


class ImageNotFoundError(ContainerError):
    """An image reference that the store does not hold."""


class ContainerNotFoundError(ContainerError):
    """A container name or id that the state directory does not hold."""


class ExecutableNotFoundError(ContainerError):
    """The command to run does not exist (or cannot be executed) inside the container."""

    exit_code = 127  # the shell's and docker's code for "command not found"


class InvalidArgumentError(ContainerError):
    """A value given by the user that the engine cannot accept (a namespace kind, a flag value)."""
