"""Cold epochs against warm ones and the disk: ``python -m benchmarks.loader STORE --cold``.

What limits an epoch of a store far larger than memory is the disk or the loader's own warm
rate, whichever is slower; this measures how close a cold epoch comes to that, per worker count:

1. the disk: a plain sequential read of the store's files (8 MiB reads, one core) from a cold
   page cache, right before and right after each measurement (its drift: after / before - 1);
2. in one fresh process per measurement (:func:`cold_epochs`): a first epoch, not timed
   (workers start, kernels compile, each block's data is checked once), then the store dropped
   from the page cache (as root the whole cache, else the store's own files:
   :func:`benchmarks.page_cache.drop`), a cold epoch, and a warm one; peak RSS of each;
3. ``cold / min(warm, disk)`` per run, and per worker count its median and spread over
   ``--repeats`` runs, the worker counts (and, with ``--before SRC``, another checkout's code)
   alternated run by run.

Dense float32 batches on the CPU, as :func:`benchmarks.loader.loader_rate`. ``--write`` puts
the table into ``docs/benchmarks.md`` (section ``loader:cold``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.page_cache import drop, sequential_read
from benchmarks.record import (
    REPO_ROOT,
    code_env,
    machine,
    measure_command,
    peak_rss_since_reset_mb,
    reset_peak_rss,
    serve_measurement,
)
from benchmarks.stores import store_datamodule, store_shape
from sweep.data.store import read_manifest

MODULE = "benchmarks.loader_cold"
AFTER, BEFORE = "this checkout", "before"
#: what a measurement prints when it wants the store dropped from the page cache
MAKE_COLD = "make-cold"


def cold_epochs(store: Path, workers: int, batch_size: int) -> dict:
    """A first epoch (not timed), a cold epoch and a warm one of this loader over ``store`` in
    this process, ``workers`` workers: cells/s of each, and the peak RSS of each timed epoch
    (this process plus its workers' ``VmHWM``, reset before the epoch; MiB). Before the cold
    epoch it asks the process that started it to drop the store from the page cache
    (:func:`measure_cold`), so that this one needs nothing of ``sweep`` but the loader."""
    from sweep.data.densify import densify

    dm = store_datamodule(store, workers, batch_size)
    loader = dm.train_dataloader()
    row = {"what": f"{workers} workers", "workers": workers}
    for epoch, state in enumerate(("first", "cold", "warm")):
        if state == "cold":
            print(MAKE_COLD, flush=True)
            if reason := sys.stdin.readline().strip():
                raise RuntimeError(f"{store} cannot be made cold: {reason}")
        loader.epoch_of = lambda epoch=epoch: epoch  # no trainer: say which epoch's order to read
        reset_peak_rss()
        cells, start = 0, time.perf_counter()
        for batch in loader:
            cells += densify(batch, dm.n_vars)["X"].shape[0]
        row[f"{state}_cells_per_s"] = cells / (time.perf_counter() - start)
        row[f"{state}_rss_mb"] = peak_rss_since_reset_mb()
    del loader  # its persistent workers exit (they ignore SIGTERM: nothing else ends them)
    read_ahead_mib = dm.loader_cfg.get("read_ahead_mib")  # absent from older checkouts
    return row | {
        "cells_per_s": row["cold_cells_per_s"],
        "cells_per_epoch": cells,
        "read_ahead_mib": read_ahead_mib if dm.loader_cfg.read_ahead else 0,
    }


def measure_cold(code: Path | None, store: Path, workers: int, batch_size: int) -> dict:
    """:func:`cold_epochs` in a fresh process (``code``: another checkout's ``src``, see
    :func:`benchmarks.record.code_env`), the store dropped from the page cache when it asks."""
    keys = {"store": store, "workers": workers, "batch_size": batch_size}
    command = measure_command(MODULE, "cold", keys)
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=REPO_ROOT,
            env=code_env(code),
        ) as child:
            for line in child.stdout:
                if line.strip() == MAKE_COLD:
                    child.stdin.write(f"{drop(store) or ''}\n")
                    child.stdin.flush()
                else:
                    last = line
        if child.returncode:
            errors.seek(0)
            raise RuntimeError(f"{command} failed:\n{errors.read()[-3000:]}")
    return json.loads(last)


def disk_cells_per_s(store: Path) -> tuple[float, float]:
    """The disk: ``store``'s files read once in order from a cold page cache; (store cells per
    second of it, MB/s)."""
    if reason := drop(store):
        raise RuntimeError(f"{store} cannot be made cold: {reason}")
    read = sequential_read(store)
    return read_manifest(store).n_cells / read["seconds"], read["mb_per_s"]


def run(
    store: Path, workers: list[int], batch_size: int, repeats: int, before: Path | None
) -> list[dict]:
    """Every run: per repeat, per worker count, this checkout's code and ``before``'s (if any,
    in turns first and second), each between two disk reads. Rows of :func:`cold_epochs` with
    ``code``, ``repeat``, ``disk_cells_per_s`` and ``disk_mb_per_s`` (before, after)."""
    codes = [(AFTER, None)] + ([(BEFORE, before)] if before else [])
    rows = []
    for repeat in range(repeats):
        for w in workers:
            for label, code in codes if repeat % 2 else codes[::-1]:
                first = disk_cells_per_s(store)
                row = measure_cold(code, store, w, batch_size)
                last = disk_cells_per_s(store)
                rows.append(
                    row
                    | {
                        "code": label,
                        "repeat": repeat,
                        "disk_cells_per_s": [first[0], last[0]],
                        "disk_mb_per_s": [first[1], last[1]],
                    }
                )
                print(
                    f"    {label}, {w} workers: cold {row['cold_cells_per_s']:,.0f}, warm "
                    f"{row['warm_cells_per_s']:,.0f}, disk {first[0]:,.0f} / {last[0]:,.0f}",
                    flush=True,
                )
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (code, workers), in the order met: medians over the runs of the cold and warm
    epochs, the disk (mean of its two reads per run), the disk's drift (last / first read - 1),
    ``cold / min(warm, disk)`` and the peak RSS of each epoch; ``spread``: (min, max) of each
    run's ratio and drift."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["code"], row["workers"]), []).append(row)
    summaries = []
    for (code, workers), runs in groups.items():
        disk = [statistics.mean(r["disk_cells_per_s"]) for r in runs]
        ratios = [
            r["cold_cells_per_s"] / min(r["warm_cells_per_s"], d)
            for r, d in zip(runs, disk, strict=True)
        ]
        drifts = [r["disk_cells_per_s"][1] / r["disk_cells_per_s"][0] - 1 for r in runs]
        summaries.append(
            {
                "code": code,
                "workers": workers,
                "runs": len(runs),
                "cold": _median(runs, "cold_cells_per_s"),
                "warm": _median(runs, "warm_cells_per_s"),
                "disk": statistics.median(disk),
                "disk_mb_per_s": statistics.median(
                    statistics.mean(r["disk_mb_per_s"]) for r in runs
                ),
                "ratio": statistics.median(ratios),
                "ratio_spread": (min(ratios), max(ratios)),
                "drift": statistics.median(drifts),
                "drift_spread": (min(drifts), max(drifts)),
                "cold_rss_mb": _median(runs, "cold_rss_mb"),
                "warm_rss_mb": _median(runs, "warm_rss_mb"),
                "read_ahead_mib": runs[0]["read_ahead_mib"],
            }
        )
    return summaries


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def markdown(summaries: list[dict], store: Path, batch_size: int, auto: str) -> str:
    """The table of :func:`summarize`'s rows, what the machine and store were, the command."""
    table = [
        "| code | workers | cold epoch cells/s | warm epoch cells/s | disk cells/s (MB/s) "
        "| disk drift | cold / min(warm, disk) | peak RSS cold / warm (MiB) | read-ahead |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        low, high = s["ratio_spread"]
        drift_low, drift_high = s["drift_spread"]
        ahead = f"{s['read_ahead_mib']} MiB/reader" if s["read_ahead_mib"] else "next group"
        table.append(
            f"| {s['code']} | {s['workers']} | {s['cold']:,.0f} | {s['warm']:,.0f} | "
            f"{s['disk']:,.0f} ({s['disk_mb_per_s']:,.0f}) | {s['drift']:+.0%} "
            f"({drift_low:+.0%} to {drift_high:+.0%}) | **{s['ratio']:.2f}** ({low:.2f}-"
            f"{high:.2f}) | {s['cold_rss_mb']:,.0f} / {s['warm_rss_mb']:,.0f} | {ahead} |"
        )
    command = "python -m benchmarks.loader " + " ".join(sys.argv[1:])
    return "\n".join(
        [
            f"### Cold epochs ({time.strftime('%Y-%m-%d')})",
            "",
            f"- machine: {machine()}",
            f"- store: {store_shape(store)}; batch {batch_size}, dense float32 batches",
            f"- command: `{command}`",
            f"- medians of {summaries[0]['runs']} runs (spread: min-max); "
            "`loader.num_workers=null` with the store cold here: " + auto,
            "",
            *table,
            "",
            *(f"- {line}" for line in worker_lines(summaries)),
        ]
    )


def worker_lines(summaries: list[dict]) -> list[str]:
    """Per code: each worker count's cold epoch against the fewest workers' (medians)."""
    lines = []
    for code in dict.fromkeys(s["code"] for s in summaries):
        mine = sorted((s for s in summaries if s["code"] == code), key=lambda s: s["workers"])
        for s in mine[1:]:
            lines.append(
                f"{code}: cold epoch at {s['workers']} workers / at {mine[0]['workers']}: "
                f"{s['cold'] / mine[0]['cold']:.2f}"
            )
    return lines


def auto_choice(store: Path) -> str:
    """What ``loader.num_workers=null`` picks for ``store`` once it is cold, and why."""
    from sweep.data.datamodule import auto_num_workers

    if reason := drop(store):
        return f"not measured ({reason})"
    manifest = read_manifest(store)
    workers, why = auto_num_workers([store / entry["file"] for entry in manifest.shards])
    return f"{workers} workers ({why})"


def bench(args: argparse.Namespace) -> str:
    """``--cold`` of :mod:`benchmarks.loader`: every run, then the summary as markdown."""
    store = Path(args.store)
    print(f"store: {store_shape(store)}")
    rows = run(store, args.workers, args.batch_size, args.repeats, args.before)
    return markdown(summarize(rows), store, args.batch_size, auto_choice(store))


if __name__ == "__main__":
    if not serve_measurement(sys.argv[1:], {"cold": cold_epochs}):
        sys.exit("run it as `python -m benchmarks.loader STORE --cold`")
