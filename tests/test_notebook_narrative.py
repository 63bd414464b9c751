"""Every percentage a tutorial notebook's text quotes is one its own stored outputs show.

nbval checks that the stored outputs are what the cells compute today; this test ties the
narrative to those outputs, so that a re-run that changes a number cannot leave the text behind.
A quoted value matches an output number equal to it at the quoted precision, as a percentage or
as a fraction (``98.3%`` matches ``98.3``, ``98.35`` or ``0.9835``; the sign is not compared).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
QUOTED = re.compile(r"(\d+(?:\.\d+)?)\s?%")
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e-?\d+)?")


def _output_numbers(cells) -> set[float]:
    numbers = set()
    for cell in cells:
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain") or ""
            numbers.update(float(n) for n in NUMBER.findall("".join(text)))
    return numbers


def _shown(quoted: str, numbers: set[float]) -> bool:
    value = float(quoted)
    digits = len(quoted.split(".")[1]) if "." in quoted else 0
    tolerance = 0.5 * 10 ** -digits + 1e-9
    return any(abs(x - value) <= tolerance or abs(100 * x - value) <= tolerance for x in numbers)


def unsupported_quotes(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    numbers = _output_numbers(cells)
    missing = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        for match in QUOTED.finditer(text):
            if not _shown(match.group(1), numbers):
                missing.append(f"cell {index}: {text[max(0, match.start() - 60):match.end()]!r}")
    return missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_quoted_percentage_is_in_the_notebook_s_outputs(path):
    assert unsupported_quotes(path) == []


def test_the_check_catches_a_number_no_output_shows(tmp_path):
    notebook = {"cells": [{"cell_type": "code", "source": [], "outputs": [{"text": "kept 0.9835, change -1.47806"}]},
                          {"cell_type": "markdown", "source": ["keeps 98.3% and lowers by 1.5%, not 4.0%"]}]}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    assert len(unsupported_quotes(path)) == 1 and "4.0%" in unsupported_quotes(path)[0]
