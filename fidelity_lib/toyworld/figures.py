"""Plotting helpers of the toy-world chapter: rate bars with their 95% intervals (image grids: fidelity_lib.figures)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


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
