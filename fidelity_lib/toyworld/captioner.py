"""The toy world's BLIP captioner: ``BlipForConditionalGeneration`` built from a config, with a BERT tokenizer over the
toy vocabulary written offline, trained on scenes -> "a picture of <caption>" and shipped with the other toy weights.

It runs through the same ``BlipCaptioner`` as the paper path, so the BLIP text-text metric of the smoke book is the
paper's metric on a captioner that can read toy scenes. Generation follows LAVIS ``base_coco`` (beam 3) except the
length bounds: ``min_length`` 10 would force a toy caption past its last word.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

from fidelity_lib.metrics.blip_similarity import CAPTION_PROMPT, BlipCaptioner
from fidelity_lib.models import cache_dir
from fidelity_lib.toyworld.model import BLIP_FILES, WEIGHTS_DIR, sha256_of, toy_words
from fidelity_lib.toyworld.scenes import IMAGE_SIZE, Scene, parse_caption

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
TOY_GENERATION = {"num_beams": 3, "max_length": 24, "min_length": 1, "repetition_penalty": 1.0, "do_sample": False}
MAX_TEXT_LENGTH = 20  # "[CLS] a picture of" + the longest toy caption (12 words) + "[SEP]"
VISION = {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 4,
          "image_size": IMAGE_SIZE, "patch_size": 4}
TEXT = {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 4,
        "max_position_embeddings": 32}


def toy_vocabulary() -> Path:
    """BERT's special tokens plus every toy word and the caption prompt's words, as a vocab.txt in the cache."""
    words = sorted(set(toy_words()) | set(CAPTION_PROMPT.split()))
    text = "\n".join([*SPECIAL_TOKENS, *words]) + "\n"
    path = cache_dir() / "toy_blip_vocab" / f"vocab-{len(words)}.txt"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def toy_processor() -> BlipProcessor:
    """The BERT tokenizer over the toy vocabulary and a 32x32 image processor (BLIP's mean and std)."""
    tokenizer = BertTokenizer(str(toy_vocabulary()), bos_token="[DEC]")
    return BlipProcessor(BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tokenizer)


def blip_config(tokenizer: BertTokenizer) -> BlipConfig:
    """A small BLIP: ViT on 4x4 patches of 32x32 images, a 3-layer BERT decoder."""
    ids = tokenizer.convert_tokens_to_ids
    text = TEXT | {
        "vocab_size": len(tokenizer), "bos_token_id": ids("[DEC]"), "sep_token_id": ids("[SEP]"),
        "eos_token_id": ids("[SEP]"), "pad_token_id": ids("[PAD]"),
    }
    return BlipConfig(text_config=text, vision_config=VISION, projection_dim=64)


def build_toy_blip(seed: int = 0) -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    """A random-weight toy BLIP and its processor."""
    processor = toy_processor()
    torch.manual_seed(seed)
    return BlipForConditionalGeneration(blip_config(processor.tokenizer)), processor


def training_batch(processor: BlipProcessor, images: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
    """Pixels, decoder inputs ([DEC] first, as generate() starts) and labels (padding ignored) for a batch of scenes."""
    pixels = processor.image_processor(images=list(images.permute(0, 2, 3, 1).numpy()), return_tensors="pt")["pixel_values"]
    text = processor.tokenizer(
        [CAPTION_PROMPT + caption for caption in captions], padding="max_length", max_length=MAX_TEXT_LENGTH,
        truncation=True, return_tensors="pt",
    )
    input_ids = text.input_ids.clone()
    input_ids[:, 0] = processor.tokenizer.bos_token_id
    labels = input_ids.masked_fill(text.attention_mask == 0, -100)
    return {"pixel_values": pixels, "input_ids": input_ids, "attention_mask": text.attention_mask, "labels": labels}


def save_toy_blip(model: BlipForConditionalGeneration, folder: Path) -> None:
    """Write blip.safetensors (fp16) and blip_config.json into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: value.half().contiguous() for key, value in model.state_dict().items()}, folder / "blip.safetensors")
    config = {"vision": VISION, "text": TEXT, "vocabulary": toy_vocabulary().name}
    (folder / "blip_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def toy_blip_available(folder: Path = WEIGHTS_DIR) -> bool:
    return all((folder / name).is_file() for name in BLIP_FILES)


def toy_blip(folder: str | Path = WEIGHTS_DIR, device=None) -> BlipCaptioner:
    """The shipped toy BLIP behind the paper path's ``BlipCaptioner``, with toy generation lengths."""
    folder = Path(folder)
    if not toy_blip_available(folder):
        raise FileNotFoundError(
            f"The toy BLIP captioner is missing from {folder} (need {', '.join(BLIP_FILES)}). "
            "Train it with: python -m fidelity_lib.toyworld.train --stage blip, then --stage export"
        )
    model, processor = build_toy_blip()
    model.load_state_dict({key: value.float() for key, value in load_file(folder / "blip.safetensors").items()})
    name = f"toy-blip@{sha256_of(folder / 'blip.safetensors')[:12]}"
    return BlipCaptioner(model, processor, name, device, generation=TOY_GENERATION)


def caption_names_scene(caption: str, scene: Scene) -> bool:
    """Whether a caption is in the toy grammar and names exactly the scene's objects (colour where it names one)."""
    try:
        mentions = list(parse_caption(caption).mentions)
    except ValueError:
        return False
    objects = list(scene.objects)
    if len(mentions) != len(objects):
        return False
    for mention in mentions:
        match = next((o for o in objects if o.shape == mention.shape and mention.colour in (None, o.colour)), None)
        if match is None:
            return False
        objects.remove(match)
    return True


def caption_accuracy(captioner: BlipCaptioner, scenes: list[Scene], batch_size: int = 64) -> dict[str, float]:
    """On scenes: the share of captions naming exactly the scene's objects, and of captions equal to the scene's own."""
    generated = []
    for start in range(0, len(scenes), batch_size):
        generated += captioner.caption([scene.pil() for scene in scenes[start : start + batch_size]])
    return {
        "n_scenes": len(scenes),
        "names_the_objects": sum(caption_names_scene(g, s) for g, s in zip(generated, scenes)) / len(scenes),
        "exact_caption": sum(g == s.caption for g, s in zip(generated, scenes)) / len(scenes),
    }
