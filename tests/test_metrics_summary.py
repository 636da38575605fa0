"""Bootstrap confidence intervals over prompts and the method x metric table."""

import numpy as np
import pandas as pd
import pytest

from fidelity_lib.metrics.summary import bootstrap_ratio, metric_table, metrics_for, wide_table


def frame(values, prompts, method="sd", error=None):
    return pd.DataFrame({"method": method, "prompt_index": prompts, "value": values, "error": error})


def test_flat_mean_with_ci_over_prompts():
    data = frame([0.1, 0.3, 0.2, 0.6, np.nan], [0, 0, 1, 2, 2])
    estimate = bootstrap_ratio(data, "value")
    assert estimate.value == pytest.approx(np.mean([0.1, 0.3, 0.2, 0.6]))
    assert estimate.low <= estimate.value <= estimate.high and estimate.n_prompts == 3 and estimate.n_images == 4


def test_pooled_ratio_and_a_degenerate_ci():
    data = pd.DataFrame({"prompt_index": [0, 1, 2], "found": [1, 2, 3], "total": [2, 4, 6], "error": None})
    estimate = bootstrap_ratio(data, "found", "total")
    assert (estimate.value, estimate.low, estimate.high) == pytest.approx((0.5, 0.5, 0.5))


def test_unreadable_images_and_empty_denominators():
    data = frame([0.5, 0.9], [0, 1], error=[None, "truncated"])
    assert bootstrap_ratio(data, "value").value == 0.5
    empty = pd.DataFrame({"prompt_index": [0], "a": [0], "b": [0], "error": None})
    assert np.isnan(bootstrap_ratio(empty, "a", "b").value)


def test_table_has_the_dataset_metrics_per_method():
    clip = pd.concat([frame([0.2, 0.4], [0, 1], "sd"), frame([0.3, 0.5], [0, 1], "ae")]).rename(columns={"value": "full_text"})
    table = metric_table({"clip": clip}, "mscoco", n_boot=200)
    assert list(table["metric"]) == ["clip_full_text"] * 2 and list(table["method"]) == ["sd", "ae"]
    assert table["value"].tolist() == pytest.approx([0.3, 0.4])
    assert wide_table(table).columns.tolist() == ["method", "clip_full_text"]
    assert metrics_for("vsr")[-2:] == ["relation_accuracy", "relation_accuracy_unconditional"]
    assert "relation_accuracy" not in metrics_for("mscoco") and "clip_min_object" in metrics_for("ae_animal_object")
