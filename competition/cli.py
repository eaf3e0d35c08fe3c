"""Entry-point wrapper: bad input (UserError) ends with one clear line and exit code 2; bugs keep their traceback."""
from __future__ import annotations

import sys

from competition.errors import UserError


def run(main) -> None:
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    raise SystemExit(code)
