"""The LAVIS captioner worker: LAVIS ``blip_caption``/``base_coco`` in its own environment, image paths in, captions out.

Runs in ``.venv-lavis`` (``make lavis``), never in the book's environment: LAVIS pins transformers<4.27, which cannot
live beside diffusers. ``fidelity_lib.metrics.lavis.LavisCaptioner`` starts it as
``.venv-lavis/bin/python fidelity_lib/lavis_worker.py [--device cpu] [--random-weights --seed 0]``. It imports only
the standard library, torch, PIL and LAVIS (with omegaconf, LAVIS's own config library), nothing of fidelity_lib.

Protocol, one JSON object per line (stdout carries nothing else; whatever LAVIS prints goes to stderr):

- once loaded it writes ``{"ready": true, "device": ...}``; when it cannot load it writes
  ``{"fatal": message, "kind": "missing_files" | "load"}`` and exits with status 1;
- each request ``{"id": n, "paths": [...]}`` gets ``{"id": n, "results": [...]}``, one result per path in order:
  ``{"caption": text}`` or ``{"error": reason}`` for an image it cannot read;
- a request that fails as a whole gets ``{"id": n, "error": message}``; either way it keeps serving until stdin closes.

Weights come from the local caches only (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``): LAVIS reads its checkpoint
from ``<torch hub dir>/checkpoints/<file name of the URL>`` (``lavis.common.dist_utils.download_cached_file`` ->
``timm.models.hub.get_cache_dir()``) and its tokenizer with ``BertTokenizer.from_pretrained("bert-base-uncased")``;
both are checked before the model is built, and a missing one is named with the command that fetches it.
Captions are LAVIS's own: the ``blip_image_eval`` processor at 384, ``generate`` with its defaults (beam 3, length
10-30, the "a picture of " prompt cut off), one image per call as A&E's script does.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import traceback
from pathlib import Path
from urllib.parse import urlparse

# Run as a script, Python puts this folder first on sys.path; its modules (datasets.py, clip.py, models.py, ...)
# would shadow the packages LAVIS and transformers look for, so it goes before anything else is imported.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402
from PIL import Image, ImageFile  # noqa: E402

MODEL_NAME, MODEL_TYPE = "blip_caption", "base_coco"
TOKENIZER_REPO = "bert-base-uncased"


class MissingFilesError(FileNotFoundError):
    """A checkpoint or tokenizer file LAVIS needs is not in the local caches; the message says how to fetch it."""


def checkpoint_file(url_or_path: str) -> Path:
    """Where LAVIS reads a checkpoint: a URL's file name in timm's cache folder (torch hub dir/checkpoints), or the path."""
    if urlparse(url_or_path).scheme in ("http", "https"):
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url_or_path).path)
    return Path(url_or_path)


def model_config():
    """LAVIS's own blip_caption/base_coco config (model and preprocess sections)."""
    from lavis.models.blip_models.blip_caption import BlipCaption
    from omegaconf import OmegaConf

    return OmegaConf.load(BlipCaption.default_config_path(MODEL_TYPE))


def required_checkpoint(config) -> str:
    """The checkpoint LAVIS loads for this config: the fine-tuned one, or the pretrained one when load_finetuned is off."""
    model = config.model
    return model.finetuned if model.get("load_finetuned", True) else model.pretrained


def tokenizer_problem() -> str | None:
    """None when LAVIS's BERT tokenizer loads offline, else what to fetch."""
    from lavis.models.blip_models.blip import BlipBase

    try:
        BlipBase.init_tokenizer()
    except OSError as error:
        return (
            f"LAVIS's tokenizer '{TOKENIZER_REPO}' is not in the local Hugging Face cache ({type(error).__name__}). On a "
            f"machine with internet access run\n    huggingface-cli download {TOKENIZER_REPO} vocab.txt "
            f"tokenizer_config.json config.json\nand bring that cache here (HF_HOME, by default ~/.cache/huggingface)."
        )
    return None


