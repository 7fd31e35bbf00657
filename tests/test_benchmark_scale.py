"""benchmarks.scale: its table and projection from made-up results, and one tiny real run."""

from __future__ import annotations

import argparse

import pytest
from benchmarks import scale

ARGS = argparse.Namespace(workers=[0, 2], batch_size=1024, epochs=3)


def warm(cells_per_s: float, rss: float) -> dict:
    return {"cells_per_s": cells_per_s, "setup_rss_mb": rss, "metadata_bytes_per_cell": 7.0}


def cold(variant: tuple, cells_per_s: float, ceilings: list[float]) -> dict:
    return {
        "variant": variant,
        "cells_per_s": cells_per_s,
        "warm_cells_per_s": 2 * cells_per_s,
        "ceilings": ceilings,
        "disk_mb_per_s": [c * 4000 / 1e6 for c in ceilings],
    }


RESULTS = {
    "cold_skipped": None,
    "stores": {
        100_000: {"bytes": 400e6, "warm": [warm(200e3, 600), warm(100e3, 600)]},
        1_000_000: {
            "bytes": 4000e6,
            "warm": [warm(190e3, 690), warm(110e3, 690)],
            "cold": [
                cold((0, "csr", True), 150e3, [250e3, 250e3]),
                cold((2, "csr", True), 100e3, [200e3, 300e3]),
                cold((0, "csr", False), 50e3, [250e3, 250e3]),
            ],
        },
    },
}


def test_the_table_compares_each_store_with_the_smallest_and_cold_with_its_ceilings():
    text = scale.markdown(RESULTS, ARGS)
    rows = [line for line in text.splitlines() if line.startswith("| 1,000,000")]
    assert len(rows) == 1
    assert "190,000 (-5%), 110,000 (+10%)" in rows[0]
    assert "0 workers, csr: 150,000 cells/s = 60% of the disk, 50% of warm" in rows[0]
    assert "2 workers, csr: 100,000 cells/s = 40% of the disk" in rows[0]
    assert "0 workers, csr, no read-ahead: 50,000 cells/s = 20% of the disk" in rows[0]


def test_the_projection_is_a_line_through_the_smallest_and_largest_store():
    lines = scale.projection(RESULTS)
    # 4,000 bytes per cell; RSS 600 -> 690 MiB over 900k cells: 0.1 MiB per 1k cells
    assert "store 176 GB" in lines[0]
    assert f"{690 + 90 / 900_000 * 43_000_000:,.0f} MiB" in lines[0]
    assert "at the best cold rate measured here (150,000 cells/s) 5 min" in lines[1]


@pytest.mark.slow
def test_a_tiny_run_writes_its_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    scale.main(
        [
            str(tmp_path / "stores"),
            "--sizes",
            "10000",
            "--cold-sizes",
            "10000",
            "--workers",
            "0",
            "--epochs",
            "1",
            "--cold-repeats",
            "1",
            "--write",
            "--doc",
            str(doc),
        ]
    )
    text = doc.read_text()
    assert "<!-- bench:scale -->" in text and "<!-- /bench:scale -->" in text
    row = next(line for line in text.splitlines() if line.startswith("| 10,000"))
    assert "bytes/cell" in row
    assert ("0 workers, csr:" in row) or "cold epochs not measured" in text
