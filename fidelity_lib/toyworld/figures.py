"""Plotting helpers of the toy-world chapter: rate bars, the dev dose-response sweep, a forest plot of the held-out
paired differences and A&E's signature, with their 95% intervals (image grids: fidelity_lib.figures)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from fidelity_lib.attend_excite import AttendExciteConfig
from fidelity_lib.spacetime import SpaceTimeConfig
from fidelity_lib.toyworld.calibration import (
    AE_CANDIDATES, CHOSEN_AE, CHOSEN_ST, PRESENCE_FLOOR, SELECTION, ST_CANDIDATES, V4_AE, V4_ST, ae_dose,
)

if TYPE_CHECKING:
    from fidelity_lib.toyworld.signature import SignatureRun


def rate_bars(rates: pd.DataFrame, label: str, group: str, title: str, ylabel: str = "rate (95% CI)"):
    """Grouped bars of ``rate`` with ``ci_low``/``ci_high`` error bars: one group per ``group`` value, one bar per ``label``."""
    groups, labels = list(dict.fromkeys(rates[group])), list(dict.fromkeys(rates[label]))
    width = 0.8 / len(labels)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.6 * len(groups)), 3.8))
    for k, name in enumerate(labels):
        chosen = rates[rates[label] == name].set_index(group).reindex(groups)
        positions = [g + (k - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        errors = [chosen["rate"] - chosen["ci_low"], chosen["ci_high"] - chosen["rate"]]
        axis.bar(positions, chosen["rate"], width, yerr=errors, capsize=3, label=name, color=f"C{k}")
    axis.set_xticks(range(len(groups)), [name.replace("_", " ") for name in groups], fontsize=7, rotation=15)
    axis.set_ylim(0, 1)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, ncol=min(4, len(labels)))
    figure.subplots_adjust(bottom=0.3)  # room for the provenance line under the tick labels
    return figure


def ae_series(config: AttendExciteConfig, excite: str) -> str:
    """How an A&E candidate differs from ae_dose at its step size: "step size only", or "+ " and the changes."""
    pure = ae_dose(config.scale_factor)
    if config == pure and excite == "nouns":
        return "step size only"
    changes = [text for changed, text in (
        (config.thresholds != pure.thresholds, "refinement"),
        (config.max_iter_to_alter != pure.max_iter_to_alter, f"first {config.max_iter_to_alter} steps"),
        (config.attention_res != pure.attention_res, f"{config.attention_res}x{config.attention_res} maps"),
        (excite != "nouns", "colours excited too"),
    ) if changed]
    return "+ " + ", ".join(changes or ["other settings"])


def st_series(config: SpaceTimeConfig) -> str:
    """An ST candidate's series: its passes and learning rate (one pass never updates the weights), and its combination."""
    form = "convex, " if config.combination == "convex" else ""
    if config.passes == 1:
        return f"{form}1 pass (initial weights)"
    return f"{form}{config.passes} passes, lr {config.learning_rate:g}"


def dose_table(paired: pd.DataFrame) -> pd.DataFrame:
    """The dose-response sweep's rows (V4 candidates on their selection set) with each one's series, dose read from its
    config (A&E: step size; ST: initial weight x N) and whether it is the chosen setting."""
    rows = []
    for family, names in (("ae", V4_AE), ("st", V4_ST)):
        set_name, _ = SELECTION[family]
        for row in paired[(paired["set"] == set_name) & paired["setting"].isin(names)].to_dict("records"):
            if family == "ae":
                config, excite = AE_CANDIDATES[row["setting"]]
                series, dose = ae_series(config, excite), config.scale_factor
            else:
                config = ST_CANDIDATES[row["setting"]][0]
                series, dose = st_series(config), config.initial_weight(1)
            chosen = row["setting"] in (CHOSEN_AE, CHOSEN_ST)
            rows.append(row | {"family": family, "series": series, "dose": dose, "chosen": chosen})
    return pd.DataFrame(rows)


def _points(
    axis, rows: pd.DataFrame, label: str, style: str, color: str, offset: float = 1.0, markersize: float = 5
) -> None:
    """Differences in points against dose with 95% CI bars, one marker per row (doses nudged by ``offset``, a factor)."""
    rows = rows.sort_values("dose")
    values, low, high = 100 * rows["difference"], 100 * rows["ci_low"], 100 * rows["ci_high"]
    axis.errorbar(rows["dose"] * offset, values, yerr=[values - low, high - values], fmt=style, color=color, capsize=2,
                  markersize=markersize, label=label)


