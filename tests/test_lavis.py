"""The LAVIS captioner: LavisCaptioner's protocol, timeouts, restarts and clean-up against a stand-in worker (fast), and
the real worker in .venv-lavis on LAVIS's BlipCaption with random weights and a locally written tokenizer (slow,
skipped without .venv-lavis: `make lavis`)."""

import ast
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fidelity_lib.clip import tiny_clip
from fidelity_lib.components import load_captioner
from fidelity_lib.datasets import load_prompt_set, prompt_folder_name
from fidelity_lib.metrics import ClipScorer, blip_similarity
from fidelity_lib.metrics.lavis import (
    LAVIS_VENV, WORKER_SCRIPT, LavisCaptioner, LavisEnvironmentError, LavisImageError, LavisWeightsNotFoundError,
    LavisWorkerError, LavisWorkerTimeout,
)
from fidelity_lib.models import WeightsNotFoundError

LAVIS_PYTHON = LAVIS_VENV / "bin" / "python"
needs_lavis = pytest.mark.skipif(not LAVIS_PYTHON.exists(), reason=f"{LAVIS_VENV} is missing: `make lavis` builds it")

# A stand-in worker speaking the worker's protocol: captions name the first pixel's colour. FAKE_MODE picks a failure.
FAKE_WORKER = r'''
import io, json, os, sys, time
from pathlib import Path
from PIL import Image

mode, state = os.environ.get("FAKE_MODE", "ok"), Path(os.environ["FAKE_STATE"])
if mode == "missing":
    print(json.dumps({"fatal": "checkpoint not found at /nowhere/x.pth: download https://host/x.pth", "kind": "missing_files"}), flush=True)
    sys.exit(1)
if mode == "crash":
    sys.stderr.write("Traceback: the model did not build\n")
    sys.exit(3)
(state / f"pid-{os.getpid()}").write_text(json.dumps(sys.argv[1:]))
print("LAVIS says hello on stderr", file=sys.stderr)
print(json.dumps({"ready": True, "device": "cpu"}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    count = len(list(state.glob("request-*"))) + 1
    (state / f"request-{count}").write_text(json.dumps(request["paths"]))
    if mode == "hang":
        time.sleep(600)
    if mode == "die-always" or (mode == "die-once" and count == int(os.environ["FAKE_DIE_AT"])):
        os._exit(1)
    if mode == "fail-first" and count == 1:
        print(json.dumps({"id": request["id"], "error": "RuntimeError: out of memory"}), flush=True)
        continue
    results = []
    for path in request["paths"]:
        if mode == "reject":
            results.append({"error": "OSError: cannot identify image file"})
            continue
        try:
            with Image.open(io.BytesIO(Path(path).read_bytes())) as image:  # read first, as the worker does
                results.append({"caption": "colour %d %d %d" % image.convert("RGB").getpixel((0, 0))})
        except OSError as error:
            results.append({"error": f"{type(error).__name__}: {error}"})
    print(json.dumps({"id": request["id"], "results": results}), flush=True)
'''


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def pids_in(state: Path) -> list[int]:
    return sorted(int(path.name.split("-")[1]) for path in state.glob("pid-*"))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A factory of captioners on the stand-in worker: fake(mode, **options) -> (captioner, state folder)."""
    script, made = tmp_path / "fake_worker.py", weakref.WeakSet()  # weak: a test may drop its captioner
    script.write_text(FAKE_WORKER)

    def make(mode="ok", die_at=1, **options):
        state = Path(tempfile.mkdtemp(prefix="state-", dir=tmp_path))
        for key, value in {"FAKE_MODE": mode, "FAKE_STATE": str(state), "FAKE_DIE_AT": str(die_at)}.items():
            monkeypatch.setenv(key, value)  # read by the worker when it starts, on its captioner's first batch
        captioner = LavisCaptioner(python=sys.executable, worker=script, **{"start_timeout": 60, "image_timeout": 30} | options)
        made.add(captioner)
        return captioner, state

    yield make
    for captioner in made:
        captioner.close()


def solid(colour) -> Image.Image:
    return Image.new("RGB", (8, 8), colour)


def save_images(folder: Path, images: dict[str, Image.Image]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / f"{name}.png")
    return {name: folder / f"{name}.png" for name in images}


def make_folder(root: Path, images: list[Image.Image], dataset="ae_animal_object") -> Path:
    """Images under <root>/sd/<prompt>/<seed>.png, two seeds per prompt."""
    for index, image in enumerate(images):
        folder = root / "sd" / prompt_folder_name(load_prompt_set(dataset)[index // 2].prompt)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index % 2}.png")
    return root


def cached_paths(metrics_dir: Path) -> list[str]:
    """The image path of every row in the BLIP metric's per-image cache."""
    (cache,) = (metrics_dir / ".cache").glob("blip-*.jsonl")
    return [json.loads(line)["row"]["path"] for line in cache.read_text().splitlines()]


