"""Test-suite settings (reproducible hypothesis runs on CI) and fixtures shared by many files."""

import os

import pytest
from hypothesis import settings

import freqmerge_viz as fmv
from widget_support import FakeClock

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="module")
def zoo():
    """The shipped demo zoo (a file may define its own ``zoo`` fixture, e.g. a stand-in)."""
    return fmv.zoo.load()


@pytest.fixture(scope="module")
def clock():
    """A fake scheduler for the widgets' debouncer (time moves only on ``advance``)."""
    return FakeClock()
