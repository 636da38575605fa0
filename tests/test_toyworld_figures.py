"""The toy-world chapter's figures and the A&E signature's pair rule, on small hand-made frames."""

from dataclasses import replace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fidelity_lib.toyworld.calibration import AE_CANDIDATES, CHOSEN_AE, CHOSEN_ST, PRESENCE_FLOOR, ST_CANDIDATES
from fidelity_lib.toyworld.figures import ae_series, dose_response_figure, dose_table, forest_plot, signature_figure
from fidelity_lib.toyworld.signature import SignatureRun, lost_object_pairs


def image_row(set_name, setting, prompt, seed, present, split="held_out", weights="w1"):
    return {"set": set_name, "setting": setting, "method": "sd" if setting == "sd" else "ae", "prompt": prompt,
            "seed": seed, "split": split, "weights": weights, "all_present": present}


def signature_rows() -> pd.DataFrame:
    main = "toy_ae_object_object"
    baseline = [("p1", 5, False), ("b", 3, False), ("p3", 1, True), ("no-ae", 2, False), ("p5", 4, False), ("a", 3, False)]
    rows = [image_row(main, "sd", prompt, seed, present) for prompt, seed, present in baseline]
    rows += [image_row(main, CHOSEN_AE, prompt, seed, False) for prompt, seed, _ in baseline if prompt != "no-ae"]
    rows += [image_row(main, "ae-other", "no-ae", 2, True)]  # an A&E row of another setting does not count
    rows += [image_row(main, "sd", "dev", 0, False, split="dev"), image_row(main, CHOSEN_AE, "dev", 0, True, split="dev")]
    rows += [image_row("toy_gpt", "sd", "other set", 0, False), image_row("toy_gpt", CHOSEN_AE, "other set", 0, True)]
    rows += [image_row(main, "sd", "old", 0, False, weights="w0"), image_row(main, CHOSEN_AE, "old", 0, True, weights="w0")]
    return pd.DataFrame(rows)


def test_the_rule_takes_the_first_lost_baseline_pairs_with_an_ae_row_in_seed_then_prompt_order():
    rows = signature_rows()
    assert lost_object_pairs(rows, weights="w1") == [("a", 3), ("b", 3), ("p5", 4)]
    assert lost_object_pairs(rows, count=None, weights="w1") == [("a", 3), ("b", 3), ("p5", 4), ("p1", 5)]
    assert lost_object_pairs(rows, count=1) == [("old", 0)]  # without a weights filter every weights' rows count
    with pytest.raises(ValueError, match="No pair fits the rule"):
        lost_object_pairs(rows, set_name="toy_vsr")


def paired_row(set_name, setting, metric, difference, n_pairs=200, repairs=10, breakages=4, method="ae"):
    return {"set": set_name, "setting": setting, "method": method, "metric": metric, "n_pairs": n_pairs,
            "difference": difference, "ci_low": difference - 0.04, "ci_high": difference + 0.04,
            "repairs": repairs, "breakages": breakages}


def calibrate_frame() -> pd.DataFrame:
    ae = "toy_ae_object_object"
    rows = [paired_row(ae, name, "all_present", value) for name, value in
            (("ae-dose-5", 0.01), ("ae-dose-1", 0.03), (CHOSEN_AE, 0.05), ("ae-dose-2-8x8", -0.02))]
    rows += [paired_row("toy_gpt", "ae-dose-3", "all_present", 0.2)]  # not the A&E selection set: left out
    sweep = (("st-dose-1-1pass", 0.1, 0.0), ("st-dose-2.5-1pass", 0.3, 0.04), (CHOSEN_ST, 0.32, 0.06))
    for name, relation, presence in sweep:
        rows += [paired_row("toy_gpt", name, "relation_correct", relation, method="st"),
                 paired_row("toy_gpt", name, "all_present", presence, method="st")]
    return pd.DataFrame(rows)


def errorbar_points(axis) -> dict[str, list[float]]:
    """Label -> x data of each errorbar series on an axis."""
    return {container.get_label(): list(container.lines[0].get_xdata()) for container in axis.containers}


def test_dose_table_reads_each_candidates_dose_and_series_from_its_config():
    table = dose_table(calibrate_frame()).set_index(["setting", "metric"])
    assert table.loc[("ae-dose-1", "all_present"), "dose"] == AE_CANDIDATES["ae-dose-1"][0].scale_factor == 1
    assert table.loc[("ae-dose-1", "all_present"), "series"] == "step size only"
    assert table.loc[(CHOSEN_AE, "all_present"), "series"] == ae_series(*AE_CANDIDATES[CHOSEN_AE]) == "+ refinement"
    assert table.loc[("ae-dose-2-8x8", "all_present"), "series"] == "+ 8x8 maps"
    assert table.loc[(CHOSEN_ST, "relation_correct"), "dose"] == ST_CANDIDATES[CHOSEN_ST][0].weight_init
    assert table.loc[(CHOSEN_ST, "relation_correct"), "series"] == "3 passes, lr 0.05"
    assert table["chosen"].sum() == 3  # CHOSEN_AE on one metric, CHOSEN_ST on two
    assert "ae-dose-3" not in table.index.get_level_values("setting")


