"""Keep secrets off the command line: Hydra writes every override into the run folder.

An override lands in ``.hydra/``, ``config_resolved.yaml``, ``metrics.json``, the W&B run and the
multirun report. So a key named like a secret (``api_key``, ``token``, ``password``...), a URL
with a password, or the value of a secret environment variable is refused before anything is
written. Secrets belong in the environment (W&B reads ``WANDB_API_KEY`` itself) or behind an
``${oc.env:VAR}`` interpolation, which Hydra saves as written, unresolved.
"""

from __future__ import annotations

import os
import re

#: names (of config keys and environment variables) that hold secrets
SECRET_NAME = re.compile(r"api[_-]?key|token|secret|passw(or)?d|credential", re.IGNORECASE)
#: scheme://user:password@host
URL_WITH_PASSWORD = re.compile(r"://[^/:@\s]+:[^/@\s]+@")
#: shorter values of secret-named variables are not worth matching (e.g. "1", "true")
MIN_SECRET_LENGTH = 8


class SecretInOverride(ValueError):
    """An override would write a secret into the run folder."""


def environment_secrets() -> dict[str, str]:
    """Values of secret-named environment variables, by name."""
    return {
        name: value
        for name, value in os.environ.items()
        if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH
    }


def check_overrides(overrides: list[str]) -> None:
    """Raise :class:`SecretInOverride` naming the first override that carries a secret."""
    secrets = environment_secrets()
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if value.startswith("${oc.env:"):
            continue  # saved as written: the secret stays in the environment
        if SECRET_NAME.search(key) and value:
            problem = f"the key {key} names a secret"
        elif URL_WITH_PASSWORD.search(value):
            problem = f"the value of {key} is a URL with a password"
        else:
            leaked = next((name for name, secret in secrets.items() if secret in value), None)
            if leaked is None:
                continue
            problem = f"the value of {key} holds ${leaked}"
        raise SecretInOverride(
            f"refusing override {key}=...: {problem}, and every override is written into the run "
            f"folder, the W&B run and the report. Put it in the environment and write "
            f"{key}='${{oc.env:VARIABLE}}' (saved unresolved), or let the tool read its own "
            "variable (W&B: WANDB_API_KEY)"
        )
