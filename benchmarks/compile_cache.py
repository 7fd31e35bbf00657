"""What keeping compiled kernels saves: ``python -m benchmarks.compile_cache [--write]``.

Each round runs three fresh processes, one after the other, on the demo data set's 1,000
evaluation cells (the default evaluation, scVI's latent space of an untrained ``czi_128`` model,
with the PCA baseline), as a job's first scoring does:

- before: no kernels kept (sweep.evaluation.compile_cache switched off, as before issue 21);
- first: an empty cache folder (a fresh temporary ``SCVI_SWEEP_CACHE``): compiles and keeps;
- second: the same folder, as the second job of a sweep on the machine.

Each process times its first scoring (``sweep.evaluation.scib.score``), its first UMAP layout (a
job's last epoch) and a second scoring (nothing left to compile: the floor), wall and CPU
seconds; the packages are imported before the clock starts, and keeping the kernels (JAX's
config, numba's caches) is timed apart. The scores and layouts of all processes must be equal to
the last digit. ``--write`` puts the table into ``docs/benchmarks.md`` (section
``compile_cache``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.record import MEASURE, REPO_ROOT, machine, serve_measurement, write_section

#: the processes of a round, in order: (name, kernels kept, a fresh cache folder)
PROCESSES = (("before", False, True), ("first", True, True), ("second", True, False))
#: the section's title in docs/benchmarks.md
TITLE = "## 2026-12-07: compiled kernels kept across processes (issue 21)"


def _clock() -> tuple[float, float]:
    """(wall, CPU of this process) in s."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


def first_scoring(store: str, cache: str, keep: bool) -> dict:
    """One process (run by :func:`run`): the first scoring, first UMAP and a second scoring of
    the demo's evaluation cells, with the kernels kept in ``cache`` or (``keep`` False) not."""
    os.environ["SCVI_SWEEP_CACHE"] = cache
    import scib_metrics.benchmark  # noqa: F401  imported before any clock, in every process
    import scvi
    import umap  # noqa: F401

    from sweep.config.schema import compose_train
    from sweep.data.datamodule import StoreDataModule
    from sweep.evaluation import compile_cache
    from sweep.evaluation.embedding import umap_layout
    from sweep.evaluation.latent import latent
    from sweep.evaluation.scib import score
    from sweep.model.build import build_scvi
    from sweep.paths import cache_dir
    from sweep.training import parts
    from sweep.training.epoch_stats import EpochStats

    cfg = compose_train(["logger=none", "dataset=prepared", f"dataset.path={store}"])
    datamodule = StoreDataModule(Path(store), cfg.data, cfg.batch, cfg.loader, seed=cfg.seed)
    scvi.settings.seed = cfg.seed
    encoding = datamodule.encoding
    model = build_scvi(
        datamodule.manifest.genes,
        encoding.batch_categories,
        encoding.covariate_categories,
        cfg.model,
    )
    started = _clock()
    kept = compile_cache.keep_compiled_kernels(cache_dir()) if keep else None
    keep_s = _since(started)
    if not keep:  # build_scoring's call does nothing: the kernels are not kept
        parts.keep_compiled_kernels = lambda folder: None
    scoring = parts.build_scoring(cfg, datamodule, EpochStats())
    embedding = latent(model.module, scoring.cells)
    times = {}
    started = _clock()
    scores = score(scoring.cells, embedding)
    times["first"] = _since(started)
    started = _clock()
    layout = umap_layout(scoring.cells, embedding, cfg.evaluation.seed)
    times["umap"] = _since(started)
    started = _clock()
    score(scoring.cells, embedding)
    times["warm"] = _since(started)
    return {
        "found": bool(kept and kept.found),
        "keep_s": keep_s[0],
        **{f"{k}_s": wall for k, (wall, _) in times.items()},
        **{f"{k}_cpu_s": cpu for k, (_, cpu) in times.items()},
        "scores": hashlib.sha256(json.dumps(scores, sort_keys=True).encode()).hexdigest()[:12],
        "layout": hashlib.sha256(layout.iloc[:, :4].to_numpy().tobytes()).hexdigest()[:12],
        "load_1min": os.getloadavg()[0],
    }


