"""Every console command refuses a user's mistake with one line (``Error: ...`` naming what is
wrong and the fix), exit status 1, no traceback, nothing on stdout, and no folder made (issue 23).

Each case runs the installed console command in a fresh process whose ``import torch``,
``import scvi`` and ``import lightning`` fail: the refusal must not need them, which is what
keeps it fast (timings belong to benchmarks, not tests).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import make_store
from sweep.data.store import MANIFEST_NAME
from sweep.paths import CONF_DIR, REPO_ROOT, reports_dir

#: the libraries the error paths must not import
HEAVY = ("torch", "scvi", "lightning")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def no_heavy_imports(tmp_path_factory) -> dict[str, str]:
    """An environment in which ``import torch``, ``import scvi`` and ``import lightning`` raise
    ImportError (a folder of stand-ins first on PYTHONPATH)."""
    poison = tmp_path_factory.mktemp("poison")
    for name in HEAVY:
        (poison / name).mkdir()
        (poison / name / "__init__.py").write_text(
            'raise ImportError("imported on the error path")\n'
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(poison), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A small prepared store (vocabularies ``tissue-0`` ... ``tissue-2`` and alike)."""
    return make_store(tmp_path_factory.mktemp("data") / "store", [30, 20])


def listing(folder: Path) -> list[str]:
    """Every path under ``folder``, relative, sorted (what a command may have made)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def refused(command: str, *arguments: str, cwd: Path, env: dict, words=()) -> str:
    """Run ``command arguments`` in ``cwd`` and assert it refused: exit status 1, one line on
    stderr starting ``Error:`` holding every one of ``words``, nothing on stdout, no traceback,
    nothing made in ``cwd``. Returns the line."""
    before = listing(cwd)
    result = subprocess.run(
        [str(BIN / command), *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert result.stdout == ""
    line = lines[0]
    assert line.startswith("Error: ") and "Traceback" not in line
    assert "imported on the error path" not in line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert listing(cwd) == before  # no outputs/, .hydra/, store or report folder
    return line


def test_the_stand_ins_do_fail_an_import(no_heavy_imports, tmp_path):
    for name in HEAVY:
        result = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            env=no_heavy_imports,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 1 and "imported on the error path" in result.stderr


# --- train ------------------------------------------------------------------------------------

PREPARED = "dataset=prepared"


def options(group: str) -> str:
    """A conf/ group's options as the refusal lists them."""
    return ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))


def edit_manifest(store: Path, folder: Path, **changes) -> Path:
    """A copy of ``store``'s manifest in ``folder`` with ``changes`` (a store of another
    version: read_manifest reads only the manifest)."""
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest | changes))
    return folder


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "multirun"])
def test_train_a_missing_store(no_heavy_imports, tmp_path, sweep):
    missing = tmp_path.parent / f"{tmp_path.name}-nowhere"
    flags = ["-m", "seed=0,1"] if sweep else []
    refused(
        "scvi-sweep-train",
        *flags,
        PREPARED,
        f"dataset.path={missing}",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[f"dataset.path={missing}", "does not exist", "scvi-sweep-prepare"],
    )


def test_train_one_missing_store_of_a_sweep(no_heavy_imports, tmp_path, store):
    missing = tmp_path.parent / f"{tmp_path.name}-nowhere"
    refused(
        "scvi-sweep-train",
        "-m",
        PREPARED,
        f"dataset.path={store},{missing}",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[f"dataset.path={missing}", "does not exist"],
    )


def test_train_prepared_without_a_path(no_heavy_imports, tmp_path):
    refused(
        "scvi-sweep-train",
        PREPARED,
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["dataset=prepared needs dataset.path", "dataset.path=/"],
    )


def test_train_a_path_without_dataset_prepared(no_heavy_imports, tmp_path, store):
    refused(
        "scvi-sweep-train",
        f"dataset.path={store}",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[f"dataset.path={store}", "add dataset=prepared"],
    )


