"""The data audit: what a prepared store holds that decides the seed's data questions, from its
obs columns alone (never X), in seconds to minutes at Census scale.

Over primary cells (``is_primary_data``, as training sees them), before any gene filter:

- (dataset, donor) pairs profiled with more than one assay or suspension type
  (:mod:`.protocols`): what separates ``batch=dataset_donor`` from ``czi_concat``;
- what the ``min_genes`` filter removes, per dataset, assay, suspension type, cell type and
  tissue (:mod:`.gene_filter`);
- the batch categories each ``batch`` option makes among the cells its filter keeps, built by
  the training code itself, with their training cells (:mod:`.categories`).

:func:`audit_store` counts (:mod:`.store_audit`), :func:`write_audit` writes report.md,
audit.json, CSVs and figures (:mod:`.writing`, :mod:`.figures`); the names of it all are in
:mod:`.names`. The command: ``scvi-sweep-audit STORE`` (sweep.cli.audit_command) or
``python -m sweep.audit STORE``; prepare logs :func:`store_summary` of every store it writes.
"""

from sweep.audit.store_audit import (
    Audit,
    audit_command,
    audit_store,
    store_summary,
    summary_lines,
    thresholds,
)

__all__ = [
    "Audit",
    "audit_command",
    "audit_store",
    "store_summary",
    "summary_lines",
    "thresholds",
    "write_audit",
]


def write_audit(audit, out_dir):
    """Write ``audit`` into ``out_dir``; see :func:`sweep.audit.writing.write_audit` (imported
    on use: the figures' matplotlib is not needed for :func:`summary_lines`)."""
    from sweep.audit.writing import write_audit as write

    return write(audit, out_dir)
