"""The project's configuration: the schema of every key (``schema``: types, defaults, allowed
values and ranges, for ``conf/train.yaml``, ``conf/prepare.yaml`` and the synthetic generator), and
command-line overrides (``overrides``: parsing, secrets refused, keys checked against the schema
before Hydra composes).

No heavy imports: the command line's checks run before anything else is imported.
"""