def test_train_a_folder_that_is_not_a_store(no_heavy_imports, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a store")
    refused(
        "scvi-sweep-train",
        PREPARED,
        f"dataset.path={folder}",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[f"{folder} is not a prepared store", "scvi-sweep-prepare"],
    )


def test_train_a_file_that_is_not_a_store(no_heavy_imports, tmp_path):
    readme = REPO_ROOT / "README.md"
    refused(
        "scvi-sweep-train",
        PREPARED,
        f"dataset.path={readme}",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[f"{readme} is a file, not a prepared store", "scvi-sweep-prepare"],
    )


@pytest.mark.parametrize(
    ("version", "fix"),
    [(0, "rebuild it with `scvi-sweep-prepare"), (99, "upgrade scvi-sweep")],
    ids=["old", "newer"],
)
def test_train_a_store_of_another_format_version(no_heavy_imports, tmp_path, store, version, fix):
    other = edit_manifest(store, tmp_path.parent / f"{tmp_path.name}-v{version}", version=version)
    refused(
        "scvi-sweep-train",
        PREPARED,
        f"dataset.path={other}",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[f"('scvi-sweep-store', {version})", "v1/v2", fix],
    )


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "multirun"])
def test_train_a_keep_value_the_store_lacks(no_heavy_imports, tmp_path, store, sweep):
    keep = "data.keep.tissue=[tissue-1],[tisue-2]" if sweep else "data.keep={tissue:[tisue-2]}"
    refused(
        "scvi-sweep-train",
        *(["-m"] if sweep else []),
        PREPARED,
        f"dataset.path={store}",
        ("+" if sweep else "") + keep,
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[
            "data.keep.tissue: 'tisue-2' is not a value of tissue",
            "did you mean 'tissue-2'?",
            "tissue-0, tissue-1, tissue-2",
        ],
    )


def test_train_a_keep_column_the_store_lacks(no_heavy_imports, tmp_path, store):
    refused(
        "scvi-sweep-train",
        PREPARED,
        f"dataset.path={store}",
        "+data.keep.tisue=[blood]",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["data.keep.tisue", "did you mean data.keep.tissue?", "cell_type"],
    )


@pytest.mark.parametrize(
    "arguments",
    [["model=czi128"], ["-m", "model=czi_128,czi128"]],
    ids=["run", "multirun"],
)
def test_train_a_group_option_typo(no_heavy_imports, tmp_path, arguments):
    refused(
        "scvi-sweep-train",
        *arguments,
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["model=czi128", "did you mean model=czi_128?", f"its options: {options('model')}"],
    )


def test_train_a_launcher_typo(no_heavy_imports, tmp_path):
    refused(
        "scvi-sweep-train",
        "-m",
        "hydra/launcher=slurm",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["did you mean hydra/launcher=slurm_gpu?", "basic", options("hydra/launcher")],
    )


def test_train_an_ill_typed_value(no_heavy_imports, tmp_path):
    refused(
        "scvi-sweep-train",
        "model.n_hidden=abc",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["model.n_hidden=abc", "could not be converted to Integer"],
    )


def test_train_a_sweep_without_m(no_heavy_imports, tmp_path):
    refused(
        "scvi-sweep-train",
        "seed=0,1",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["seed=0,1", "add -m"],
    )


# --- prepare ----------------------------------------------------------------------------------


@pytest.fixture
def source(tmp_path) -> Path:
    """A folder with one file matching ``*.h5ad`` (never read: the checks refuse first)."""
    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "a.h5ad").write_bytes(b"")
    return folder


def test_prepare_a_glob_matching_nothing(no_heavy_imports, tmp_path):
    refused(
        "scvi-sweep-prepare",
        f"source={tmp_path}/none/*.h5ad",
        f"output={tmp_path}/store",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[f"source '{tmp_path}/none/*.h5ad' matches no file", "quote a glob"],
    )


def test_prepare_an_unrelated_output_folder(no_heavy_imports, tmp_path, source):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(
        "scvi-sweep-prepare",
        f"source={source}/*.h5ad",
        f"output={out}",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[str(out), "notes.txt", "choose an empty or new output folder"],
    )


def test_prepare_without_output(no_heavy_imports, tmp_path, source):
    refused(
        "scvi-sweep-prepare",
        f"source={source}/*.h5ad",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["output= is missing", "output=/"],
    )


def test_prepare_a_key_typo(no_heavy_imports, tmp_path):
    line = refused(
        "scvi-sweep-prepare",
        "sourse=x",
        "output=y",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["unknown prepare key sourse", "did you mean source?"],
    )
    assert "+" not in line  # not Hydra's advice to append the key


def test_prepare_a_training_key(no_heavy_imports, tmp_path):
    refused(
        "scvi-sweep-prepare",
        "model=czi_128",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["model is a training key"],
    )


# --- report -----------------------------------------------------------------------------------


