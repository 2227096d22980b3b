"""The shipped example configs stay valid gateway configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path: Path) -> None:
    config = load_config(path, env={})
    assert config.backends, f"{path.name} configures no backend"
