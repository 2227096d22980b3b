"""Shared factory fixtures: a real fake upstream and a running promptwire proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from gateway.stages.table import STAGES, StageEntry
from tests.support.proxy import RunningProxy
from tests.support.upstream import Knobs, UpstreamServer


@pytest.fixture
def make_upstream() -> Iterator[Callable[..., UpstreamServer]]:
    """``make_upstream(**knobs)`` -> a started UpstreamServer, stopped after the test."""
    started: list[UpstreamServer] = []

    def make(**knobs: Any) -> UpstreamServer:
        up = UpstreamServer(Knobs(**knobs)).start()
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()


@pytest.fixture
def register_stage(monkeypatch: pytest.MonkeyPatch) -> Callable[[StageEntry], None]:
    """``register_stage(entry)``: one more stage in the table for this test (config validation, HTTP,
    gRPC and the pipeline all read that one table)."""

    def register(entry: StageEntry) -> None:
        monkeypatch.setitem(STAGES, entry.name, entry)

    return register


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., RunningProxy]]:
    """``make_proxy(config_dict_or_GatewayConfig)`` -> a running proxy, stopped after the test."""
    started: list[RunningProxy] = []

    def make(config: Mapping[str, Any] | Any, **kw: Any) -> RunningProxy:
        p = RunningProxy(config, **kw).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()

