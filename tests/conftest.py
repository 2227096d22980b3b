"""Shared factory fixtures: a real fake upstream and a running promptwire proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

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
def make_proxy() -> Iterator[Callable[..., RunningProxy]]:
    """``make_proxy(config_dict_or_GatewayConfig, stages=None)`` -> a running proxy, stopped after the test."""
    started: list[RunningProxy] = []

    def make(config: Mapping[str, Any] | Any, **kw: Any) -> RunningProxy:
        p = RunningProxy(config, **kw).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()

