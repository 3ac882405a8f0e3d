from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, built_plugins


@pytest.fixture(scope="session")
def plugins() -> dict[str, Path]:
    return built_plugins()


@pytest.fixture
def cluster_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Cluster]]:
    """Make clusters (nats-server(s) plus a coordinator started with ``coordinator_args``)."""
    made: list[Cluster] = []

    def make(nodes: int = 1, coordinator_args: tuple[str, ...] = ()) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", nodes=nodes)
        made.append(c)
        c.start_coordinator(*coordinator_args)
        return c

    try:
        yield make
    finally:
        failed = getattr(request.node, "rep_call", None)
        for c in made:
            c.close()
            if failed is not None and failed.failed:
                print(c.dump_logs())


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """A fresh nats-server with a coordinator; tests start the workers they need."""
    return cluster_factory()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep
