"""``--help`` of the two Hydra commands, printed before Hydra starts (Hydra's own help stays
behind ``--hydra-help``).

Nothing in them is written twice: the training command's groups and options are read from
``conf/`` (and Hydra's plugins, for ``hydra/launcher`` and ``hydra/sweeper``) at run time, with
the defaults and the run and sweep folders of the composed ``conf/train.yaml``, and an option's
description is the first sentence of its file's opening comment; prepare's keys, defaults and
descriptions are its schema's (``sweep.config.schema.PrepareConfig``, field ``help``).
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import typing
from pathlib import Path

WIDTH = 100  # characters per line
#: groups whose options each get a line of their own, with a description
DESCRIBED_GROUPS = {
    "experiment": "one question each, asked by a multirun: python train.py experiment=NAME",
    "hparams_search": "Optuna searches, each a multirun: python train.py hparams_search=NAME",
    "hydra/launcher": "where a multirun's jobs run: python train.py -m hydra/launcher=NAME ...",
    "hydra/sweeper": "which jobs a multirun runs: python train.py -m hydra/sweeper=NAME ...",
}
#: Hydra's own groups the help lists (the others configure Hydra's logging and help)
HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")
#: descriptions of options that have no file in conf/ (Hydra's own, or a plugin's)
BUILT_IN = {
    ("hydra/launcher", "basic"): "Hydra's: one job after another, in this process",
    ("hydra/sweeper", "basic"): "Hydra's: every combination of the swept values",
    ("hydra/sweeper", "optuna"): "an Optuna study (src/hydra_plugins; set by hparams_search)",
}


def shown(value) -> str:
    """A config value as it is written on the command line: ``null``, ``true``, ``[a,b]``."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(map(shown, value)) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def wants_help(argv: list[str]) -> bool:
    """Whether the command line asks for the command's help (``--help``/``-h``; not
    ``--hydra-help``)."""
    return any(argument in ("--help", "-h") for argument in argv)


def option_summary(file: Path, width: int) -> str:
    """The first sentence of an option file's opening comment (``# @package`` lines and a
    leading ``Q:`` left out), shortened to ``width`` characters; "" without a comment."""
    if not file.is_file():
        return ""
    words = []
    for line in file.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            words.append(line.lstrip("#").strip())
    text = re.sub(r"^Q:\s*", "", " ".join(words))
    sentence = re.match(r"(.+?[.?!])(\s|$)", text)
    return textwrap.shorten(sentence.group(1) if sentence else text, width, placeholder="...")


def folder_template(template: str) -> str:
    """A Hydra output folder template for people: ``outputs/${task_name}/runs/${now:...}`` ->
    ``outputs/train/runs/<time>``."""
    return re.sub(r"\$\{now:[^}]*\}", "<time>", template.replace("${task_name}", "train"))


def indented(text: str, indent: int) -> str:
    """``text`` wrapped to :data:`WIDTH`, every line indented by ``indent`` spaces."""
    pad = " " * indent
    return textwrap.fill(
        text, WIDTH, initial_indent=pad, subsequent_indent=pad, break_on_hyphens=False
    )


def composed_train(conf_dir: Path):
    """``conf_dir``'s ``train.yaml`` composed with no overrides, Hydra's node included (the
    groups' defaults, the run and sweep folders)."""
    from hydra import compose, initialize_config_dir

    from sweep.config.schema import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose("train", return_hydra_config=True)


def group_lines(groups: dict[str, list[str]], choices: dict, conf_dir: Path) -> list[str]:
    """One line per config group: its options, the default marked ``*``; then the groups of
    :data:`DESCRIBED_GROUPS`, an option a line with its file's first sentence."""
    shown = [g for g in groups if "/" not in g and g != "hydra"] + list(HYDRA_GROUPS)
    name_width = max(map(len, shown)) + 2
    lines = ["Config groups (GROUP=OPTION; * marks the default, - a group off by default):"]
    for group in shown:
        marked = [f"{o}*" if o == choices.get(group) else o for o in groups.get(group, [])]
        suffix = "" if choices.get(group) else "  (-)"
        row = f"  {group:<{name_width}}{', '.join(marked)}{suffix}"
        lines.append(textwrap.fill(row, WIDTH, subsequent_indent=" " * (name_width + 2)))
    for group, what in DESCRIBED_GROUPS.items():
        options = groups.get(group, [])
        lines += ["", f"{group}: {what}"]
        width = max(map(len, options), default=0) + 2
        for option in options:
            about = option_summary(conf_dir / group / f"{option}.yaml", WIDTH - width - 4)
            about = about or BUILT_IN.get((group, option), "a Hydra plugin's")
            lines.append(f"  {option:<{width}}{about}")
    return lines


