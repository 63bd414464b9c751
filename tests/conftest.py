"""Test-suite settings (reproducible hypothesis runs) and fixtures shared by many files.

Hypothesis runs derandomised by default (each property test draws the same examples on every
run, here as on CI) and keeps no example database (nothing written into the checkout, no
failure replayed from an earlier run). ``--hypothesis-profile=random`` draws fresh examples,
reproducible with ``--hypothesis-seed=N``; the property tests carry the ``property`` marker,
and ``scripts/hypothesis_seeds.sh`` runs them under many seeds.
"""

import pytest
from hypothesis import settings

import freqmerge_viz as fmv
from widget_support import FakeClock

settings.register_profile("derandomized", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("ci", parent=settings.get_profile("derandomized"))
settings.register_profile("random", derandomize=False, database=None, deadline=None, print_blob=True)


def pytest_configure(config):
    if not config.getoption("hypothesis_profile", default=None):
        settings.load_profile("derandomized")


def pytest_collection_modifyitems(items):
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker("property")


@pytest.fixture(scope="module")
def zoo():
    """The shipped demo zoo (a file may define its own ``zoo`` fixture, e.g. a stand-in)."""
    return fmv.zoo.load()


@pytest.fixture(scope="module")
def clock():
    """A fake scheduler for the widgets' debouncer (time moves only on ``advance``)."""
    return FakeClock()
