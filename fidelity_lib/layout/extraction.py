"""Objects of a sentence: noun phrases whose head is a category name (COCO things and stuff by default).

The original parses with spaCy ``en_core_web_sm`` and keeps a noun chunk when a category name is a substring of it
(``inference_coco.py`` L460-465). spaCy's English model is not on PyPI, so the default backend here is a dependency-free
lexicon matcher: category names, their plurals and a few synonyms ("television" -> tv), matched on whole words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fidelity_lib.datasets import COCO_CLASSES, PromptRecord, evaluation_name

COCO_STUFF_CLASSES = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)  # the 91 COCO-Stuff 2017 names (ids 92-182); with the 80 things, the original's 171-name category_dict
COCO_NAMES = COCO_CLASSES + COCO_STUFF_CLASSES
SYNONYMS = {
    "person": ("man", "men", "woman", "women", "people", "boy", "boys", "girl", "girls", "child", "children", "kid",
               "kids", "lady", "guy", "player", "surfer", "skier", "skateboarder", "baby"),
    "bicycle": ("bike", "bikes"),
    "car": ("taxi",),
    "motorcycle": ("motorbike", "motorbikes"),
    "airplane": ("plane", "planes", "jet", "aeroplane", "aircraft"),
    "couch": ("sofa", "sofas"),
    "tv": ("television", "televisions", "tvs"),
    "cell phone": ("phone", "phones", "cellphone", "smartphone"),
    "dining table": ("table", "tables"),
    "potted plant": ("plant", "plants", "houseplant"),
    "hair drier": ("hair dryer", "hairdryer", "hair driers", "hair dryers"),
    "sports ball": ("ball", "balls", "football", "soccer ball", "basketball"),
    "donut": ("doughnut", "doughnuts"),
    "refrigerator": ("fridge",),
    "tennis racket": ("racket", "racquet"),
    "baseball glove": ("glove", "mitt"),
    "baseball bat": ("bat",),
    "wine glass": ("glass", "glasses"),
    "hot dog": ("hotdog", "hotdogs"),
    "teddy bear": ("teddy",),
    "skis": ("ski",),
    "cup": ("mug", "mugs"),
}  # dataset wording the substring rule misses (inference_coco.py L460-465: "television" never matches 'tv')
IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "skis",
                     "leaves": "leaves", "clothes": "clothes", "stairs": "stairs", "clouds": "clouds",
                     "waterdrops": "waterdrops", "scissors": "scissors", "shelf": "shelves"}
MODIFIERS = frozenset(
    "a an the this that these those another one two three four some its their his her my our your "
    "white black red green blue yellow brown orange pink purple gray grey silver gold golden vibrant bright dark "
    "light small large big little tiny huge tall short long old young new wooden plastic metal shiny colorful "
    "colourful round square striped fluffy cute".split()
)  # words kept in front of the head to form the noun phrase
WORD = re.compile(r"[A-Za-z]+")
RELATION_PATTERNS = {
    "left of": re.compile(r"\bleft of\b"),
    "right of": re.compile(r"\bright of\b"),
    "above": re.compile(r"\b(above|atop|on top of|over)\b"),
    "below": re.compile(r"\b(below|under|underneath|beneath)\b"),
}  # the four relation words of the GPT labels (gpt.txt) and their common wordings
MAX_NAME_WORDS = 3


class SpacyModelMissingError(RuntimeError):
    pass


@dataclass(frozen=True)
class ObjectMention:
    """An object of a sentence: category ``name``, its noun ``phrase`` and the character span of its head word."""

    name: str
    phrase: str
    start: int
    end: int
    categories: tuple[str, ...] = ()  # every category the head word can name ("wall" -> wall-brick, ..., wall-wood)


def head_word(category: str) -> str:
    """The words a category name is written with: 'wall-brick' -> 'wall', 'sky-other' -> 'sky', 'teddy bear' as is."""
    return category.split("-")[0] if "-" in category else category


def plural(words: str) -> str:
    """English plural of the last word of ``words``."""
    *first, last = words.split()
    if last in IRREGULAR_PLURALS:
        last = IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "sh", "ch", "x", "z")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join([*first, last])


def build_lexicon(categories: tuple[str, ...] | list[str] = COCO_NAMES) -> dict[str, tuple[str, ...]]:
    """Surface form (lower-case words) -> the categories it names, in category order."""
    lexicon: dict[str, list[str]] = {}
    for category in categories:
        base = head_word(category).lower()
        forms = {base, plural(base), *SYNONYMS.get(category, ())}
        for form in forms:
            names = lexicon.setdefault(form, [])
            if category not in names:
                names.append(category)
    return {form: tuple(names) for form, names in lexicon.items()}


def _match_at(words: list[re.Match], index: int, lexicon: dict[str, tuple[str, ...]]) -> int:
    """The number of words of the longest lexicon form starting at ``index`` (0 if none)."""
    for length in range(min(MAX_NAME_WORDS, len(words) - index), 0, -1):
        form = " ".join(word.group().lower() for word in words[index : index + length])
        if form in lexicon:
            return length
    return 0


def extract_objects(sentence: str, lexicon: dict[str, tuple[str, ...]] | None = None, backend: str = "lexicon") -> list[ObjectMention]:
    """The sentence's objects in reading order, one per category (first mention), with their noun phrases."""
    lexicon = lexicon if lexicon is not None else build_lexicon()
    if backend == "spacy":
        return _extract_spacy(sentence, lexicon)
    if backend != "lexicon":
        raise ValueError(f"backend must be 'lexicon' or 'spacy', not {backend!r}")
    words = list(WORD.finditer(sentence))
    mentions, seen, index, compound = [], set(), 0, None
    while index < len(words):
        length = _match_at(words, index, lexicon)
        if not length:
            index, compound = index + 1, None
            continue
        following = index + length
        if following < len(words) and _match_at(words, following, lexicon):  # "dog bed", "wall sink": a modifier
            index, compound = following, index if compound is None else compound
            continue
        first = index if compound is None else compound
        stop = first - 3
        while first > 0 and words[first - 1].group().lower() in MODIFIERS and first > stop:
            first -= 1
        compound = None
        head = words[following - 1]
        categories = lexicon[" ".join(word.group().lower() for word in words[index:following])]
        if categories[0] not in seen:
            seen.add(categories[0])
            phrase = sentence[words[first].start() : head.end()]
            mentions.append(ObjectMention(categories[0], phrase, head.start(), head.end(), categories))
        index = following
    return mentions