def train_help(conf_dir: Path) -> str:
    """The training command's ``--help``: what it does, every config group and its options,
    the top-level keys, ``-m``, examples, and where runs and reports go."""
    from omegaconf import OmegaConf

    from sweep.cli.train_checks import config_groups
    from sweep.config.schema import TrainConfig
    from sweep.paths import reports_dir

    cfg = composed_train(conf_dir)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    folders = OmegaConf.to_container(cfg.hydra, resolve=False)
    groups = config_groups(conf_dir)
    kinds = typing.get_type_hints(TrainConfig)
    top = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if not dataclasses.is_dataclass(kinds[f.name])
    ]
    values = "  ".join(f"{key}={shown(OmegaConf.to_container(cfg)[key])}" for key in top)
    store = "dataset=prepared dataset.path=/ssd/store"
    sections = [
        "usage: python train.py [GROUP=OPTION ...] [KEY=VALUE ...] [-m] [--cfg job] "
        "[--hydra-help]\n       scvi-sweep-train ...  (the same command, once installed)",
        indented(
            "Train scVI on a prepared store (or the demo data set, made on first use) and score "
            "it: each job writes a run folder with the model, its curves, integration scores "
            "against a PCA baseline and a page (report.md). An argument chooses an option of a "
            "config group (model=hidden_512) or sets a key (trainer.max_epochs=20); a mistake is "
            "refused in one line before anything is written.",
            0,
        ),
        "\n".join(group_lines(groups, choices, conf_dir)),
        "Top-level keys (KEY=VALUE, shown with their defaults):\n" + indented(values, 2),
        "Every key of every group, with its value: python train.py [GROUP=OPTION ...] --cfg job\n"
        "Hydra's own flags and help: python train.py --hydra-help",
        "Multiruns: -m (--multirun) runs one job per combination of the comma-separated values\n"
        "(seed=0,1,2 model=czi_128,hidden_512), choice(...) or range(...); an experiment or an\n"
        "hparams_search is a multirun by itself. dry_run=true prints each job's cells and\n"
        "estimated time; it creates no run folder and starts no job, but may build the demo or\n"
        "census_shape store (prepare + audit) and, unless dry_run_cells_per_s is given, times up\n"
        "to dry_run_calibration_steps training steps in a temporary folder (cached).",
        "Examples:\n"
        "  python train.py                  the demo data set, one run (about a minute on a CPU)\n"
        f"  python train.py {store} trainer=gpu loader=t4_n1std16\n"
        f"  python train.py -m model=czi_128,hidden_512 seed=0,1,2 {store}\n"
        f"  python train.py experiment=architecture hydra/launcher=slurm_gpu "
        f"hydra.launcher.partition=gpu\n      trainer=gpu {store} dry_run=true",
        "Where things go (relative to the folder the command runs in):\n"
        + "\n".join(
            f"  {where}\n" + indented(what, 6)
            for where, what in (
                (f"{folder_template(folders['run']['dir'])}/", "a run's folder"),
                (
                    f"{folder_template(folders['sweep']['dir'])}/<job number>/",
                    "a multirun's jobs (an experiment's: outputs/train/experiments/<name>/<time>/)",
                ),
                (
                    f"{reports_dir()}/<sweep folder name>/",
                    "a multirun's report, written when it ends; scvi-sweep-report SWEEP_DIR "
                    "rebuilds it",
                ),
            )
        ),
    ]
    return "\n\n".join(sections)


def prepare_help() -> str:
    """``scvi-sweep-prepare --help``: what it does, every key with its default and its one-line
    description (the schema's), examples."""
    from sweep.config.schema import PrepareConfig

    fields = dataclasses.fields(PrepareConfig)
    required = [f for f in fields if f.default == "???"]
    fields = required + [f for f in fields if f not in required]

    def default(item: dataclasses.Field) -> str:
        if item.default == "???":
            return "required"
        return shown(
            item.default_factory() if item.default is dataclasses.MISSING else item.default
        )

    name_width = max(len(f.name) for f in fields) + 2
    value_width = 10  # a longer default pushes its description to the right
    lines = []
    for item in fields:
        start = f"  {item.name:<{name_width}}{default(item):<{value_width - 2}}  "
        lines.append(
            textwrap.fill(
                start + item.metadata.get("help", ""),
                WIDTH,
                subsequent_indent=" " * (2 + name_width + value_width),
                break_on_hyphens=False,
            )
        )
    sections = [
        "usage: scvi-sweep-prepare source=GLOB output=FOLDER [KEY=VALUE ...] [--cfg job]",
        indented(
            "Prepare many source h5ad files (CELLxGENE schema: raw counts in X or raw.X; obs "
            "dataset_id, donor_id, assay, suspension_type, cell_type, tissue, is_primary_data; "
            "var index = Ensembl ids) into one store folder that training reads: genes "
            "selected and ordered, cells shuffled into equal shards. Run again with the same "
            "keys, a complete store is left as it is and an interrupted run resumes.",
            0,
        ),
        "Keys (KEY=VALUE; default; meaning):\n" + "\n".join(lines),
        "Examples:\n"
        "  scvi-sweep-prepare source='/data/*.h5ad' output=/ssd/store genes=/data/genes.tsv\n"
        "  scvi-sweep-prepare source='/data/*.h5ad' output=/ssd/store n_top_genes=4000 workers=8\n"
        "  scvi-sweep-prepare 'source=[/data/a.h5ad,/data/b.h5ad]' output=/ssd/store "
        "skip_bad_sources=true",
        "Then: scvi-sweep-audit /ssd/store (what the store holds), and\n"
        "      python train.py dataset=prepared dataset.path=/ssd/store",
    ]
    return "\n\n".join(sections)
