"""Labelled boxes, the detector interface and the relation geometry: a leaf that the metrics, the layout predictor and
the toy world share (it imports nothing from fidelity_lib)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image

# (axis, sign) of each relation word: "left of" means the subject's x (axis 0) is smaller than the object's.
# Image coordinates, y growing downward, so "above" means a smaller y.
RELATION_AXES = {"left of": (0, 1), "right of": (0, -1), "above": (1, 1), "below": (1, -1)}


@dataclass(frozen=True)
class Detection:
    """One labelled box in pixel coordinates (x0, y0, x1, y1), y growing downward."""

    label: str
    score: float
    box: tuple[float, float, float, float]

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


class Detector(Protocol):
    """Anything that turns an image into labelled boxes; ``name`` goes into every output that uses it."""

    name: str

    def detect(self, image: Image.Image) -> list[Detection]: ...


def relation_holds(subject: tuple[float, float], obj: tuple[float, float], relation: str) -> bool:
    """The original box-centre rule on two centres (x, y): strict inequalities, y growing downward.

    The evaluation scripts compare box centres this way (``relation_result_gpt.py``); the layout predictor's agreement
    and the toy world's relation accuracy use the same rule."""
    if relation not in RELATION_AXES:
        raise ValueError(f"Unknown relation {relation!r}: choose one of {', '.join(RELATION_AXES)}.")
    axis, sign = RELATION_AXES[relation]
    return sign * (obj[axis] - subject[axis]) > 0