def checkpoint_problem(config) -> str | None:
    """None when the checkpoint LAVIS will read is on disk, else what to download and where to put it."""
    source = required_checkpoint(config)
    path = checkpoint_file(source)
    if path.is_file():
        return None
    return (
        f"LAVIS {MODEL_NAME}/{MODEL_TYPE} checkpoint not found at {path}. On a machine with internet access download\n"
        f"    {source}\nand put it at\n    {path}\n(LAVIS caches checkpoints in the torch hub folder's checkpoints/; "
        f"TORCH_HOME moves it), e.g. wget -P {path.parent} {source}"
    )


def check_local_files(config, checkpoint: bool) -> None:
    """Raise MissingFilesError naming every missing file (the checkpoint too when ``checkpoint``) before any loading."""
    problems = [checkpoint_problem(config) if checkpoint else None, tokenizer_problem()]
    if any(problems):
        raise MissingFilesError("\n\n".join(problem for problem in problems if problem))


def load_pretrained(device: str):
    """LAVIS's blip_caption/base_coco and its eval image processor, as load_model_and_preprocess gives them."""
    from lavis.models import load_model_and_preprocess

    check_local_files(model_config(), checkpoint=True)
    model, vis_processors, _ = load_model_and_preprocess(name=MODEL_NAME, model_type=MODEL_TYPE, is_eval=True, device=device)
    return model, vis_processors["eval"]


def load_random(device: str, seed: int):
    """BlipCaption built from the base_coco config with random weights (no checkpoint), and the same eval processor."""
    from lavis.models import load_preprocess
    from lavis.models.blip_models.blip_caption import BlipCaption

    class RandomBlipCaption(BlipCaption):
        """BlipCaption whose from_config keeps the random initialisation instead of loading a checkpoint."""

        def load_checkpoint_from_config(self, cfg, **kwargs) -> None:
            """No checkpoint."""

    config = model_config()
    check_local_files(config, checkpoint=False)
    torch.manual_seed(seed)
    model = RandomBlipCaption.from_config(config.model).eval().to(device)
    vis_processors, _ = load_preprocess(config.preprocess)
    return model, vis_processors["eval"]


def read_image(path: str) -> Image.Image:
    """The fully decoded RGB image (its bytes read first, so a pipe works too); a truncated file is an error."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # importing LAVIS turns it on, which would caption a cut file padded in grey
    with Image.open(io.BytesIO(Path(path).read_bytes())) as image:
        image.load()
        return image.convert("RGB")


def caption_one(model, processor, path: str, device: str) -> dict:
    """{"caption": ...} for a readable image, {"error": ...} for one that cannot be read."""
    try:
        image = read_image(path)
    except (OSError, SyntaxError, ValueError) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    with torch.inference_mode():
        return {"caption": model.generate({"image": processor(image).unsqueeze(0).to(device)})[0]}


def send(stream, message: dict) -> None:
    """One protocol line, flushed."""
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def serve(model, processor, device: str, requests, replies) -> None:
    """Answer each request line until the input closes."""
    for line in requests:
        if not line.strip():
            continue
        ident = None
        try:
            request = json.loads(line)
            ident, paths = request["id"], request["paths"]
            send(replies, {"id": ident, "results": [caption_one(model, processor, str(path), device) for path in paths]})
        except Exception:  # a request that fails as a whole is reported, and the worker goes on serving
            send(replies, {"id": ident, "error": traceback.format_exc(limit=8)})


def protocol_streams():
    """(requests, replies): stdin, and the real stdout; fd 1 then points at stderr so stray prints cannot break a reply."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return sys.stdin, replies


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """--device, --random-weights and --seed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--random-weights", action="store_true", help="build from the config with random weights (tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Load the model, say ready, serve; on a loading failure say why and return 1."""
    args = parse_args(argv)
    requests, replies = protocol_streams()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, processor = load_random(device, args.seed) if args.random_weights else load_pretrained(device)
    except MissingFilesError as error:
        send(replies, {"fatal": str(error), "kind": "missing_files"})
        return 1
    except Exception:  # any other loading failure goes back to the lead process with its traceback
        send(replies, {"fatal": traceback.format_exc(limit=8), "kind": "load"})
        return 1
    send(replies, {"ready": True, "device": device})
    serve(model, processor, device, requests, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
