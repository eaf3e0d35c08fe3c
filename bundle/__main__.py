"""python -m bundle export [--submission CSV] | predict --bundle DIR --data DIR [--out CSV]."""
from __future__ import annotations

import argparse

from competition import load_dataset, load_spec
from competition.layout import RunLayout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bundle", description=__doc__)
    ap.add_argument("cmd", choices=["export", "predict"])
    ap.add_argument("--comp", default="demo")
    ap.add_argument("--data", default=None, help="predict: the folder with test.csv and the images")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--submission", default=None, help="export: the submission CSV (default: the latest)")
    ap.add_argument("--ignore-budget", action="store_true", help="export: write a bundle over the size budget")
    ap.add_argument("--bundle", default=None, help="predict: the bundle folder")
    ap.add_argument("--out", default=None, help="predict: the CSV to write (default: inside the bundle)")
    a = ap.parse_args(argv)
    if a.cmd == "predict":
        from competition.errors import UserError
        if not a.bundle or not a.data:
            raise UserError("predict needs BUNDLE=<bundle folder> and DATA=<folder with test.csv and images>")
        from bundle.predict import predict_bundle
        predict_bundle(a.bundle, a.data, a.out)
        return 0
    from bundle.export import export_bundle
    spec = load_spec(a.comp)
    export_bundle(spec, load_dataset(spec, a.data, check=False), RunLayout.of(a.runs, spec.name), a.submission,
                  a.ignore_budget)
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
