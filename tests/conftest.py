"""Shared fixtures: a booted Machine per test, for each profile where a rule applies to both."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from smmemu import Machine


@pytest.fixture(params=["q35", "intel"])
def machine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    """A fresh Machine, once per profile."""
    with Machine(request.param) as m:
        yield m


@pytest.fixture
def q35() -> Iterator[Machine]:
    """A fresh q35 Machine."""
    with Machine("q35") as m:
        yield m
