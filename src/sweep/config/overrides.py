"""Command-line overrides before Hydra sees them: parsed, kept free of secrets, and checked
against the schema, so a mistake costs a second and leaves no run folder.

Secrets: Hydra writes every override into the run folder (``.hydra/``,
``config_resolved.yaml`` with interpolations resolved, ``metrics.json``, the W&B run and the
multirun report). So an override is refused before anything is written when its key is named like
a secret (``api_key``, ``token``, ``password``...), its value is a URL with a password, it holds
the value of a secret environment variable, or it interpolates one (``${oc.env:HF_TOKEN}`` is
resolved into ``config_resolved.yaml``). Secrets belong in the environment, read by the tool
itself: W&B reads ``WANDB_API_KEY``; PostgreSQL reads ``PGPASSWORD`` or ``~/.pgpass`` for a
storage URL written without its password.
"""

from __future__ import annotations

import os
import re

from sweep.config.schema import ConfigError, check_value, schema_keys

#: names (of config keys and environment variables) that hold secrets
SECRET_NAME = re.compile(r"api[_-]?key|token|secret|passw(or)?d|credential", re.IGNORECASE)
#: scheme://user:password@host
URL_WITH_PASSWORD = re.compile(r"://[^/:@\s]+:[^/@\s]+@")
#: ${oc.env:NAME...}: the variable an interpolation reads
ENV_INTERPOLATION = re.compile(r"\$\{oc\.env:([A-Za-z0-9_]+)")
#: shorter values of secret-named variables are not worth matching (e.g. "1", "true")
MIN_SECRET_LENGTH = 8


def parse_override(override: str) -> tuple[str, str]:
    """One Hydra override -> (key, value): ``key=value``, ``+key=value``, ``++key=value`` and
    ``~key[=value]`` (value "" when there is none)."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


class SecretInOverride(ValueError):
    """An override would write a secret into the run folder."""


def environment_secrets() -> dict[str, str]:
    """Values of secret-named environment variables, by name."""
    return {
        name: value
        for name, value in os.environ.items()
        if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH
    }


def refuse_secrets(overrides: list[str]) -> None:
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


def check_overrides_against_schema(overrides: list[str], groups: set[str]) -> None:
    """Refuse command-line overrides before Hydra composes anything: a key the schema does not
    have (also with ``+``, which Hydra would add silently), with the nearest valid key named; a
    value, or any value of a sweep (``trainer.max_epochs=1,-1``), outside its allowed range.

    ``groups``: the config group names (``model``, ``hydra/launcher``...), whose overrides
    choose an option file and are checked by Hydra. ``hydra.*`` keys are Hydra's own.
    """
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = schema_keys()
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.split(".")[0] == "hydra" or "/" in key or key in groups or override.is_delete():
            continue
        parts = key.split(".")
        known = next(
            (".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in keys),
            None,
        )
        if known != key and not (known and keys[known]):
            near = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
            hint = (
                f"did you mean {near[0]}?"
                if near
                else "see the keys in `python train.py --cfg job`"
            )
            raise ConfigError(f"unknown config key {key}: {hint}")
        if override.is_interval_sweep():  # an Optuna search range: each trial is validated
            continue
        swept = override.is_choice_sweep() or override.is_range_sweep()
        for value in override.sweep_iterator() if swept else [override.value()]:
            check_value(key, value)
