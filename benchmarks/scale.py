"""The scale benchmark: ``python -m benchmarks.scale DIR [options]`` (from the checkout).

What the loader does as the store grows toward the seed's 44M cells, side by side in one run on
seed-shaped stores (:func:`benchmarks.loader.make_store`, 10k-cell shards) of ``--sizes`` cells,
written under DIR (kept for the next run: a store is reused when its manifest matches):

1. the store's bytes per cell and per non-zero (every file of the folder);
2. warm epochs: the store's files read once into the page cache, then this loader at
   ``--workers`` (0, 1, 2), ``--epochs`` epochs each in a fresh process; cells/s is the best
   epoch, compared with the smallest store's at the same workers;
3. cold epochs (``--cold-sizes``): the store's files evicted from the page cache
   (:mod:`benchmarks.page_cache`), one epoch of each of :data:`COLD_VARIANTS` (0 and 2 workers
   reading ahead, and 0 workers without), each between two sequential reads of the same files,
   cold too (the disk's ceiling, one core, 8 MiB reads), ``--cold-repeats`` times, then a warm
   epoch in the same process; the ratios are the cold epoch's cells/s over the mean of its two
   ceilings' cells/s (store cells / read seconds), with its range and the ceilings', and over
   the warm epoch's; the peak RSS of each epoch (this process and its workers). Where the
   files cannot be evicted (tmpfs), the report says so;
4. the seed's 44M cells projected: the store's bytes; the main process's RSS once the
   datamodule is built and the bytes per cell of the per-cell arrays it holds through training
   (a line through the smallest and largest store); a cold epoch's time at the disk's rate and
   at each setting's cold rate on the largest store measured cold, and its peak RSS there.

``--write`` puts the table into ``docs/benchmarks.md`` (section ``scale``).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

from benchmarks.loader import loader_rate, make_store
from benchmarks.page_cache import evict, sequential_read, store_files, warm_up
from benchmarks.record import (
    DOC,
    machine,
    measure_in_subprocess,
    peak_rss_since_reset_mb,
    reset_peak_rss,
    serve_measurement,
    write_section,
)
from benchmarks.stores import store_shape
from sweep.data.store import StoreError, read_manifest

MODULE = "benchmarks.scale"
SEED_CELLS = 44_000_000
SHARD_SIZE = 10_000
#: the cold epochs measured: (workers, delivery, read_ahead) (see :func:`cold_epoch_rate`); CSR
#: batches, as a GPU trainer receives them: a CPU trainer on a store bigger than memory is not
#: the job these are for
COLD_VARIANTS = ((0, "csr", True), (2, "csr", True), (0, "csr", False))


def cold_epoch_rate(
    store: Path, workers: int, batch_size: int, delivery: str, read_ahead: bool
) -> dict:
    """One training epoch of this loader (``workers`` workers) over ``store``, its files evicted
    from the page cache once the datamodule is built (it reads obs and row pointers: setup, not
    the epoch) and a validation pass has loaded the code (compiled kernels, torch's libraries).

    ``delivery``: "dense", a cell counts once it is a dense float32 row (a CPU trainer, densified
    here); "csr", once its batch is handed over as CSR (what a GPU trainer receives, to densify
    on the device). ``read_ahead``: the loader key (False: the gather waits on page faults).
    """
    from benchmarks.stores import store_datamodule
    from sweep.data.densify import densify

    dm = store_datamodule(store, workers, batch_size, read_ahead=read_ahead)
    dense = delivery == "dense"
    for batch in dm.loader(dm.val_set, trains_on_cpu=dense):
        densify(batch, dm.n_vars)
    loader = dm.loader(dm.train_set, trains_on_cpu=dense)
    evict_or_fail(store)
    rates, peaks = [], []
    for _ in ("cold", "warm"):  # the cold epoch leaves the store cached (if it fits in memory)
        reset_peak_rss()
        cells, start = 0, time.perf_counter()
        for batch in loader:
            cells += densify(batch, dm.n_vars)["X"].shape[0] if dense else _csr_cells(batch)
        rates.append(cells / (time.perf_counter() - start))
        peaks.append(peak_rss_since_reset_mb())
    del loader  # its persistent workers exit (they ignore SIGTERM)
    return {
        "what": f"cold epoch, {_variant(workers, delivery, read_ahead)}",
        "cells_per_s": rates[0],
        "warm_cells_per_s": rates[1],
        "cold_rss_mb": peaks[0],
        "warm_rss_mb": peaks[1],
        "cells_per_epoch": cells,
    }


def _csr_cells(batch: dict) -> int:
    """Cells of a CSR batch as received (its slot released: the batch is consumed)."""
    from sweep.data.densify import X_INDPTR, X_RELEASE

    if X_RELEASE in batch:
        batch[X_RELEASE]()
    return batch[X_INDPTR].shape[0] - 1


MEASURES = {"loader": loader_rate, "cold": cold_epoch_rate}


def ensure_store(folder: Path, n_cells: int) -> Path:
    """A seed-shaped store of ``n_cells`` (a multiple of 10k) in ``folder``, made if absent."""
    try:
        if read_manifest(folder).n_cells == n_cells:
            return folder
    except StoreError:
        pass
    print(f"making {folder} ({n_cells:,} cells)", flush=True)
    return make_store(folder, n_shards=n_cells // SHARD_SIZE, shard_size=SHARD_SIZE)


def warm_rows(store: Path, workers: list[int], batch_size: int, epochs: int) -> list[dict]:
    warm_up(store)
    rows = []
    for w in workers:
        rows.append(
            measure_in_subprocess(
                MODULE, "loader", store=store, workers=w, batch_size=batch_size, epochs=epochs
            )
        )
    return rows


def cold_rows(store: Path, batch_size: int, repeats: int) -> list[dict]:
    """Per repeat and :data:`COLD_VARIANTS`: ceiling, epoch, ceiling, each from a cold store."""
    n_cells = read_manifest(store).n_cells
    rows = []
    for _, (workers, delivery, read_ahead) in itertools.product(range(repeats), COLD_VARIANTS):
        evict_or_fail(store)
        before = sequential_read(store)
        evict_or_fail(store)
        epoch = measure_in_subprocess(
            MODULE,
            "cold",
            store=store,
            workers=workers,
            batch_size=batch_size,
            delivery=delivery,
            read_ahead=read_ahead,
        )
        evict_or_fail(store)
        after = sequential_read(store)
        epoch["ceilings"] = [n_cells / read["seconds"] for read in (before, after)]
        epoch["disk_mb_per_s"] = [read["mb_per_s"] for read in (before, after)]
        rows.append(epoch | {"variant": (workers, delivery, read_ahead)})
        print(f"    ceilings {epoch['ceilings'][0]:,.0f} / {epoch['ceilings'][1]:,.0f} cells/s")
    return rows


def _variant(workers: int, delivery: str, read_ahead: bool) -> str:
    return f"{workers} workers, {delivery}" + ("" if read_ahead else ", no read-ahead")


def evict_or_fail(store: Path) -> None:
    reason = evict(store)
    if reason:
        raise RuntimeError(reason)


def run(args: argparse.Namespace) -> dict:
    """Every measurement, per store size: {"stores": {size: {...}}, "cold_skipped": reason}."""
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    results = {"stores": {}, "cold_skipped": None}
    for size in args.sizes:
        store = ensure_store(root / f"store_{size}", size)
        cold_skipped = results["cold_skipped"] = results["cold_skipped"] or evict(store)
        shape = store_shape(store)
        print(f"store: {shape}", flush=True)
        entry = {
            "shape": shape,
            "bytes": sum(p.stat().st_size for p in store_files(store)),
            "warm": warm_rows(store, args.workers, args.batch_size, args.epochs),
        }
        if size in args.cold_sizes and not cold_skipped:
            entry["cold"] = cold_rows(store, args.batch_size, args.cold_repeats)
        results["stores"][size] = entry
    return results


def _cold_summary(rows: list[dict], variant: tuple) -> str:
    """'epoch cells/s = ratio to its ceilings (range over repeats; the ceilings' range)'."""
    mine = [r for r in rows if tuple(r["variant"]) == variant]
    ratios = [r["cells_per_s"] / statistics.mean(r["ceilings"]) for r in mine]
    ceilings = [c for r in mine for c in r["ceilings"]]
    disk = [d for r in mine for d in r["disk_mb_per_s"]]
    epoch = statistics.median(r["cells_per_s"] for r in mine)
    of_warm = statistics.median(r["cells_per_s"] / r["warm_cells_per_s"] for r in mine)
    return (
        f"{_variant(*variant)}: {epoch:,.0f} cells/s = {statistics.median(ratios):.0%} "
        f"of the disk, {of_warm:.0%} of warm "
        f"({min(ratios):.0%}-{max(ratios):.0%} of the disk over {len(mine)}; ceilings "
        f"{min(ceilings):,.0f}-{max(ceilings):,.0f} cells/s, "
        f"{min(disk):,.0f}-{max(disk):,.0f} MB/s)"
    )