def _extract_spacy(sentence: str, lexicon: dict[str, tuple[str, ...]]) -> list[ObjectMention]:
    """spaCy noun chunks whose root is in the lexicon (needs spacy and its en_core_web_sm model)."""
    try:
        import spacy

        nlp = spacy.load("en_core_web_sm")
    except (ImportError, OSError) as error:
        raise SpacyModelMissingError(
            "The spaCy backend needs `pip install spacy` and its English model en_core_web_sm (not on PyPI: "
            "`python -m spacy download en_core_web_sm` on a machine with internet). Use backend='lexicon' otherwise."
        ) from error
    mentions, seen = [], set()
    for chunk in nlp(sentence).noun_chunks:
        categories = lexicon.get(chunk.root.text.lower())
        if categories and categories[0] not in seen:
            seen.add(categories[0])
            start = chunk.root.idx
            mentions.append(ObjectMention(categories[0], chunk.text, start, start + len(chunk.root.text), categories))
    return mentions


def _category_of(name: str, lexicon: dict[str, tuple[str, ...]]) -> str | None:
    """The category a dataset object name denotes ('tv' -> 'tv', 'wall sink' -> 'sink')."""
    found = extract_objects(name, lexicon)
    return found[-1].name if found else None


def record_mentions(record: PromptRecord, lexicon: dict[str, tuple[str, ...]] | None = None) -> list[ObjectMention]:
    """A dataset prompt's objects: its listed objects (GPT) or parsed noun phrases (MS-COCO, VSR), located in the prompt.

    A listed object whose head word does not occur in the prompt (e.g. GPT objects the sentence never names) is left
    out, as it is in the original, where it gets no local control.
    """
    lexicon = lexicon if lexicon is not None else build_lexicon()
    in_sentence = {mention.name: mention for mention in extract_objects(record.prompt, lexicon)}
    phrases = record.phrases if record.set_name == "gpt" else record.phrases or record.objects
    mentions, seen = [], set()
    for phrase in phrases:
        name = evaluation_name(phrase) if record.set_name == "gpt" else phrase
        category = _category_of(name, lexicon)
        if category is None or category in seen or category not in in_sentence:
            continue
        seen.add(category)
        located = in_sentence[category]
        mentions.append(ObjectMention(category, phrase.strip(), located.start, located.end, located.categories))
    return mentions


def caption_relations(sentence: str, objects: list[ObjectMention] | tuple[ObjectMention, ...]) -> tuple[tuple[int, int, str], ...]:
    """Relation labels (subject index, object index, word) read between consecutive objects: "A cat left of a dog"."""
    relations = []
    for index in range(len(objects) - 1):
        between = sentence[objects[index].end : objects[index + 1].start].lower()
        found = [word for word, pattern in RELATION_PATTERNS.items() if pattern.search(between)]
        if len(found) == 1:
            relations.append((index, index + 1, found[0]))
    return tuple(relations)
