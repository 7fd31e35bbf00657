"""``scvi-sweep-inspect-model PATH [--against model=NAME]``: print a saved model's architecture
(sweep.model.saved reads it)."""

from __future__ import annotations

import argparse

from sweep.model.saved import UnsafeModelFile, format_report, inspect_model


def main(argv: list[str] | None = None) -> None:
    """``scvi-sweep-inspect-model PATH [--against model=NAME]``: print the report."""
    parser = argparse.ArgumentParser(
        prog="scvi-sweep-inspect-model",
        description="Report the architecture of a saved scvi-tools SCVI model.",
    )
    parser.add_argument("path", help="an scvi-tools model folder or its model.pt")
    parser.add_argument(
        "--against", metavar="OVERRIDE", help="list the differences from this config (model=NAME)"
    )
    args = parser.parse_args(argv)
    try:
        report = inspect_model(args.path)
    except (UnsafeModelFile, FileNotFoundError) as err:
        raise SystemExit(f"scvi-sweep-inspect-model: {err}") from None
    print(format_report(report, args.against))


if __name__ == "__main__":
    main()