def test_a_missing_environment_says_to_run_make_lavis(tmp_path):
    with pytest.raises(LavisEnvironmentError, match="make lavis"):
        LavisCaptioner(python=tmp_path / "no-venv" / "bin" / "python")


def test_the_lavis_choice_goes_through_components():
    with pytest.raises(ValueError, match="choose one of transformers, lavis"):
        load_captioner("paper", captioner="LAVIS")
    with pytest.raises(ValueError, match="use it with profile 'paper'"):
        load_captioner("tiny", captioner="lavis")
    if LAVIS_PYTHON.exists():  # built lazily: nothing starts until the first batch
        assert load_captioner("paper", captioner="lavis").name == "lavis blip_caption base_coco (worker .venv-lavis)"
    else:
        with pytest.raises(LavisEnvironmentError, match="make lavis"):
            load_captioner("paper", captioner="lavis")


def test_the_worker_script_imports_nothing_of_fidelity_lib():
    """It runs in .venv-lavis, where the book's package is not installed: standard library, torch, PIL, LAVIS only."""
    tree = ast.parse(WORKER_SCRIPT.read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert roots - set(sys.stdlib_module_names) == {"torch", "PIL", "lavis", "omegaconf"}


def test_the_worker_starts_lazily_and_captions_come_back_in_order(fake):
    captioner, state = fake()
    assert captioner.pid is None and pids_in(state) == []
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert captioner.caption([solid(c) for c in colours]) == [f"colour {r} {g} {b}" for r, g, b in colours]
    assert captioner.caption([solid(c) for c in colours[::-1]]) == [f"colour {r} {g} {b}" for r, g, b in colours[::-1]]
    assert pids_in(state) == [captioner.pid]  # one worker served both batches
    assert captioner.name == "lavis blip_caption base_coco (worker .venv-lavis)"


def test_the_worker_gets_the_device_and_random_weights_options(fake):
    captioner, state = fake(device="cpu", random_weights_seed=3)
    captioner.caption([solid((0, 0, 0))])
    (started,) = state.glob("pid-*")
    assert json.loads(started.read_text()) == ["--device", "cpu", "--random-weights", "--seed", "3"]
    assert captioner.name == "lavis blip_caption base_coco random-weights(seed=3) (worker .venv-lavis)"


def test_an_unreadable_image_is_reported_and_the_worker_keeps_serving(fake, tmp_path):
    captioner, _ = fake()
    paths = save_images(tmp_path / "images", {"red": solid((255, 0, 0))})
    broken = tmp_path / "images" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    results = captioner.caption_paths([paths["red"], broken, paths["red"]])
    assert [r.caption for r in results] == ["colour 255 0 0", None, "colour 255 0 0"]
    assert results[1].error and results[1].path == str(broken) and results[0].error is None
    pid = captioner.pid
    assert captioner.caption([solid((0, 0, 9))]) == ["colour 0 0 9"] and captioner.pid == pid


def test_a_worker_that_dies_mid_batch_is_restarted_and_the_batch_sent_once_more(fake):
    captioner, state = fake("die-once")
    assert captioner.caption([solid((1, 2, 3)), solid((4, 5, 6))]) == ["colour 1 2 3", "colour 4 5 6"]
    first, second = pids_in(state)
    assert not alive(first) and captioner.pid == second and alive(second)
    assert len(list(state.glob("request-*"))) == 2  # the batch went twice, to two workers


def open_writer(fifo: Path, timeout: float) -> int:
    """A blocking write end of ``fifo``, opened once a reader has it open (a worker is then reading it: mid-batch)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        os.set_blocking(fd, True)
        return fd


def test_caption_raises_a_named_error_for_images_the_worker_could_not_read(fake):
    captioner, _ = fake("reject")
    with pytest.raises(LavisImageError, match="could not read 2 image.*0.png: OSError: cannot identify"):
        captioner.caption([solid((0, 0, 0)), solid((1, 1, 1))])


def test_a_worker_killed_while_reading_an_image_is_restarted_and_the_batch_sent_again(fake, tmp_path):
    """The batch's second image is a pipe: the worker blocks on it, is killed there, and a new worker gets the batch."""
    captioner, state = fake()
    paths = save_images(tmp_path / "images", {"red": solid((255, 0, 0)), "green": solid((0, 9, 0))})
    fifo = tmp_path / "images" / "late.png"
    os.mkfifo(fifo)
    killed = []

    def feed():
        fd = open_writer(fifo, 60)  # the first worker captioned "red" and is reading the pipe
        killed.append(captioner.pid)
        os.kill(killed[0], signal.SIGKILL)
        os.close(fd)
        while alive(killed[0]):  # until its end of the pipe is closed
            time.sleep(0.02)
        fd = open_writer(fifo, 60)  # the new worker reads it again
        os.write(fd, paths["green"].read_bytes())
        os.close(fd)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    results = captioner.caption_paths([paths["red"], fifo])
    feeder.join(timeout=10)
    assert [r.caption for r in results] == ["colour 255 0 0", "colour 0 9 0"]
    first, second = sorted(pids_in(state), key=lambda pid: pid != killed[0])
    assert not alive(first) and captioner.pid == second
    sent = [json.loads((state / f"request-{n}").read_text()) for n in (1, 2)]
    assert sent[0] == sent[1] == [str(paths["red"]), str(fifo)]


def test_a_worker_that_dies_again_is_reported_not_retried_forever(fake):
    captioner, state = fake("die-always")
    with pytest.raises(LavisWorkerError, match="restarted, and died again"):
        captioner.caption([solid((1, 2, 3))])
    assert len(pids_in(state)) == 2 and not any(alive(pid) for pid in pids_in(state))


def test_a_worker_that_does_not_answer_is_killed_after_the_timeout(fake):
    captioner, state = fake("hang", image_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(LavisWorkerTimeout, match="sent nothing for 1 s and was killed"):
        captioner.caption_paths(["a.png", "b.png"])
    assert time.monotonic() - started < 20
    (pid,) = pids_in(state)
    assert not alive(pid)  # killed at the timeout, not left hanging until close()


def test_loading_failures_come_back_as_named_errors(fake):
    missing, _ = fake("missing")
    with pytest.raises(LavisWeightsNotFoundError, match="download https://host/x.pth") as raised:
        missing.caption([solid((0, 0, 0))])
    assert isinstance(raised.value, WeightsNotFoundError)
    crashed, _ = fake("crash")
    with pytest.raises(LavisWorkerError, match="exited while loading(.|\n)*the model did not build"):
        crashed.caption([solid((0, 0, 0))])


def test_a_failed_batch_is_raised_and_the_worker_goes_on(fake):
    captioner, state = fake("fail-first")
    with pytest.raises(LavisWorkerError, match="out of memory"):
        captioner.caption([solid((1, 1, 1))])
    assert captioner.caption([solid((2, 2, 2))]) == ["colour 2 2 2"] and len(pids_in(state)) == 1


def test_close_with_and_garbage_collection_leave_no_process(fake):
    closed, state = fake()
    closed.caption([solid((0, 0, 0))])
    closed.close()
    with fake()[0] as scoped:
        scoped.caption([solid((0, 0, 0))])
        scoped_pid = scoped.pid
    collected, collected_state = fake()
    collected.caption([solid((0, 0, 0))])
    collected_pid = collected.pid
    del collected
    gc.collect()
    assert not alive(pids_in(state)[0]) and not alive(scoped_pid)
    assert not alive(collected_pid) and pids_in(collected_state) == [collected_pid]


def test_the_per_image_cache_holds_each_image_once_after_a_worker_death(fake, tmp_path):
    """blip_frame caches a chunk's rows only after every batch of it came back: a restart duplicates and loses nothing."""
    captioner, state = fake("die-once", die_at=2)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(6)]
    root, metrics = make_folder(tmp_path / "images", images), tmp_path / "metrics"
    scorer = ClipScorer(tiny_clip(), device="cpu")
    frame = blip_similarity(root, "ae_animal_object", captioner=captioner, scorer=scorer, metrics_dir=metrics, batch_size=2).frame
    assert len(pids_in(state)) == 2 and len(list(state.glob("request-*"))) == 4  # batch 2 went twice
    assert list(frame["caption"]) == ["colour %d %d %d" % tuple(np.asarray(image)[0, 0]) for image in images]
    assert sorted(cached_paths(metrics)) == sorted(frame["path"]) and len(set(cached_paths(metrics))) == 6
    again = blip_similarity(root, "ae_animal_object", captioner=captioner, scorer=scorer, metrics_dir=metrics, batch_size=2)
    assert len(list(state.glob("request-*"))) == 4 and list(again.frame["caption"]) == list(frame["caption"])



# The real worker: LAVIS's BlipCaption from the base_coco config with random weights (seed 0), LAVIS's eval processor
# and generate defaults, and a bert-base-uncased tokenizer of BERT's vocabulary size written here (no download). On one
# CPU thread a random-weight caption takes about 30 s (it never stops before the 30-token limit), so every real
# caption here is one the assertions need.
BERT_VOCAB_SIZE = 30522
SNAPSHOT = "0" * 40
SAVE_RANDOM_CHECKPOINT = """
import runpy, sys, torch
model, _ = runpy.run_path(sys.argv[1])["load_random"]("cpu", 0)
torch.save({"model": model.state_dict()}, sys.argv[2])
"""


@pytest.fixture(scope="module")
def lavis_caches(tmp_path_factory):
    """An HF cache holding a locally written bert-base-uncased tokenizer, and an empty TORCH_HOME, for the worker."""
    root = tmp_path_factory.mktemp("lavis-caches")
    repo = root / "hf" / "hub" / "models--bert-base-uncased"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of"]
    (snapshot / "vocab.txt").write_text("\n".join(vocab + [f"w{i}" for i in range(BERT_VOCAB_SIZE - len(vocab))]) + "\n")
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    (snapshot / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": BERT_VOCAB_SIZE}))
    hub = str(root / "hf" / "hub")
    env = {"HF_HOME": str(root / "hf"), "HF_HUB_CACHE": hub, "HUGGINGFACE_HUB_CACHE": hub, "TRANSFORMERS_CACHE": hub,
           "TORCH_HOME": str(root / "torch")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield root


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Two pictures far apart (noise, a colour ramp), so that even random weights caption them differently."""
    rng = np.random.default_rng(0)
    ramp = np.stack([*np.meshgrid(np.linspace(0, 255, 96), np.linspace(255, 0, 96)), np.full((96, 96), 128.0)], axis=-1)
    images = {"noise": Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)), "ramp": Image.fromarray(ramp.astype(np.uint8))}
    return save_images(tmp_path_factory.mktemp("pictures"), images)


@pytest.fixture(scope="module")
def real(lavis_caches):
    captioner = LavisCaptioner(device="cpu", random_weights_seed=0, start_timeout=600, image_timeout=300)
    yield captioner
    captioner.close()


@pytest.fixture(scope="module")
def first_batch(real, pictures, tmp_path_factory):
    """The module worker's first batch: noise, a truncated PNG, a missing file, ramp."""
    broken = tmp_path_factory.mktemp("broken") / "broken.png"
    broken.write_bytes(pictures["noise"].read_bytes()[:200])
    return real.caption_paths([pictures["noise"], broken, broken.parent / "missing.png", pictures["ramp"]])


@pytest.fixture(scope="module")
def reference(first_batch) -> dict[str, str]:
    return {"noise": first_batch[0].caption, "ramp": first_batch[3].caption}


@pytest.mark.slow
@needs_lavis
def test_the_real_worker_captions_with_lavis_defaults_and_reports_unreadable_images(real, first_batch, reference):
    noise, ramp = reference["noise"], reference["ramp"]
    assert noise and ramp and noise != ramp  # different pictures, different captions: the order test below means something
    assert all(6 <= len(caption.split()) <= 26 for caption in (noise, ramp))  # generate's 10-30 tokens, 4 of them the prompt
    assert "OSError" in first_batch[1].error and "FileNotFoundError" in first_batch[2].error
    assert first_batch[1].caption is None and first_batch[0].error is None


@pytest.mark.slow
@needs_lavis
def test_a_real_worker_killed_mid_run_is_restarted_and_the_cache_holds_each_image_once(real, pictures, reference, tmp_path):
    """One batch [ramp, noise] (the reverse of the first batch's order); the worker is killed 2 s into it."""

    class KilledDuringTheBatch:
        name = real.name

        def caption(self, images):
            threading.Timer(2, os.kill, (real.pid, signal.SIGKILL)).start()
            return real.caption(images)

    root = make_folder(tmp_path / "images", [Image.open(pictures[name]) for name in ("ramp", "noise")])
    scorer, metrics, killed = ClipScorer(tiny_clip(), device="cpu"), tmp_path / "metrics", real.pid
    frame = blip_similarity(root, "ae_animal_object", captioner=KilledDuringTheBatch(), scorer=scorer, metrics_dir=metrics).frame
    assert list(frame["caption"]) == [reference["ramp"], reference["noise"]]  # in order, after a restart
    assert sorted(cached_paths(metrics)) == sorted(frame["path"]) and len(set(cached_paths(metrics))) == 2
    restarted = real.pid
    assert restarted != killed and not alive(killed) and alive(restarted)
    real.close()
    assert not alive(restarted) and real.pid is None


@pytest.mark.slow
@needs_lavis
def test_the_pretrained_path_names_the_missing_files_then_loads_the_checkpoint_through_lavis(
    lavis_caches, pictures, reference, tmp_path, monkeypatch
):
    captioner = LavisCaptioner(device="cpu", start_timeout=600, image_timeout=300)
    with monkeypatch.context() as empty_hub, pytest.raises(LavisWeightsNotFoundError, match="checkpoint not found at") as raised:
        for key in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
            empty_hub.setenv(key, str(tmp_path / "empty-hf"))
        captioner.caption_paths([pictures["noise"]])
    message = str(raised.value)
    checkpoint = Path(message.split("checkpoint not found at ")[1].split(". ")[0])
    assert checkpoint.parent == lavis_caches / "torch" / "hub" / "checkpoints" and checkpoint.suffix == ".pth"
    assert f"wget -P {checkpoint.parent} https://" in message
    assert "huggingface-cli download bert-base-uncased vocab.txt" in message  # both missing files named at once
    # a stand-in checkpoint where the message says (the random model's own weights), loaded by LAVIS's own code
    checkpoint.parent.mkdir(parents=True)
    subprocess.run([str(LAVIS_PYTHON), "-c", SAVE_RANDOM_CHECKPOINT, str(WORKER_SCRIPT), str(checkpoint)], check=True, timeout=600)
    with captioner:
        assert [r.caption for r in captioner.caption_paths([pictures["noise"]])] == [reference["noise"]]
        pid = captioner.pid
    assert not alive(pid)