def markdown(results: dict, args: argparse.Namespace) -> str:
    sizes = sorted(results["stores"])
    base = results["stores"][sizes[0]]
    lines = [
        f"### Scale ({time.strftime('%Y-%m-%d')})",
        "",
        f"- machine: {machine()}",
        f"- command: `python -m {MODULE} {' '.join(sys.argv[1:])}`",
        f"- batch {args.batch_size}; warm: best of {args.epochs} epochs, each loader in a fresh "
        "process; cold: one epoch, the store evicted from the page cache, between two sequential "
        "reads of the same files (the ceiling), then a warm epoch in the same process; median "
        "and range over the repeats",
        "",
        "| cells | store | warm cells/s at "
        + ", ".join(f"{w}" for w in args.workers)
        + " workers (vs smallest) | cold epoch: cells/s = share of the disk's ceiling"
        + " | main RSS after setup (MiB) | per-cell arrays (bytes/cell) |",
        "| ---: | --- | --- | --- | ---: | ---: |",
    ]
    for size in sizes:
        entry = results["stores"][size]
        warm = []
        for row, first in zip(entry["warm"], base["warm"], strict=True):
            change = row["cells_per_s"] / first["cells_per_s"] - 1
            warm.append(f"{row['cells_per_s']:,.0f} ({change:+.0%})")
        cold = (
            "<br>".join(_cold_summary(entry["cold"], variant) for variant in COLD_VARIANTS)
            if "cold" in entry
            else ""
        )
        setup = entry["warm"][0]
        lines.append(
            f"| {size:,} | {entry['bytes'] / size:,.0f} bytes/cell | {', '.join(warm)} | {cold} | "
            f"{setup['setup_rss_mb']:,.0f} | {setup['metadata_bytes_per_cell']:.1f} |"
        )
    lines += ["", *projection(results)]
    if results["cold_skipped"]:
        lines.append(f"- cold epochs not measured: {results['cold_skipped']}")
    return "\n".join(lines)


