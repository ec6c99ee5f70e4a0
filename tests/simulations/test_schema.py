"""The config schema: every key of every config group value refused with a bad value, by
name, before the simulation engine starts; the README's config reference is the
generated one."""

from __future__ import annotations

import copy
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hydra import compose
from hydra import initialize_config_module
from omegaconf import OmegaConf

from bouquet.checks import interval
from bouquet.simulations.config.schema import GROUPS
from bouquet.simulations.config.schema import ROOT
from bouquet.simulations.config.schema import TASKS
from bouquet.simulations.config.schema_doc import markdown
from bouquet.simulations.config.schema_doc import readme_section
from bouquet.simulations.config.schema_doc import yaml_values
from bouquet.simulations.config.schema_keys import Key
from bouquet.simulations.config.validate import validate_config
from bouquet.simulations.run import main as sim_main

ROOT_DIR = Path(__file__).resolve().parents[2]

# Overrides that make a group value's config valid as a whole (values that need each
# other).
COMPANIONS: dict[tuple[str, str], list[str]] = {
    ("client", "early_exit"): ["model=early_exit"],
    ("client", "recsys"): ["dataset=movielens", "model=mf"],
    ("model", "early_exit"): ["client=early_exit"],
    ("model", "mf"): ["dataset=movielens", "client=recsys"],
    ("dataset", "movielens"): ["model=mf", "client=recsys"],
    ("strategy", "depth_fedavg"): ["model=early_exit", "client=early_exit"],
    ("search", "*"): ["experiment=early_exit_search"],
    ("compression", "*"): [
        "client=topk",
        "+compression.server_lr=0.5",
        "+compression.fast_path=true",
    ],
}
WRONG_TYPE = {
    "int": 2.5,
    "float": "abc",
    "bool": "yes",
    "str": 5,
    "str or bool": 5,
    "dict": 5,
}


@cache
def _composed(overrides: tuple[str, ...]) -> dict[str, Any]:
    with initialize_config_module("bouquet.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return container


def base_config(group: str, value: str) -> dict[str, Any]:
    """A valid composed config with ``group=value`` (a fresh copy)."""
    own = (
        []
        if value == "*" or group in ("search", "compression")
        else [f"{group}={value}"]
    )
    return copy.deepcopy(_composed(tuple(own + COMPANIONS.get((group, value), []))))


def bad_values(key: Key) -> list[Any]:
    """Values that ``key`` must refuse: wrong type, out of range, not a choice, null,
    empty list."""
    element = key.kind.removesuffix(" list")
    scalars: list[Any] = [WRONG_TYPE[element]]
    if key.choices:
        scalars.append(not key.choices[0] if element == "bool" else "not-a-choice")
    if key.range:
        low, high, low_closed, high_closed = interval(key.range)
        step = 1 if element == "int" else 0.5
        cast = int if element == "int" else float
        if math.isfinite(low):
            scalars.append(cast(low - step) if low_closed else cast(low))
        if math.isfinite(high):
            scalars.append(cast(high + step) if high_closed else cast(high))
    if element == "float":
        scalars.append(math.nan)
    out = [[s] for s in scalars] + [[]] if key.kind.endswith(" list") else scalars
    if not key.null:
        out.append(None)
    return out


def _cases() -> list[Any]:
    cases = []
    for group_name, group in GROUPS.items():
        for value, table in group.values.items():
            for key_name, key in table.items():
                for bad in bad_values(key):
                    case_id = f"{group_name}={value}:{key_name}={bad!r}"
                    cases.append(
                        pytest.param(group_name, value, key_name, bad, id=case_id)
                    )
    for key_name, key in ROOT.items():
        for bad in bad_values(key):
            cases.append(pytest.param("", "", key_name, bad, id=f"{key_name}={bad!r}"))
    return cases


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_task`` with tasks that fail the test if they are ever reached."""

    def engine_must_not_start(cfg: dict[str, Any], run_dir: str) -> dict[str, Any]:
        raise AssertionError(
            "the simulation engine started with a config that should be refused"
        )

    monkeypatch.setattr(sim_main, "TASKS", dict.fromkeys(TASKS, engine_must_not_start))


@pytest.mark.parametrize(("group", "value", "key_name", "bad"), _cases())
def test_every_key_refuses_a_bad_value_before_the_engine_starts(
    group: str, value: str, key_name: str, bad: Any, no_engine: None, tmp_path: Path
) -> None:
    cfg = base_config(group or "simulation", value or "*")
    section = cfg[group] if group else cfg
    section[key_name] = bad
    path = f"{group}.{key_name}" if group else key_name
    with pytest.raises(ValueError, match=re.escape(path)):
        sim_main.run_task(cfg, str(tmp_path))


@pytest.mark.parametrize(
    ("group", "value"),
    [(g, v) for g, group in GROUPS.items() for v in group.values],
    ids=lambda x: str(x),
)
def test_every_group_value_is_valid_as_composed_and_refuses_unknown_and_missing_keys(
    group: str, value: str
) -> None:
    cfg = base_config(group, value)
    options = validate_config(cfg)
    assert options[group] == value
    table = GROUPS[group].values[value]
    unknown = copy.deepcopy(cfg)
    unknown[group]["no_such_key"] = 1
    with pytest.raises(
        ValueError, match=re.escape(f"{group}.no_such_key is not a key of")
    ):
        validate_config(unknown)
    required = [k for k, key in table.items() if not key.optional]
    for name in required:
        missing = copy.deepcopy(cfg)
        del missing[group][name]
        with pytest.raises(ValueError, match=re.escape(f"{group}.{name}")):
            validate_config(missing)


def test_schema_values_are_the_yaml_files() -> None:
    for group, spec in GROUPS.items():
        files = set(yaml_values(group))
        if spec.by:  # one key table per yaml file
            assert set(spec.values) == files, group
        # one table for every file (or no file: an optional group set with
        # +group.key=...)
        else:
            assert list(spec.values) == ["*"] and (files or spec.optional), group
    assert set(TASKS) == set(sim_main.TASKS)


def test_unknown_top_level_key_and_foreign_group_value_refused() -> None:
    cfg = base_config("simulation", "*")
    cfg["experimentz"] = 1
    with pytest.raises(ValueError, match="experimentz is not a config key"):
        validate_config(cfg)
    cfg = base_config("client", "plain")
    cfg["client"]["_target_"] = "my.Client"
    with pytest.raises(
        ValueError,
        match=r"client\._target_='my.Client' is not allowed.*choose client=plain\|topk",
    ):
        validate_config(cfg)


def test_the_issue_example_message() -> None:
    cfg = base_config("client", "topk")
    cfg["client"]["alpha"] = 2
    with pytest.raises(ValueError) as info:
        validate_config(cfg)
    assert str(info.value) == "client.alpha=2 is out of range (0, 1]"


def test_readme_config_reference_is_the_generated_one() -> None:
    readme = (ROOT_DIR / "docs" / "config.md").read_text()
    assert readme_section(readme) == markdown(), (
        "docs/config.md's config reference is stale: regenerate it with `python -m "
        "bouquet.simulations.config.schema_doc --markdown`"
    )


def test_generated_reference_lists_every_key_and_combination() -> None:
    from bouquet.simulations.config.combinations import COMBINATIONS

    text = markdown()
    for group, spec in GROUPS.items():
        assert f"**`{group}`**" in text
        for table in spec.values.values():
            for key_name in table:
                assert f"| `{key_name}` |" in text, f"{group}.{key_name}"
    for combo in COMBINATIONS:
        assert f"- `{combo.keys}`" in text
