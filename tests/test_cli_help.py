"""Each console script's ``--help`` lists its options, one line each, and examples (issue 23);
the training command's groups and options are read from ``conf/`` at run time, prepare's keys
and descriptions from its schema."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.cli.help_text import prepare_help, train_help
from sweep.cli.train_checks import config_groups
from sweep.config.schema import PrepareConfig
from sweep.paths import CONF_DIR, REPO_ROOT
from test_cli_mistakes import no_heavy_imports  # noqa: F401  (a fixture)

BIN = Path(sys.executable).parent


def run_help(*command: str, cwd: Path, env: dict | None = None) -> str:
    """The command's stdout; it must exit 0 and print nothing on stderr. ``env``: the test's
    environment by default."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    return result.stdout


def flat(text: str) -> str:
    """``text`` with every run of whitespace one space (help wraps its lines)."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def train_text(tmp_path_factory, no_heavy_imports) -> str:  # noqa: F811
    """``scvi-sweep-train --help`` (torch, scvi and lightning unimportable: none is needed),
    the same as ``python train.py --help``."""
    cwd = tmp_path_factory.mktemp("help")
    text = run_help(str(BIN / "scvi-sweep-train"), "--help", cwd=cwd, env=no_heavy_imports)
    assert run_help(sys.executable, str(REPO_ROOT / "train.py"), "--help", cwd=cwd) == text
    assert list(cwd.iterdir()) == []  # no outputs/ folder
    return text


def test_train_help_lists_every_group_and_option_of_conf(train_text):
    groups = [p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"]
    lines = {line.split()[0]: line for line in train_text.splitlines() if line.startswith("  ")}
    for group in groups:
        for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
            assert option in lines[group], f"{group}={option} not listed"
    assert "model" in lines and "czi_128*" in lines["model"]  # the default marked


def test_train_help_lists_the_launchers_and_sweepers(train_text):
    lines = {line.split()[0]: line for line in train_text.splitlines() if line.startswith("  ")}
    launchers = ["basic", *sorted(p.stem for p in (CONF_DIR / "hydra" / "launcher").glob("*"))]
    for launcher in launchers:
        assert launcher in lines["hydra/launcher"]
    assert "basic*" in lines["hydra/sweeper"] and "optuna" in lines["hydra/sweeper"]
    assert "hydra/launcher=NAME" in train_text and "hydra/sweeper=NAME" in train_text


def test_train_help_says_multirun_examples_folders_and_where_to_read_more(train_text):
    for words in (
        "-m (--multirun)",
        "Examples:",
        "python train.py -m model=czi_128,hidden_512",
        "dataset=prepared dataset.path=",
        "outputs/train/runs/<time>/",
        "outputs/train/multiruns/<time>/<job number>/",
        "multirun_reports/<sweep folder name>/",
        "--cfg job",
        "--hydra-help",
        "seed=0",
        "resume=false",
        "dry_run=false",
    ):
        assert words in train_text, words
    assert sum(line.startswith("  python train.py") for line in train_text.splitlines()) >= 3


def test_train_help_reads_the_options_from_the_conf_folder(tmp_path):
    conf = shutil.copytree(CONF_DIR, tmp_path / "conf")
    (conf / "model" / "tiny_8.yaml").write_text("defaults: [czi_128, _self_]\nn_hidden: 8\n")
    (conf / "experiment" / "depth.yaml").write_text("# @package _global_\n# Q: how deep?\n")
    assert "tiny_8" in config_groups(conf)["model"]
    text = train_help(conf)
    assert "hidden_512, tiny_8" in text
    assert "  depth " in text and "how deep?" in text


def test_hydra_help_is_still_hydras(tmp_path):
    text = run_help(str(BIN / "scvi-sweep-train"), "--hydra-help", cwd=tmp_path)
    assert "Hydra" in text and "--multirun" in text


def test_prepare_help_lists_its_keys_with_defaults_and_the_schemas_descriptions(
    tmp_path,
    no_heavy_imports,  # noqa: F811
):
    text = run_help(str(BIN / "scvi-sweep-prepare"), "--help", cwd=tmp_path, env=no_heavy_imports)
    assert text.strip() == prepare_help().strip()
    for item in dataclasses.fields(PrepareConfig):
        description = item.metadata["help"]
        assert description, f"{item.name} has no help"
        assert f"  {item.name} " in text
        assert flat(description) in flat(text)  # the schema's own words, the one home
    assert "source            required" in text and "n_top_genes       8000" in text
    assert sum(line.startswith("  scvi-sweep-prepare") for line in text.splitlines()) >= 2
    # prepare's own keys only: not the training groups it listed before
    for training in ("Config groups", "czi_128", "hydra/launcher", "trainer"):
        assert training not in text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("scvi-sweep-report", ["PATH", "--study NAME", "--storage STORAGE", "--out DIR"]),
        ("scvi-sweep-inspect-model", ["path", "--against OVERRIDE"]),
        ("scvi-sweep-audit", ["store", "--output DIR", "--min-genes N"]),
    ],
)
def test_argparse_commands_list_their_options_and_examples(
    tmp_path,
    command,
    flags,
    no_heavy_imports,  # noqa: F811
):
    text = run_help(str(BIN / command), "--help", cwd=tmp_path, env=no_heavy_imports)
    for flag in flags:
        assert f"  {flag}" in text, flag
    examples = text.split("examples:\n", 1)[1].splitlines()
    assert sum(line.strip().startswith(command) for line in examples) >= 2
