"""One exception type for bad input (data, spec, config, weights, runs): the CLI prints it as one line.

Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

MAX_LISTED = 20


class UserError(Exception):
    """Something the user can fix: the message names the file, row or value at fault."""


def offenders_error(path, problem: str, offenders: list[str]) -> UserError:
    """One error listing every offender (the first MAX_LISTED, then a count), so one fix-up pass suffices."""
    shown = "\n  ".join(offenders[:MAX_LISTED])
    more = f"\n  ... and {len(offenders) - MAX_LISTED} more" if len(offenders) > MAX_LISTED else ""
    return UserError(f"{path}: {len(offenders)} {problem}:\n  {shown}{more}")
