"""What a model makes of given cells: their latent means (for scoring) and their loss terms as
scvi-tools' validation computes them (for the validation loss every N steps)."""

from __future__ import annotations

import numpy as np
import torch

from sweep.evaluation.cells import ModelCells
from sweep.metric_names import ELBO_VALIDATION, KL_LOCAL_VALIDATION, RECONSTRUCTION_VALIDATION


@torch.no_grad()
def latent(module, cells: ModelCells, chunk: int = 1024) -> np.ndarray:
    """Posterior means of the latent space for ``cells``, (n, n_latent); training mode restored."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    means = []
    for first in range(0, cells.X.shape[0], chunk):
        tensors = cells.tensors(slice(first, first + chunk), device)
        inference = module.inference(**module._get_inference_input(tensors))
        means.append(inference["qz"].loc.cpu().numpy())
    module.train(was_training)
    return np.concatenate(means)


@torch.no_grad()
def validation_loss(module, cells: ModelCells, chunk: int = 1024) -> dict[str, float]:
    """The loss terms of ``cells`` as scvi-tools' validation computes them (eval mode, z
    sampled: draw under :func:`~sweep.training.rng.rng_untouched`), means per cell in nats:
    ``elbo_validation`` (reconstruction + local KL, unweighted), its two terms. Training mode
    restored."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    reconstruction = kl_local = 0.0
    for first in range(0, cells.X.shape[0], chunk):
        losses = module(cells.tensors(slice(first, first + chunk), device))[2]
        reconstruction += float(losses.reconstruction_loss_sum)
        kl_local += float(losses.kl_local_sum)
    module.train(was_training)
    n = cells.X.shape[0]
    return {
        ELBO_VALIDATION: (reconstruction + kl_local) / n,
        RECONSTRUCTION_VALIDATION: reconstruction / n,
        KL_LOCAL_VALIDATION: kl_local / n,
    }
