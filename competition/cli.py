"""Entry-point wrapper: bad input (UserError) ends with one clear line and exit code 2; bugs keep their traceback.

A full disk or a folder that cannot be written is the user's to fix too, wherever it surfaces (a library
writing its own file, not through `atomic_path`): one line naming the path and the cause.
"""
from __future__ import annotations

import sys

from competition.artifacts import storage_error
from competition.errors import UserError


def run(main) -> None:
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except OSError as e:
        error = storage_error(e.filename or "(a file this command writes; the library did not name it)", e)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        code = 2
    raise SystemExit(code)
