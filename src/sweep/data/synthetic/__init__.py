"""Seeded generator of CELLxGENE/Census-like source h5ad files with raw counts.

No real data can be downloaded in this project, so the demo data set and every test use files
written here. Each file looks like one CELLxGENE dataset download: raw integer counts in ``X``
(float32 CSR), Ensembl-like gene ids in ``var``, and the CELLxGENE ``obs`` columns that matter for
batch definitions (dataset, donor, assay, suspension type) and for biology (cell type, tissue).

Generative model (natural logs; ``N(m, s)`` is a normal with standard deviation ``s``):

* gene ``g`` has a base log-mean ``b_g ~ N(0, 1.7)`` (a long-tailed, log-normal spread) and an NB
  inverse dispersion ``theta_g`` log-uniform in [2, 10]; 13 mitochondrial genes ("MT-...") sit at
  the end of the gene list with a high base expression;
* cell type ``t`` has a program ``p_tg``: +U(1.5, 3) on ~5% of the (non-MT) genes, 0 elsewhere;
* batch effects are gene-specific log-shifts, scaled by ``s = batch_effect_strength``:
  dataset ``N(0, 0.5 s)``, donor ``N(0, 0.2 s)``, assay ``N(0, 0.5 s)``, and for nuclei
  ``N(0, 0.3 s)`` plus a depletion of 10% of the genes and of all MT genes;
* a cell's expression profile is the softmax over genes of the sum of those terms, its mean counts
  ``mu_cg = library_c * profile_cg``; counts are gamma-Poisson (negative binomial) draws;
* library sizes (total counts) are log-normal (sigma 0.5) around an assay median (10x:
  3500-6000, Smart-seq2 12000), x0.7 for nuclei, shifted per dataset by ``N(0, 0.2)``; these
  depth differences are kept at every ``s``, so ``s = 0`` removes the gene-specific effects only;
  with 3000 genes a normal cell expresses ~650-1500 genes (median by batch);
* low-quality cells get a library of 20-200 counts (hence < 300 expressed genes) and more MT
  counts; they and the non-primary cells are exact shares of each dataset, placed at random.

The random "world" (genes, programs, every batch effect, the dataset designs) is drawn once from
``seed``; each dataset is then simulated from ``(seed, dataset_index)`` alone, so the output is
deterministic and memory stays bounded by one dataset.

``shape=census`` changes the design to the Census's: see :mod:`.census`.

Modules: :mod:`.world` (the world drawn from the seed), :mod:`.census` (the Census shape),
:mod:`.datasets` (one dataset's cells, obs and counts), :mod:`.files` (the files over a process
pool, and the command line ``python -m sweep.data.synthetic``).
"""

from sweep.data.synthetic.datasets import simulate_dataset
from sweep.data.synthetic.files import generate
from sweep.data.synthetic.world import draw_world

__all__ = ["draw_world", "generate", "simulate_dataset"]
