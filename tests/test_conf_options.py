"""Every option of every config group composes to the config it composed before option files
became deltas (issue 11): ``tests/data/composed_options_before_deltas.json`` holds those configs.

Regenerate the fixture only for an intended change of what an option means:
``python tests/test_conf_options.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from sweep.config.schema import register_schema
from sweep.paths import CONF_DIR
from sweep.training.tracking import job_identity

FIXTURE = Path(__file__).parent / "data" / "composed_options_before_deltas.json"


def group_options(conf_dir: Path = CONF_DIR) -> list[str]:
    """``group=option`` for every option file under a group folder of ``conf_dir``."""
    return sorted(
        f"{path.parent.relative_to(conf_dir).as_posix()}={path.stem}"
        for path in conf_dir.glob("*/**/*.yaml")
    )


def composed(override: str | None) -> dict:
    """``train`` composed with one override (None: the defaults), Hydra's own part included
    without its machine-dependent ``runtime`` (the group choices kept)."""
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[override] if override else [], return_hydra_config=True)
    config = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    config["hydra"]["runtime"] = {"choices": config["hydra"]["runtime"]["choices"]}
    return json.loads(json.dumps(config))  # as the fixture reads back


def compose_all() -> dict[str, dict]:
    """``"defaults"`` and every ``group=option`` -> its composed config."""
    return {name or "defaults": composed(name) for name in [None, *group_options()]}


def test_every_group_option_has_a_recorded_config():
    assert set(json.loads(FIXTURE.read_text())) == {"defaults", *group_options()}


@pytest.mark.parametrize("name", ["defaults", *group_options()])
def test_an_option_composes_to_what_it_composed_before_option_files_became_deltas(name):
    before = json.loads(FIXTURE.read_text())[name]
    assert composed(None if name == "defaults" else name) == before


def test_every_group_of_the_config_but_hydras_own_is_tracked():
    register_schema()
    overrides = ["experiment=architecture", "hparams_search=scvi", "hydra.job.num=0"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # a multirun job with no group left at null
    try:
        tracked = set(job_identity(cfg.task_name)["choices"])
    finally:
        HydraConfig.instance().cfg = None
    groups = {path.name for path in CONF_DIR.iterdir() if path.is_dir() and path.name != "hydra"}
    assert tracked == groups


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(compose_all(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
