"""What every benchmark shares: one measurement per fresh process, the machine, docs sections."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "benchmarks.md"
#: argv[1] of a benchmark module run as one measurement (internal)
MEASURE = "_measure"


def peak_rss_mb() -> float:
    """Peak RSS of this process plus that of its largest finished child (workers), MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + child) / 1024


def current_rss_mb() -> float:
    """This process's resident memory now (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def measure_in_subprocess(module: str, kind: str, **kwargs) -> dict:
    """Run measurement ``kind`` of benchmark ``module`` in a fresh interpreter (its own peak RSS).

    The child is ``python -m MODULE _measure KIND JSON``, answered by :func:`serve_measurement`;
    returns the row (a dict) it prints as its last line.
    """
    out = subprocess.run(
        measure_command(module, kind, kwargs), capture_output=True, text=True, cwd=REPO_ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f"{module} {kind} {kwargs} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {row['what']:<45} {row['cells_per_s']:>10,.0f} cells/s", flush=True)
    return row


def _processes() -> list[str]:
    """This process and its live children (a loader's workers), as /proc entries."""
    pids = ["self"]
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            pids += (task / "children").read_text().split()
    return pids


def reset_peak_rss() -> None:
    """Start the peak RSS of this process and its children over from their RSS now (Linux)."""
    for pid in _processes():
        with contextlib.suppress(FileNotFoundError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


def peak_rss_since_reset_mb() -> float:
    """Sum over this process and its children of their peak RSS since :func:`reset_peak_rss`
    (``VmHWM``), MiB."""
    total = 0
    for pid in _processes():
        with contextlib.suppress(FileNotFoundError):
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            total += sum(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return total / 1024


def measure_command(module: str, kind: str, kwargs: dict) -> list[str]:
    """The command line of one measurement (answered by :func:`serve_measurement`)."""
    args = json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()})
    return [sys.executable, "-m", module, MEASURE, kind, args]


def code_env(code: Path | None) -> dict[str, str] | None:
    """The environment of a measurement of the ``sweep`` package under ``code`` (another
    checkout's ``src``), this checkout's benchmarks beside it; None: this checkout's own."""
    if code is None:
        return None
    paths = [str(code), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return os.environ | {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def serve_measurement(argv: list[str], measures: dict[str, Callable[..., dict]]) -> bool:
    """If ``argv`` asks for one measurement, run it and print its row as JSON; whether it did."""
    if not argv or argv[0] != MEASURE:
        return False
    kwargs = json.loads(argv[2])
    if "store" in kwargs:
        kwargs["store"] = Path(kwargs["store"])
    print(json.dumps(measures[argv[1]](**kwargs)))
    return True


def machine() -> str:
    """Cores, CPU model, Python and torch versions, in one line."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def write_section(key: str, text: str, doc: Path = DOC) -> None:
    """Replace (or append) the section between ``<!-- bench:KEY -->`` markers in ``doc``."""
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    old = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(new)
