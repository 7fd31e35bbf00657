"""How good a trained model is, from its outputs on fixed cells; no Lightning, no run folder.

- ``cells``: which cells are evaluated (seeded validation cells), read as the model takes them
- ``latent``: a model's latent means and validation loss terms of given cells
- ``pca``: the unintegrated baseline (PCA of log-normalised counts)
- ``scib``: integration scores with scib-metrics (the one place to add a metric)
- ``embedding``: the cells in 2-D (UMAP) for the embedding pictures
- ``convergence``: when a recorded value settled (``epochs_to_*``, ``cells_to_*``)
- ``health``: the checks a finished run fails (unfinished warm-up, still falling, below the
  baseline, small batch categories), kept in metrics.json and read by the reports
- ``compile_cache``: scib-metrics' and UMAP's compiled kernels (JAX, numba) kept on disk across
  processes, so that only a machine's first scoring compiles them

Training (sweep.training) calls these as it trains; the reports read what they wrote.
"""
