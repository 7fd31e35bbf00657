"""``scvi-sweep-audit STORE [--output DIR] [--min-genes N ...]``: audit a prepared store's
metadata (sweep.audit) and write report.md, audit.json and figures into a folder."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from sweep.cli.errors import ArgumentParser, refuse, refusing

PROG = "scvi-sweep-audit"
EXAMPLES = """examples:
  scvi-sweep-audit /ssd/store
  scvi-sweep-audit /ssd/store --min-genes 500 1000 --output reports/store-audit
"""


def _threshold(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: a gene count is >= 0")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: the store, the output folder, the gene filter thresholds."""
    parser = ArgumentParser(
        prog=PROG,
        description="Audit a prepared store from its obs columns: (dataset, donor) pairs with "
        "more than one assay or suspension type, what the min_genes filter removes, the batch "
        "categories each batch option makes. Writes report.md, audit.json, CSVs and figures.",
        epilog=EXAMPLES,
    )
    parser.add_argument("store", type=Path, help="a prepared store folder (scvi-sweep-prepare)")
    parser.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="output folder (default: multirun_reports/audit-<store folder name>/)",
    )
    parser.add_argument(
        "--min-genes",
        type=_threshold,
        nargs="+",
        default=[],
        metavar="N",
        help="gene filter thresholds to report besides 300 (expressed genes over all genes)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the audit; a store that is missing, incomplete or damaged exits 1 with one line on
    stderr (sweep.cli.errors), before any folder is made or the audit's modules are imported,
    as does an output folder that cannot be written."""
    args = parse_args(argv)
    from sweep.data.store import StoreError, read_manifest

    with refusing(StoreError):
        read_manifest(args.store)  # the manifest's checks, before the audit's imports
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] - %(message)s")
    from sweep.audit import audit_store, summary_lines, write_audit
    from sweep.audit.writing import default_output

    start = time.perf_counter()
    with refusing(StoreError):
        audit = audit_store(args.store, args.min_genes)
    out = args.output or default_output(args.store)
    try:
        report = write_audit(audit, out)
    except OSError as err:  # a folder that cannot be made or written
        refuse(f"cannot write the audit into {out}: {err}")
    for line in summary_lines(audit):
        print(line.removeprefix("audit: "))
    print(f"report: {report} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
