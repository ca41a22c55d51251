"""The one exception type that reaches users as a one-line message.

Anything raised as a ``FastganError`` is printed by the CLI as ``error: <message>`` with exit
code 2 and no traceback. The message names the problem and the fix, on one line.
"""


class FastganError(Exception):
    """A user-facing error: one line that says what is wrong and how to fix it."""


class DataError(FastganError):
    """Bad dataset specification, path, or contents."""


class ConfigError(FastganError):
    """A configuration that cannot be built (unknown variant, bad resolution, ...)."""


class CheckpointError(FastganError):
    """A checkpoint or run folder that cannot be read or would be overwritten."""
