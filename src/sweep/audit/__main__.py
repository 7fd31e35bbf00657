"""``python -m sweep.audit STORE [--output DIR] [--min-genes N ...]``: the ``scvi-sweep-audit``
command (sweep.cli.audit_command)."""

from sweep.cli.audit_command import main

if __name__ == "__main__":
    main()