def test_dose_response_figure_plots_the_pure_step_sizes_the_st_series_the_floor_and_the_chosen_settings():
    figure = dose_response_figure(calibrate_frame())
    left, top, bottom = figure.axes
    points = errorbar_points(left)
    assert points["net = repairs - breakages (95% CI)"] == [1.0, 5.0]  # the 8x8 variant is no pure step size
    chosen = [label for label in points if label.startswith(f"chosen: {CHOSEN_AE}")]
    assert len(chosen) == 1 and "refinement" in chosen[0] and points[chosen[0]] == pytest.approx([2 * 1.08])
    assert left.get_xscale() == "log"
    for axis in (top, bottom):
        series = errorbar_points(axis)
        assert [len(x) for x in series.values()] == [2, 1]  # 1 pass at 1 and 2.5; 3 passes lr 0.05 at 2.5
        assert any(line.get_label() == f"chosen: {CHOSEN_ST}" for line in axis.lines)
    floors = [line for line in bottom.lines if list(line.get_ydata()) == [100 * PRESENCE_FLOOR] * 2]
    assert len(floors) == 1
    plt.close(figure)


def test_forest_plot_has_one_labelled_point_per_set_method_and_metric():
    paired = pd.DataFrame([
        paired_row("toy_gpt", "st-x", "relation_correct", 0.3, 600, 85, 8, method="st"),
        paired_row("toy_ae_object_object", CHOSEN_AE, "all_present", 0.04, 600, 14, 4),
        paired_row("toy_gpt", "st-x", "all_present", -0.02, 600, 5, 17, method="st"),
    ])
    figure = forest_plot(paired)
    (axis,) = figure.axes
    assert sum(len(x) for x in errorbar_points(axis).values()) == 3
    heights = {label.get_text(): y for label, y in zip(axis.get_yticklabels(), axis.get_yticks())}
    assert heights == {  # grouped by set in order of first appearance, top down
        "toy_gpt · st · relation_correct (600 pairs, 85 repaired / 8 broken)": 2,
        "toy_gpt · st · all_present (600 pairs, 5 repaired / 17 broken)": 1,
        "toy_ae_object_object · ae · all_present (600 pairs, 14 repaired / 4 broken)": 0,
    }
    plt.close(figure)
    figure = forest_plot(paired.drop(columns=["repairs", "breakages"]))
    assert all(label.get_text().endswith("(600 pairs)") for label in figure.axes[0].get_yticklabels())
    plt.close(figure)


def test_signature_figure_has_four_panels_per_pair_and_plots_the_weakest_subject():
    image = Image.new("RGB", (32, 32), "grey")
    attention = {"SD": np.array([[0.1, 0.5], [0.2, 0.6], [0.05, 0.7]]),
                 "A&E": np.array([[0.1, 0.5], [0.6, 0.5], [0.7, 0.8]])}
    runs = [SignatureRun(f"a red circle and a blue square {k}", 100 + k, ("circle", "square"), [0, 1, 2],
                         {"SD": image, "A&E": image}, attention, {"SD": False, "A&E": True}) for k in range(2)]
    figure = signature_figure(runs)
    assert len(figure.axes) == 8
    tokens_axis, weakest_axis = figure.axes[2], figure.axes[3]
    assert len(tokens_axis.lines) == 4  # two subjects, A&E and SD
    weakest = {line.get_label(): list(line.get_ydata()) for line in weakest_axis.lines}
    assert weakest == {"SD": [0.1, 0.2, 0.05], "A&E": [0.1, 0.5, 0.7]}
    assert figure.axes[0].get_title() == "SD: object lost" and figure.axes[1].get_title() == "A&E: all present"
    plt.close(figure)


def test_chapter_3_explains_the_rules_first_pair_on_the_toy_world():
    from fidelity_lib.attend_excite import AttendExciteConfig
    from fidelity_lib.chapters import explain_inputs
    from fidelity_lib.datasets import TOY_SPLIT_SEEDS
    from fidelity_lib.toyworld.calibration import toy_ae_config
    from fidelity_lib.toyworld.model import weights_id
    from fidelity_lib.toyworld.signature import headline_rows

    rows = headline_rows()
    ((prompt, seed),) = lost_object_pairs(rows, count=1, weights=weights_id())
    baseline = rows[(rows["set"] == "toy_ae_object_object") & (rows["setting"] == "sd") & (rows["prompt"] == prompt)
                    & (rows["seed"] == seed)]
    assert not baseline["all_present"].any()
    chosen_prompt, indices, config, chosen_seed = explain_inputs("toy", None, None, None)
    assert (chosen_prompt, chosen_seed, config) == (prompt, seed, toy_ae_config()) and len(indices) == 2
    assert explain_inputs("toy", None, None, 8, seed=7)[2:] == (replace(toy_ae_config(), attention_res=8), 7)
    assert explain_inputs("toy", "a red circle", None, None)[3] == TOY_SPLIT_SEEDS["held_out"][0]
    assert explain_inputs("paper", None, None, None) == ("a cat and a dog", None, AttendExciteConfig(), 0)


def test_signature_runs_remake_the_baseline_image_and_record_both_methods_attention():
    from fidelity_lib.toyworld.evaluate import baseline_images
    from fidelity_lib.toyworld.model import toy_pipeline
    from fidelity_lib.toyworld.signature import signature_runs

    pipe = toy_pipeline()
    prompt, seed = "a red triangle and a green square", 100012  # the rule's first pair in the stored headline rows
    (run,) = signature_runs(pipe, [(prompt, seed)])
    plain = baseline_images(pipe, prompt, [seed])[0]
    assert np.array_equal(np.asarray(run.images["SD"]), np.asarray(plain))  # step size 0 leaves SD's image alone
    assert run.tokens == ("triangle", "square") and run.steps == list(range(12))
    assert run.max_attention["SD"].shape == run.max_attention["A&E"].shape == (12, 2)
    assert run.max_attention["SD"][0].tolist() == run.max_attention["A&E"][0].tolist()  # same latent before any update
    assert run.all_present == {"SD": False, "A&E": True}
