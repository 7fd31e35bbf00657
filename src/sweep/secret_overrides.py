"""Keep secrets off the command line: Hydra writes every override into the run folder.

An override lands in ``.hydra/``, ``config_resolved.yaml`` (interpolations resolved),
``metrics.json``, the W&B run and the multirun report. So an override is refused before anything
is written when its key is named like a secret (``api_key``, ``token``, ``password``...), its
value is a URL with a password, it holds the value of a secret environment variable, or it
interpolates one (``${oc.env:HF_TOKEN}`` is resolved into ``config_resolved.yaml``). Secrets
belong in the environment, read by the tool itself: W&B reads ``WANDB_API_KEY``; PostgreSQL
reads ``PGPASSWORD`` or ``~/.pgpass`` for a storage URL written without its password.
"""

from __future__ import annotations

import os
import re

from sweep.run_folder import parse_override

#: names (of config keys and environment variables) that hold secrets
SECRET_NAME = re.compile(r"api[_-]?key|token|secret|passw(or)?d|credential", re.IGNORECASE)
#: scheme://user:password@host
URL_WITH_PASSWORD = re.compile(r"://[^/:@\s]+:[^/@\s]+@")
#: ${oc.env:NAME...}: the variable an interpolation reads
ENV_INTERPOLATION = re.compile(r"\$\{oc\.env:([A-Za-z0-9_]+)")
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
        key, value = parse_override(override)
        interpolated = [n for n in ENV_INTERPOLATION.findall(value) if SECRET_NAME.search(n)]
        if SECRET_NAME.search(key) and value:
            problem = f"the key {key} names a secret"
        elif URL_WITH_PASSWORD.search(value):
            problem = f"the value of {key} is a URL with a password"
        elif interpolated:
            problem = f"{key} reads ${interpolated[0]}, and the resolved config is saved"
        else:
            leaked = next((name for name, secret in secrets.items() if secret in value), None)
            if leaked is None:
                continue
            problem = f"the value of {key} holds ${leaked}"
        raise SecretInOverride(
            f"refusing override {key}=...: {problem}, and every override is written into the run "
            "folder, the W&B run and the report. Leave secrets in the environment for the tool "
            "that needs them to read (W&B: WANDB_API_KEY; a PostgreSQL storage URL without its "
            "password: PGPASSWORD or ~/.pgpass)"
        )
