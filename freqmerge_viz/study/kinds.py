"""The built-in study kinds that need no optional dependency: ``zoo`` and ``python``.

The ``open_clip`` kind lives in :mod:`freqmerge_viz.study.clip`, the transformers kinds
(``hf_classification``, ``causal_lm``) in :mod:`freqmerge_viz.study.text`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from ..errors import StudySpecError
from .base import is_study
from .spec import Field, Spec, register_kind

LIMIT_DOC = "samples per task and split the analyses use by default (default: all)"


@register_kind("zoo", "the bundled demo zoo (or another zoo folder built by `freqmerge-viz zoo build`)",
               (Field("path", "a zoo folder (default: the bundled data/zoo)"),))
def build_zoo_study(spec: Spec):
    from ..zoo import load

    folder = spec.existing("path", folder=True, required=False)
    return load(folder)


@register_kind("python", "any study: `module:function` (or `file.py:function`) returning a Study",
               (Field("function", "`package.module:function` or `path/to/file.py:function`", required=True),
                Field("args", "keyword arguments passed to the function (a mapping)"),
                Field("limit", LIMIT_DOC)))
def build_python_study(spec: Spec):
    target = spec.typed("function", str, what="a string `module:function`")
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise spec.error("function", f"must look like `module:function` or `file.py:function`, got {target!r}")
    args = spec.mapping("args", required=False)
    if module_name.endswith(".py"):
        file = spec.existing("function", module_name, folder=False)
        module_spec = importlib.util.spec_from_file_location(f"freqmerge_study_{file.stem}", file)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise spec.error("function", f"importing {file} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise spec.error("function", f"cannot import module {module_name!r}: {exc}") from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise spec.error("function", f"{module_name!r} has no function {attr!r}")
    try:
        study = function(**args)
    except StudySpecError:
        raise
    except Exception as exc:
        raise spec.error("function", f"{target}(**args) raised {type(exc).__name__}: {exc}") from exc
    if not is_study(study):
        raise spec.error("function", f"{target} returned a {type(study).__name__}, not a Study")
    if spec.get("limit") is not None:
        study.default_limit = spec.positive_int("limit")
    return study
