"""The one way in to the reports, for the command line (``scvi-sweep-report``, sweep.cli) and the
end-of-sweep Hydra callback (sweep.cli.hydra_callbacks): a sweep folder, or an Optuna study, to its
report folder (``<sweep.paths.reports_dir()>/<sweep folder or study name>/`` unless told
otherwise).

A report folder records what it reports (:data:`SOURCE_FILE`: the sweep folder's path, or the
study and its storage). A report never overwrites another sweep's: when ``<name>/`` holds another
one, the report goes to ``<name>-2/``, ``<name>-3/``, ...; rebuilding a report finds its own
folder again.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from sweep.paths import reports_dir
from sweep.report.multirun import build_report
from sweep.report.study_report import build_study_report
from sweep.study.storage import read_record, resolve

log = logging.getLogger(__name__)


class NothingToReport(ValueError):
    """Neither a sweep folder nor a study (with its storage) was named."""


#: in a report folder: what it reports, one line
SOURCE_FILE = "source.txt"
#: the folder of the experiments' sweep folders (conf/experiment/*.yaml: hydra.sweep.dir)
EXPERIMENTS_DIR = "experiments"


def sweep_source(sweep_dir: str | Path) -> str:
    """What a sweep folder's report records of it."""
    return f"sweep folder {Path(sweep_dir).resolve()}"


def study_source(study: str, storage: str) -> str:
    """What a study's report records of it (``storage`` resolved)."""
    return f"study {study} in {storage}"


def owner(folder: Path) -> str | None:
    """What the report in ``folder`` reports; None for a free folder (absent or empty), "" for
    one that holds something that does not say (a report from before :data:`SOURCE_FILE`)."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    source = folder / SOURCE_FILE
    return source.read_text().strip() if source.is_file() else ""


def report_folder(root: Path, name: str, source: str) -> Path:
    """``<root>/<name>``, or the first of ``<name>-2``, ``<name>-3``, ... that is free or holds
    this source's report already."""
    folders = (root / (name if n == 1 else f"{name}-{n}") for n in itertools.count(1))
    return next(folder for folder in folders if owner(folder) in (None, source))


def default_out(sweep_dir: str | Path, out_root: Path | None = None) -> Path:
    """``<out_root>/<report name>`` (:func:`report_name`; :func:`report_folder`: never another
    sweep's); ``out_root`` by default ``sweep.paths.reports_dir()`` (``multirun_reports/``, the
    one place outside run folders we write to)."""
    name = report_name(sweep_dir)
    return report_folder(out_root or reports_dir(), name, sweep_source(sweep_dir))


def report_name(sweep_dir: str | Path) -> str:
    """A sweep's report name: the experiment's for an experiment's sweep folder
    (``outputs/<task>/experiments/<experiment>/<time>``: ``architecture``), else the sweep
    folder's own name (``outputs/<task>/multiruns/<time>``: the time)."""
    folder = Path(sweep_dir).resolve()
    return folder.parent.name if folder.parent.parent.name == EXPERIMENTS_DIR else folder.name


def signed(report: Path, source: str) -> Path:
    """``report`` (a report.md), its folder's :data:`SOURCE_FILE` now naming ``source``."""
    (report.parent / SOURCE_FILE).write_text(source + "\n")
    return report


def write_report(
    sweep_dir: str | Path | None = None,
    *,
    study: str | None = None,
    storage: str | None = None,
    out_dir: str | Path | None = None,
    out_root: str | Path | None = None,
) -> Path:
    """Write the report of a sweep folder or of a study.

    Parameters
    ----------
    sweep_dir
        A Hydra sweep folder; the Optuna sweeper's stands for its study (the folder records
        study and storage: sweep.study.storage).
    study, storage
        A study by name and its journal file or database URL (instead of ``sweep_dir``).
    out_dir
        The report folder; by default ``<out_root>/<study name or sweep folder name>``, never
        another sweep's report (:func:`report_folder`).
    out_root
        Where default report folders go (default: ``sweep.paths.reports_dir()``).

    Returns
    -------
    The path of report.md.
    """
    record = read_record(Path(sweep_dir)) if sweep_dir is not None else None
    if record:
        study, storage = record["study_name"], record["storage"]
    root = Path(out_root) if out_root is not None else reports_dir()
    if study is not None:
        if not storage:
            raise NothingToReport(
                "--study needs --storage (the study's journal file or database URL)"
            )
        storage = resolve(storage, study, Path.cwd())
        source = study_source(study, storage)
        out = Path(out_dir) if out_dir else report_folder(root, study, source)
        return signed(build_study_report(study, storage, out), source)
    if sweep_dir is None:
        raise NothingToReport("give a sweep folder, or --study NAME --storage STORAGE")
    source = sweep_source(sweep_dir)
    out = Path(out_dir) if out_dir else default_out(sweep_dir, root)
    return signed(build_report(sweep_dir, out), source)
