"""scvi-tools' SCVI as this project builds it (``build``) and reads it back from a saved file
(``saved``, for ``scvi-sweep-inspect-model``); ``batch_injection``: a layer's injected one-hot
columns computed as a lookup of their weights (``trainer.batch_injection=lookup``: the same
parameters and saved model)."""
