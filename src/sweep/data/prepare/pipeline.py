"""The whole run: pass 1 and the global decisions (:func:`plan_store`), passes 2 and 3 and the
manifest (:func:`build_store`), over a pool of worker processes; :func:`prepare_store` drives it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sweep.data.prepare.checks import (
    BadSources,
    Scan,
    attempt,
    check_source,
    dedupe_gene_tables,
    obs_columns,
    repeated_cell_ids,
    scan_source,
    unmatched_genes,
    vocabulary,
)
from sweep.data.prepare.config import (
    HVG,
    PrepareConfig,
    PrepareError,
    config_identity,
    fingerprint,
    prepare_overrides,
    resolve_config,
    resolve_sources,
)
from sweep.data.prepare.genes import gene_union, genes_by_hvg, genes_from_list
from sweep.data.prepare.output import (
    FINGERPRINT_FILE,
    LOG_NAME,
    TMP_DIR,
    check_output_folder,
    clean_output,
    existing_store,
    run_log,
    start_log_file,
)
from sweep.data.prepare.shards import (
    destinations,
    piece_path,
    shard_tasks,
    write_piece,
    write_store_shard,
)
from sweep.data.store import MANIFEST_NAME, Manifest, StoreWriter

log = logging.getLogger(__package__)  # the pipeline's one logger (see the package docstring)


def run_parallel(pool: Executor | None, fn: Any, tasks: list[tuple], desc: str) -> list:
    """``[fn(*t) for t in tasks]`` over the pool (here when None), with a progress bar."""
    if pool is None:
        return [fn(*task) for task in tqdm(tasks, desc=desc)]
    futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
    results: list = [None] * len(tasks)
    try:
        for future in tqdm(as_completed(futures), total=len(tasks), desc=desc):
            results[futures[future]] = future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return results


@dataclass
class Plan:
    """What pass 1 decided: the sources' scans, vocabularies, the store's genes and the sources
    left out (``skipped``: the manifest's ``skipped_sources``)."""

    scans: list[Scan]
    vocab: dict[str, list[str]]
    genes: list[str]
    gene_names: list[str]
    hvg: dict | None
    skipped: list[dict]


def plan_store(cfg: PrepareConfig, sources: list[Path], pool: Executor | None) -> Plan:
    """Pass 1 and the global decisions; every input check happens here, before any write.

    The cheap checks (each source's header, obs, genes and first rows, then the checks across
    sources) run before the scan reads every count, so most bad sources fail in seconds.
    """
    bad = BadSources(cfg.skip_bad_sources)
    columns = obs_columns(cfg)
    checked = run_parallel(
        pool, attempt, [(check_source, p, columns) for p in sources], "check sources"
    )
    headers = bad.keep(sources, checked)
    dedupe_gene_tables(headers)
    bad.refuse(repeated_cell_ids(headers))
    headers = bad.keep([h.path for h in headers], headers)
    gene_list = None
    if cfg.genes != HVG:
        known = dict.fromkeys(g for ids in dict.fromkeys(h.gene_ids for h in headers) for g in ids)
        gene_list = genes_from_list(Path(cfg.genes), known)
    bad.refuse(unmatched_genes(headers, gene_list, cfg.genes))
    headers = bad.keep([h.path for h in headers], headers)
    probability = 0.0
    if cfg.genes == HVG:
        probability = min(1.0, cfg.hvg_sample_cells / max(1, sum(h.n_cells for h in headers)))
    tasks = [(scan_source, cfg, i, h.path, probability) for i, h in enumerate(headers)]
    scans = bad.keep([h.path for h in headers], run_parallel(pool, attempt, tasks, "scan sources"))
    dedupe_gene_tables(scans)
    bad.refuse(unmatched_genes(scans, gene_list, cfg.genes))  # a skipped source may leave one alone
    scans = bad.keep([s.path for s in scans], scans)
    if sum(s.n_cells for s in scans) == 0:
        raise PrepareError(f"the {len(scans)} sources hold no cells")
    union = gene_union(scans)
    hvg = None
    if cfg.genes == HVG:
        genes, hvg = genes_by_hvg(scans, union, cfg)
    else:
        genes = gene_list
    gene_names = [union.get(g, g) for g in genes]
    return Plan(scans, vocabulary(scans), genes, gene_names, hvg, bad.entries())


def source_entries(plan: Plan, min_genes: int) -> list[dict]:
    """Manifest ``sources`` entries; logs each source's counts."""
    store_genes = set(plan.genes)
    present: dict[int, int] = {}  # id(gene tuple) -> store genes present (tuples are shared)
    entries = []
    for scan in plan.scans:
        n_present = present.setdefault(
            id(scan.gene_ids), len(store_genes.intersection(scan.gene_ids))
        )
        entry = {
            "file": str(scan.path),
            "n_cells": scan.n_cells,
            "n_genes_source": len(scan.gene_ids),
            "n_genes_missing": len(plan.genes) - n_present,
            "matrix": scan.matrix_key,
            "n_non_primary": scan.n_non_primary,
            "n_below_min_genes": scan.n_below_min_genes,
        }
        entries.append(entry)
        log.info(
            "%s: %d cells (%s), %d genes; %d of %d store genes present, %d zero-filled; "
            "%d non-primary, %d below %d expressed genes",
            scan.path.name,
            scan.n_cells,
            scan.matrix_key,
            entry["n_genes_source"],
            n_present,
            len(plan.genes),
            entry["n_genes_missing"],
            scan.n_non_primary,
            scan.n_below_min_genes,
            min_genes,
        )
    return entries


def build_store(
    cfg: PrepareConfig, plan: Plan, out: Path, pool: Executor | None, provenance: dict
) -> Manifest:
    """Passes 2 and 3 into the cleaned folder ``out``, then the manifest (last)."""
    entries = source_entries(plan, cfg.hvg_min_genes)
    n_cells = [s.n_cells for s in plan.scans]
    n_shards = -(-sum(n_cells) // cfg.shard_size)
    log.info(
        "%d sources, %d cells (%d non-primary, %d below %d expressed genes; all kept and flagged) "
        "-> %d genes, %d shards of %d cells",
        len(n_cells),
        sum(n_cells),
        sum(e["n_non_primary"] for e in entries),
        sum(e["n_below_min_genes"] for e in entries),
        cfg.hvg_min_genes,
        len(plan.genes),
        n_shards,
        cfg.shard_size,
    )
    if plan.skipped:
        log.warning(
            "left out %d bad sources (skip_bad_sources=true; listed in %s under "
            "skipped_sources): %s",
            len(plan.skipped),
            MANIFEST_NAME,
            ", ".join(Path(e["file"]).name for e in plan.skipped),
        )
    tmp = out / TMP_DIR
    tmp.mkdir(exist_ok=True)
    (tmp / FINGERPRINT_FILE).write_text(provenance["fingerprint"])
    reused = sum(piece_path(tmp, i).exists() for i in range(len(n_cells)))
    if reused:
        log.info("reusing %d source pieces of an interrupted run with the same config", reused)
    dest = destinations(n_cells, cfg.seed)
    tasks = [
        (cfg, s.path, piece_path(tmp, i), plan.genes, plan.vocab, dest[i])
        for i, s in enumerate(plan.scans)
    ]
    blocks = run_parallel(pool, write_piece, tasks, "write pieces")
    del dest, tasks
    writer = StoreWriter(out, plan.genes, plan.gene_names)
    tasks = [
        (writer, s, b, tmp, cfg.shard_size) for s, b in enumerate(shard_tasks(blocks, n_shards))
    ]
    shards = run_parallel(pool, write_store_shard, tasks, "write shards")
    shutil.rmtree(tmp)
    provenance["counts"] = {
        "n_sources": len(n_cells),
        "n_skipped_sources": len(plan.skipped),
        "n_cells": sum(n_cells),
        "n_non_primary": sum(e["n_non_primary"] for e in entries),
        "n_below_min_genes": sum(e["n_below_min_genes"] for e in entries),
        "min_genes": cfg.hvg_min_genes,
        "n_shards": n_shards,
        "nnz": sum(s["nnz"] for s in shards),
    }
    return writer.finish(
        shards,
        plan.vocab,
        cfg.shard_size,
        sources=entries,
        provenance=provenance,
        skipped_sources=plan.skipped,
    )


@contextmanager
def _process_pool(workers: int) -> Iterator[Executor | None]:
    """A process pool of ``workers`` processes, or None (run in this process) for one worker."""
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield pool


def prepare_store(cfg: PrepareConfig | Mapping | Any) -> Manifest:
    """Prepare the store ``cfg.output`` from the sources ``cfg.source``; return its manifest.

    ``cfg``: a :class:`PrepareConfig`, a dict or a DictConfig with its keys (ill-typed or unknown
    keys raise PrepareError before any file is read). A complete store made with the same config
    is left as is ("store complete"); one made with another config raises unless ``overwrite``;
    an incomplete one is cleaned and rebuilt. Bad sources raise PrepareError before any shard is
    written, or with ``skip_bad_sources`` are left out and listed (manifest ``skipped_sources``).
    """
    start = time.time()
    cfg = resolve_config(cfg)
    sources = resolve_sources(cfg.source)
    identity = config_identity(cfg, sources)
    fp = fingerprint(identity)
    out = Path(cfg.output).expanduser().resolve()
    manifest = existing_store(out, fp, identity, cfg.overwrite)
    if manifest is not None:
        log.info(
            "%s: store complete (%d cells x %d genes in %d shards), nothing to do",
            out,
            manifest.n_cells,
            manifest.n_genes,
            len(manifest.shards),
        )
        return manifest
    check_output_folder(out)
    workers = cfg.workers or len(os.sched_getaffinity(0))
    with run_log() as buffer, _process_pool(workers) as pool:
        log.info("preparing %s from %d sources with %d workers", out, len(sources), workers)
        plan = plan_store(cfg, sources, pool)
        clean_output(out, fp)
        start_log_file(buffer, out / LOG_NAME)
        provenance = {
            "config": asdict(cfg),
            "sources": [str(p) for p in sources],
            "identity": identity,
            "fingerprint": fp,
            "prepare_overrides": prepare_overrides(cfg, identity),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "hvg": plan.hvg,
        }
        manifest = build_store(cfg, plan, out, pool, provenance)
        log.info(
            "%s: wrote %d cells x %d genes in %d shards (%.1f s)",
            out,
            manifest.n_cells,
            manifest.n_genes,
            len(manifest.shards),
            time.time() - start,
        )
    return manifest
