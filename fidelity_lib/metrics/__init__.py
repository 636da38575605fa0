"""Evaluation metrics over a folder of generated images laid out as ``<out>/<method>/<prompt>/<seed>.png``.

Each metric returns a MetricResult: a pandas frame with one row per image (unreadable images kept, with their error),
per-method aggregates with the original scripts' keys, and the JSON files it wrote under ``<metrics_dir>/<method>/``.
"""

from fidelity_lib.metrics.blip_similarity import BlipCaptioner, Captioner, LavisCaptioner, blip_similarity, load_captioner, tiny_blip
from fidelity_lib.metrics.clip_score import (
    ClipModel,
    ClipScorer,
    clip_score,
    load_clip,
    random_vit_b16,
    split_prompt,
    template_texts,
    tiny_clip,
)
from fidelity_lib.metrics.detection import (
    OBJECT_THRESHOLD,
    RELATION_THRESHOLD,
    Detection,
    Detector,
    TransformersDetector,
    detection_score,
    eval_class_name,
    load_detector,
    objects_found,
    relation_holds,
    relation_outcome,
    tiny_detector,
)
from fidelity_lib.metrics.images import (
    ImageEntry,
    ImageProblem,
    MetricResult,
    NoImagesError,
    UnknownMethodError,
    UnknownPromptFolderError,
    collect_images,
    open_image,
)
from fidelity_lib.metrics.summary import bootstrap_ratio, metric_figure, metric_table, metrics_for, wide_table

__all__ = [
    "BlipCaptioner", "Captioner", "ClipModel", "ClipScorer", "Detection", "Detector", "ImageEntry", "ImageProblem",
    "LavisCaptioner", "MetricResult", "NoImagesError", "OBJECT_THRESHOLD", "RELATION_THRESHOLD", "TransformersDetector",
    "UnknownMethodError", "UnknownPromptFolderError", "blip_similarity", "bootstrap_ratio", "clip_score", "collect_images",
    "detection_score", "eval_class_name", "load_captioner", "load_clip", "load_detector", "metric_figure", "metric_table",
    "metrics_for", "objects_found", "open_image", "random_vit_b16", "relation_holds", "relation_outcome", "split_prompt",
    "template_texts", "tiny_blip", "tiny_clip", "tiny_detector", "wide_table",
]
