"""``affcons report RUN_DIR``: an HTML page of a run (:mod:`affcons.report`): VOI split/merge and ARAND against
threshold, segment sizes, stage times, training curves, sections with the segmentation over raw.

    affcons report runs/demo            # writes runs/demo/report.html
    affcons report runs/isbi_ws_smoke   # a training run: its loss and validation curves

``affcons run`` writes the report of its run at the end.
"""

import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (affcons run, segment or train)")
    parser.add_argument("--out", help="the HTML file (default RUN_DIR/report.html)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from blockwise.layout import run_contents
    from blockwise.report import write_run_report

    path = write_run_report(run_contents(args.run_dir), Path(args.out or Path(args.run_dir) / "report.html"))
    print(f"report: {path}")
    return 0
