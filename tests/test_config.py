from dataclasses import dataclass, field
from typing import Literal

import pytest

from vlstack.config import apply_overrides, from_dict, load_config, save_yaml, to_dict
from vlstack.errors import ConfigError
from vlstack.models.config import PRESETS, ModelConfig


@dataclass
class Inner:
    rate: float = 0.5
    name: str = "x"


@dataclass
class Outer:
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    path: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_from_dict_builds_nested_and_coerces():
    cfg = from_dict(Outer, {"steps": 3, "sizes": [4, 5], "inner": {"rate": 1}})
    assert cfg == Outer(steps=3, sizes=(4, 5), inner=Inner(rate=1.0))
    assert isinstance(cfg.inner.rate, float)


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, {"inner": {"rat": 1.0}})
    assert "'inner.rat'" in str(err.value) and "valid keys: name, rate" in str(err.value)


@pytest.mark.parametrize("data, fragment", [
    ({"steps": "ten"}, "'steps' must be int"),
    ({"steps": True}, "'steps' must be int, got a boolean"),
    ({"mode": "c"}, "'mode' must be one of 'a', 'b'"),
    ({"sizes": 3}, "'sizes' must be a list"),
    ({"inner": 5}, "inner: expected a mapping"),
])
def test_wrong_types_are_errors(data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        from_dict(Outer, data)


def test_overrides_parse_yaml_values_but_keep_strings_as_written():
    cfg = apply_overrides(Outer(), ["steps=7", "inner.rate=1e-3", "inner.name=007", "path=1.5", "sizes=[3]"])
    assert cfg.steps == 7 and cfg.inner.rate == 0.001 and cfg.inner.name == "007"
    assert cfg.path == "1.5" and cfg.sizes == (3,)
    assert apply_overrides(cfg, ["path=null"]).path is None


@pytest.mark.parametrize("override, fragment", [
    ("stepz=1", "unknown config key 'stepz'; valid keys: inner, mode, path, sizes, steps"),
    ("inner.foo=1", "unknown config key 'inner.foo'; valid keys: name, rate"),
    ("steps.x=1", "'steps' is a value, not a section"),
    ("steps", "must look like key.subkey=value"),
])
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        apply_overrides(Outer(), [override])


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(ModelConfig.from_preset("tiny"), ["vision.layers=3"])
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_config(ModelConfig, tmp_path / "c.yaml") == cfg


def test_preset_key_in_a_mapping_is_the_base():
    cfg = from_dict(ModelConfig, {"preset": "nano", "fusion": {"layers": 3}})
    expected = ModelConfig.from_preset("nano")
    expected.fusion.layers = 3
    assert cfg == expected


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="choose one of: " + ", ".join(PRESETS)):
        ModelConfig.from_preset("huge")


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(Outer, listing)


def test_recipes_in_configs_dir_load():
    from pathlib import Path

    from vlstack.demo.recipes import DemoConfig
    from vlstack.train.pretrain import PretrainConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in PRESETS:
        recipe = load_config(PretrainConfig, root / f"{name}.yaml")
        assert recipe.model == ModelConfig.from_preset(name), name
    assert to_dict(load_config(DemoConfig, root / "demo.yaml")) == to_dict(DemoConfig())
