"""Links from a report's words to their definitions in ``docs/glossary.md``.

A report links a term to its heading in the glossary by a path relative to the report's own
folder, so the link works wherever the checkout is: ``../../docs/glossary.md#bio-conservation``
from ``multirun_reports/<name>/``, ``../../../docs/...`` from ``multirun_reports/examples/<name>/``
or from a run folder under ``outputs/``. A report written outside the checkout (``--out /tmp/x``,
an installed wheel) cannot reach the file by a relative path: it names its terms in plain words and
says once where the glossary is (:meth:`Glossary.note`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sweep.paths import REPO_ROOT

#: the glossary, repository-relative (its headings are the anchors of :data:`TERMS`)
GLOSSARY_PATH = "docs/glossary.md"

#: a term as the reports write it -> the heading that defines it in the glossary
TERMS = {
    "negative ELBO": "Negative ELBO",
    "validation negative ELBO": "Negative ELBO",
    "reconstruction loss": "Reconstruction loss",
    "validation reconstruction loss": "Reconstruction loss",
    "KL warm-up": "KL warm-up",
    "KL weight": "KL warm-up",
    "bio conservation": "Bio conservation",
    "batch correction": "Batch correction",
    "integration total": "Integration total",
    "PCA baseline": "PCA baseline",
    "evaluation cells": "Evaluation cells",
    "seed spread": "Seed spread",
    "verdict": "Verdict",
    "provisional": "Provisional",
    "run health": "Run health",
    "settled": "Settled",
    "cells seen": "Cells seen",
    "training cells seen": "Cells seen",
    "training cells/s": "Throughput",
    "training time": "Throughput",
    "throughput": "Throughput",
    "batch category": "Batch category",
    "UMAP": "UMAP",
}


def anchor(heading: str) -> str:
    """The anchor GitHub (and most markdown viewers) give a heading: lower case, punctuation but
    hyphens dropped, spaces as hyphens (``KL warm-up`` -> ``kl-warm-up``)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def glossary_file() -> Path | None:
    """The checkout's glossary, or None (an installed wheel, or a checkout without it)."""
    if REPO_ROOT is None:
        return None
    path = REPO_ROOT / GLOSSARY_PATH
    return path if path.is_file() else None


def relative_link(folder: Path, target: Path | None = None) -> str | None:
    """The glossary's path relative to ``folder`` (where a report lands), or None when the folder
    is not inside the checkout that holds the glossary (``target``: the glossary file, by default
    :func:`glossary_file`)."""
    target = target if target is not None else glossary_file()
    if target is None:
        return None
    folder = Path(os.path.abspath(folder))
    root = target.parents[1]  # <checkout>/docs/glossary.md
    if not folder.is_relative_to(root):
        return None
    return Path(os.path.relpath(target, folder)).as_posix()


class Glossary:
    """Terms of one report, linked to the glossary from the report's folder.

    Parameters
    ----------
    folder
        The folder the report is written to.
    target
        The glossary file (default: the checkout's, :func:`glossary_file`).
    """

    def __init__(self, folder: Path, target: Path | None = None) -> None:
        self.link = relative_link(folder, target)

    def term(self, word: str, text: str | None = None) -> str:
        """``text`` (default ``word``) linked to the glossary's heading for ``word`` (a key of
        :data:`TERMS`); plain ``text`` when the glossary cannot be linked."""
        text = word if text is None else text
        if self.link is None:
            return text
        return f"[{text}]({self.link}#{anchor(TERMS[word])})"

    def terms_line(self, words: list[str]) -> list[str]:
        """A paragraph naming where ``words`` are explained: links to each, or, without a link,
        the glossary's repository path."""
        if self.link is None:
            return [
                f"Words such as {', '.join(words)} are explained in `{GLOSSARY_PATH}` of the "
                "scvi-sweep repository.",
                "",
            ]
        return [f"Words used here: {', '.join(self.term(w) for w in words)}.", ""]
