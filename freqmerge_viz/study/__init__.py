"""Studies: the models, tasks and evaluation every analysis runs on.

A :class:`Study` holds a pretrained model, fine-tuned models by task, per-task data splits
(``val`` and ``test``), heads where the family needs them and a functional forward the
batched engine scores many parameter sets with. The demo zoo is one study
(:class:`freqmerge_viz.zoo.Zoo`); :func:`load_study` opens one declared in a YAML file
(kinds: ``zoo``, ``open_clip``, ``hf_classification``, ``causal_lm``, ``python``);
:func:`as_study` accepts either, or a path.
"""

from __future__ import annotations

import os

from .base import (SPLITS, FunctionalStudy, Study, evaluate_on_study, is_study, sample_count, study_data,
                   study_evaluator)
from ..errors import StudySpecError
from .spec import KINDS, Field, Spec, kind_table, load_study, register_kind

__all__ = ["Study", "FunctionalStudy", "SPLITS", "evaluate_on_study", "is_study", "sample_count", "study_data",
           "study_evaluator", "StudySpecError", "KINDS", "Field", "Spec", "kind_table", "load_study", "register_kind", "as_study"]


def as_study(source):
    """A study from `source`: a study (returned as is), ``None`` or ``"zoo"`` (the demo zoo), a
    zoo folder, or a study YAML file."""
    if source is None or isinstance(source, (str, os.PathLike)):
        return load_study(source)
    if is_study(source):
        return source
    from ..errors import ParameterError

    raise ParameterError(f"expected a study (a Study, a zoo, or a study YAML path), got a {type(source).__name__}"
                         + (": a (pretrained, finetuned, evaluate) tuple only works in CutoffExplorer; build a "
                            "study with freqmerge_viz.study.FunctionalStudy" if isinstance(source, tuple) else ""))