def _log_doses(axis, doses: Sequence[float]) -> None:
    """A log x axis with one plain label per dose and no minor ticks."""
    axis.set_xscale("log")
    axis.set_xticks(list(doses), [f"{dose:g}" for dose in doses])
    axis.xaxis.set_minor_locator(NullLocator())


def dose_response_figure(paired: pd.DataFrame) -> Figure:
    """The dev sweep (calibrate_paired.csv): A&E presence against step size (left) and ST relation and presence against
    initial weight (right, two rows), the chosen settings marked; differences in points of the dev pairs."""
    table = dose_table(paired)
    figure = plt.figure(figsize=(12, 5.4))
    grid = figure.add_gridspec(2, 2, hspace=0.12, wspace=0.22, bottom=0.17, top=0.94)  # room for the provenance line
    left, top = figure.add_subplot(grid[:, 0]), figure.add_subplot(grid[0, 1])
    bottom = figure.add_subplot(grid[1, 1], sharex=top)
    ae = table[(table["family"] == "ae") & (table["metric"] == "all_present")]
    pure = ae[ae["series"] == "step size only"].sort_values("dose")
    share = 100 / pure["n_pairs"]
    left.plot(pure["dose"], share * pure["repairs"], "^-", color="C2", label="repairs (% of pairs)")
    left.plot(pure["dose"], share * pure["breakages"], "v-", color="C3", label="breakages (% of pairs)")
    _points(left, pure, "net = repairs - breakages (95% CI)", "o-", "k")
    for row in ae[ae["chosen"]].to_dict("records"):
        label = f"chosen: {row['setting']} (step {row['dose']:g} {row['series']}; net, 95% CI)"
        _points(left, pd.DataFrame([row]), label, "*", "C1", offset=1.08, markersize=12)
        left.axvline(row["dose"], color="C1", linestyle=":", linewidth=1)
    _log_doses(left, pure["dose"])
    left.set(xlabel="A&E step size (scale_factor, log axis)", ylabel="% of the dev pairs (paired, vs SD)")
    pairs = "/".join(map(str, sorted(ae["n_pairs"].unique())))
    left.set_title(f"A&E on {SELECTION['ae'][0]} (dev, {pairs} pairs each): every object present", fontsize=9)
    st = table[table["family"] == "st"]
    offsets = {series: 1.03 ** (k - 1) for k, series in enumerate(sorted(st["series"].unique()))}
    for axis, metric in ((top, "relation_correct"), (bottom, "all_present")):
        for k, (series, offset) in enumerate(offsets.items()):
            _points(axis, st[(st["series"] == series) & (st["metric"] == metric)], series, "o-", f"C{k}", offset)
        for row in st[st["chosen"] & (st["metric"] == metric)].to_dict("records"):
            axis.plot(row["dose"] * offsets[row["series"]], 100 * row["difference"], "*", color="k", markersize=13,
                      zorder=5, label=f"chosen: {row['setting']}")
        axis.axhline(0, color="0.5", linewidth=0.8)
    bottom.axhline(100 * PRESENCE_FLOOR, color="C3", linestyle="--", linewidth=1,
                   label=f"selection floor for the CI's low end ({100 * PRESENCE_FLOOR:+g} points)")
    left.axhline(0, color="0.5", linewidth=0.8)
    _log_doses(bottom, sorted(st["dose"].unique()))
    top.tick_params(labelbottom=False)
    top.set_ylabel("relation accuracy\n(points, 95% CI)")
    bottom.set(xlabel="ST initial weight x N (W = init / N, log axis)", ylabel="presence\n(points, 95% CI)")
    pairs = "/".join(map(str, sorted(st["n_pairs"].unique())))
    top.set_title(f"ST on {SELECTION['st'][0]} (dev, {pairs} pairs each): paired differences vs SD", fontsize=9)
    left.legend(fontsize=7, loc="lower left")
    top.legend(fontsize=7, loc="upper left")
    bottom.legend(fontsize=7, loc="lower left")
    return figure


