"""scvi-tools' SCVI as this project builds it (``build``) and reads it back from a saved file
(``saved``, for ``scvi-sweep-inspect-model``)."""
