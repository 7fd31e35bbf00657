"""The one way in to the reports, for the command line (``python -m sweep.report``) and the
end-of-sweep Hydra callback (sweep.hydra_callbacks): a sweep folder, or an Optuna study, to its
report folder (``<sweep.paths.reports_dir()>/<sweep folder or study name>/`` unless told
otherwise)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sweep.paths import reports_dir
from sweep.report.multirun import build_report
from sweep.report.study import build_study_report
from sweep.study.storage import read_record

log = logging.getLogger(__name__)


class NothingToReport(ValueError):
    """Neither a sweep folder nor a study (with its storage) was named."""


def default_out(sweep_dir: str | Path, out_root: Path | None = None) -> Path:
    """``<out_root>/<sweep folder name>``; ``out_root`` by default ``sweep.paths.reports_dir()``
    (``multirun_reports/``, the one place outside run folders we write to)."""
    return (out_root or reports_dir()) / Path(sweep_dir).resolve().name


def write_report(
    sweep_dir: str | Path | None = None,
    *,
    study: str | None = None,
    storage: str | None = None,
    out_dir: str | Path | None = None,
    out_root: str | Path | None = None,
) -> Path:
    """Write the report of a sweep folder or of a study; return its report.md.

    ``sweep_dir``: a Hydra sweep folder; the Optuna sweeper's stands for its study (the folder
    records study and storage: sweep.study.storage). ``study``, ``storage``: a study by name and
    its journal file or database URL. ``out_dir``: the report folder; by default
    ``<out_root>/<study name or sweep folder name>`` (:func:`default_out`).
    """
    record = read_record(Path(sweep_dir)) if sweep_dir is not None else None
    if record:
        study, storage = record["study_name"], record["storage"]
    out_root = Path(out_root) if out_root is not None else None
    if study is not None:
        if not storage:
            raise NothingToReport(
                "--study needs --storage (the study's journal file or database URL)"
            )
        return build_study_report(study, storage, out_dir or (out_root or reports_dir()) / study)
    if sweep_dir is None:
        raise NothingToReport("give a sweep folder, or --study NAME --storage STORAGE")
    return build_report(sweep_dir, out_dir or default_out(sweep_dir, out_root))


def main(argv: list[str] | None = None) -> None:
    """``python -m sweep.report SWEEP_DIR [--out DIR]`` or ``--study NAME --storage STORAGE``."""
    parser = argparse.ArgumentParser(
        prog="python -m sweep.report",
        description="Build the report of a Hydra multirun or of an Optuna study.",
    )
    parser.add_argument("sweep_dir", type=Path, nargs="?", help="a sweep folder (hydra.sweep.dir)")
    parser.add_argument("--study", help="an Optuna study's name (with --storage)")
    parser.add_argument("--storage", help="its journal file or database URL")
    parser.add_argument(
        "--out", type=Path, help="report folder (default: multirun_reports/<sweep or study name>)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] - %(message)s")
    try:
        report = write_report(
            args.sweep_dir, study=args.study, storage=args.storage, out_dir=args.out
        )
    except NothingToReport as error:
        parser.error(str(error))
    log.info("report: %s", report)
