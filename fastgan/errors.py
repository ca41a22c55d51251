"""The one exception type that reaches users as a one-line message.

Anything raised as a ``FastganError`` is printed by the CLI as ``error: <message>`` with exit
code 2 (1 for ``TrainingDiverged``) and no traceback. The message names the problem and the fix, on
one line. ``RunStopped`` is the KeyboardInterrupt of a run stopped by a signal after a checkpoint.
"""


class FastganError(Exception):
    """A user-facing error: one line that says what is wrong and how to fix it; the CLI exits with ``exit_code``."""

    exit_code = 2


class DataError(FastganError):
    """Bad dataset specification, path, or contents."""


class ConfigError(FastganError):
    """A configuration that cannot be built (unknown variant, bad resolution, ...)."""


class CheckpointError(FastganError):
    """A checkpoint or run folder that cannot be read or would be overwritten."""


class TrainingDiverged(FastganError):
    """Non-finite losses or weights stopped a run (exit code 1: the input was fine, the optimization failed); the
    message names the last good checkpoint."""

    exit_code = 1


class RunStopped(KeyboardInterrupt):
    """A run that SIGTERM or SIGINT stopped after its current step and a checkpoint; the CLI prints the message and
    exits with ``exit_code``, 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
