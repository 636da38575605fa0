"""LayoutPredictor: sentence -> one centre per object (a seeded draw in the paper profile); save/load as safetensors + JSON."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as serialize_weights
from transformers import RobertaTokenizerFast

from fidelity_lib.layout.data import LayoutExample, encode_batch
from fidelity_lib.layout.extraction import COCO_NAMES, ObjectMention, build_lexicon, extract_objects
from fidelity_lib.layout.model import (
    PAPER_ENCODER, LayoutConfig, LayoutModel, check_component, component_means, load_roberta_base, tiny_encoder_config,
    train_bpe_tokenizer,
)
from fidelity_lib.stable import write_if_changed

CONFIG_FILE, WEIGHTS_FILE = "layout_config.json", "model.safetensors"


class NoObjectWarning(UserWarning):
    """The sentence names no known object: its layout is empty (generation falls back to plain SD)."""


@dataclass(frozen=True)
class ObjectPlacement:
    """An object's predicted centre (x, y), fractions of width and height, y downward."""

    name: str
    phrase: str
    x: float
    y: float

    def __post_init__(self):
        for axis, value in (("x", self.x), ("y", self.y)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ObjectPlacement {self.name!r}: {axis}={value} is outside [0, 1] (centres are fractions of the image).")


class LayoutPredictor:
    """A layout model with its tokenizer and object vocabulary."""

    def __init__(self, model: LayoutModel, tokenizer: RobertaTokenizerFast):
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.lexicon = build_lexicon(self.config.categories or COCO_NAMES)

    @classmethod
    def tiny(
        cls, texts: list[str], categories: tuple[str, ...] = (), seed: int = 0, profile: str = "smoke", hidden_size: int = 64,
        component: str | None = None, inference_dropout: bool | None = None,
    ) -> "LayoutPredictor":
        """A tiny random-weight predictor whose BPE vocabulary is trained on ``texts`` (smoke profile, tests)."""
        tokenizer = train_bpe_tokenizer([*texts, *categories, *COCO_NAMES])
        config = LayoutConfig(encoder=tiny_encoder_config(len(tokenizer), hidden_size), categories=tuple(categories),
                              profile=profile, component=component, inference_dropout=inference_dropout)
        torch.manual_seed(seed)
        return cls(LayoutModel(config), tokenizer)

    @classmethod
    def from_roberta(
        cls, source: str = PAPER_ENCODER, categories: tuple[str, ...] = (), seed: int = 0, component: str | None = None,
        inference_dropout: bool | None = None,
    ) -> "LayoutPredictor":
        """The paper set-up: encoder and tokenizer from pretrained roberta-base (local files only), fresh heads."""
        encoder, tokenizer = load_roberta_base(source)
        config = LayoutConfig(encoder=encoder.config.to_dict(), categories=tuple(categories), profile="paper", weights=source,
                              component=component, inference_dropout=inference_dropout)
        torch.manual_seed(seed)
        return cls(LayoutModel(config, encoder), tokenizer)

    def objects(self, sentence: str) -> list[ObjectMention]:
        """The sentence's objects found by the dependency-free extractor."""
        return extract_objects(sentence, self.lexicon)

    def predict(self, sentence: str, *, seed: int | None = None, component: str | None = None) -> list[ObjectPlacement]:
        """One placement per object: the mean of the component ``component`` picks (None: ``config.component``)."""
        return self.predict_objects(sentence, self.objects(sentence), seed=seed, component=component)

    def predict_objects(
        self, sentence: str, objects: list[ObjectMention], *, seed: int | None = None, component: str | None = None,
    ) -> list[ObjectPlacement]:
        """Placements for given objects of the sentence (e.g. a dataset's own object list); "sample" and inference
        dropout need a seed (the draw from pi and the dropout masks come from it)."""
        sample = check_component(component or self.config.component) == "sample"
        if sample and seed is None:
            raise ValueError('component "sample" draws from pi: it needs a seed, so that the layout can be reproduced.')
        if self.config.inference_dropout and seed is None:
            raise ValueError("inference_dropout keeps dropout on, as the official inference does: it needs a seed for the "
                             "masks, so that the layout can be reproduced (or build the predictor with inference_dropout=False).")
        if not objects:
            warnings.warn(f"No known object in {sentence!r}: empty layout.", NoObjectWarning, stacklevel=2)
            return []
        params, positions = self.token_parameters([sentence], [tuple(objects)], dropout_seed=seed if self.config.inference_dropout else None)
        generator = torch.Generator().manual_seed(seed) if sample else None
        kept = [(mention, p) for mention, p in zip(objects, positions[0]) if p is not None]
        rows = torch.tensor([p for _, p in kept], dtype=torch.long)
        centres = component_means({k: v[0, rows] for k, v in params.items()}, sample, generator).tolist()
        return [ObjectPlacement(m.name, m.phrase, float(x), float(y)) for (m, _), (x, y) in zip(kept, centres)]

    @torch.no_grad()
    def token_parameters(
        self, sentences: list[str], objects: list[tuple[ObjectMention, ...]], dropout_seed: int | None = None,
    ) -> tuple[dict, list]:
        """Mixture parameters of every token, and each object's token index: in eval mode (no dropout), or with dropout
        on and its masks drawn from ``dropout_seed`` (the official inference's mode)."""
        self.model.train(dropout_seed is not None)
        batch = encode_batch(self.tokenizer, sentences, objects, self.config.max_length)
        with torch.random.fork_rng(devices=[]):
            if dropout_seed is not None:
                torch.manual_seed(dropout_seed)
            params = self.model(batch.input_ids, batch.attention_mask, batch.object_mask)
        self.model.eval()
        return params, batch.positions

    def predict_examples(self, examples: list[LayoutExample], batch_size: int = 64) -> list[list[tuple[float, float] | None]]:
        """The likeliest component's centre for every object of every example (None where truncated away)."""
        out = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            params, positions = self.token_parameters([e.sentence for e in chunk], [e.objects for e in chunk])
            for row, row_positions in enumerate(positions):
                centres = []
                for p in row_positions:
                    centre = None if p is None else component_means({k: v[row, p][None] for k, v in params.items()})[0].tolist()
                    centres.append(centre)
                out.append(centres)
        return out

    def save(self, folder: str | Path) -> Path:
        """Write model.safetensors, layout_config.json and the tokenizer files into ``folder``; weights the same to
        1e-4 keep the file there (``stable.write_if_changed``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        write_if_changed(folder / WEIGHTS_FILE, serialize_weights(state))
        write_if_changed(folder / CONFIG_FILE, json.dumps(self.config.to_json(), indent=1).encode("utf-8"))
        self.tokenizer.save_pretrained(folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "LayoutPredictor":
        """A predictor written by ``save`` (needs no cache or download)."""
        folder = Path(folder)
        if not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"No layout predictor in {folder}: expected {WEIGHTS_FILE} and {CONFIG_FILE}.")
        config = LayoutConfig.from_json(json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))
        model = LayoutModel(config)
        model.load_state_dict(load_file(folder / WEIGHTS_FILE))
        return cls(model, RobertaTokenizerFast.from_pretrained(folder, local_files_only=True))
