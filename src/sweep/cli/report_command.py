"""``scvi-sweep-report PATH``: (re)build the report of a sweep folder or an Optuna study
(sweep.report.entry), or the page of one run folder (sweep.report.run_report).

What ``PATH`` is, is settled before the reports' modules (matplotlib, torch through the model's
reader) are imported and before anything is written: a path that does not exist, a file, or a
folder that is neither a sweep folder, an Optuna sweep folder nor a finished run folder is
refused in one line, exit status 1 (sweep.cli.errors).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sweep import run_folder
from sweep.cli.errors import ArgumentParser, UsageError, refusing

log = logging.getLogger(__name__)

RUN, SWEEP = "run folder", "sweep folder"
#: what PATH may be, for the messages
EXPECTED = (
    "give a sweep folder (outputs/train/multiruns/<time>), a finished run folder "
    "(outputs/train/runs/<time>), or --study NAME --storage STORAGE"
)
EXAMPLES = """examples:
  scvi-sweep-report outputs/train/multiruns/2025-01-30_12-00-00
  scvi-sweep-report outputs/train/runs/2025-01-30_12-00-00     (one run's page again)
  scvi-sweep-report --study scvi --storage outputs/optuna/scvi.journal --out reports/scvi
"""


def parse_args(argv: list[str] | None):
    """The command line: a folder, or a study with its storage, and the report folder."""
    parser = ArgumentParser(
        prog="scvi-sweep-report",
        description="Build the report of a Hydra multirun or of an Optuna study, or the page "
        "of one finished run folder.",
        epilog=EXAMPLES,
    )
    parser.add_argument(
        "sweep_dir",
        type=Path,
        nargs="?",
        metavar="PATH",
        help="a sweep folder (hydra.sweep.dir) or a finished run folder",
    )
    parser.add_argument("--study", metavar="NAME", help="an Optuna study's name (with --storage)")
    parser.add_argument("--storage", help="the study's journal file or database URL")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="report folder (default: multirun_reports/<sweep folder or study name>)",
    )
    return parser.parse_args(argv)


def what_to_report(args) -> str | None:
    """``RUN`` or ``SWEEP`` for the folder ``args.sweep_dir``, None for a study by name;
    :class:`UsageError` for anything else, before anything is written.

    A finished run folder holds ``metrics.json``; a sweep folder holds job folders named by
    number (``0/``, ``1/``...) or an Optuna study record (sweep.study.storage).
    """
    from sweep.study.storage import read_record

    folder = args.sweep_dir
    if folder is None:
        if args.study is None:
            raise UsageError("give a sweep folder, or --study NAME --storage STORAGE")
        if not args.storage:
            raise UsageError("--study needs --storage (the study's journal file or database URL)")
        return None
    if not folder.exists():
        raise UsageError(f"{folder} does not exist: {EXPECTED}")
    if not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a folder: {EXPECTED}")
    if run_folder.read_metrics(folder) is not None:
        return RUN
    if read_record(folder) or any(p.is_dir() and p.name.isdigit() for p in folder.iterdir()):
        return SWEEP
    if (folder / run_folder.HYDRA_DIR).is_dir():
        raise UsageError(
            f"{folder} is a run folder whose job has not finished (no {run_folder.METRICS_FILE}): "
            "its page is written when it ends; a stopped run continues with the same command "
            "and resume=true"
        )
    raise UsageError(
        f"{folder} is not a sweep folder (no job folders 0/, 1/, ...) nor a finished run folder "
        f"(no {run_folder.METRICS_FILE}): {EXPECTED}"
    )


def main(argv: list[str] | None = None) -> None:
    """``scvi-sweep-report SWEEP_DIR [--out DIR]``, ``--study NAME --storage STORAGE``, or
    ``scvi-sweep-report RUN_DIR`` (a finished run folder: its own page)."""
    args = parse_args(argv)
    with refusing():
        kind = what_to_report(args)
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] - %(message)s")
    if kind == RUN:
        from sweep.report.run_report import write_run_report

        log.info("run page: %s", write_run_report(args.sweep_dir))
        return
    from sweep.report.entry import NothingToReport, write_report

    with refusing(NothingToReport):
        report = write_report(
            args.sweep_dir, study=args.study, storage=args.storage, out_dir=args.out
        )
    log.info("report: %s", report)


if __name__ == "__main__":
    main()
