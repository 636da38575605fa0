"""The toy world's exact detector: nearest-palette colour segmentation, connected components, shape from the mask."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from fidelity_lib.detections import Detection
from fidelity_lib.toyworld.scenes import BACKGROUND, COLOURS, PALETTE

MAX_COLOUR_DISTANCE = 70.0  # RGB L2 distance beyond which a pixel belongs to no palette colour
MIN_AREA = 15  # pixels a component needs to count as an object
SQUARE_FILL = 0.9  # bbox fill above which a non-triangle is a square (reconstructions: squares 0.90-1, circles 0.78-0.94)
TRIANGLE_BOTTOM_SHARE = 0.595  # lower-half share of the mask above which it is a triangle (0.62-0.73; others <= 0.57)


def colour_map(image: np.ndarray) -> np.ndarray:
    """Per pixel: index into COLOURS, -1 for background, -2 for pixels far from every palette colour."""
    references = np.array([BACKGROUND] + [PALETTE[c] for c in COLOURS], dtype=np.float32)
    distances = np.linalg.norm(image[:, :, None, :].astype(np.float32) - references[None, None], axis=-1)
    nearest = distances.argmin(axis=-1) - 1
    nearest[distances.min(axis=-1) > MAX_COLOUR_DISTANCE] = -2
    return nearest


def classify_shape(mask: np.ndarray) -> str:
    """Circle, square or triangle from a component's mask cropped to its bounding box."""
    height = mask.shape[0]
    lower = mask[height // 2 :].sum() - (mask[height // 2].sum() / 2 if height % 2 else 0)
    if lower / mask.sum() > TRIANGLE_BOTTOM_SHARE:
        return "triangle"
    return "square" if mask.mean() > SQUARE_FILL else "circle"


class ToyDetector:
    """Finds coloured shapes; labels are "<colour> <shape>", e.g. "red circle"; score 1 (exact), largest first."""

    name = "toyworld-exact"

    def detect(self, image: Image.Image) -> list[Detection]:
        """Every connected component of a palette colour with at least MIN_AREA pixels."""
        pixels = np.asarray(image.convert("RGB"))
        colours = colour_map(pixels)
        found: list[tuple[int, Detection]] = []
        for index, colour in enumerate(COLOURS):
            components, count = ndimage.label(colours == index)
            for slices, label in zip(ndimage.find_objects(components), range(1, count + 1)):
                mask = components[slices] == label
                area = int(mask.sum())
                if area < MIN_AREA:
                    continue
                box = (float(slices[1].start), float(slices[0].start), float(slices[1].stop), float(slices[0].stop))
                found.append((area, Detection(f"{colour} {classify_shape(mask)}", 1.0, box)))
        return [detection for _, detection in sorted(found, key=lambda pair: -pair[0])]


def label_matches(label: str, name: str) -> bool:
    """True when every word of ``name`` ("circle", "red", "red circle") is a word of the detection label."""
    return set(name.split()) <= set(label.split())


def find_object(detections: list[Detection], name: str) -> Detection | None:
    """The largest detection matching ``name`` (e.g. "red circle" or "red"), or None."""
    return next((d for d in detections if label_matches(d.label, name)), None)


def object_present(detections: list[Detection], name: str) -> bool:
    """Whether a detection matches ``name``."""
    return find_object(detections, name) is not None
