"""Where a study lives, and what a sweep folder records of it.

``hydra.sweeper.storage``:

- null: the journal file ``outputs/optuna/<study_name>.journal`` under the launch folder, the same
  for every rerun of the command (not inside the timestamped sweep folder), so a rerun resumes;
- a path: an Optuna journal file (many processes, also on a shared file system);
- a database URL: ``sqlite:///study.db``, ``postgresql://...``, ``mysql://...`` (many machines).

Jobs get the storage as an absolute path/URL, so they reach it from any working directory. A
database that cannot be opened (driver not installed, server not reachable, unknown role or
database) stops the sweep before any trial with a :class:`StorageError` naming the URL and the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from hydra.errors import CompactHydraException

from sweep.config.overrides import URL_WITH_PASSWORD

#: default storage folder, relative to the folder the sweep was launched from
DEFAULT_DIR = Path("outputs") / "optuna"
#: what a sweep folder records of its study (read by the end-of-sweep report)
STUDY_FILE = "optuna_study.yaml"
SQLITE = "sqlite:///"
#: opening a fresh database creates Optuna's tables: tries while other processes do the same
CREATE_ATTEMPTS = 5
#: pip requirement of SQLAlchemy's database drivers (``postgresql://`` is psycopg 3)
DRIVERS = {
    "psycopg": '"scvi-sweep[postgres]" (or pip install "psycopg[binary]")',
    "psycopg2": "psycopg2-binary",
    "mysqldb": "mysqlclient",
    "pymysql": "PyMySQL",
}


class StorageError(CompactHydraException):
    """A study database that cannot be opened (Hydra prints the message alone, no traceback)."""


def resolve(storage: str | None, study_name: str, cwd: Path) -> str:
    """The storage as an absolute journal path or a database URL (relative sqlite made absolute)."""
    if storage is None:
        return str((cwd / DEFAULT_DIR / f"{study_name}.journal").resolve())
    if storage.startswith(SQLITE):
        path = storage[len(SQLITE) :]
        return SQLITE + str((cwd / path).resolve()) if path != ":memory:" else storage
    if "://" in storage:
        if URL_WITH_PASSWORD.search(storage):  # trials get the storage as an override: on disk
            raise ValueError(
                "hydra.sweeper.storage holds a password; every trial's run folder records the "
                "storage: give the URL without it and the password in the environment "
                "(PostgreSQL: PGPASSWORD or ~/.pgpass; MySQL: an option file)"
            )
        return storage
    return str((cwd / storage).resolve())


def open_storage(storage: str):
    """An Optuna storage for a resolved storage string (creating a file's folder)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if storage.startswith(SQLITE):
        Path(storage[len(SQLITE) :]).parent.mkdir(parents=True, exist_ok=True)
        # several processes write one file: wait for its lock instead of failing after 5 s
        return optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}})
    if "://" in storage:
        return open_database(storage)
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))


def open_database(storage: str):
    """An Optuna RDBStorage on a database URL; :class:`StorageError` when its driver is missing
    or the database does not answer."""
    import optuna
    import sqlalchemy

    try:
        url = sqlalchemy.make_url(storage)
        url.get_dialect().import_dbapi()
    except sqlalchemy.exc.ArgumentError as error:
        raise StorageError(
            f"study storage {storage}: not a database URL SQLAlchemy knows ({error}); write "
            "postgresql://user@host/database, mysql://user@host/database or sqlite:///file.db"
        ) from error
    except ImportError as error:
        driver = url.get_driver_name()
        raise StorageError(
            f"study storage {url.render_as_string()}: SQLAlchemy reaches {url.get_backend_name()} "
            f"through the {driver} driver, which is not installed ({error}); install it with "
            f"pip install {DRIVERS.get(driver, driver)}"
        ) from error
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(storage)
        except sqlalchemy.exc.DBAPIError as error:
            # a fresh database: another process created Optuna's tables in the same instant (they
            # exist once it committed, which made this process's CREATE fail)
            raced = isinstance(
                error, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError
            )
            if raced and attempt < CREATE_ATTEMPTS:
                continue
            reason = " ".join(str(error.orig).split())
            raise StorageError(
                f"cannot open the study database {url.render_as_string()} ({reason}): check that "
                "the server is running and reachable at that host and port, that the role and the "
                "database exist, and that the password is in the environment (PostgreSQL: "
                "PGPASSWORD or ~/.pgpass; MySQL: an option file), never in the URL"
            ) from error


def default_study_name(task_name: str, search: dict) -> str:
    """``<task_name>-<8 hex>``: the same search (params, fixed overrides, directions), same name."""
    digest = hashlib.sha1(json.dumps(search, sort_keys=True, default=str).encode()).hexdigest()
    return f"{task_name}-{digest[:8]}"


def dashboard_command(storage: str) -> str:
    """The optuna-dashboard command line that opens this storage."""
    return f"optuna-dashboard {storage}"


def write_record(sweep_dir: Path, record: dict) -> None:
    """Record study name, storage and directions in the sweep folder."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / STUDY_FILE).write_text(yaml.safe_dump(record, sort_keys=False))


def read_record(sweep_dir: Path) -> dict | None:
    """The sweep folder's study record, or None for a sweep that was not an Optuna study."""
    path = Path(sweep_dir) / STUDY_FILE
    return yaml.safe_load(path.read_text()) if path.is_file() else None
