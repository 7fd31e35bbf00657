"""Cold epochs: the read-ahead's memory bound, its page-cache reads, shards reopened without
HDF5, the auto worker choice and the cold benchmark's arithmetic (never its timings)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from benchmarks import loader_cold, page_cache
from omegaconf import OmegaConf

from conftest import make_store
from sweep.config.schema import BatchConfig, ConfigError, DataConfig, LoaderConfig, TrainConfig
from sweep.config.schema import validate as validate_config
from sweep.data import datamodule, store
from sweep.data.datamodule import StoreDataModule, auto_num_workers
from sweep.data.fetch import ReadAhead
from sweep.data.page_cache import PageCacheReader, cached_share
from sweep.data.store import Shard, read_manifest


class Recorder:
    """Stands in for a ReadAhead's PageCacheReader: records the bytes of each read."""

    def __init__(self):
        self.reads: list[int] = []

    def read(self, path, ranges) -> None:
        self.reads.append(sum(length for _, length in ranges))

    def close(self) -> None:
        pass


def wait_for(condition, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the read-ahead thread did not get there"
        time.sleep(0.01)


@pytest.fixture
def shard(tmp_path) -> Shard:
    folder = make_store(tmp_path / "store", [400])
    return Shard(folder / read_manifest(folder).shards[0]["file"])


def test_read_ahead_stays_within_its_bytes_beyond_the_gathers_step(shard):
    rows = [(np.array([40 * k]), np.array([40 * k + 40])) for k in range(8)]  # step k's rows
    sizes = [sum(n for _, n in shard.byte_ranges(*step)) for step in rows]
    ahead = ReadAhead(bytes_ahead=max(sizes[0] + sizes[1], sizes[3] + sizes[4]))
    ahead.reader = recorder = Recorder()
    for step, (starts, stops) in enumerate(rows):
        ahead.request(shard.path, starts, stops, step)
    # the gather on no step yet: steps 0 (the next one, always read) and 1 fit, 2 does not
    wait_for(lambda: len(recorder.reads) == 2)
    time.sleep(0.2)  # had the bound been ignored, the thread would read on meanwhile
    assert len(recorder.reads) == 2
    ahead.reach(2)  # steps 0-2 are the gather's now: 3 and 4 fit beyond it
    wait_for(lambda: len(recorder.reads) == 5)
    time.sleep(0.2)
    assert recorder.reads == sizes[:5]
    ahead.close()  # steps not begun are left out: their gather has stopped
    ahead.thread.join(timeout=30)
    assert not ahead.thread.is_alive() and len(recorder.reads) == 5


def test_read_ahead_reads_the_step_after_the_gathers_even_when_it_alone_is_too_big(shard):
    ahead = ReadAhead(bytes_ahead=1)
    ahead.reader = recorder = Recorder()
    for step in range(3):
        ahead.request(shard.path, np.array([100 * step]), np.array([100 * step + 100]), step)
    wait_for(lambda: len(recorder.reads) == 1)
    for step in range(3):
        ahead.reach(step)
    wait_for(lambda: len(recorder.reads) == 3)
    ahead.close()
    ahead.thread.join(timeout=30)
    assert not ahead.thread.is_alive()


def make_datamodule(folder, **loader_keys) -> StoreDataModule:
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), {"min_genes": 0})
    loader = OmegaConf.merge(
        OmegaConf.structured(LoaderConfig),
        {"num_workers": 0, "batch_size": 64, "block_size": 16, "fetch_size": 200} | loader_keys,
    )
    return StoreDataModule(folder, data, OmegaConf.structured(BatchConfig), loader, seed=0)


def epoch(dataset, n_genes: int, number: int) -> list[dict]:
    from sweep.data.densify import densify

    dataset.epoch.value = number
    return [densify({k: torch.as_tensor(v) for k, v in b.items()}, n_genes) for b in dataset]


