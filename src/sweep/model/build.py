"""Build scvi-tools' SCVI for a store: a plain ``setup_anndata`` model anyone can load.

The model is set up on a 2-cell template AnnData whose obs columns are Categoricals carrying
the FULL category lists of the batch and each covariate, so the registry (and the saved model)
knows every category while training reads cells from the store through a datamodule.
"""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from omegaconf import OmegaConf
from scvi.model import SCVI

from sweep.model.batch_injection import LOOKUP, set_batch_injection

#: the obs column that holds the batch category in the template (and in query data)
BATCH_COLUMN = "batch"


def template_adata(
    genes: list[str], batch_categories: list[str], covariate_categories: dict[str, list[str]]
) -> anndata.AnnData:
    """A 2-cell AnnData (zeros) with ``genes`` as var names and full-category obs columns."""
    n = 2
    obs = pd.DataFrame(index=[f"template-{i}" for i in range(n)])
    obs[BATCH_COLUMN] = pd.Categorical([batch_categories[0]] * n, categories=batch_categories)
    for key, categories in covariate_categories.items():
        obs[key] = pd.Categorical([categories[0]] * n, categories=categories)
    X = sp.csr_matrix((n, len(genes)), dtype=np.float32)
    return anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))


def build_scvi(
    genes: list[str],
    batch_categories: list[str],
    covariate_categories: dict[str, list[str]],
    model_cfg,
    batch_injection: str = LOOKUP,
) -> SCVI:
    """scvi-tools' SCVI set up for a store, ``model_cfg``'s keys passed as constructor arguments,
    one to one.

    Parameters
    ----------
    genes
        The store's genes (Ensembl ids), in its order.
    batch_categories
        Every batch category, in code order (sweep.data.batches).
    covariate_categories
        Each categorical covariate's categories, in code order.
    model_cfg
        The ``model`` group.
    batch_injection
        ``trainer.batch_injection``: how the layers that take the batch and covariates compute
        them, ``"lookup"`` (a column of the weight per covariate,
        sweep.model.batch_injection) or ``"one_hot"`` (scvi-tools' product with a one-hot).
        Same parameters, same outputs either way.

    Returns
    -------
    An untrained SCVI that any scvi-tools user can save and load.
    """
    adata = template_adata(genes, batch_categories, covariate_categories)
    with warnings.catch_warnings():
        # "Category 0 ... has fewer than 3 cells" speaks of the 2-cell template, not the data
        warnings.filterwarnings("ignore", message="Category .* has fewer than 3 cells")
        SCVI.setup_anndata(
            adata,
            batch_key=BATCH_COLUMN,
            categorical_covariate_keys=list(covariate_categories) or None,
        )
    model = SCVI(adata, **OmegaConf.to_container(model_cfg, resolve=True))
    set_batch_injection(model.module, batch_injection)
    return model
