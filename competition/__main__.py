"""python -m competition {eda,demo-data,check}: look at a competition's data."""
from __future__ import annotations

import argparse

from competition.cli import Competition, competition_args


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m competition", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("eda", "check"):
        competition_args(sub.add_parser(name))
    sub.add_parser("demo-data", add_help=False)
    a, rest = ap.parse_known_args(argv)
    if a.cmd == "demo-data":
        from competition import demo_data
        demo_data.main(rest)
        return 0
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    comp = Competition.of(a)
    ds = comp.dataset()
    from competition.artifacts import write_text
    from competition.eda import channel_stats_yaml, plot_all, summary_text
    print(summary_text(ds))
    if a.cmd == "eda":
        for path in plot_all(ds, comp.run.eda):
            print(f"wrote {path}")
        if ds.spec.channels and ds.has_images:
            stats = channel_stats_yaml(ds)
            write_text(comp.run.eda / "channel_stats.yaml", stats)
            print(f"{stats}wrote {comp.run.eda / 'channel_stats.yaml'} (add its two lines to the spec to use them)")
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