@pytest.mark.parametrize("read_ahead_mib", [1, 256])
def test_a_small_read_ahead_bound_yields_the_same_batches_as_none(small_store, read_ahead_mib):
    dm = make_datamodule(small_store, read_ahead_mib=read_ahead_mib)
    assert dm.train_set.read_ahead_bytes == read_ahead_mib << 20
    ahead, without = dm.train_set, replace(dm.train_set, reads_ahead=False)
    for number in (0, 1):
        read = [epoch(d, dm.n_vars, number) for d in (ahead, without)]
        assert len(read[0]) == len(read[1])
        for a, b in zip(*read, strict=True):
            assert all(torch.equal(a[key], b[key]) for key in a)


def test_the_read_ahead_key_is_checked_and_named():
    cfg = OmegaConf.structured(TrainConfig)
    cfg.loader.read_ahead_mib = 0
    with pytest.raises(ConfigError, match="loader.read_ahead_mib"):
        validate_config(cfg)


def test_pages_read_ahead_land_in_the_page_cache_and_cached_ones_are_not_read_again(
    shard, monkeypatch
):
    ranges = shard.byte_ranges(np.array([0]), np.array([400]))
    if reason := page_cache.evict(shard.path.parent):
        pytest.skip(f"the page cache cannot be evicted here: {reason}")
    assert cached_share([shard.path]) < 0.5
    PageCacheReader().read(shard.path, ranges)
    x_pages = sum(-(-n // 4096) for _, n in ranges)
    assert cached_share([shard.path]) * -(-shard.path.stat().st_size // 4096) >= x_pages
    reads = []  # what it reads now that the ranges are cached: nothing
    preadv = store.os.preadv

    def counted(fd, buffers, *at):
        reads.append(len(buffers[0]))
        return preadv(fd, buffers, *at)

    monkeypatch.setattr(store.os, "preadv", counted)
    PageCacheReader().read(shard.path, ranges)
    assert reads == []


@pytest.mark.parametrize("copy", [True, False])
def test_where_the_page_cache_cannot_be_asked_the_ranges_are_read(shard, monkeypatch, copy):
    ranges = shard.byte_ranges(np.array([0]), np.array([400]))
    monkeypatch.setattr("sweep.data.page_cache.resident_pages", lambda mapped, offset, length: None)
    read = []
    if copy:
        preadv = store.os.preadv
        monkeypatch.setattr(
            store.os, "preadv", lambda fd, b, at: read.append(len(b[0])) or preadv(fd, b, at)
        )
    else:
        sendfile = store.os.sendfile
        monkeypatch.setattr(
            store.os, "sendfile", lambda out, fd, at, n: read.append(n) or sendfile(out, fd, at, n)
        )
    reader = PageCacheReader(copy=copy)
    reader.read(shard.path, ranges)
    reader.close()
    assert sum(read) == sum(n for _, n in ranges)


def test_where_sendfile_is_refused_the_reader_copies(shard, monkeypatch):
    def refused(*args):
        raise OSError(95, "sendfile refused")

    monkeypatch.setattr(store.os, "sendfile", refused)
    monkeypatch.setattr("sweep.data.page_cache.resident_pages", lambda mapped, offset, length: None)
    reader = PageCacheReader(copy=False)
    reader.read(shard.path, shard.byte_ranges(np.array([0]), np.array([400])))
    assert reader.copy


def test_a_shard_reopened_needs_no_hdf5_call(shard, monkeypatch):
    indptr, arrays = shard.indptr.copy(), [np.array(a) for a in shard.arrays()]

    def no_hdf5(*args, **kwargs):
        raise AssertionError("HDF5 opened again")

    monkeypatch.setattr(store.h5py, "File", no_hdf5)
    again = Shard(shard.path)
    assert np.array_equal(again.indptr, indptr)
    assert all(np.array_equal(a, b) for a, b in zip(again.arrays(), arrays, strict=True))
    monkeypatch.undo()
    folder = shard.path.parent  # the file rewritten (a new inode): its layout is read anew
    rewritten = make_store(folder.with_name("other"), [300])
    other = rewritten / read_manifest(rewritten).shards[0]["file"]
    shard.path.unlink()
    other.rename(shard.path)
    assert len(Shard(shard.path).indptr) == 301


@pytest.mark.parametrize(
    "cores, share, workers, why",
    [
        (2, 0.0, 0, "0% of the store is in the page cache"),
        (2, 0.9, 1, "2 cores - 1"),
        (8, 0.0, 7, "8 cores - 1"),
        (2, None, 1, "unknown"),
    ],
)
def test_auto_workers_follow_the_stores_state_and_say_why(
    small_store, monkeypatch, caplog, cores, share, workers, why
):
    monkeypatch.setattr(datamodule.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(datamodule, "cached_share", lambda paths: share)
    shards = sorted(small_store.glob("shard_*.h5ad"))
    chosen, reason = auto_num_workers(shards)
    assert chosen == workers and why in reason
    caplog.set_level(logging.INFO, logger=datamodule.__name__)
    dm = make_datamodule(small_store, num_workers=None)
    assert dm.num_workers == workers
    logged = [r.getMessage() for r in caplog.records if r.name == datamodule.__name__]
    said = f"loader.num_workers=null: {workers} workers: {reason}; set loader.num_workers"
    assert any(message.startswith(said) for message in logged)


def test_auto_workers_read_the_page_cache_of_the_store(small_store):
    shards = sorted(small_store.glob("shard_*.h5ad"))
    if page_cache.evict(small_store):
        pytest.skip("the page cache cannot be evicted here")
    cold = cached_share(shards)
    page_cache.warm_up(small_store)
    assert cold < 0.5 <= cached_share(shards)


def cold_row(code, workers, cold, warm, disk, rss=(100.0, 100.0)) -> dict:
    return {
        "code": code,
        "workers": workers,
        "cold_cells_per_s": cold,
        "warm_cells_per_s": warm,
        "disk_cells_per_s": list(disk),
        "disk_mb_per_s": [d * 4000 / 1e6 for d in disk],
        "cold_rss_mb": rss[0],
        "warm_rss_mb": rss[1],
        "read_ahead_mib": 256,
    }


def test_the_cold_benchmark_divides_by_the_slower_of_warm_and_disk(monkeypatch, tmp_path):
    rows = [
        cold_row("new", 0, 90.0, 100.0, (400.0, 400.0)),  # warm limits: 0.90
        cold_row("new", 0, 80.0, 200.0, (100.0, 60.0)),  # disk limits (mean 80): 1.00
        cold_row("new", 0, 40.0, 100.0, (400.0, 400.0)),  # 0.40
        cold_row("new", 2, 60.0, 100.0, (300.0, 330.0), rss=(120.0, 110.0)),
    ]
    zero, two = loader_cold.summarize(rows)
    assert (zero["code"], zero["workers"], zero["runs"]) == ("new", 0, 3)
    assert zero["ratio"] == pytest.approx(0.90)
    assert zero["ratio_spread"] == pytest.approx((0.40, 1.00))
    assert zero["cold"] == 80.0 and zero["warm"] == 100.0 and zero["disk"] == 400.0
    assert zero["drift_spread"] == pytest.approx((-0.4, 0.0))
    assert two["ratio"] == pytest.approx(0.60) and two["drift"] == pytest.approx(0.10)
    assert (two["cold_rss_mb"], two["warm_rss_mb"]) == (120.0, 110.0)
    assert loader_cold.worker_lines([zero, two]) == ["new: cold epoch at 2 workers / at 0: 0.75"]
    monkeypatch.setattr(loader_cold, "store_shape", lambda store: "a made-up store")
    text = loader_cold.markdown([zero, two], tmp_path, 1024, "0 workers (why)")
    assert "| new | 0 | 80 | 100 | 400 (2) | +0% (-40% to +0%) | **0.90** (0.40-1.00) |" in text
    assert "| new | 2 | 60 | 100 | 315 (1) | +10% (+10% to +10%) | **0.60** (0.60-0.60) |" in text
