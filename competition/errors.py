"""One exception type for bad input (data, spec, config, weights, runs): the CLI prints it as one line.

Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import json
import zipfile

MAX_LISTED = 20


class UserError(Exception):
    """Something the user can fix: the message names the file, row or value at fault."""


def offenders_error(path, problem: str, offenders: list[str]) -> UserError:
    """One error listing every offender (the first MAX_LISTED, then a count), so one fix-up pass suffices."""
    shown = "\n  ".join(offenders[:MAX_LISTED])
    more = f"\n  ... and {len(offenders) - MAX_LISTED} more" if len(offenders) > MAX_LISTED else ""
    return UserError(f"{path}: {len(offenders)} {problem}:\n  {shown}{more}")


# What libraries raise on a file that is not what it claims (truncated, another format, another network's
# tensors, an object array where numbers belong): at a loader of such a file, bad input, not a bug.
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, zipfile.BadZipFile,
               json.JSONDecodeError)


@contextlib.contextmanager
def loading(path, problem: str, fix: str, errors: tuple = ()):
    """Within the block, a library's error loading `path` (LOAD_ERRORS and `errors`) is one UserError naming the
    file: `<path>: <problem> (<error type>: <its message>); <fix>`. Used only around loaders that run no code
    from the file (safetensors, npz without pickle, skops with a trust list), so nothing was executed."""
    try:
        yield
    except UserError:
        raise
    except (*LOAD_ERRORS, *errors) as e:
        detail = " ".join(str(e).split())[:300]
        raise UserError(f"{path}: {problem} ({type(e).__name__}: {detail}); {fix}") from None
