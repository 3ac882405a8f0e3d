from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, built_plugins


@pytest.fixture(scope="session")
def plugins() -> dict[str, Path]:
    return built_plugins()


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A fresh nats-server with a coordinator; tests start the workers they need."""
    c = Cluster(tmp_path / "cluster")
    try:
        c.start_coordinator()
        yield c
    finally:
        failed = getattr(request.node, "rep_call", None)
        c.close()
        if failed is not None and failed.failed:
            print(c.dump_logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep
