"""Bootstrap confidence intervals over prompts and the method x metric table."""

import numpy as np
import pandas as pd
import pytest

from fidelity_lib.metrics.summary import bootstrap_ratio, metric_table, metrics_for, wide_table


def frame(values, prompts, method="sd", error=None, seeds=None):
    seeds = [0] * len(prompts) if seeds is None else seeds
    return pd.DataFrame({"method": method, "prompt_index": prompts, "seed": seeds, "value": values, "error": error})


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


def test_toy_sets_get_their_paper_sets_metrics():
    assert metrics_for("toy_ae_shape_object") == metrics_for("ae_animal_object")
    assert metrics_for("toy_gpt") == metrics_for("gpt") and "relation_accuracy" in metrics_for("toy_vsr")
    assert "relation_accuracy" not in metrics_for("toy_one_object")


def test_a_paper_shaped_table_takes_toy_counterparts_into_the_paper_rows():
    from fidelity_lib.metrics.summary import paper_shaped_table

    def long(dataset, metric, values, n_prompts=20):
        return pd.DataFrame([{"dataset": dataset, "method": m, "metric": metric, "value": v, "low": v - 0.1, "high": v + 0.1,
                              "n_prompts": n_prompts, "n_images": 2 * n_prompts} for m, v in values.items()])

    tables = {
        "toy_ae_object_object": pd.concat([long("toy_ae_object_object", "clip_full_text", {"sd": 0.5, "ae": 0.6}),
                                           long("toy_ae_object_object", "blip_text_similarity", {"sd": 0.3, "ae": 0.4}, 18)]),
        "toy_gpt": long("toy_gpt", "relation_accuracy", {"sd": 0.4, "st": 0.7}),
    }
    ae = paper_shaped_table(tables, "attend_excite")
    assert list(ae["paper set"]) == ["ae_object_object"] * 2 and list(ae["method"]) == ["sd", "ae"]
    assert list(ae.columns) == ["paper set", "set", "method", "prompts", "images", "clip_full_text", "blip_text_similarity"]
    assert list(ae["prompts"]) == [20, 20] and list(ae["images"]) == [40, 40]  # the row's largest n over its cells
    assert ae.loc[1, "clip_full_text"] == "0.600 [0.500, 0.700]"
    few = paper_shaped_table({"toy_ae_object_object": long("toy_ae_object_object", "clip_full_text", {"sd": 0.5}, 9)}, "attend_excite")
    assert few.loc[0, "clip_full_text"] == "0.500 (9 prompts: too few to compare)"
    st = paper_shaped_table(tables, "spatial_temporal")
    assert list(st["set"]) == ["toy_gpt", "toy_gpt"] and st.loc[1, "relation_accuracy"] == "0.700 [0.600, 0.800]"
    assert paper_shaped_table({}, "spatial_temporal").empty


def test_method_verdicts_count_cells_above_below_and_overlapping_the_baseline():
    from fidelity_lib.metrics.summary import method_verdicts

    rows = [("s", "sd", "m", 0.5, 0.45, 0.55), ("s", "ae", "m", 0.7, 0.6, 0.8), ("s", "st", "m", 0.3, 0.2, 0.4),
            ("t", "sd", "m", 0.5, 0.4, 0.6), ("t", "ae", "m", 0.55, 0.45, 0.65), ("t", "st", "m", 0.5, 0.4, 0.6),
            ("t", "ae", "other", 0.9, 0.9, 0.9)]
    long = pd.DataFrame(rows, columns=["dataset", "method", "metric", "value", "low", "high"]).assign(n_prompts=12)
    sentence = method_verdicts(long, ("m",))
    assert "ae: above sd on 1, below on 0, CIs overlapping on 1 of 2" in sentence
    assert "st: above sd on 0, below on 1, CIs overlapping on 1 of 2" in sentence
    long.loc[long["dataset"] == "t", "n_prompts"] = 9  # under MIN_PROMPTS_TO_COMPARE: set t is not compared
    assert "ae: above sd on 1, below on 0, CIs overlapping on 0 of 1 (set, metric) cells, 1 cell with under 10 prompts not compared" in method_verdicts(long, ("m",))


def test_methods_are_measured_on_the_pairs_every_method_has():
    sd = frame([0.2, 0.4, 0.9], [0, 1, 2], "sd")
    ae = frame([0.3, 0.5], [0, 1], "ae")  # prompt 2 was never made with ae: sd is measured without it too
    table = metric_table({"clip": pd.concat([sd, ae]).rename(columns={"value": "full_text"})}, "mscoco", n_boot=200)
    assert table["value"].tolist() == pytest.approx([0.3, 0.4]) and table["n_prompts"].tolist() == [2, 2]
    assert wide_table(table)["clip_full_text"].tolist() == ["0.300 (2 prompts: too few to compare)", "0.400 (2 prompts: too few to compare)"]
