"""Entry-point wrapper: bad input ends with one clear message and exit code 2, not a traceback."""
from __future__ import annotations

import sys


def run(main) -> None:
    from competition.reader import DataError
    from pipelines.weights import WeightsError
    try:
        code = main()
    except (DataError, WeightsError, KeyError, ValueError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        code = 2
    raise SystemExit(code)
