"""python -m bundle export [--submission CSV] | predict --bundle DIR --data DIR [--out CSV] [--images DIR]
[--digest HEX] [--max-pixels N]."""
from __future__ import annotations

import argparse
from pathlib import Path

from competition.cli import Competition, competition_args
from competition.errors import UserError
from competition.images import MAX_PIXELS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bundle", description=__doc__)
    ap.add_argument("cmd", choices=["export", "predict"])
    competition_args(ap)  # predict: --data is the folder with test.csv and the images
    ap.add_argument("--submission", default=None, help="export: the submission CSV (default: the latest)")
    ap.add_argument("--ignore-budget", action="store_true", help="export: write a bundle over the size budget")
    ap.add_argument("--bundle", default=None, help="predict: the bundle folder")
    ap.add_argument("--out", default="submission.csv", help="predict: the CSV to write (default: submission.csv "
                                                             "in the working folder; its record goes beside it)")
    ap.add_argument("--images", default=None, help="predict: the test images' folder (default: the spec's, in DATA)")
    ap.add_argument("--digest", default=None, help="predict: refuse a bundle whose digest is not this one")
    ap.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="predict: refuse larger images")
    a = ap.parse_args(argv)
    if a.cmd == "predict":
        if not a.bundle or not a.data:
            raise UserError("predict needs BUNDLE=<bundle folder> and DATA=<folder with test.csv and images>")
        if a.max_pixels < 1:
            raise UserError(f"MAX_PIXELS={a.max_pixels}: a pixel limit is a whole number >= 1")
        from bundle.predict import PredictOptions, predict_bundle
        options = PredictOptions(Path(a.images) if a.images else None, a.digest, a.max_pixels)
        predict_bundle(a.bundle, a.data, a.out, options)
        return 0
    from bundle.export import export_bundle
    comp = Competition.of(a)
    spec, run = comp.spec, comp.run
    if a.data is None and not Path(spec.data).is_dir() and run.root.is_dir():
        raise UserError(f"{spec.data}: not found, the {spec.name} spec's default data folder; the run {run.root} "
                        "exists: DATA= names the data it was trained on")
    export_bundle(spec, comp.dataset(check=False), run, a.submission, a.ignore_budget)
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
