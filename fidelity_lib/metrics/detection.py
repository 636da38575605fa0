"""Detector-based object accuracy and spatial-relation accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image


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
