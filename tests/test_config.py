import dataclasses
from typing import Literal, Optional

import pytest

from envs_jax import yaml_config as cfglib
from envs_jax.yaml_config import ConfigError


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-4
    kind: Literal["adamw", "adafactor"] = "adafactor"
    sizes: tuple[int, ...] = (1, 2)

    def validate(self):
        if self.lr <= 0:
            raise ConfigError(f"config key 'optim.lr' must be > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "run"
    steps: int = 10
    checkpoint: Optional[str] = None
    optim: Inner = dataclasses.field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\noptim:\n  lr: 3\n  sizes: [4, 5, 6]\n")
    cfg = cfglib.load(Outer, path, ["optim.kind=adamw", "steps=7", "checkpoint=/x"])
    assert cfg == Outer(name="a", steps=7, checkpoint="/x", optim=Inner(lr=3.0, kind="adamw", sizes=(4, 5, 6)))
    assert isinstance(cfg.optim.lr, float)
    assert cfglib.to_dict(cfg)["optim"]["sizes"] == [4, 5, 6]


@pytest.mark.parametrize("override, fragment", [
    (["optim.lrr=1"], "'optim.lrr'"),
    (["nme=1"], "'nme'"),
    (["steps=1.5"], "'steps'"),
    (["steps=true"], "'steps'"),
    (["optim.kind=sgd"], "'optim.kind'"),
    (["optim.lr=-1"], "'optim.lr'"),
    (["optim.sizes=[1, x]"], "'optim.sizes[1]'"),
    (["optim=3"], "'optim'"),
    (["steps"], "key=value"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        cfglib.load(Outer, None, override)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        cfglib.load(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        cfglib.load(Outer, bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        cfglib.load(Outer, top)


def test_exponent_without_a_dot_is_a_number():
    assert cfglib.load(Outer, None, ["optim.lr=2e-3"]).optim.lr == 2e-3
