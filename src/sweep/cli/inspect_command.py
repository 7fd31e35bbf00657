"""``scvi-sweep-inspect-model PATH [--against model=NAME] [--genes FILE]``: print a saved model's
architecture (sweep.model.saved reads it), and write its gene list for prepare.

``PATH`` is checked before torch is imported: a path that does not exist, a folder without
``model.pt``, or a file that is not an scvi-tools ``model.pt`` (not a torch archive, or one
without scvi-tools' ``model_state_dict`` and ``attr_dict``) is refused in one line, exit status 1
(sweep.cli.errors), as is a file the restricted unpickler refuses.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from sweep.cli.errors import ArgumentParser, UsageError, refusing

MODEL_FILE = "model.pt"
#: what scvi-tools' ``model.save()`` writes into model.pt, a dict with these keys
MODEL_KEYS = (b"model_state_dict", b"attr_dict")
#: a zip archive's first bytes (torch.save's format since torch 1.6)
ZIP_MAGIC = b"PK\x03\x04"
#: a pickle's first byte from protocol 2 on (torch.save's legacy format, a bare pickle)
PICKLE_MAGIC = b"\x80"
EXPECTED = "give a saved model's folder (a run folder's model/) or its model.pt"
EXAMPLES = """examples:
  scvi-sweep-inspect-model outputs/train/runs/2025-01-30_12-00-00/model
  scvi-sweep-inspect-model /models/census/model.pt --against model=czi_128
  scvi-sweep-inspect-model /models/census --genes genes.tsv   # then prepare genes=genes.tsv
"""


def model_file(path: Path) -> Path:
    """The ``model.pt`` that ``path`` names (the file, or the one in the folder); raises
    :class:`UsageError` naming what is wrong and what to give instead."""
    if not path.exists():
        raise UsageError(f"{path} does not exist: {EXPECTED}")
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            return path / MODEL_FILE
        nested = path / "model" / MODEL_FILE
        hint = f"did you mean {nested.parent}?" if nested.is_file() else EXPECTED
        raise UsageError(f"{path} has no {MODEL_FILE}: {hint}")
    problem = not_a_model(path)
    if problem:
        raise UsageError(f"{path} is not an scvi-tools {MODEL_FILE} ({problem}): {EXPECTED}")
    return path


def not_a_model(file: Path) -> str | None:
    """Why ``file`` cannot be an scvi-tools model.pt, read without torch and without unpickling
    anything (its first bytes; in a torch archive, whether ``data.pkl`` names scvi-tools' keys);
    None where it may be one."""
    with open(file, "rb") as handle:
        start = handle.read(len(ZIP_MAGIC))
    if start.startswith(PICKLE_MAGIC):
        return None  # a bare pickle: the restricted unpickler decides
    if start != ZIP_MAGIC:
        return "neither a torch archive nor a pickle"
    try:
        with zipfile.ZipFile(file) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if not pickles:
                return "a zip archive without data.pkl, not written by torch.save"
            if any(n.endswith("/constants.pkl") for n in archive.namelist()):
                return None  # TorchScript: sweep.model.saved refuses it, naming it
            names = archive.read(pickles[0])
    except zipfile.BadZipFile as error:
        return f"a damaged zip archive: {error}"
    missing = [key.decode() for key in MODEL_KEYS if key not in names]
    return f"a torch file without {' and '.join(missing)}" if missing else None


def check_against(override: str) -> None:
    """Refuse an ``--against`` that is not ``model=NAME`` of an option of conf/model/."""
    from sweep.cli.train_checks import check_group_options, config_groups
    from sweep.paths import CONF_DIR

    if not override.startswith("model="):
        raise UsageError(f"--against {override}: give model=NAME, an option of conf/model/")
    check_group_options([override], config_groups(CONF_DIR), CONF_DIR)


def main(argv: list[str] | None = None) -> None:
    """``scvi-sweep-inspect-model PATH [--against model=NAME]``: print the report."""
    parser = ArgumentParser(
        prog="scvi-sweep-inspect-model",
        description="Report the architecture of a saved scvi-tools SCVI model: every model key "
        "from its weights or its recorded arguments, its genes and batch categories.",
        epilog=EXAMPLES,
    )
    parser.add_argument("path", type=Path, help="an scvi-tools model folder or its model.pt")
    parser.add_argument(
        "--against",
        metavar="OVERRIDE",
        help="list the differences from this config (model=NAME, an option of conf/model/)",
    )
    parser.add_argument(
        "--genes",
        metavar="FILE",
        type=Path,
        help="also write the model's genes (Ensembl ids, in its order) to FILE, one a line: "
        "scvi-sweep-prepare's genes= list, to prepare data for that model",
    )
    args = parser.parse_args(argv)
    with refusing():
        model_file(args.path)
        if args.against is not None:
            check_against(args.against)
        if args.genes is not None and not args.genes.parent.is_dir():
            raise UsageError(f"--genes {args.genes}: its folder {args.genes.parent} does not exist")
    from sweep.model.saved import UnsafeModelFile, format_report, inspect_model

    with refusing(UnsafeModelFile):
        report = inspect_model(args.path)
    print(format_report(report, args.against))
    if args.genes is not None:
        with refusing(OSError):
            args.genes.write_text("".join(f"{gene}\n" for gene in report.genes))
        print(f"wrote the {len(report.genes):,} genes to {args.genes}")


if __name__ == "__main__":
    main()
