"""Scale and crash safety: SIGKILL-and-resume, one vs two accelerate processes, the lock, resumable metrics."""

import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fidelity_lib.datasets import load_prompts
from fidelity_lib.generate import (
    MANIFEST_NAME,
    GenerationOptions,
    generate,
    image_path,
    is_valid_image,
    main,
    work_items,
)
from fidelity_lib.models import tiny_pipeline

REPO = Path(__file__).resolve().parent.parent
PROMPTS = "ae_animal_animal"
RECORDS = load_prompts(PROMPTS)[:2]
SEEDS = [0, 1, 2]
STEPS = 3
CLI_ARGS = ["--method", "sd", "--prompts", PROMPTS, "--limit", "2", "--seeds", "0-2", "--steps", str(STEPS), "--profile", "tiny"]


def _in_child(target, *args) -> multiprocessing.Process:
    """Run ``target(*args)`` in a forked child with one thread (the parent's imports and models are shared)."""

    def run():
        torch.set_num_threads(1)
        target(*args)

    process = multiprocessing.get_context("fork").Process(target=run)
    process.start()
    return process


def _generate_job(pipe, out: Path) -> None:
    generate(pipe, "sd", RECORDS, SEEDS, out, profile="tiny", options=GenerationOptions(steps=STEPS), progress=False)


def _expected_paths(out: Path) -> list[Path]:
    return [image_path(out, "sd", record.prompt, seed) for record in RECORDS for seed in SEEDS]


def _manifest_keys(out: Path) -> list[tuple[str, int]]:
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    return [(record["prompt"], record["seed"]) for record in map(json.loads, lines)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The job made by the one-process command line, uninterrupted."""
    out = tmp_path_factory.mktemp("reference")
    process = _in_child(main, [*CLI_ARGS, "--out", str(out)])
    process.join()
    assert process.exitcode == 0
    return out


def _assert_same_job(out: Path, reference: Path) -> None:
    for path, expected in zip(_expected_paths(out), _expected_paths(reference)):
        assert is_valid_image(path) and path.read_bytes() == expected.read_bytes(), path
    assert sorted(path.relative_to(out) for path in out.rglob("*.png")) == sorted(p.relative_to(reference) for p in reference.rglob("*.png"))
    assert _manifest_keys(out) == [(record.prompt, seed) for record in RECORDS for seed in SEEDS]  # once each, in order
    assert not list(out.glob("manifest.part-*")) and not list(out.rglob("*.tmp"))


def _finished(out: Path) -> bool:
    return (out / MANIFEST_NAME).exists() and len(_manifest_keys(out)) == len(RECORDS) * len(SEEDS)


@pytest.mark.slow  # ~6-10 s with its fixture: kept out of the fast loop
def test_sigkill_at_random_points_then_resume(tmp_path, reference):
    """Ten SIGKILLs land while the job is unfinished; a job that completes between kills is checked and started over."""
    pipe = tiny_pipeline(seed=0)
    rng = random.Random(9)
    out = tmp_path / "job"
    kills_during_work, rounds = 0, 0
    while kills_during_work < 10:
        rounds += 1
        assert rounds < 200, "the generator finished before any kill 200 times: is it still killable?"
        if _finished(out):
            _assert_same_job(out, reference)
            shutil.rmtree(out)
        process = _in_child(_generate_job, pipe, out)
        time.sleep(rng.uniform(0.0, 0.6))
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
            kills_during_work += not _finished(out)
        process.join()
    process = _in_child(_generate_job, pipe, out)
    process.join()
    assert process.exitcode == 0
    _assert_same_job(out, reference)


def test_resume_regenerates_a_truncated_image_and_keeps_one_manifest_line(tmp_path, reference):
    for path in [*_expected_paths(reference), reference / MANIFEST_NAME]:
        target = tmp_path / path.relative_to(reference)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    truncated = _expected_paths(tmp_path)[4]
    truncated.write_bytes(truncated.read_bytes()[:100])
    process = _in_child(_generate_job, tiny_pipeline(seed=0), tmp_path)
    process.join()
    assert process.exitcode == 0
    _assert_same_job(tmp_path, reference)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_accelerate_processes_on_cpu_equal_one(tmp_path, reference):
    launch = [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [*launch, "-m", "fidelity_lib.generate", *CLI_ARGS, "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0/2: 3 images written" in result.stderr and "process 1/2: 3 images written" in result.stderr
    _assert_same_job(tmp_path, reference)
    ours, theirs = ([json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()] for out in (tmp_path, reference))
    assert [{k: v for k, v in line.items() if k != "seconds"} for line in ours] == [
        {k: v for k, v in line.items() if k != "seconds"} for line in theirs
    ]


def test_work_items_deal_every_item_to_exactly_one_process():
    items = work_items(RECORDS, SEEDS)
    shares = [work_items(RECORDS, SEEDS, rank, 3) for rank in range(3)]
    assert sorted((r.index, s) for share in shares for r, s in share) == sorted((r.index, s) for r, s in items)
    assert [len(share) for share in shares] == [2, 2, 2]


def test_metrics_resume_from_their_per_image_cache(tmp_path, reference, monkeypatch):
    from fidelity_lib.clip import tiny_clip
    from fidelity_lib.metrics import ClipScorer, clip_score

    scorer = ClipScorer(tiny_clip())
    first = clip_score(reference, PROMPTS, scorer=scorer, metrics_dir=tmp_path)
    (cache,) = (tmp_path / ".cache").glob("clip-*.jsonl")
    lines = cache.read_text().splitlines()
    assert len(lines) == 6
    cache.write_text("\n".join(lines[:4]) + "\n" + lines[4][:30])  # an evaluation killed while writing image 5
    scored = []
    original = scorer.image_embeddings
    monkeypatch.setattr(scorer, "image_embeddings", lambda images: scored.append(len(images)) or original(images))
    second = clip_score(reference, PROMPTS, scorer=scorer, metrics_dir=tmp_path)
    assert scored == [2]  # only the two images whose rows were lost are scored again
    # The four cached rows come back bit for bit; the two rescored images ran in a batch of 2 instead of 6, whose
    # float sums may differ in the last bits (and do under load), so they and the aggregates get a tolerance.
    assert second.frame["path"].tolist() == first.frame["path"].tolist()
    for column in ("full_text", "min_first_second"):
        assert second.frame[column].iloc[:4].tolist() == first.frame[column].iloc[:4].tolist()
        np.testing.assert_allclose(second.frame[column].to_numpy(), first.frame[column].to_numpy(), rtol=0, atol=1e-5)
    assert_close_nested(second.aggregates, first.aggregates, 1e-5)


def assert_close_nested(actual, expected, tolerance: float, where: str = "aggregates") -> None:
    """Equal structure and non-float values; floats within ``tolerance``."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_close_nested(actual[key], expected[key], tolerance, f"{where}[{key!r}]")
    elif isinstance(expected, float):
        assert abs(actual - expected) <= tolerance, where
    else:
        assert actual == expected, where
