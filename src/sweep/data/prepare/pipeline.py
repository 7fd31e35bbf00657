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

import numpy as np
from tqdm.auto import tqdm

from sweep.data.prepare.checks import (
    BadSources,
    Scan,
    attempt,
    dedupe_gene_tables,
    merge_parts,
    name_genes,
    repeated_cell_ids,
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
from sweep.data.prepare.genes import check_gene_list, gene_union, genes_by_hvg, read_gene_list
from sweep.data.prepare.output import (
    LOG_NAME,
    TMP_DIR,
    check_output_folder,
    clean_output,
    existing_store,
    interrupted_plan,
    run_log,
    same_run,
    save_plan,
    start_log_file,
    start_tmp,
)
from sweep.data.prepare.shards import (
    GroupTask,
    Layout,
    finished_shard,
    group_path,
    group_tasks,
    read_group,
    stored_scans,
    write_store_shard,
)
from sweep.data.prepare.sources import GeneTable, SourceReader, gene_table, source_size
from sweep.data.store import MANIFEST_NAME, Manifest, StoreWriter

log = logging.getLogger(__package__)  # the pipeline's one logger (see the package docstring)


def run_parallel(
    pool: Executor | None,
    fn: Any,
    tasks: list[tuple],
    desc: str,
    show: bool,
    cells: list[int] | None = None,
) -> list:
    """``[fn(*t) for t in tasks]`` over the pool (here when None), with a progress bar on stderr
    unless ``show`` is false: with ``cells`` (per task) cells done, cells/s and the ETA, else
    files (tasks) done, their ETA and the cells found so far. Logs the pass's time at its end."""
    start = time.perf_counter()
    sizes = cells or [1] * len(tasks)
    bar = tqdm(
        total=sum(sizes),
        desc=desc,
        unit="cells" if cells else "files",
        unit_scale=bool(cells),
        disable=not show,
        smoothing=0.05,
    )
    results: list = [None] * len(tasks)

    finished = found = 0

    def done(i: int, result: Any) -> None:
        nonlocal finished, found
        results[i], finished = result, finished + 1
        bar.update(sizes[i])
        if cells:
            bar.set_postfix_str(f"{finished}/{len(tasks)} tasks", refresh=False)
        else:  # files: the cells they hold so far
            found += getattr(result, "n_cells", 0)
            rate = found / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{found:,} cells, {rate:,.0f} cells/s", refresh=False)

    with bar:
        if pool is None:
            for i, task in enumerate(tasks):
                done(i, fn(*task))
        else:
            futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
            try:
                for future in as_completed(futures):
                    done(futures[future], future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    seconds = time.perf_counter() - start
    rate = f", {sum(sizes) / max(seconds, 1e-9):,.0f} cells/s" if cells else ""
    log.info("%s: %d tasks in %.1f s%s", desc, len(tasks), seconds, rate)
    return results


@dataclass
class Plan:
    """What pass 1 decided: the sources' scans, vocabularies, the store's genes, the sources
    left out (``skipped``: the manifest's ``skipped_sources``) and how the store is cut."""

    scans: list[Scan]
    vocab: dict[str, list[str]]
    genes: list[str]
    gene_names: list[str]
    hvg: dict | None
    skipped: list[dict]
    layout: Layout


def run_groups(
    cfg: PrepareConfig, tasks: list[GroupTask], tmp: Path, pool: Executor | None, desc: str
) -> list[list]:
    """:func:`read_group` for every task, last group first (after pass 1 the sources read last
    are the likeliest to be in the page cache); a group whose file holds the same key already
    (written by pass 1 or an interrupted run) is not read again. Returns each task's results."""
    results = [
        stored_scans(group_path(tmp, t.index), t.key) if t.genes is not None else None
        for t in tasks
    ]
    todo = [i for i in reversed(range(len(tasks))) if results[i] is None]
    if len(todo) < len(tasks):
        log.info("reusing %d of %d groups written before", len(tasks) - len(todo), len(tasks))
    done = run_parallel(
        pool,
        read_group,
        [(tasks[i], group_path(tmp, tasks[i].index)) for i in todo],
        desc,
        cfg.progress,
        [tasks[i].n_cells for i in todo],
    )
    for i, result in zip(todo, done, strict=True):
        results[i] = result
    return results


def _known_genes(paths: list[Path]) -> GeneTable | tuple:
    """The gene ids of the first source with readable ones (to tell a gene list's header)."""
    for path in paths:
        try:
            with SourceReader(path, None) as reader:
                return reader.read_gene_ids()
        except PrepareError:
            continue
    return ()


def plan_store(cfg: PrepareConfig, sources: list[Path], pool: Executor | None, tmp: Path) -> Plan:
    """Pass 1 and the global decisions; every input check happens here, before any shard.

    Opens every source (its size: how the store is cut), then reads each group's sources once
    (:func:`read_group`): with a gene list it writes the group files too, so pass 2 has nothing
    left to do unless a source is left out. Then, in this process, the checks across sources,
    the vocabularies and, for ``genes=hvg``, the gene selection.
    """
    bad = BadSources(cfg.skip_bad_sources)
    show = cfg.progress
    sizes = run_parallel(pool, attempt, [(source_size, p) for p in sources], "open sources", show)
    opened = bad.keep(
        sources,
        [
            r if isinstance(r, PrepareError) else (p, *r)
            for p, r in zip(sources, sizes, strict=True)
        ],
    )
    paths, n_cells, n_values = (list(column) for column in zip(*opened, strict=True))
    gene_list = None
    if cfg.genes != HVG:
        gene_list = read_gene_list(Path(cfg.genes), dict.fromkeys(_known_genes(paths)))
    probability = 0.0
    if cfg.genes == HVG:
        probability = min(1.0, cfg.hvg_sample_cells / max(1, sum(n_cells)))
    layout = Layout.plan(n_cells, sum(n_values), cfg.shard_size)
    genes = gene_table(gene_list) if gene_list is not None else None
    tasks = group_tasks(paths, n_cells, layout, genes, cfg, probability)
    parts: list[list] = [[] for _ in paths]
    for task, results in zip(tasks, run_groups(cfg, tasks, tmp, pool, "read sources"), strict=True):
        for part, result in zip(task.parts, results, strict=True):
            parts[part.index].append(result)
    failed = [next((r for r in p if isinstance(r, PrepareError)), None) for p in parts]
    scans = bad.keep(
        paths, [error or merge_parts(p) for error, p in zip(failed, parts, strict=True)]
    )
    name_genes(scans)
    dedupe_gene_tables(scans)
    bad.refuse(repeated_cell_ids(scans))
    scans = bad.keep([s.path for s in scans], scans)
    union = gene_union(scans)
    if gene_list is not None:
        check_gene_list(Path(cfg.genes), gene_list, union)
    bad.refuse(unmatched_genes(scans, gene_list, cfg.genes))
    scans = bad.keep([s.path for s in scans], scans)
    if sum(s.n_cells for s in scans) == 0:
        raise PrepareError(f"the {len(scans)} sources hold no cells")
    for scan in scans:
        scan.cell_id_hashes = None
    if len(scans) < len(paths):  # cut the store again, without the sources left out
        kept = {s.path for s in scans}
        values = sum(v for p, v in zip(paths, n_values, strict=True) if p in kept)
        layout = Layout.plan([s.n_cells for s in scans], values, cfg.shard_size)
        union = gene_union(scans)
    hvg = None
    if cfg.genes == HVG:
        genes, hvg = genes_by_hvg(scans, union, cfg)
    else:
        genes = gene_list
    gene_names = [union.get(g, g) for g in genes]
    return Plan(scans, vocabulary(scans), genes, gene_names, hvg, bad.entries(), layout)


def source_entries(plan: Plan, min_genes: int) -> list[dict]:
    """Manifest ``sources`` entries; logs each source's counts."""
    store_genes = set(plan.genes)
    present: dict[tuple, int] = {}  # gene table -> store genes present
    entries = []
    for scan in plan.scans:
        if scan.gene_ids not in present:
            present[scan.gene_ids] = len(store_genes.intersection(scan.gene_ids))
        n_present = present[scan.gene_ids]
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
        log.debug(  # one per source: 4,440 for the Census; the summary follows at INFO
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


def source_summary(entries: list[dict], n_genes: int) -> str:
    """The sources in one line: their sizes (cells), how many lack some of the ``n_genes`` store
    genes (zero-filled), and where each source's own counts are (the manifest)."""
    cells = np.array([e["n_cells"] for e in entries])
    missing = [e["n_genes_missing"] for e in entries if e["n_genes_missing"]]
    lacking = (
        f"{len(missing)} lack some of the {n_genes} store genes (zero-filled; up to {max(missing)})"
        if missing
        else f"all have the {n_genes} store genes"
    )
    return (
        f"sources: {len(entries)} of {int(cells.min())} to {int(cells.max())} cells (median "
        f"{int(np.median(cells))}); {lacking}; each source's counts: {MANIFEST_NAME} "
        '"sources"'
    )


def write_shards(
    cfg: PrepareConfig, plan: Plan, writer: StoreWriter, tmp: Path, pool: Executor | None
) -> list[dict]:
    """Pass 3: every shard not left whole by an interrupted run; all shards' manifest entries."""
    layout = plan.layout
    shards = [
        finished_shard(writer.folder, s, layout, len(writer.genes)) for s in range(layout.n_shards)
    ]
    if any(shards):
        reused = sum(map(bool, shards))
        log.info("reusing %d of %d shards written by an interrupted run", reused, len(shards))
    runs = [
        [s for s in range(first, min(first + layout.run_shards, layout.n_shards)) if not shards[s]]
        for first in range(0, layout.n_shards, layout.run_shards)
    ]
    runs = [run for run in runs if run]
    tasks = [(writer, run, tmp, layout, plan.vocab) for run in runs]
    cells = [sum(layout.shard_cells(s) for s in run) for run in runs]
    written = run_parallel(pool, write_store_shard, tasks, "write shards", cfg.progress, cells)
    for run, entries in zip(runs, written, strict=True):
        for shard, entry in zip(run, entries, strict=True):
            shards[shard] = entry
    return shards


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
    log.info(source_summary(entries, len(plan.genes)))
    if plan.skipped:
        log.warning(
            "left out %d bad sources (skip_bad_sources=true; listed in %s under "
            "skipped_sources): %s",
            len(plan.skipped),
            MANIFEST_NAME,
            ", ".join(Path(e["file"]).name for e in plan.skipped),
        )
    tmp = out / TMP_DIR
    paths = [s.path for s in plan.scans]
    tasks = group_tasks(paths, n_cells, plan.layout, gene_table(plan.genes), cfg, 0.0)
    run_groups(cfg, tasks, tmp, pool, "write groups")
    writer = StoreWriter(out, plan.genes, plan.gene_names)
    shards = write_shards(cfg, plan, writer, tmp, pool)
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
    manifest = writer.finish(
        shards,
        plan.vocab,
        cfg.shard_size,
        sources=entries,
        provenance=provenance,
        skipped_sources=plan.skipped,
    )
    shutil.rmtree(tmp)
    return manifest


@contextmanager
def _process_pool(workers: int) -> Iterator[Executor | None]:
    """A process pool of ``workers`` processes, or None (run in this process) for one worker."""
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield pool


def prepare_store(cfg: PrepareConfig | Mapping | Any) -> Manifest:
    """Prepare the store ``cfg.output`` from the sources ``cfg.source``.

    A complete store made with the same config is left as is ("store complete"); one made with
    another config raises unless ``overwrite``; an interrupted one resumes, other incomplete ones
    are cleaned and rebuilt. Bad sources raise before any shard is written, or with
    ``skip_bad_sources`` are left out and listed (manifest ``skipped_sources``).

    Parameters
    ----------
    cfg
        A :class:`~sweep.config.schema.PrepareConfig`, or a dict or DictConfig of its keys.

    Returns
    -------
    The store's manifest (genes, shards, vocabularies, provenance).

    Raises
    ------
    PrepareError
        A bad key, source, gene list or output folder, named with the fix; ill-typed or unknown
        keys before any file is read.
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
        shutil.rmtree(out / TMP_DIR, ignore_errors=True)  # a run killed right after its manifest
        return manifest
    check_output_folder(out)
    workers = cfg.workers or len(os.sched_getaffinity(0))
    created, resumed = not out.exists(), same_run(out, fp)
    with run_log() as buffer, _process_pool(workers) as pool:
        log.info("preparing %s from %d sources with %d workers", out, len(sources), workers)
        plan = interrupted_plan(out, fp)
        tmp = start_tmp(out, fp, resumed)
        if plan is None:
            try:
                plan = plan_store(cfg, sources, pool, tmp)
            except PrepareError:
                shutil.rmtree(out if created else tmp)  # a refused run leaves nothing
                raise
        else:
            log.info("%s: resuming an interrupted run with the same config", out)
        clean_output(out, resumed)
        save_plan(out, plan)
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
        try:  # the new store's audit in a few lines (obs columns only; sweep.audit)
            from sweep.audit import store_summary

            for line in store_summary(out):
                log.info(line)
        except Exception as err:  # the store is complete: a failed summary must not fail it
            log.warning("audit summary skipped (%s: %s)", type(err).__name__, err)
    return manifest
