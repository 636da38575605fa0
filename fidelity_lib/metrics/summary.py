"""Method x metric tables with 95% bootstrap confidence intervals over prompts, and their figure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fidelity_lib.datasets import AE_SETS, TOY_SETS

# metric name -> (frame kind, numerator column, denominator column or None for a flat mean over images)
METRICS = {
    "clip_full_text": ("clip", "full_text", None),
    "clip_min_object": ("clip", "min_first_second", None),
    "blip_text_similarity": ("blip", "text_similarity", None),
    "object_accuracy": ("detection", "n_objects_found", "n_objects"),
    "relation_accuracy": ("detection", "n_relations_correct", "n_relations_evaluated"),
    "relation_accuracy_unconditional": ("detection", "n_relations_correct", "n_relations"),
}


def metrics_for(dataset: str) -> list[str]:
    """The metrics the papers report for a prompt set (MSCOCO captions carry no relation labels); a toy set gets its paper
    counterpart's, the one-object control those of a set without relations."""
    if dataset in TOY_SETS:
        dataset = TOY_SETS[dataset] or "mscoco"
    if dataset in AE_SETS:
        return ["clip_full_text", "clip_min_object", "blip_text_similarity"]
    relations = [] if dataset == "mscoco" else ["relation_accuracy", "relation_accuracy_unconditional"]
    return ["clip_full_text", "blip_text_similarity", "object_accuracy", *relations]


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n_prompts: int
    n_images: int


def bootstrap_ratio(
    frame: pd.DataFrame, numerator: str, denominator: str | None = None, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """sum(numerator)/sum(denominator) (or the flat mean of ``numerator``) with a percentile CI from resampling prompts."""
    rows = frame[frame["error"].isna() & frame[numerator].notna()]
    if denominator is None:
        rows = rows.assign(_count=1.0)
        denominator = "_count"
    per_prompt = rows.groupby("prompt_index")[[numerator, denominator]].sum()
    if per_prompt.empty or per_prompt[denominator].sum() == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), len(per_prompt), len(rows))
    top, bottom = per_prompt[numerator].to_numpy(float), per_prompt[denominator].to_numpy(float)
    picks = np.random.default_rng(seed).integers(0, len(top), size=(n_boot, len(top)))
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = top[picks].sum(axis=1) / bottom[picks].sum(axis=1)
    low, high = np.nanquantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(top.sum() / bottom.sum()), float(low), float(high), len(per_prompt), len(rows))


MIN_PROMPTS_TO_COMPARE = 10  # fewer prompts behind a cell: its value is shown, its CI and comparisons are not


