"""Toy-world scenes: coloured circles, squares and triangles on a grey background, with captions and COCO files."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 32
BACKGROUND = (210, 210, 210)
PALETTE = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 205, 30)}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("to the left of", "to the right of", "above", "below")
OBJECT_COUNT_PROBABILITIES = {1: 0.65, 2: 0.30, 3: 0.05}  # one-object scenes stay the majority, so neglect stays
MIN_SIZE, MAX_SIZE, MARGIN = 8, 14, 2
SHAPE_ONLY_PROBABILITY = 0.25  # "a circle": a mention without its colour (A&E's animal-animal / animal-object forms)
WITH_PROBABILITY = 0.15  # "a red circle with a blue square"
RELATION_PROBABILITY = 0.35  # two-object scenes whose relation is clear, captioned with it
RELATION_FORMS = ("{a} {relation} {b}", "{the_a} is {relation} {the_b}", "{a} is {relation} {b}")


@dataclass(frozen=True)
class ShapeObject:
    """One object: colour, shape and its box (x0, y0, x1, y1), exclusive upper corner."""

    colour: str
    shape: str
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def drawn_box(self) -> tuple[int, int, int, int]:
        """The tight box of the drawn pixels (an even-sized triangle's apex row is empty)."""
        mask = shape_mask(self.shape, self.box[2] - self.box[0])
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        x0, y0 = self.box[:2]
        return x0 + int(columns[0]), y0 + int(rows[0]), x0 + int(columns[-1]) + 1, y0 + int(rows[-1]) + 1


@dataclass(frozen=True)
class Scene:
    """A rendered scene: its image (H, W, 3 uint8), objects (in the caption's order) and caption."""

    image: np.ndarray
    objects: tuple[ShapeObject, ...]
    caption: str

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)

    def object_masks(self, size: int) -> np.ndarray:
        """Each object's drawn pixels area-averaged to a size x size grid: float32 [objects, size, size] in [0, 1]."""
        masks = np.zeros((len(self.objects), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        for k, obj in enumerate(self.objects):
            x0, y0, x1, y1 = obj.box
            masks[k, y0:y1, x0:x1] = shape_mask(obj.shape, x1 - x0)
        factor = IMAGE_SIZE // size
        return masks.reshape(len(self.objects), size, factor, size, factor).mean(axis=(2, 4))


@dataclass(frozen=True)
class Mention:
    """One object named in a caption: its colour word (None: "a circle") and shape noun, with their token positions.

    Positions count CLIP tokens with <|startoftext|> at 0; every toy word and the comma are one token each.
    """

    colour: str | None
    shape: str
    colour_index: int | None
    noun_index: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}" if self.colour else self.shape


@dataclass(frozen=True)
class ToyCaption:
    """A parsed toy caption: its mentions in order and the relation of the first to the second (None if unstated)."""

    text: str
    mentions: tuple[Mention, ...]
    relation: str | None

    @property
    def objects(self) -> tuple[str, ...]:
        return tuple(mention.name for mention in self.mentions)


_OBJECT = rf"(?:a|the) (?:({'|'.join(COLOURS)}) )?({'|'.join(SHAPES)})"
_RELATION = "|".join(RELATIONS)
CAPTION_FORMS = (
    (re.compile(rf"^{_OBJECT}$"), None),
    (re.compile(rf"^{_OBJECT} (?:and|with) {_OBJECT}$"), None),
    (re.compile(rf"^{_OBJECT} (?:is )?({_RELATION}) {_OBJECT}$"), "relation"),
    (re.compile(rf"^{_OBJECT}, {_OBJECT} and {_OBJECT}$"), None),
)


def caption_words(text: str) -> list[str]:
    """The caption's words as the CLIP tokenizer splits them (the comma is a token of its own)."""
    return text.replace(",", " ,").split()


def parse_caption(text: str) -> ToyCaption:
    """Mentions (with token positions) and relation of a caption in any of the toy grammar's forms."""
    for pattern, kind in CAPTION_FORMS:
        match = pattern.match(text)
        if match is None:
            continue
        groups = list(match.groups())
        relation = groups.pop(2) if kind == "relation" else None
        words = caption_words(text)
        mentions, position = [], 0
        for colour, shape in zip(groups[0::2], groups[1::2]):
            noun = words.index(shape, position)
            mentions.append(Mention(colour, shape, noun if colour else None, noun + 1))  # +1: <|startoftext|>
            position = noun + 1
        return ToyCaption(text, tuple(mentions), relation)
    raise ValueError(
        f"{text!r} is not a toy caption. Toy captions look like 'a red circle', 'a circle and a blue square', "
        "'the blue square is below the red circle' or 'a red circle, a blue square and a green triangle'."
    )


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean size x size mask of a circle, a square or an upward triangle filling its box."""
    centres = np.arange(size) + 0.5
    y, x = np.meshgrid(centres, centres, indexing="ij")
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        return (x - size / 2) ** 2 + (y - size / 2) ** 2 <= (size / 2) ** 2
    if shape == "triangle":
        return np.abs(x - size / 2) <= y / 2
    raise ValueError(f"Unknown shape {shape!r}: choose one of {', '.join(SHAPES)}.")


def relation_between(first: tuple[float, float], second: tuple[float, float]) -> str:
    """The relation word of ``first`` relative to ``second`` along the axis where they differ most."""
    dx, dy = first[0] - second[0], first[1] - second[1]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def mention_text(obj: ShapeObject, article: str, with_colour: bool) -> str:
    return f"{article} {obj.colour} {obj.shape}" if with_colour else f"{article} {obj.shape}"


def caption_for(objects: tuple[ShapeObject, ...], rng: np.random.Generator) -> tuple[str, tuple[ShapeObject, ...]]:
    """A caption in the paper sets' forms and the objects in the order it mentions them.

    One object, "and"/"with" pairs (each mention with its colour or, with SHAPE_ONLY_PROBABILITY, without),
    relation sentences in RELATION_FORMS (always coloured) and lists of three.
    """
    def coloured() -> bool:
        return rng.random() >= SHAPE_ONLY_PROBABILITY

    if len(objects) == 1:
        return mention_text(objects[0], "a", coloured()), objects
    if len(objects) == 3:
        names = [mention_text(obj, "a", True) for obj in objects]
        return f"{names[0]}, {names[1]} and {names[2]}", objects
    if rng.random() < 0.5:
        objects = objects[::-1]
    first, second = objects
    if relation_is_clear(first, second) and rng.random() < RELATION_PROBABILITY:
        form = RELATION_FORMS[int(rng.integers(len(RELATION_FORMS)))]
        words = {"a": mention_text(first, "a", True), "b": mention_text(second, "a", True)}
        words |= {"the_a": mention_text(first, "the", True), "the_b": mention_text(second, "the", True)}
        return form.format(relation=relation_between(first.center, second.center), **words), objects
    with_colour = [coloured(), coloured()]
    if first.shape == second.shape:  # "a circle and a circle" would not say which is which
        with_colour = [True, True]
    joiner = "with" if rng.random() < WITH_PROBABILITY else "and"
    return f"{mention_text(first, 'a', with_colour[0])} {joiner} {mention_text(second, 'a', with_colour[1])}", objects


def relation_is_clear(first: ShapeObject, second: ShapeObject) -> bool:
    """True when the centres differ by at least 6 px along the relation's axis."""
    dx, dy = first.center[0] - second.center[0], first.center[1] - second.center[1]
    return max(abs(dx), abs(dy)) >= 6


def place_objects(count: int, rng: np.random.Generator) -> tuple[ShapeObject, ...] | None:
    """Random non-overlapping boxes (with a margin) and distinct colours; None when placement fails."""
    colours = rng.choice(COLOURS, size=count, replace=False)
    max_size = MAX_SIZE if count == 1 else MAX_SIZE - 2 * (count - 1)
    objects: list[ShapeObject] = []
    for colour in colours:
        for _attempt in range(50):
            size = int(rng.integers(MIN_SIZE, max_size + 1))
            x0, y0 = (int(v) for v in rng.integers(1, IMAGE_SIZE - size, size=2))
            box = (x0, y0, x0 + size, y0 + size)
            if all(not boxes_touch(box, other.box) for other in objects):
                objects.append(ShapeObject(str(colour), str(rng.choice(SHAPES)), box))
                break
        else:
            return None
    return tuple(objects)


def boxes_touch(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return not (a[2] + MARGIN <= b[0] or b[2] + MARGIN <= a[0] or a[3] + MARGIN <= b[1] or b[3] + MARGIN <= a[1])


def render(objects: tuple[ShapeObject, ...]) -> np.ndarray:
    """Draw the objects on the grey background."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        mask = shape_mask(obj.shape, x1 - x0)
        image[y0:y1, x0:x1][mask] = PALETTE[obj.colour]
    return image


def random_scene(rng: np.random.Generator, count: int | None = None, count_probabilities: dict[int, float] | None = None) -> Scene:
    """One random scene; ``count`` objects, or a count drawn from ``count_probabilities`` (OBJECT_COUNT_PROBABILITIES)."""
    if count is None:
        counts, probabilities = zip(*(count_probabilities or OBJECT_COUNT_PROBABILITIES).items())
        count = int(rng.choice(counts, p=probabilities))
    objects = None
    while objects is None:
        objects = place_objects(count, rng)
    caption, mentioned = caption_for(objects, rng)
    return Scene(render(mentioned), mentioned, caption)


def generate_scenes(n_images: int, seed: int, count_probabilities: dict[int, float] | None = None) -> list[Scene]:
    """``n_images`` random scenes from one seed; object counts drawn from ``count_probabilities`` (default: the world's)."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng, None, count_probabilities) for _ in range(n_images)]


def category_names() -> list[str]:
    """COCO category names: one per colour and shape, e.g. "red circle"."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def coco_dicts(scenes: list[Scene], image_prefix: str = "") -> tuple[dict, dict]:
    """COCO instances and captions dictionaries for the scenes (boxes as [x, y, w, h])."""
    names = category_names()
    categories = [{"id": i + 1, "name": name, "supercategory": name.split()[1]} for i, name in enumerate(names)]
    category_ids = {name: i + 1 for i, name in enumerate(names)}
    images, annotations, captions = [], [], []
    for image_id, scene in enumerate(scenes, start=1):
        images.append({"id": image_id, "file_name": f"{image_prefix}{image_id:06d}.png", "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        captions.append({"id": image_id, "image_id": image_id, "caption": scene.caption})
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.drawn_box
            area = int(shape_mask(obj.shape, obj.box[2] - obj.box[0]).sum())
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[obj.name],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": area,
                    "iscrowd": 0,
                }
            )
    info = {"description": "fidelity-book toy world", "version": "1.0"}
    instances = {"info": info, "images": images, "annotations": annotations, "categories": categories}
    caption_file = {"info": info, "images": images, "annotations": captions}
    return instances, caption_file


def write_coco(scenes: list[Scene], folder: str | Path, write_images: bool = True) -> tuple[Path, Path]:
    """Write instances_toy.json, captions_toy.json and (optionally) images/NNNNNN.png; return the two JSON paths."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    instances, captions = coco_dicts(scenes)
    if write_images:
        for image in instances["images"]:
            Image.fromarray(scenes[image["id"] - 1].image).save(folder / "images" / image["file_name"])
    instances_path, captions_path = folder / "instances_toy.json", folder / "captions_toy.json"
    instances_path.write_text(json.dumps(instances), encoding="utf-8")
    captions_path.write_text(json.dumps(captions), encoding="utf-8")
    return instances_path, captions_path


def write_coco_dataset(folder: str | Path, n_images: int, seed: int) -> tuple[Path, Path]:
    """Generate ``n_images`` scenes and write them as a COCO dataset; return (instances_json, captions_json)."""
    return write_coco(generate_scenes(n_images, seed), folder)