def test_report_a_missing_path(no_heavy_imports, tmp_path):
    refused(
        "scvi-sweep-report",
        "/nonexistent",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["/nonexistent does not exist", "give a sweep folder"],
    )
    assert not (reports_dir() / "nonexistent").exists()


def test_report_a_folder_that_is_no_sweep_nor_run(no_heavy_imports, tmp_path):
    folder = tmp_path / "results"
    (folder / "plots").mkdir(parents=True)
    refused(
        "scvi-sweep-report",
        str(folder),
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[f"{folder} is not a sweep folder", "outputs/train/multiruns/<time>"],
    )
    assert not (reports_dir() / folder.name).exists()


def test_report_an_unfinished_run_folder(no_heavy_imports, tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    refused(
        "scvi-sweep-report",
        str(run),
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["has not finished", "metrics.json", "resume=true"],
    )
    assert not (reports_dir() / run.name).exists()


def test_report_an_unknown_option(no_heavy_imports, tmp_path):
    refused(
        "scvi-sweep-report",
        "--sweep",
        "x",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["--sweep", "scvi-sweep-report --help"],
    )


# --- inspect ----------------------------------------------------------------------------------


def test_inspect_a_text_file(no_heavy_imports, tmp_path):
    readme = REPO_ROOT / "README.md"
    refused(
        "scvi-sweep-inspect-model",
        str(readme),
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[f"{readme} is not an scvi-tools model.pt", "a run folder's model/"],
    )


def test_inspect_a_missing_path(no_heavy_imports, tmp_path):
    refused(
        "scvi-sweep-inspect-model",
        str(tmp_path / "model"),
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["model does not exist", "model.pt"],
    )


def test_inspect_a_folder_without_a_model(no_heavy_imports, tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.pt").write_bytes(b"")
    refused(
        "scvi-sweep-inspect-model",
        str(run),
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[f"{run} has no model.pt", f"did you mean {run / 'model'}?"],
    )


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ({"notes.txt": b"zip"}, "a zip archive without data.pkl"),
        ({"archive/data.pkl": pickle.dumps({"w": 1})}, "without model_state_dict and attr_dict"),
    ],
    ids=["zip", "torch-file"],
)
def test_inspect_a_file_that_is_not_an_scvi_model(no_heavy_imports, tmp_path, members, why):
    file = tmp_path / "model.pt"
    with zipfile.ZipFile(file, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    refused(
        "scvi-sweep-inspect-model",
        str(file),
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["is not an scvi-tools model.pt", why],
    )


def model_like_file(folder: Path) -> Path:
    """A model.pt that passes the inspector's file check (a torch zip whose pickle names
    model_state_dict and attr_dict), to reach the checks of its other arguments."""
    file = folder / "model.pt"
    with zipfile.ZipFile(file, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"model_state_dict": 0, "attr_dict": 0}))
    return file


@pytest.mark.parametrize(
    ("against", "words"),
    [
        ("model=czi128", ["model=czi128", "did you mean model=czi_128?"]),
        ("hidden_512", ["--against hidden_512", "model=NAME"]),
    ],
    ids=["typo", "not-model"],
)
def test_inspect_against_a_model_option_that_does_not_exist(
    no_heavy_imports, tmp_path, against, words
):
    file = model_like_file(tmp_path)
    refused(
        "scvi-sweep-inspect-model",
        str(file),
        f"--against={against}",
        cwd=tmp_path,
        env=no_heavy_imports,
        words=words,
    )


def test_inspect_genes_into_a_missing_folder(no_heavy_imports, tmp_path):
    file = model_like_file(tmp_path)
    refused(
        "scvi-sweep-inspect-model",
        str(file),
        "--genes",
        str(tmp_path / "nowhere" / "genes.tsv"),
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["nowhere/genes.tsv", "does not exist"],
    )


# --- audit ------------------------------------------------------------------------------------


def test_audit_a_missing_store(no_heavy_imports, tmp_path):
    refused(
        "scvi-sweep-audit",
        str(tmp_path / "no-store"),
        cwd=tmp_path,
        env=no_heavy_imports,
        words=["no-store does not exist", "scvi-sweep-prepare"],
    )
    assert not (reports_dir() / "audit-no-store").exists()


def test_audit_a_folder_that_is_not_a_store(no_heavy_imports, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a store")
    refused(
        "scvi-sweep-audit",
        str(folder),
        cwd=tmp_path,
        env=no_heavy_imports,
        words=[f"{folder} is not a prepared store"],
    )
    assert not (reports_dir() / "audit-notes").exists()
