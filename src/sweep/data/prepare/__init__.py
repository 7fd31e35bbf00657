"""Prepare a store: many source h5ad files -> one folder of gene-selected, shuffled shards.

The store format lives in :mod:`sweep.data.store`; this package only fills it, through its
:class:`~sweep.data.store.StoreWriter`. Three passes, each parallel over worker processes; a
process holds counts of one source chunk (``chunk_rows`` rows), one group or one run of shards
(about ``shards.GROUP_NNZ`` source non-zeros' worth of cells) at a time, plus one source's obs:

1. **open** (per source, cheap): each source's cells and stored values, from its header (an
   unreadable file fails here); they cut the cells, in source order, into **groups**.
   **read** (per group): each source part of the group is read once, in row chunks: its obs
   (columns present), gene ids (usable; a list a worker has seen is recognised by its bytes)
   and cell ids (unique) are checked, every count is checked and ``n_genes_all`` (expressed
   genes over ALL source genes) counted; each coded column's values are collected and, for
   ``genes=hvg``, a seeded sample of eligible cells drawn. With a gene list (``genes=FILE``)
   the same read keeps the store's genes (zero-filling absent ones), gives each cell its store
   row by the seeded global shuffle (a permutation of all cells computed cell by cell: every
   shard is a random draw from every source) and writes the group sorted by store row, with
   codes into the group's own vocabulary and the scans, to ``.prepare_tmp/group_XXXXX.h5``.
   Then, in the main process: the gene names (once per distinct gene list), the checks across
   sources (cell ids unique across sources, gene ids that match the gene list or another
   source), one global vocabulary per coded column and, for ``genes=hvg``, the seurat_v3 HVGs.
   A bad source raises PrepareError naming the file and the fix (and the run leaves nothing
   behind); with ``skip_bad_sources=true`` it is left out instead, logged and listed in the
   manifest's ``skipped_sources``.
2. **groups**: every group file not written yet (all of them for ``genes=hvg``; those a source
   left out changed otherwise) is written as in pass 1, reading its sources again.
3. **shards** (per run of consecutive shards): read the run's rows from every group (one slice
   each), map their codes to the global vocabulary, order them and hand each shard to the
   store writer.

Every file is written under a temporary name and renamed, and the manifest last, so a folder
without it is an incomplete store. A run killed at any point resumes when the same command runs
again: pass 1's result (``.prepare_tmp/plan.pkl``), whole groups (with the scans of their
sources, so a group written in pass 1 is not read again) and whole shards are reused
(:mod:`.output`), and the store is the one an uninterrupted run writes. Progress bars (stderr,
``progress=false`` quiets them) show files or cells done, cells/s and the ETA of each pass.
The main process keeps 8 bytes per cell (cell id hashes, during pass 1), one copy of each
distinct gene list (gene tables cross processes as one blob each) and the HVG sample: beyond
those 8 bytes a cell, its memory does not grow with the number of files.

Modules, one job each (none imports this package's ``__init__``):

- :mod:`.config`: the config's checks (its schema: sweep.config.schema.PrepareConfig), the sources,
  the fingerprint;
- :mod:`.output`: the output folder (complete, other config, interrupted, incomplete), what an
  interrupted run left, and ``prepare.log``;
- :mod:`.sources`: reading one source;
- :mod:`.checks`: the checks and scan of a source's rows, those across sources, and the bad
  sources;
- :mod:`.genes`: gene selection (gene list or HVGs);
- :mod:`.shards`: groups (read in pass 1 or 2) and shards (pass 3), and the shuffle;
- :mod:`.pipeline`: the whole run over worker processes.

Every module logs to the one logger ``sweep.data.prepare``, so that ``prepare.log`` holds the
whole run and its records keep one name.
"""

from sweep.data.prepare.config import PrepareError
from sweep.data.prepare.pipeline import prepare_store

__all__ = ["PrepareError", "prepare_store"]
