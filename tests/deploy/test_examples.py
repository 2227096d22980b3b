"""The shipped example configs and Helm values stay valid gateway configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import load_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in EXAMPLES if "kind:" not in p.read_text()], ids=lambda p: p.name)
def test_example_config_validates(path: Path) -> None:
    config = load_config(path, env={})
    assert config.backends, f"{path.name} configures no backend"


def test_helm_values_config_validates() -> None:
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "promptwire" / "values.yaml").read_text())
    config = validate_config(values["config"], "values.yaml config")
    assert config.server.http_port == values["service"]["httpPort"]
    assert config.server.grpc_port == values["service"]["grpcPort"]
