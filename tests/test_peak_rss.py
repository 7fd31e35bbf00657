"""metrics.json's peak_rss_mb is the job's own peak: a ``-m`` sweep's basic launcher runs its jobs
in one process, and job 1 reported job 0's peak before the reset at each job's start."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sweep.training.results import peak_rss_mb, reset_peak_rss


@pytest.mark.skipif(sys.platform != "linux", reason="the peak's reset is Linux's clear_refs")
def test_the_peak_starts_over_at_a_jobs_start():
    earlier_job = np.ones(300 * 2**20 // 8)  # 300 MiB touched, then freed (an earlier job)
    del earlier_job
    with_earlier = peak_rss_mb()
    reset_peak_rss()
    own = peak_rss_mb()
    assert with_earlier - own > 250  # MiB: the earlier job's 300 MiB no longer counts
