"""Optuna studies in a database: one clear error, before any trial and with no report, when the
database cannot be opened (driver not installed, server not answering; no server needed), and, on
a real PostgreSQL (marker ``postgres``): a wrong role or database named, processes opening a fresh
database at once, two sweep processes sharing one study, and its report."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import optuna
import pandas as pd
import pytest
import sqlalchemy

from conftest import make_store
from sweep.study.storage import StorageError, open_storage
from test_optuna import base, run, two_sweeps_share_one_study

#: nothing listens on port 1: a server that is not running
UNREACHABLE = "postgresql://optuna@localhost:1/optuna"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "mysql://optuna@localhost/optuna",
            ["mysqldb driver, which is not installed", "install it with pip install mysqlclient"],
        ),
        ("postgres://optuna@localhost/optuna", ["write postgresql://user@host/database"]),
        (UNREACHABLE, [f"cannot open the study database {UNREACHABLE} (", "PGPASSWORD"]),
    ],
    ids=["mysql-driver-not-installed", "unknown-scheme", "server-not-running"],
)
def test_a_database_that_cannot_be_opened_is_named_with_the_fix(url, expected):
    with pytest.raises(StorageError) as caught:
        open_storage(url)
    assert all(part in str(caught.value) for part in expected), caught.value


@pytest.mark.parametrize(
    ("hide_driver", "url", "expected"),
    [
        (True, "postgresql://optuna@localhost/optuna", 'pip install "scvi-sweep[postgres]"'),
        (False, UNREACHABLE, "Connection refused"),
    ],
    ids=["psycopg-not-installed", "server-not-running"],
)
def test_a_sweep_on_a_database_it_cannot_open_stops_with_one_message_and_no_report(
    tmp_path, hide_driver, url, expected
):
    env = dict(os.environ)
    if hide_driver:  # psycopg absent, as after `pip install scvi-sweep` without the extra
        hidden = tmp_path / "hidden"
        hidden.mkdir()
        (hidden / "psycopg.py").write_text(
            "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n"
        )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hidden), env.get("PYTHONPATH")]))
    # a store that passes the command's checks (which come first), never read: the sweep
    # stops at its storage, before its first trial
    store = make_store(tmp_path / "store", [30, 20])
    result = run(base(store, tmp_path, f"hydra.sweeper.storage={url}"), tmp_path, env=env)
    assert result.returncode == 1
    assert result.stderr.count(url) == 1 and expected in result.stderr
    assert "Traceback" not in result.stderr
    assert "FileNotFoundError" not in result.stdout + result.stderr  # no second error
    assert "the multirun report failed" not in result.stdout  # nor a report of nothing
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "reports").exists()


# --- a real PostgreSQL (bash tests/services.sh) ------------------------------------------------


@pytest.fixture
def study_name(postgres_url):
    """A study name of this test run's own; the study is deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    storage = open_storage(postgres_url)
    if name in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=name, storage=storage)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"database": "no_such_database"}, 'database "no_such_database" does not exist'),
        ({"username": "no_such_role"}, '"no_such_role"'),  # authentication failed, or no role
    ],
    ids=["no-such-database", "no-such-role"],
)
def test_a_wrong_role_or_database_is_named_with_what_to_check(postgres_url, change, expected):
    url = sqlalchemy.make_url(postgres_url).set(**change).render_as_string()
    with pytest.raises(StorageError) as caught:
        open_storage(url)
    message = str(caught.value)
    assert message.startswith(f"cannot open the study database {url} (")
    assert expected in message and "PGPASSWORD" in message


#: a process that opens the storage ``argv[1]`` when the file ``argv[2]`` appears
OPEN_AT_GO = """
import os, pathlib, sys, time
import optuna, sqlalchemy  # imported before the start, so the processes open it together
from sweep.study.storage import open_storage
go = pathlib.Path(sys.argv[2])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.01)
open_storage(sys.argv[1])
"""


@pytest.mark.postgres
def test_processes_opening_a_fresh_database_at_once_all_get_the_storage(postgres_url, tmp_path):
    schema = f"test_{uuid.uuid4().hex[:12]}"  # empty: the first to open it creates the tables
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    url = sqlalchemy.make_url(postgres_url).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    go = tmp_path / "go"
    command = [sys.executable, "-c", OPEN_AT_GO, url.render_as_string(), str(go)]
    try:
        processes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        while len(list(tmp_path.glob("ready-*"))) < 4 and all(p.poll() is None for p in processes):
            time.sleep(0.05)
        go.touch()
        for process in processes:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err[-2000:]
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_two_sweep_processes_share_one_postgres_study_and_its_report(
    store, tmp_path, postgres_url, study_name
):
    counted = two_sweeps_share_one_study(store, tmp_path, postgres_url, study_name, 4)
    out = tmp_path / "report"
    built = run(
        [
            sys.executable,
            "-m",
            "sweep.cli.report_command",
            f"--study={study_name}",
            f"--storage={postgres_url}",
            f"--out={out}",
        ],
        tmp_path,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "| 4 | 0 | 0 | 0 | 0 |" in report  # complete pruned fail running waiting (void)
    assert f"Storage: `{postgres_url}`" in report
    table = pd.read_csv(out / "trials.csv")
    complete = table[table.state == "COMPLETE"]
    assert sorted(complete.run_dir) == sorted(t.user_attrs["run_dir"] for t in counted)
