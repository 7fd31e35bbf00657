"""Compiled kernels kept across processes, so that only a machine's first scoring compiles.

scib-metrics compiles its JAX kernels, and pynndescent (its kBET's neighbours) and umap-learn
(its fuzzy graphs, the UMAP layout) their numba kernels, in each new process: 45 s to 5 minutes
on a CPU. :func:`keep_compiled_kernels` keeps them on disk in ``kernels/<machine>/`` of the
project's cache folder (``sweep.paths.cache_dir()``), one folder per CPU model and library
versions, so that jobs of a sweep on one machine (or on nodes of one kind sharing a home folder)
load what the first one compiled:

- JAX: its persistent compilation cache, every kernel kept (no minimum compile time or size),
  with a size limit, which makes JAX read and write entries under a file lock;
- numba: the module-level functions of pynndescent, umap-learn and scib-metrics compiled without
  ``cache=True`` get numba's on-disk cache (those with it keep theirs, in their package). Each
  of those functions gets the same numba uuid in every process, so that a function taking
  another one as argument (pynndescent's distance: numba types it by its object) is found again
  in a new process; and the cache is read and written under a file lock, since numba writes a
  function's index and code as two files, which two processes saving at once could pair wrongly.
  pynndescent's ``nn_descent`` and ``nn_descent_internal`` cannot be cached (they call
  ``numba.get_num_threads()``, which numba compiles to an address of this process): they
  compile in every process, from their cached callees (~10 s on 2 busy cores).

A kernel loaded from the cache is the machine code the first process compiled: the scores are
the same to the last digit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import logging
import os
import platform
import sys
import warnings
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

#: the kernels' folder in the project's cache folder
KERNELS = "kernels"
#: packages whose numba functions are cached (imported here, before their first call)
NUMBA_PACKAGES = ("pynndescent", "umap", "scib_metrics")
#: distributions whose versions (with Python's and the CPU's) name the kernels' folder
VERSIONED = (
    "jax",
    "jaxlib",
    "numba",
    "llvmlite",
    "numpy",
    "scib-metrics",
    "pynndescent",
    "umap-learn",
)
#: JAX's cache limit, bytes: the least recently used kernels go beyond it
JAX_MAX_BYTES = 2 * 1024**3
#: JAX's and numba's file names for a kept kernel
JAX_ENTRY, NUMBA_ENTRY = "*-cache", "*.nbi"
#: how the numba uuids of the functions of NUMBA_PACKAGES start (the same in every process)
STABLE = "scvi-sweep:"


@dataclass(frozen=True)
class KeptKernels:
    """Where a process keeps its compiled kernels (``folder``) and how many earlier processes had
    kept there when it started: ``jax`` compiled programs, ``numba`` functions."""

    folder: Path
    jax: int
    numba: int

    @property
    def found(self) -> bool:
        """Whether earlier processes kept kernels here (so the first scoring loads them)."""
        return self.jax > 0 or self.numba > 0


#: this process's kernels, once :func:`keep_compiled_kernels` ran
_kept: KeptKernels | None = None
#: whether this process has started a scoring (:func:`compiles_now`)
_scoring_started = False


def machine_key() -> str:
    """This machine's kind and library versions as a short hash (12 hex digits): the CPU model
    and flags, Python's version and :data:`VERSIONED`'s. Compiled code fits one of each (JAX's
    own cache key names no CPU model: nodes of other CPUs sharing a home folder must not meet)."""
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu += "".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    versions = []
    for name in VERSIONED:
        try:
            versions.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name}=none")
    text = "\n".join([cpu, sys.version, *versions])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def keep_compiled_kernels(cache_dir: Path) -> KeptKernels:
    """Keep scib-metrics' and the UMAP's compiled kernels in ``cache_dir`` from now on (once per
    process; later calls return the first's answer) and say in the log where, and whether
    earlier processes kept them there. Call it before the process's first scoring.

    Parameters
    ----------
    cache_dir
        The project's cache folder (``sweep.paths.cache_dir()``); the kernels go to its
        ``kernels/<machine_key()>/`` (``jax/``, ``numba/``).

    Returns
    -------
    The folder and the kernels found in it when this process started.
    """
    global _kept
    if _kept is not None:
        return _kept
    folder = Path(cache_dir) / KERNELS / machine_key()
    jax_dir, numba_dir = folder / "jax", folder / "numba"
    try:  # a job never stops for its cache: it compiles, as without one
        jax_dir = _keep_jax(jax_dir)
        jax = sum(1 for _ in jax_dir.glob(JAX_ENTRY))
    except Exception as error:
        log.warning("JAX's compiled kernels are not kept (%s: %s)", type(error).__name__, error)
        jax = 0
    try:
        numba_dir.mkdir(parents=True, exist_ok=True)
        numba = sum(1 for _ in numba_dir.rglob(NUMBA_ENTRY))
        functions = _keep_numba(numba_dir)
        log.debug("numba: %d functions of %s cached in %s", functions, NUMBA_PACKAGES, numba_dir)
    except Exception as error:
        log.warning("numba's compiled kernels are not kept (%s: %s)", type(error).__name__, error)
        numba = 0
    _kept = KeptKernels(folder, jax, numba)
    where = folder if jax_dir.parent == folder else f"{folder} (JAX's in {jax_dir})"
    log.info(
        "compiled kernels of scib-metrics and the UMAP (JAX, numba) are kept in %s: %s",
        where,
        f"found {jax} JAX and {numba} numba kernels kept by earlier processes: loaded, not "
        "compiled again"
        if _kept.found
        else "none there yet: this process's first scoring compiles them and keeps them",
    )
    return _kept


def compiles_now() -> bool:
    """Whether the scoring about to start compiles scib-metrics' kernels: the first scoring of
    this process, when :func:`keep_compiled_kernels` found none kept (or was not called).
    Counts that scoring: the next call answers False."""
    global _scoring_started
    first, _scoring_started = not _scoring_started, True
    return first and not (_kept is not None and _kept.found)


def _keep_jax(folder: Path) -> Path:
    """JAX's persistent compilation cache in ``folder``, every kernel kept, read and written
    under a file lock (a size limit turns JAX's lock on; it needs ``filelock``, a dependency of
    torch); a folder the user set (JAX_COMPILATION_CACHE_DIR) is kept. Returns the folder JAX
    keeps its kernels in."""
    import jax

    chosen = jax.config.jax_compilation_cache_dir
    if chosen:
        folder = Path(chosen)
    else:
        jax.config.update("jax_compilation_cache_dir", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no minimum size
    if jax.config.jax_compilation_cache_max_size == -1 and importlib.util.find_spec("filelock"):
        jax.config.update("jax_compilation_cache_max_size", JAX_MAX_BYTES)
    return folder


def _keep_numba(folder: Path) -> int:
    """numba's on-disk cache in ``folder`` for :data:`NUMBA_PACKAGES`' module-level functions
    compiled without ``cache=True``, before their first call; how many functions that is."""
    from numba.core.registry import CPUDispatcher

    shared = _shared_cache_class(folder)
    for package in NUMBA_PACKAGES:
        with contextlib.suppress(ImportError):
            importlib.import_module(package)
    count = 0
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] not in NUMBA_PACKAGES or module is None:
            continue
        for attribute, value in list(vars(module).items()):
            if not isinstance(value, CPUDispatcher) or value.py_func.__module__ != name:
                continue
            if value._MemoMixin__uuid is None:  # named as every process names it
                value._set_uuid(
                    f"{STABLE}{name}.{attribute}:{_source_hash(value.py_func.__code__.co_filename)}"
                )
            func = value.py_func
            if (
                type(value._cache).__name__ == "NullCache"
                and not value.overloads
                and func.__closure__ is None
                and "<" not in func.__qualname__
            ):
                value._cache = shared(func)
                count += 1
    return count


@cache
def _source_hash(path: str) -> str:
    """The first 16 hex digits of the SHA-256 of a source file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _keyable(sig) -> bool:
    """Whether another process would find ``sig`` (argument types) in the cache: a jitted
    function among the arguments is typed by its object, which pickles by its numba uuid; only
    the module-level functions named by :func:`_keep_numba` have the same uuid in every process.
    """
    from numba.core import types
    from numba.core.sigutils import normalize_signature

    args, _ = normalize_signature(sig)
    for argument in args:
        if isinstance(argument, types.Dispatcher):
            if not argument.dispatcher._uuid.startswith(STABLE):
                return False
        elif "Dispatcher(" in str(argument):  # a jitted function inside another type
            return False
    return True


@contextlib.contextmanager
def _locked(folder: str, exclusive: bool):
    """Hold ``folder``'s lock file: shared to read the cache, exclusive to write it."""
    with open(os.path.join(folder, ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _shared_cache_class(folder: Path):
    """numba's function cache kept in ``folder`` (a subfolder per source folder, as with
    NUMBA_CACHE_DIR), for signatures another process can find (:func:`_keyable`), read and
    written under a lock (:func:`_locked`); a function numba cannot cache (one that calls
    ``numba.get_num_threads()`` holds a process's address) is compiled, without a warning, and
    an entry that cannot be read or written is compiled, as without the cache."""
    from numba.core import caching
    from numba.core.errors import NumbaWarning

    root = str(folder)

    class Locator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(root, self.get_suitable_cache_subpath(py_file))

        def get_cache_path(self):
            return self._cache_path

    class Impl(caching.CompileResultCacheImpl):
        _locator_classes = [Locator]

    class SharedFunctionCache(caching.FunctionCache):
        _impl_class = Impl

        def load_overload(self, sig, target_context):
            if not _keyable(sig):
                return None
            try:
                with _locked(root, exclusive=False):
                    return super().load_overload(sig, target_context)
            except Exception as error:  # an unreadable entry: compiled instead
                log.debug("numba cache of %s not read: %r", self._name, error)
                return None

        def save_overload(self, sig, data):
            if not _keyable(sig):
                return
            try:
                with warnings.catch_warnings(), _locked(root, exclusive=True):
                    warnings.simplefilter("ignore", NumbaWarning)
                    super().save_overload(sig, data)
            except Exception as error:  # not kept: the next process compiles it too
                log.debug("numba cache of %s not written: %r", self._name, error)

    return SharedFunctionCache
