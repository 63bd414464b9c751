"""The explorers' plot: a plotly figure held as widget state and drawn with ``Plotly.react``.

Why not plotly's ``FigureWidget``: its updates travel as one-off messages and its synced state
is the figure it was created with, so a page reload (kernel alive) redraws the first figure
or nothing; and arrays it sends as binary buffers of some dtypes (strings, integers) never
reached the browser. :class:`PlotPane` instead keeps the whole current figure, as plain JSON
lists, in one synced trait: every view (the first, a second one, one after a reload) draws
exactly that, and each change is applied in place by ``Plotly.react`` (no re-render of the
output). ``revision`` counts the figures sent, so a page or a test can tell when a change
has been drawn.

plotly.js comes from the plotly Python package (``plotly.min.js``), inlined in the widget's
module and evaluated once per page; nothing is fetched from the internet.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

SAMPLED_ENTRIES = 16
"""How many entries of each 2-D array the readout lists (besides its shape and sums)."""

_MODULE = """
function ensurePlotly() {
  if (!globalThis.Plotly) {
    __PLOTLY_SOURCE__
  }
  return globalThis.Plotly;
}

function draw(Plotly, div, model) {
  const spec = model.get("figure") || {};
  const layout = Object.assign({}, spec.layout || {}, {autosize: true});
  delete layout.width;
  // a fixed height: with autosize alone the div takes its height from the plot it holds, and a
  // resize of the page could relayout it at height 0 (the plot then overflowed the cell)
  if (layout.height) div.style.height = layout.height + "px";
  const revision = String(model.get("revision"));
  return Plotly.react(div, spec.data || [], layout, {responsive: true, displaylogo: false}).then(() => {
    requestAnimationFrame(() => {
      div.dataset.drawnAt = String(performance.now());
      div.dataset.revision = revision;
    });
  });
}

export default {
  render({ model, el }) {
    const Plotly = ensurePlotly();
    const div = document.createElement("div");
    div.className = "fmv-plot";
    div.style.width = "100%";
    el.appendChild(div);
    const update = () => draw(Plotly, div, model);
    update();
    model.on("change:revision", update);
    const resize = new ResizeObserver(() => { if (div.offsetWidth) Plotly.Plots.resize(div); });
    resize.observe(el);
    return () => { model.off("change:revision", update); resize.disconnect(); Plotly.purge(div); };
  }
};
"""


@functools.lru_cache(maxsize=1)
def _module_source() -> str:
    import plotly

    source = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    return _MODULE.replace("__PLOTLY_SOURCE__", source)


def _decode_typed_array(spec: dict) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(spec["dtype"]))
    shape = spec.get("shape")
    if shape:
        data = data.reshape([int(n) for n in str(shape).split(",")] if isinstance(shape, str) else shape)
    return data


def plain(value: Any) -> Any:
    """`value` with numpy arrays and scalars, tuples, plotly's base64 typed arrays
    (``{"dtype", "bdata"}``, what ``Figure.to_dict`` makes of numpy arrays) and non-finite
    floats made JSON-plain (lists, Python numbers, ``None`` for NaN/±inf), recursively."""
    if isinstance(value, dict):
        if "bdata" in value and "dtype" in value:
            return plain(_decode_typed_array(value))
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fc":
            value = value.astype(np.float64)
            return [plain(v) for v in value] if value.ndim > 1 else [
                float(v) if math.isfinite(v) else None for v in value.tolist()]
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def figure_spec(fig) -> dict:
    """The plotly figure `fig` as a plain ``{"data": [...], "layout": {...}}`` dict."""
    spec = plain(fig.to_dict())
    for trace in spec.get("data", []):
        trace.pop("uid", None)
    return spec


def _array_summary(values) -> dict:
    array = np.asarray([[np.nan if v is None else v for v in row] for row in values], dtype=np.float64)
    flat = array.reshape(-1)
    picks = np.linspace(0, flat.size - 1, min(SAMPLED_ENTRIES, flat.size)).astype(int) if flat.size else []
    finite = flat[np.isfinite(flat)]
    return {"shape": list(array.shape), "nan": int(flat.size - finite.size), "sum": float(finite.sum()),
            "picks": [int(i) for i in picks], "values": [None if not np.isfinite(flat[i]) else float(flat[i])
                                                         for i in picks]}


def trace_readout(spec: dict) -> list[dict]:
    """Per trace of a figure spec: its name, type and data (``x``, ``y``, ``text``, ``customdata``
    and the error bars ``error_y`` as lists; a 2-D ``z`` as shape, NaN count, sum of the finite entries and sampled entries).

    This is what a page must show for the figure to be the one computed (the browser test reads
    the drawn graph's data and compares).
    """
    rows = []
    for trace in spec.get("data", []):
        row = {"name": trace.get("name"), "type": trace.get("type")}
        for field in ("x", "y", "text", "customdata"):
            if isinstance(trace.get(field), list):
                row[field] = trace[field]
        error = trace.get("error_y")
        if isinstance(error, dict) and isinstance(error.get("array"), list):
            row["error_y"] = error["array"]
        z = trace.get("z")
        if isinstance(z, list) and z and isinstance(z[0], list):
            row["z"] = _array_summary(z)
        elif isinstance(z, list):
            row["z"] = {"values": z}
        rows.append(row)
    return rows


def _pane_class():
    import anywidget
    import traitlets

    class PlotPane(anywidget.AnyWidget):
        """A plotly figure as widget state (see the module docstring)."""

        _esm = _module_source()
        figure = traitlets.Dict().tag(sync=True)
        revision = traitlets.Int(0).tag(sync=True)

        def show(self, spec: dict) -> None:
            """Send figure spec `spec` (from :func:`figure_spec`); every view redraws it in place."""
            with self.hold_sync():
                self.figure = spec
                self.revision += 1

    return PlotPane


@functools.lru_cache(maxsize=1)
def plot_pane_class():
    """The :class:`PlotPane` widget class (anywidget is imported on first use)."""
    return _pane_class()


def readout_html(revision: int, readout: list[dict], values: dict | None = None) -> str:
    """A hidden element carrying the figure's trace data (and the settings it was computed for)
    as JSON, for the page and its tests."""
    from html import escape

    payload = {"revision": revision, "traces": readout, "values": plain(dict(values or {}))}
    text = escape(json.dumps(payload, separators=(",", ":"), default=str), quote=True)
    return f'<div class="fmv-readout" hidden data-revision="{revision}" data-json="{text}"></div>'
