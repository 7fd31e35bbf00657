"""The output folder: a complete store (no-op), one with another config (error) or an
incomplete one (cleaned); the run's log file ``prepare.log`` in it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import MemoryHandler
from pathlib import Path

from sweep.data.prepare.config import PrepareError, identity_diff
from sweep.data.store import (
    MANIFEST_NAME,
    Manifest,
    StoreError,
    check_store,
    is_store_file,
    read_manifest,
)

log = logging.getLogger(__package__)  # the pipeline's one logger (see the package docstring)

LOG_NAME = "prepare.log"  # written into the store folder
TMP_DIR = ".prepare_tmp"  # pieces of an unfinished run, inside the store folder
FINGERPRINT_FILE = "fingerprint"  # in TMP_DIR: which config the pieces belong to


def _is_ours(path: Path) -> bool:
    """True for the files prepare writes into a store folder: the store's, the log, the pieces."""
    return is_store_file(path.name) or path.name in (LOG_NAME, TMP_DIR)


def existing_store(out: Path, fp: str, identity: dict, overwrite: bool) -> Manifest | None:
    """The manifest of a complete store at ``out`` made with the same config, else None.

    A complete store with a different config raises PrepareError unless ``overwrite``.
    """
    if not (out / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = read_manifest(out)
    except StoreError as err:
        if overwrite:
            return None
        raise PrepareError(f"{err}; or pass overwrite=true to replace it") from err
    old_fp = manifest.provenance.get("fingerprint")
    if overwrite:
        log.info("%s: overwrite=true, replacing the existing store", out)
        return None
    if old_fp != fp:
        diff = identity_diff(manifest.provenance.get("identity", {}), identity)
        raise PrepareError(
            f"{out} holds a complete store made with a different config ({diff}); "
            "pass overwrite=true to replace it, or choose another output folder"
        )
    check_store(out, manifest)
    return manifest


def check_output_folder(out: Path) -> None:
    """Refuse an output folder holding files prepare did not write (they would be in the way)."""
    foreign = sorted(p.name for p in out.iterdir() if not _is_ours(p)) if out.is_dir() else []
    if foreign:
        raise PrepareError(
            f"output {out} contains files prepare did not write ({', '.join(foreign[:5])}): "
            "choose an empty or new output folder"
        )


def clean_output(out: Path, fp: str) -> None:
    """Make ``out`` ready for a build: remove an old or incomplete store's files (never others).

    Pieces of an interrupted run with the same fingerprint ``fp`` are kept for reuse.
    """
    check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out.iterdir() if p.name not in (LOG_NAME, TMP_DIR)]
    if stale and not (out / MANIFEST_NAME).is_file():
        log.warning("%s: incomplete store (no %s): cleaning and rebuilding", out, MANIFEST_NAME)
    for path in stale:
        path.unlink()
    tmp = out / TMP_DIR
    if (tmp / FINGERPRINT_FILE).is_file() and (tmp / FINGERPRINT_FILE).read_text() == fp:
        return
    shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def run_log() -> Iterator[MemoryHandler]:
    """Buffer the pipeline's log records (INFO and up) until :func:`start_log_file` names a file."""
    buffer = MemoryHandler(capacity=1 << 20, flushLevel=logging.DEBUG)
    old_level = log.level
    log.addHandler(buffer)
    log.setLevel(min(log.getEffectiveLevel(), logging.INFO))
    try:
        yield buffer
    finally:
        log.removeHandler(buffer)
        log.setLevel(old_level)
        buffer.flush()
        if buffer.target is not None:
            buffer.target.close()
        buffer.close()


def start_log_file(buffer: MemoryHandler, path: Path) -> None:
    """Send the buffered and all further records to ``path`` (appended)."""
    target = logging.FileHandler(path)
    target.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    buffer.setTarget(target)
    buffer.flush()
