"""Cost table (Table 9): stored numbers and bytes from the merges themselves; timings never asserted."""

from __future__ import annotations

import json

import pytest

from analysis_support import one_thread, shipped_zoo  # noqa: F401  (fixtures)
from freqmerge_viz.analysis.costs import ROWS, cost_table, extra_storage
from freqmerge_viz.analysis.evaluation import backbone_numel, individual_accuracies
from freqmerge_viz.analysis.selection import build_chosen, choose
from freqmerge_viz.experts import storage_table
from freqmerge_viz.zoo import parameter_count

LIMIT = 32


@pytest.fixture(scope="module")
def small(shipped_zoo):
    tasks = shipped_zoo.tasks[:2]
    table = cost_table(shipped_zoo, ROWS, tasks=tasks, limit=LIMIT, validation_limit=16, quick=True,
                       timing_inputs=20, repeats=1)
    return shipped_zoo, tasks, table.set_index("method")


def test_stored_counts_match_storage_table(small):
    zoo, tasks, table = small
    numel = backbone_numel(zoo)
    assert numel == parameter_count(zoo.model_config) == zoo.manifest["model"]["backbone_parameters"]
    choices = choose(zoo, list(ROWS), tasks=tasks, limit=16, quick=True)
    for name in ("free_oracle", "twin"):
        routed = build_chosen(zoo, choices, name, tasks)
        kept = int(storage_table(routed.experts, numel)["parameters_kept"].sum())
        assert table.loc[name, "extra_values"] == kept
        assert table.loc[name, "total_values"] == kept + numel
        assert table.loc[name, "extra_bytes"] == sum(routed.storage_bytes_per_task())
    emr = build_chosen(zoo, choices, "emr", tasks)
    assert table.loc["emr", "extra_bytes"] == sum(emr.storage_bytes_per_task())
    assert extra_storage(emr, numel, len(tasks))[1] == table.loc["emr", "extra_bytes"]


def test_plain_merges_store_one_model_and_individuals_store_k(small):
    zoo, tasks, table = small
    numel = backbone_numel(zoo)
    plain = table[table["kind"] == "plain"]
    assert set(plain.index) == {"weight_averaging", "task_arithmetic", "ties", "dare", "breadcrumbs", "pcb", "fr_paper",
                                "tsv", "iso_c", "iso_cts", "consensus", "wudi", "cart"}
    assert (plain["extra_values"] == 0).all() and (plain["total_values"] == numel).all()
    assert (plain["total_bytes"] == 4 * numel).all()
    assert table.loc["individual", "total_values"] == len(tasks) * numel
    assert table.loc["individual", "extra_pct_of_model"] == pytest.approx(100.0 * (len(tasks) - 1))


def test_accuracies_and_labels(small):
    zoo, tasks, table = small
    individual = individual_accuracies(zoo, tasks, limit=LIMIT)
    assert table.loc["individual", "mean_accuracy"] == pytest.approx(sum(individual.values()) / len(tasks))
    assert table["mean_accuracy"].between(0, 1).all()
    assert table["device"].str.startswith("cpu").all()
    assert json.loads(table.loc["twin", "settings"])["shared_params"] == \
        json.loads(table.loc["task_arithmetic", "settings"])
    assert table.columns.tolist()[-1] == "device"