def forest_plot(paired: pd.DataFrame, title: str = "Toy world, held-out pairs: paired differences vs SD") -> Figure:
    """Every paired difference (one row per set, method and metric) with its 95% CI, coloured by metric, grouped by set
    (sets, methods and metrics in their order of first appearance)."""
    keys = ["set", "method", "metric"]
    order = {column: {value: k for k, value in enumerate(dict.fromkeys(paired[column]))} for column in keys}
    rows = paired.sort_values(keys, key=lambda column: column.map(order[column.name]), kind="stable")
    rows = rows.reset_index(drop=True)
    height = 1.6 + 0.28 * len(rows)
    figure, axis = plt.subplots(figsize=(9, height))
    figure.subplots_adjust(bottom=0.9 / height, top=1 - 0.55 / height)  # room for the provenance line and the title
    positions = range(len(rows) - 1, -1, -1)
    metrics = list(dict.fromkeys(rows["metric"]))
    for metric in metrics:
        chosen = rows[rows["metric"] == metric]
        values = 100 * chosen["difference"]
        errors = [values - 100 * chosen["ci_low"], 100 * chosen["ci_high"] - values]
        axis.errorbar(values, [positions[k] for k in chosen.index], xerr=errors, fmt="o", capsize=2, markersize=4,
                      color=f"C{metrics.index(metric)}", label=metric.replace("_", " "))
    records = rows.to_dict("records")  # headline_paired.csv written before the repair counts existed has none
    counts = [f", {row['repairs']:.0f} repaired / {row['breakages']:.0f} broken" if "repairs" in row else ""
              for row in records]
    labels = [f"{row['set']} · {row['method']} · {row['metric']} ({row['n_pairs']} pairs{count})"
              for row, count in zip(records, counts)]
    axis.set_yticks(list(positions), labels, fontsize=7)
    axis.axvline(0, color="0.3", linewidth=0.8)
    for k in range(1, len(rows)):
        if rows["set"][k] != rows["set"][k - 1]:
            axis.axhline(positions[k] + 0.5, color="0.85", linewidth=0.8)
    axis.set_ylim(-0.7, len(rows) - 0.3)
    axis.set_xlabel("paired difference vs SD, percentage points (95% CI)")
    settings = ", ".join(f"{method} = {setting}" for method, setting in dict.fromkeys(zip(rows["method"], rows["setting"])))
    axis.set_title(f"{title}\nsettings: {settings}", fontsize=9)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return figure


def signature_figure(runs: Sequence[SignatureRun]) -> Figure:
    """Per pair: SD's image, A&E's, each subject's max attention over the guided steps (A&E solid, SD dashed), and the
    weakest subject's (the one A&E's loss pushes), SD vs A&E."""
    figure, axes = plt.subplots(len(runs), 4, figsize=(12, 2.6 * len(runs)), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 1, 2.2, 2.2]})
    for (sd_axis, ae_axis, tokens_axis, weakest_axis), run in zip(axes, runs):
        for axis, label in ((sd_axis, "SD"), (ae_axis, "A&E")):
            axis.imshow(run.images[label])
            axis.set_xticks([]); axis.set_yticks([])
            axis.set_title(f"{label}: {'all present' if run.all_present[label] else 'object lost'}", fontsize=8)
        sd_axis.set_ylabel(f"{textwrap.fill(run.prompt, 22)}\nseed {run.seed}", fontsize=7)
        for k, token in enumerate(run.tokens):
            tokens_axis.plot(run.steps, run.max_attention["A&E"][:, k], "-", color=f"C{k}", label=f"'{token}' (#{k + 1})")
            tokens_axis.plot(run.steps, run.max_attention["SD"][:, k], "--", color=f"C{k}")
        for label, style, color in (("SD", "--", "0.5"), ("A&E", "-", "k")):
            weakest_axis.plot(run.steps, run.max_attention[label].min(axis=1), style, marker=".", color=color, label=label)
        for axis in (tokens_axis, weakest_axis):
            axis.set_ylim(0, 1.02)
            axis.tick_params(labelsize=7)
            axis.legend(fontsize=6, loc="lower right")
        tokens_axis.set_ylabel("max attention", fontsize=8)
    axes[0, 2].set_title("each subject's max attention per guided step (A&E solid, SD dashed)", fontsize=8)
    axes[0, 3].set_title("the weakest subject's max attention (A&E's loss = 1 - it)", fontsize=8)
    for axis in axes[-1, 2:]:
        axis.set_xlabel("denoising step", fontsize=8)
    figure.tight_layout(rect=(0, 0.02, 1, 1))
    return figure
