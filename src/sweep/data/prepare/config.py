"""Prepare's config: the schema, its checks, the sources it names and the store's fingerprint.

The fingerprint hashes everything that determines a store's content (:func:`config_identity`): a
store with the same fingerprint is complete as it is, pieces of an interrupted run with it are
reused, and a rebuild hint repeats :func:`prepare_overrides`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweep.config.schema import PrepareConfig
from sweep.data.store import FORMAT_VERSION

HVG = "hvg"  # the `genes` value that selects highly variable genes
#: PrepareOptions keys that change how prepare runs, never the store it writes
RUN_ONLY_KEYS = ("workers", "chunk_rows", "overwrite", "progress")


class PrepareError(ValueError):
    """Bad input to prepare (config, source file, gene list, output folder); the message says
    which file or key and how to fix it."""


def resolve_config(cfg: PrepareConfig | Mapping | Any) -> PrepareConfig:
    """Merge ``cfg`` (dataclass, dict, DictConfig) into the schema; bad keys raise PrepareError."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(PrepareConfig), cfg)
        resolved: PrepareConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise PrepareError(f"bad prepare config: {err}") from err
    for key in ("n_top_genes", "hvg_sample_cells", "shard_size", "chunk_rows"):
        if getattr(resolved, key) < 1:
            raise PrepareError(f"prepare config: {key} must be >= 1, got {getattr(resolved, key)}")
    if resolved.workers is not None and resolved.workers < 1:
        raise PrepareError(f"prepare config: workers must be >= 1 or null, got {resolved.workers}")
    if resolved.genes != HVG and not Path(resolved.genes).is_file():
        raise PrepareError(
            f"genes={resolved.genes!r} is neither 'hvg' nor an existing file: pass genes=hvg or "
            "the path of a TSV/CSV whose first column holds Ensembl ids"
        )
    return resolved


def resolve_sources(source: str | list[str]) -> list[Path]:
    """Expand the ``source`` glob(s) to existing files: absolute, sorted, without duplicates."""
    patterns = [source] if isinstance(source, str) else list(source)
    if not patterns:
        raise PrepareError("source is empty: pass source='/data/*.h5ad' or a list of files")
    paths = set()
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        matches = glob.glob(pattern)
        if not matches:
            raise PrepareError(
                f"source {pattern!r} matches no file: check the path "
                "(on the command line quote a glob: source='/data/*.h5ad')"
            )
        for match in matches:
            if Path(match).is_dir():
                raise PrepareError(f"source {match} is a folder: use source='{match}/*.h5ad'")
            paths.add(Path(match).resolve())
    return sorted(paths)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_identity(cfg: PrepareConfig, sources: list[Path]) -> dict:
    """Everything that determines the store's content (not ``output`` nor
    :data:`RUN_ONLY_KEYS`)."""
    identity = {
        "format_version": FORMAT_VERSION,
        "sources": [[str(p), p.stat().st_size] for p in sources],
        "genes": cfg.genes if cfg.genes == HVG else str(Path(cfg.genes).resolve()),
        "shard_size": cfg.shard_size,
        "seed": cfg.seed,
    }
    if cfg.genes == HVG:
        identity |= {
            "n_top_genes": cfg.n_top_genes,
            "hvg_batch_keys": list(cfg.hvg_batch_keys),
            "hvg_sample_cells": cfg.hvg_sample_cells,
            "hvg_min_genes": cfg.hvg_min_genes,
        }
    else:
        identity["genes_sha256"] = _sha256(Path(cfg.genes))
    if cfg.skip_bad_sources:  # only when set: stores made before the key keep their fingerprint
        identity["skip_bad_sources"] = True
    return identity


def prepare_overrides(cfg: PrepareConfig, identity: dict) -> list[str]:
    """The ``key=value`` arguments of ``scvi-sweep-prepare`` that make this store again
    (all but ``output``): ``manifest.provenance["prepare_overrides"]``, for rebuild hints."""
    keys = {"source": cfg.source}
    keys |= {k: v for k, v in identity.items() if k in PrepareConfig.__dataclass_fields__}

    def value(v: Any) -> str:
        if isinstance(v, list | tuple):
            return "[" + ",".join(map(value, v)) + "]"
        return str(v).lower() if isinstance(v, bool) else str(v)

    return [f"{k}={value(v)}" for k, v in keys.items()]


def fingerprint(identity: dict) -> str:
    """Short hash of :func:`config_identity`, stored in ``manifest.provenance["fingerprint"]``."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def identity_diff(old: dict, new: dict) -> str:
    """Which identity keys differ, e.g. ``shard_size: 4096 -> 10000``."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key == "sources":
                diffs.append(
                    f"sources: {len(old.get(key) or [])} -> {len(new[key])} files "
                    "(or their paths/sizes changed)"
                )
            else:
                diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return "; ".join(diffs)
