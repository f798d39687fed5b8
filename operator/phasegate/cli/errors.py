"""Exit codes and the one error type the commands raise.

0 ok, 1 refused or rejected (also bad arguments), 2 the operator did not answer,
3 not found or the cluster cannot be reached.
"""

from __future__ import annotations

OK = 0
REFUSED = 1
NO_ANSWER = 2
UNREACHABLE = 3
NOT_FOUND = 3


class CliError(Exception):
    """A failure with a message for the user (what went wrong and what to do) and an exit code."""

    def __init__(self, message: str, code: int = REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
