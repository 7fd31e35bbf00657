"""``scvi-sweep-report PATH``: (re)build the report of a sweep folder or an Optuna study
(sweep.report.entry), or the page of one run folder (sweep.report.run_report)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sweep import run_folder
from sweep.report.entry import NothingToReport, write_report
from sweep.report.run_report import write_run_report

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """``scvi-sweep-report SWEEP_DIR [--out DIR]``, ``--study NAME --storage STORAGE``, or
    ``scvi-sweep-report RUN_DIR`` (a finished run folder: its own page)."""
    parser = argparse.ArgumentParser(
        prog="scvi-sweep-report",
        description="Build the report of a Hydra multirun or of an Optuna study, or the page of "
        "one finished run folder.",
    )
    parser.add_argument(
        "sweep_dir", type=Path, nargs="?", help="a sweep folder (hydra.sweep.dir) or a run folder"
    )
    parser.add_argument("--study", help="an Optuna study's name (with --storage)")
    parser.add_argument("--storage", help="its journal file or database URL")
    parser.add_argument(
        "--out", type=Path, help="report folder (default: multirun_reports/<sweep or study name>)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] - %(message)s")
    if args.sweep_dir is not None and run_folder.read_metrics(args.sweep_dir) is not None:
        log.info("run page: %s", write_run_report(args.sweep_dir))
        return
    try:
        report = write_report(
            args.sweep_dir, study=args.study, storage=args.storage, out_dir=args.out
        )
    except NothingToReport as error:
        parser.error(str(error))
    log.info("report: %s", report)
