"""The output folder: a complete store (no-op), one with another config (error), an interrupted
run with the same config (resumed) or another incomplete one (cleaned); ``prepare.log`` in it.

An interrupted run is resumed from what it left in ``.prepare_tmp``: pass 1's result
(``plan.pkl``), the group files (written by pass 1 with a gene list, else by pass 2) and the
shards of pass 3, each written whole under a temporary name and renamed, so a kill at any point
leaves only whole files.
"""

from __future__ import annotations

import logging
import pickle
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import Any

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
FINGERPRINT_FILE = "fingerprint"  # in TMP_DIR: which config (and TMP_VERSION) it belongs to
PLAN_FILE = "plan.pkl"  # in TMP_DIR: pass 1's result
TMP_VERSION = 3  # what TMP_DIR holds: 3 = plan, group files with their scans and own vocabulary
# (2: groups coded into the store's vocabulary; 1: a piece per source)


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


def same_run(out: Path, fp: str) -> bool:
    """Whether ``out``'s TMP_DIR was left by a run with the config fingerprint ``fp``."""
    tag = out / TMP_DIR / FINGERPRINT_FILE
    return tag.is_file() and tag.read_text() == f"{fp} v{TMP_VERSION}"


def interrupted_plan(out: Path, fp: str) -> Any | None:
    """Pass 1's result saved by an interrupted run with the same config, else None."""
    path = out / TMP_DIR / PLAN_FILE
    if not (same_run(out, fp) and path.is_file()):
        return None
    try:
        return pickle.loads(path.read_bytes())
    except Exception as err:  # damaged or from another version of this code: redo pass 1
        log.warning("%s cannot be read (%s): running pass 1 again", path, err)
        return None


def start_tmp(out: Path, fp: str, resumed: bool) -> Path:
    """TMP_DIR of ``out`` for the config ``fp``: what a run with it left (``resumed``) is kept,
    anything else in it removed. Returns its path."""
    tmp = out / TMP_DIR
    if not resumed:
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / FINGERPRINT_FILE).write_text(f"{fp} v{TMP_VERSION}")
    return tmp


def clean_output(out: Path, resumed: bool) -> None:
    """Make ``out`` ready for passes 2 and 3: remove an old or incomplete store's files (never
    others, nor TMP_DIR and the log). Whole shards of an interrupted run with the same config
    (``resumed``) are kept for reuse."""
    check_output_folder(out)
    whole_shard = re.compile(r"shard_\d+\.h5ad")  # the temp names of unfinished ones differ
    stale = [
        p
        for p in out.iterdir()
        if p.name not in (LOG_NAME, TMP_DIR) and not (resumed and whole_shard.fullmatch(p.name))
    ]
    if stale and not resumed and not (out / MANIFEST_NAME).is_file():
        log.warning("%s: incomplete store (no %s): cleaning and rebuilding", out, MANIFEST_NAME)
    for path in stale:
        path.unlink()


def save_plan(out: Path, plan: Any) -> None:
    """Save pass 1's result in TMP_DIR (started by :func:`start_tmp`)."""
    partial = out / TMP_DIR / (PLAN_FILE + ".tmp")
    partial.write_bytes(pickle.dumps(plan))
    partial.replace(out / TMP_DIR / PLAN_FILE)


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
