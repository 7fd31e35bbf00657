"""Prepare a store: many source h5ad files -> one folder of gene-selected, shuffled shards.

The store format lives in :mod:`sweep.data.store`; this package only fills it, through its
:class:`~sweep.data.store.StoreWriter`. Three passes, each parallel over worker processes; a
process holds counts of one source chunk (``chunk_rows`` rows), one group or one run of shards
(about ``shards.GROUP_NNZ`` source non-zeros' worth of cells) at a time, plus one source's obs:

1. **check** (per source, cheap): open the file, read its gene ids and obs (columns present, gene
   ids usable, cell ids unique) and the counts of its first ``HEADER_ROWS`` rows (a normalised
   file fails here); then, in the main process, the gene names (once per distinct gene list) and
   the checks across sources: cell ids unique across sources, gene ids that match the gene list
   (``genes=FILE``) or another source (``genes=hvg``).
   **scan** (per source): check every count, count expressed genes per cell over ALL source genes
   (``n_genes_all``), collect each coded column's values and, for ``genes=hvg``, draw a seeded
   sample of eligible cells (with a gene list, a source of at most ``HEADER_ROWS`` cells is
   scanned by its check: read once). Then, in the main process: one global vocabulary per coded
   column and the gene selection (a list file or seurat_v3 HVGs).
   A bad source raises PrepareError naming the file and the fix; with ``skip_bad_sources=true``
   it is left out instead, logged and listed in the manifest's ``skipped_sources``.
2. **groups** (per range of cells in source order): read the sources again in row chunks, keep
   the store's genes (zero-filling absent ones), encode obs, give each cell its store row by the
   seeded global shuffle (a permutation of all cells computed cell by cell: every shard is a
   random draw from every source) and write the group sorted by store row to
   ``.prepare_tmp/group_XXXXX.h5``.
3. **shards** (per run of consecutive shards): read the run's rows from every group (one slice
   each), order them and hand each shard to the store writer.

Every file is written under a temporary name and renamed, and the manifest last, so a folder
without it is an incomplete store. A run killed at any point resumes when the same command runs
again: pass 1's result (``.prepare_tmp/plan.pkl``), whole groups and whole shards are reused
(:mod:`.output`), and the store is the one an uninterrupted run writes. Progress bars (stderr,
``progress=false`` quiets them) show files or cells done, cells/s and the ETA of each pass.
The main process keeps 8 bytes per cell (cell id hashes, during pass 1), one copy of each
distinct gene list (gene tables cross processes as one blob each) and the HVG sample: beyond
those 8 bytes a cell, its memory does not grow with the number of files.

Modules, one job each (none imports this package's ``__init__``):

- :mod:`.config`: the schema, its checks, the sources, the fingerprint;
- :mod:`.output`: the output folder (complete, other config, interrupted, incomplete), what an
  interrupted run left, and ``prepare.log``;
- :mod:`.sources`: reading one source;
- :mod:`.checks`: pass 1 per source and across sources, and the bad sources;
- :mod:`.genes`: gene selection (gene list or HVGs);
- :mod:`.shards`: passes 2 and 3 (groups, then shards) and the shuffle;
- :mod:`.pipeline`: the whole run over worker processes.

Every module logs to the one logger ``sweep.data.prepare``, so that ``prepare.log`` holds the
whole run and its records keep one name.
"""

from sweep.data.prepare.config import PrepareConfig, PrepareError
from sweep.data.prepare.pipeline import prepare_store

__all__ = ["PrepareConfig", "PrepareError", "prepare_store"]
