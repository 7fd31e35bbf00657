"""Prepare a store: many source h5ad files -> one folder of gene-selected, shuffled shards.

The store format lives in :mod:`sweep.data.store`; this package only fills it, through its
:class:`~sweep.data.store.StoreWriter`. Three passes, each parallel over worker processes; a
process holds counts of one source chunk (``chunk_rows`` rows) or one shard at a time, plus one
source's obs columns:

1. **check** (per source, cheap): open the file, read its genes and obs (columns present, gene
   ids usable, cell ids unique) and the counts of its first ``HEADER_ROWS`` rows (a normalised
   file fails here); then, in the main process, the checks across sources: cell ids unique across
   sources, gene ids that match the gene list (``genes=FILE``) or another source (``genes=hvg``).
   **scan** (per source): check every count, count expressed genes per cell over ALL source genes
   (``n_genes_all``), collect each coded column's values and, for ``genes=hvg``, draw a seeded
   sample of eligible cells. Then, in the main process: one global vocabulary per coded column,
   the gene selection (a list file or seurat_v3 HVGs) and a seeded global permutation that gives
   every cell its destination (shard, row).
   A bad source raises PrepareError naming the file and the fix; with ``skip_bad_sources=true``
   it is left out instead, logged and listed in the manifest's ``skipped_sources``.
2. **pieces** (per source): read the source again in row chunks, keep the store's genes
   (zero-filling absent ones), encode obs, sort each chunk's rows by destination and write them to a
   temporary piece file ``.prepare_tmp/piece_XXXXX.h5`` (written atomically; reused when an
   interrupted run with the same config is resumed).
3. **shards** (per shard): gather the shard's rows from every piece, order them and hand them to
   the store writer.

The manifest is written last (atomically), so a folder without it is an incomplete store.
The main process keeps about 24 bytes per cell (cell id hashes, the permutation) and the HVG sample.

Modules, one job each (none imports this package's ``__init__``):

- :mod:`.config`: the schema, its checks, the sources, the fingerprint;
- :mod:`.output`: the output folder (complete, other config, incomplete) and ``prepare.log``;
- :mod:`.sources`: reading one source;
- :mod:`.checks`: pass 1 per source and across sources, and the bad sources;
- :mod:`.genes`: gene selection (gene list or HVGs);
- :mod:`.shards`: passes 2 and 3 (pieces, then shards);
- :mod:`.pipeline`: the whole run over worker processes.

Every module logs to the one logger ``sweep.data.prepare``, so that ``prepare.log`` holds the
whole run and its records keep one name.
"""

from sweep.data.prepare.config import PrepareConfig, PrepareError
from sweep.data.prepare.pipeline import prepare_store

__all__ = ["PrepareConfig", "PrepareError", "prepare_store"]