def paired_images(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the (prompt, seed) pairs that every method in ``frame`` has: methods are compared on the same
    prompts and the same starting noise, never on different prompt counts."""
    methods = frame["method"].nunique()
    keys = frame.groupby(["prompt_index", "seed"])["method"].transform("nunique")
    return frame[keys == methods]


def metric_table(frames: dict[str, pd.DataFrame], dataset: str, n_boot: int = 2000) -> pd.DataFrame:
    """Long table: one row per (method, metric) with value, 95% CI, counts; ``frames`` maps kind -> metric frame.
    Every method is measured on the (prompt, seed) pairs all of them have (``paired_images``)."""
    rows = []
    for metric in metrics_for(dataset):
        kind, numerator, denominator = METRICS[metric]
        if kind not in frames:
            continue
        for method, group in paired_images(frames[kind]).groupby("method", sort=False):
            estimate = bootstrap_ratio(group, numerator, denominator, n_boot)
            rows.append({"dataset": dataset, "method": method, "metric": metric, **estimate.__dict__})
    return pd.DataFrame(rows)


def format_cell(value: float, low: float, high: float, n_prompts: int | None = None) -> str:
    """'0.312 [0.298, 0.327]', or '0.312 (4 prompts: too few to compare)' under MIN_PROMPTS_TO_COMPARE prompts."""
    if np.isnan(value):
        return "n/a"
    if n_prompts is not None and n_prompts < MIN_PROMPTS_TO_COMPARE:
        return f"{value:.3f} ({n_prompts} prompt{'s' * (n_prompts != 1)}: too few to compare)"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def wide_table(table: pd.DataFrame) -> pd.DataFrame:
    """Method x metric, each cell 'value [low, high]' (the 95% CI; too few prompts: no CI), metrics in ``metrics_for``
    order."""
    cells = table.assign(cell=[format_cell(*row) for row in zip(table["value"], table["low"], table["high"], table["n_prompts"])])
    wide = cells.pivot(index="method", columns="metric", values="cell")[list(dict.fromkeys(table["metric"]))]
    return wide.reindex(list(dict.fromkeys(table["method"]))).reset_index().rename_axis(columns=None)


def metric_figure(table: pd.DataFrame, subtitle: str = ""):
    """Seaborn point plot per metric: each method's value with its 95% CI; returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    metrics = list(dict.fromkeys(table["metric"]))
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    palette = dict(zip(dict.fromkeys(table["method"]), sns.color_palette("deep")))
    for axis, metric in zip(axes[0], metrics):
        part = table[table["metric"] == metric]
        sns.scatterplot(data=part, x="method", y="value", hue="method", palette=palette, legend=False, ax=axis, s=60)
        errors = [part["value"] - part["low"], part["high"] - part["value"]]
        axis.errorbar(part["method"], part["value"], yerr=errors, fmt="none", ecolor="0.4", capsize=4)
        axis.set(title=metric, xlabel="", ylabel="")
        axis.margins(x=0.3)
    figure.suptitle(f"{table['dataset'].iloc[0]}: 95% bootstrap CIs over prompts\n{subtitle}", fontsize=8)
    figure.tight_layout()
    figure.subplots_adjust(bottom=0.18)  # room for the provenance line report.save_figure writes at the bottom
    return figure


# paper table -> (its caption, the sets it reports, the metrics it reports); toy counterparts stand in on the toy world
PAPER_TABLE_SHAPES = {
    "attend_excite": (
        "Attend-and-Excite's quantitative comparison: CLIP image-text (full prompt, minimum object) and BLIP text-text",
        tuple(AE_SETS), ("clip_full_text", "clip_min_object", "blip_text_similarity"),
    ),
    "spatial_temporal": (
        "Spatial-temporal control's comparison: detector object accuracy and spatial-relation accuracy",
        ("gpt", "mscoco", "vsr"), ("object_accuracy", "relation_accuracy"),
    ),
}


def paper_shaped_table(tables: dict[str, pd.DataFrame], shape: str) -> pd.DataFrame:
    """A paper table's rows (set x method) and columns (its metrics, with the prompts and images behind each row) from
    the book's long tables (``metric_table``), keyed by set name; a toy counterpart fills its paper set's row and is
    named in the "set" column."""
    _, paper_sets, metrics = PAPER_TABLE_SHAPES[shape]
    counterparts = {toy: paper for toy, paper in TOY_SETS.items() if paper in paper_sets}
    wanted = [name for name in tables if name in paper_sets or name in counterparts]
    if not wanted:
        return pd.DataFrame(columns=["paper set", "set", "method", "prompts", "images", *metrics])
    long = pd.concat([tables[name] for name in wanted])
    long = long[long["metric"].isin(metrics)]
    wide = long.assign(cell=[format_cell(*row) for row in zip(long["value"], long["low"], long["high"], long["n_prompts"])])
    wide = wide.pivot_table(index=["dataset", "method"], columns="metric", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=[m for m in metrics if m in wide.columns])
    counts = long.groupby(["dataset", "method"], sort=False)[["n_prompts", "n_images"]].max()  # the cells' largest n
    wide = wide.join(counts.rename(columns={"n_prompts": "prompts", "n_images": "images"})).reset_index()
    wide = wide.rename(columns={"dataset": "set"})
    wide.insert(0, "paper set", [counterparts.get(name, name) for name in wide["set"]])
    wide = wide[["paper set", "set", "method", "prompts", "images", *(m for m in metrics if m in wide.columns)]]
    return wide.fillna("not reported for this set").rename_axis(columns=None)  # e.g. relations on MS-COCO


def method_verdicts(long: pd.DataFrame, metrics: tuple[str, ...], baseline: str = "sd") -> str:
    """One sentence: per method, on how many (set, metric) cells its 95% CI lies above the baseline's, below it, or
    overlaps it (``long`` as ``metric_table`` writes it, several sets concatenated)."""
    cells = long[long["metric"].isin(metrics)]
    reference = cells[cells["method"] == baseline].set_index(["dataset", "metric"])
    parts = []
    for method, group in cells[cells["method"] != baseline].groupby("method", sort=False):
        counts = {"higher": 0, "lower": 0, "overlapping": 0}
        too_few = 0
        for row in group.itertuples():
            if (row.dataset, row.metric) not in reference.index or np.isnan(row.value):
                continue
            base = reference.loc[(row.dataset, row.metric)]
            if min(row.n_prompts, base["n_prompts"]) < MIN_PROMPTS_TO_COMPARE:
                too_few += 1
                continue
            counts["higher" if row.low > base["high"] else "lower" if row.high < base["low"] else "overlapping"] += 1
        total = sum(counts.values())
        parts.append(f"{method}: above {baseline} on {counts['higher']}, below on {counts['lower']}, CIs overlapping on "
                     f"{counts['overlapping']} of {total} (set, metric) cells"
                     + (f", {too_few} cell{'s' * (too_few != 1)} with under {MIN_PROMPTS_TO_COMPARE} prompts not compared" if too_few else ""))
    if not parts:
        return f"No method besides {baseline} was measured."
    return "Against the baseline, by 95% CIs over prompts: " + "; ".join(parts) + "."