def run(store: Path, cache: Path, keep: bool) -> dict:
    """:func:`first_scoring` in a fresh interpreter; its row."""
    kwargs = json.dumps({"store": str(store), "cache": str(cache), "keep": keep})
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.compile_cache", MEASURE, "first_scoring", kwargs],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"first_scoring {kwargs} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def folder_mb(folder: Path) -> float:
    """The size of the files under ``folder``, MB."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)

    from sweep.config.schema import compose_train
    from sweep.data.demo import resolve_store

    store = resolve_store(compose_train([]).dataset)  # the demo store, built once
    rows, sizes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            cache = Path(tmp) / f"cache-{round_}"
            for name, keep, fresh in PROCESSES:
                folder = Path(tmp) / f"cache-{round_}-{name}" if not keep else cache
                if fresh:
                    shutil.rmtree(folder, ignore_errors=True)
                row = {"round": round_, "process": name, **run(store, folder, keep)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            sizes.append(folder_mb(cache / "kernels"))
    text = report(rows, sizes, args)
    print(text)
    if args.write:
        write_section("compile_cache", text)


def report(rows: list[dict], sizes: list[float], args) -> str:
    """The markdown section: every process, and the second's first scoring over the first's."""
    by = {(r["round"], r["process"]): r for r in rows}
    rounds = sorted({r["round"] for r in rows})
    ratios = [by[n, "second"]["first_s"] / by[n, "first"]["first_s"] for n in rounds]
    cpu = [by[n, "second"]["first_cpu_s"] / by[n, "first"]["first_cpu_s"] for n in rounds]
    umap = [by[n, "second"]["umap_s"] / by[n, "first"]["umap_s"] for n in rounds]
    same = len({(r["scores"], r["layout"]) for r in rows}) == 1
    lines = [
        TITLE,
        "",
        f"Machine: {machine()}; shared with other work while it ran (the 1-minute load average "
        "at each process's end is in the table), so read the spread between rounds as this "
        f"machine's noise. {len(rounds)} rounds of three fresh processes each (before: no "
        "kernels kept; first: an empty cache folder; second: the same folder), scoring the demo "
        "data set's 1,000 evaluation cells (scVI latent of an untrained `czi_128` model, with the "
        "PCA baseline). Seconds, wall (CPU of the process in brackets):",
        "",
        "| round | process | kernels found | keeping them s | first scoring s | first UMAP s "
        "| second scoring s | load |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['round']} | {r['process']} | {'yes' if r['found'] else 'no'} | "
            f"{r['keep_s']:.1f} | {r['first_s']:.1f} ({r['first_cpu_s']:.1f}) | "
            f"{r['umap_s']:.1f} ({r['umap_cpu_s']:.1f}) | {r['warm_s']:.1f} "
            f"({r['warm_cpu_s']:.1f}) | {r['load_1min']:.1f} |"
            for r in rows
        ),
        "",
        "The second process's first scoring over the first's: "
        + ", ".join(f"{x:.2f}" for x in ratios)
        + f" (median {statistics.median(ratios):.2f}; CPU seconds: "
        + ", ".join(f"{x:.2f}" for x in cpu)
        + "); its first UMAP over the first's: "
        + ", ".join(f"{x:.2f}" for x in umap)
        + ". Scores and layouts of every process equal to the last digit: "
        + ("yes" if same else "**no**")
        + f". The kept kernels take {max(sizes):.1f} MB.",
        "",
        "What the second process's first scoring still spends beyond its second (the floor: the "
        "metrics themselves): JAX's tracing and lowering (its persistent cache keeps compiled "
        "programs, not traces) and pynndescent's `nn_descent` and `nn_descent_internal` (kBET's "
        "neighbours), which numba cannot keep: they call `numba.get_num_threads()`, which numba "
        "compiles to an address in the process, so they compile again in each process, from "
        "their kept callees.",
        "",
        f"Reproduce: `python -m benchmarks.compile_cache --rounds {args.rounds}`",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if not serve_measurement(sys.argv[1:], {"first_scoring": first_scoring}):
        main()
