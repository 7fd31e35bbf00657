"""What W&B will show for a job, read from its offline run file before any ``wandb sync``.

wandb 0.31 has no Python reader for offline runs, so the reader lives here, beside the tests that
need it: it reads W&B's internal file format, which only these tests depend on (a user uploads
with ``wandb sync``). An offline run file (``run-<id>.wandb``) is a LevelDB-style log: a 7-byte
header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte
header (crc32 of type and data, little-endian uint32; length, uint16; type, uint8: full, first,
middle, last) whose data joined make one protobuf ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from wandb.proto import wandb_internal_pb2 as pb

from sweep import run_folder

FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[pb.Record]:
    """The records of an offline run file, in order; ValueError on a bad header or checksum."""
    data = path.read_bytes()
    if FILE_HEADER.unpack_from(data) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path}: not a W&B run file (header {data[:7]!r})")
    position, parts = FILE_HEADER.size, []
    while position + CHUNK_HEADER.size <= len(data):
        left = BLOCK - position % BLOCK
        if left < CHUNK_HEADER.size:  # too little room for a header: the block is padded
            position += left
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, position)
        if kind == 0 and length == 0:  # zero padding: the end of what was written
            break
        start = position + CHUNK_HEADER.size
        chunk = data[start : start + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: bad checksum of the chunk at byte {position}")
        position = start + length
        parts = [chunk] if kind in (FULL, FIRST) else [*parts, chunk]
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            yield record


def put(target: dict, item) -> None:
    """Set a config/history/summary item (``key``, or ``nested_key`` path) in ``target``."""
    path = list(item.nested_key) or [item.key]
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    """An offline run as ``wandb sync`` uploads it: the run's identity, its config, history rows
    (one dict per ``log`` call) and summary, and the files it uploads (relative paths)."""

    run: pb.RunRecord
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def read_run(path: Path) -> OfflineRun:
    """Fold the records of the run file ``path`` into what the dashboard will show."""
    offline = None
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            offline = OfflineRun(record.run)
            for item in record.run.config.update:
                put(offline.config, item)
        elif kind == "config":
            for item in record.config.update:
                put(offline.config, item)
        elif kind == "history":
            offline.history.append({})
            for item in record.history.item:
                put(offline.history[-1], item)
        elif kind == "summary":
            for item in record.summary.update:
                put(offline.summary, item)
        elif kind == "files":
            offline.files += [f.path for f in record.files.files]
    return offline


def run_file(run_dir: Path) -> Path:
    """The offline run file of a job's W&B run (wandb_run.json's ``dir``)."""
    (path,) = Path(run_folder.read_wandb_record(run_dir)["dir"]).glob("run-*.wandb")
    return path


@pytest.mark.slow
def test_an_offline_run_holds_what_the_dashboard_will_show(trained_job):
    metrics = run_folder.read_metrics(trained_job)
    history = pd.read_csv(trained_job / run_folder.HISTORY_FILE)
    offline = read_run(run_file(trained_job))

    # the runs table: the sweep's group, the job's name, one config column per group choice
    assert offline.run.run_group == f"train-{trained_job.parent.name}"
    assert offline.run.display_name == metrics["job_name"] and metrics["job_name"].startswith("0:")
    assert offline.run.run_id == run_folder.read_wandb_record(trained_job)["id"]
    assert {g: offline.config[g] for g in metrics["choices"]} == metrics["choices"]
    assert {"model", "batch", "data", "plan", "loader", "evaluation"} <= set(metrics["choices"])
    assert offline.config["cfg"]["trainer"]["max_epochs"] == 3

    # the charts: every epoch's validation loss and KL weight, the score at the scored epoch
    # (plotted against trainer/global_step, the optimizer steps at each epoch's end)
    rows = [row for row in offline.history if "elbo_validation" in row]
    steps = [row["trainer/global_step"] for row in rows]
    assert len(rows) == 3 and steps == sorted(steps)
    assert [row["elbo_validation"] for row in rows] == pytest.approx(
        history["elbo_validation"].tolist(), rel=1e-6
    )
    weights = [row["kl_weight_epoch"] for row in offline.history if "kl_weight_epoch" in row]
    assert weights == pytest.approx(history["kl_weight"].tolist())
    scored = [row for row in offline.history if "bio_conservation" in row]
    assert [row["bio_conservation"] for row in scored] == pytest.approx(
        [metrics["bio_conservation"]], rel=1e-6
    )

    # the summary: metrics.json's numbers, the health check results among them
    for key in ("elbo_validation", "pca_bio_conservation", "model_parameters", "epochs"):
        assert offline.summary[key] == pytest.approx(metrics[key])
    assert offline.summary["small_batch_categories"] == metrics["small_batch_categories"]
    assert (
        offline.summary["health"] == metrics["health"]
        and "kl_warmup_unfinished" in metrics["health"]
    )

    # the media panel: the embedding and curves pictures, byte for byte the run folder's
    (logged,) = [row for row in offline.history if "embedding" in row]
    for key, name in (("embedding", "embedding.png"), ("curves", "curves.png")):
        image = logged[key]
        assert image["_type"] == "image-file" and image["path"] in offline.files
        picture = (trained_job / name).read_bytes()
        assert image["sha256"] == hashlib.sha256(picture).hexdigest()
        assert (image["width"], image["height"]) == Image.open(trained_job / name).size
        assert offline.summary[key]["path"] == image["path"]


def test_records_spanning_blocks_are_joined_and_a_bad_checksum_refused(tmp_path):
    """A config of 100 kB spans four 32 KiB blocks: the reader joins its chunks (first, middle,
    last) back into the run record; a changed byte fails the chunk's checksum."""
    import wandb

    long_value = "".join(f"{i:06d}" for i in range(17_000))  # 102 kB
    run = wandb.init(
        mode="offline",
        dir=str(tmp_path),
        project="p",
        group="g",
        name="n",
        config={"long": long_value, "model": "czi_128"},
        settings=wandb.Settings(silent=True),
    )
    run.log({"loss": 1.5})
    run.finish()
    wandb.teardown()  # wait for W&B's service to write all of the run file, as a job's exit does
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    offline = read_run(path)
    assert offline.config["long"] == long_value and offline.config["model"] == "czi_128"
    assert (offline.run.run_group, offline.run.display_name) == ("g", "n")
    assert [row["loss"] for row in offline.history if "loss" in row] == [1.5]

    data = bytearray(path.read_bytes())
    data[BLOCK + 100] ^= 0xFF  # inside the config record's second chunk
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad checksum"):
        read_run(path)