def projection(results: dict) -> list[str]:
    """The seed's 44M cells: store size, a cold epoch at the measured disk rate, main RSS."""
    stores = results["stores"]
    small, large = min(stores), max(stores)
    bytes_per_cell = stores[large]["bytes"] / large
    rss = [stores[s]["warm"][0]["setup_rss_mb"] for s in (small, large)]
    slope = (rss[1] - rss[0]) / (large - small) if large > small else 0.0
    lines = [
        f"- projected to {SEED_CELLS / 1e6:.0f}M cells: store "
        f"{bytes_per_cell * SEED_CELLS / 1e9:,.0f} GB; main-process RSS after setup "
        f"{rss[1] + slope * (SEED_CELLS - large):,.0f} MiB "
        f"({slope * 2**20:.1f} bytes per cell from {small:,} to {large:,} cells)"
    ]
    cold = [r for s in stores.values() for r in s.get("cold", [])]
    if not cold:
        return lines
    disk = statistics.median(d for r in cold for d in r["disk_mb_per_s"])
    best = max(
        statistics.median(r["cells_per_s"] for r in cold if tuple(r["variant"]) == v)
        for v in COLD_VARIANTS
    )
    largest = max(size for size, entry in stores.items() if "cold" in entry)
    per_setting = [
        (v, statistics.median(r["cells_per_s"] for r in rows))
        for v in COLD_VARIANTS
        if (rows := [r for r in stores[largest]["cold"] if tuple(r["variant"]) == v])
    ]
    lines.append(
        f"- a cold 44M-cell epoch: {bytes_per_cell * SEED_CELLS / (disk * 1e6) / 60:,.0f} "
        f"min at this disk's median {disk:,.0f} MB/s; at the best cold rate measured here "
        f"({best:,.0f} cells/s) {SEED_CELLS / best / 60:,.0f} min; at the cold rates of the "
        f"{largest:,}-cell store: "
        + "; ".join(
            f"{_variant(*v)} {rate:,.0f} cells/s, {SEED_CELLS / rate / 60:,.0f} min"
            for v, rate in per_setting
        )
    )
    peaks = [(tuple(r["variant"]), r.get("cold_rss_mb")) for r in stores[largest]["cold"]]
    if all(peak is not None for _, peak in peaks):
        lines.append(
            f"- memory of a cold epoch at the {largest:,}-cell store (peak RSS, this process "
            "and its workers; the read-ahead fills the page cache, not RSS): "
            + "; ".join(
                f"{_variant(*v)} {statistics.median(p for w, p in peaks if w == v):,.0f} MiB"
                for v, _ in per_setting
            )
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if serve_measurement(argv, MEASURES):
        return
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("dir", help="folder for the stores (reused across runs)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[80_000, 600_000, 2_000_000])
    parser.add_argument("--cold-sizes", type=int, nargs="*", default=[80_000, 600_000, 2_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cold-repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--doc", type=Path, default=DOC, help="the file --write updates")
    args = parser.parse_args(argv)
    bad = [s for s in args.sizes if s % SHARD_SIZE]
    if bad:
        parser.error(f"--sizes must be multiples of {SHARD_SIZE:,} cells: {bad}")
    text = markdown(run(args), args)
    print("\n" + text)
    if args.write:
        write_section("scale", text, args.doc)
        print(f"\nwrote {args.doc}")


if __name__ == "__main__":
    main()
