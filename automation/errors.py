"""The one error every ``mlrelease`` command ends with when it cannot go on (kept light: the CLI imports it first)."""

from __future__ import annotations


class CommandFailed(RuntimeError):
    """A command cannot go on; ``exit_code`` 2 is bad input or a refused precondition, 1 anything else."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
