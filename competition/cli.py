"""Entry-point wrapper: bad input (UserError) ends with one clear line and exit code 2; bugs keep their traceback.

A full disk or a folder that cannot be written is the user's to fix too, wherever it surfaces (a library
writing its own file, not through `atomic_path`): one line naming the path and the cause.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from competition.artifacts import storage_error
from competition.errors import UserError
from competition.layout import RunLayout
from competition.reader import Dataset, load_dataset
from competition.spec import Spec, load_spec


def competition_args(ap: argparse.ArgumentParser, runs: bool = True, comp: str = "demo") -> argparse.ArgumentParser:
    """--comp, --data (and --runs): how every command names its competition, data and run folder."""
    ap.add_argument("--comp", default=comp, help="a spec name (competition/<name>.yaml) or a path to a spec YAML")
    ap.add_argument("--data", default=None, help="the competition's folder: train.csv, test.csv, the images "
                                                  "(default: the spec's data)")
    if runs:
        ap.add_argument("--runs", default="runs", help="the run folder (default: runs)")
    return ap


@dataclasses.dataclass(frozen=True)
class Competition:
    """The spec, its data folder and its run folder, built once from a command line."""
    spec: Spec
    data: str | None
    runs: str = "runs"

    @classmethod
    def of(cls, args: argparse.Namespace) -> Competition:
        return cls(load_spec(args.comp, args.data), args.data, getattr(args, "runs", "runs"))

    @property
    def run(self) -> RunLayout:
        return RunLayout.of(self.runs, self.spec.name)

    def dataset(self, check: bool = True) -> Dataset:
        return load_dataset(self.spec, self.data, check=check)


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
