"""Every metric the papers report for one prompt set, over one folder of images, with the models given."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fidelity_lib.detections import Detector
from fidelity_lib.metrics.blip_similarity import Captioner, blip_similarity
from fidelity_lib.metrics.clip_score import ClipScorer, clip_score
from fidelity_lib.metrics.detection import detection_score
from fidelity_lib.metrics.summary import metrics_for


def score_set(
    images_dir: str | Path,
    dataset: str,
    methods: list[str],
    scorer: ClipScorer,
    captioner: Captioner,
    detector: Detector | None,
    metrics_dir: str | Path,
    original_counting: bool = False,
) -> dict[str, pd.DataFrame]:
    """Per-image frames by metric family ("clip", "blip", and "detection" where object accuracy applies: metrics_for).

    Each family caches per image under ``metrics_dir``, so a rerun scores only new images.
    """
    frames = {
        "clip": clip_score(images_dir, dataset, methods, scorer=scorer, metrics_dir=metrics_dir, original_counting=original_counting).frame,
        "blip": blip_similarity(images_dir, dataset, methods, captioner=captioner, scorer=scorer, metrics_dir=metrics_dir).frame,
    }
    if "object_accuracy" in metrics_for(dataset):
        if detector is None:
            raise ValueError(f"{dataset} is scored with object accuracy: pass a detector (components.load_detector).")
        frames["detection"] = detection_score(
            images_dir, dataset, methods, detector=detector, metrics_dir=metrics_dir, original_counting=original_counting
        ).frame
    return frames
