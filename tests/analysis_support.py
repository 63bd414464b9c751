"""Shared fixtures of the analysis tests: the shipped zoo, and one torch thread while a module runs
(the analyses run many small ops; on a busy 2-core machine two threads mostly wait on each other)."""

from __future__ import annotations

import pytest
import torch

import freqmerge_viz as fmv


@pytest.fixture(scope="module")
def shipped_zoo():
    return fmv.zoo.load()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
