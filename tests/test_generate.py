import json

import PIL.Image
import pytest

from fidelity_lib import generate as gen
from fidelity_lib.datasets import PromptRecord, load_prompts, prompt_folder_name
from fidelity_lib.prompts import EmptyPromptError, TokenIndexError
from fidelity_lib.generate import (
    Generated,
    GenerationOptions,
    InvalidSeedsError,
    generate,
    image_path,
    is_valid_image,
    main,
    parse_seeds,
    read_manifest,
)

RECORDS = [PromptRecord("test", 0, "a cat and a dog", ("cat", "dog")), PromptRecord("test", 1, "a red apple", ("apple",))]


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("7") == [7]
    assert parse_seeds("0-1, 5,1") == [0, 1, 5]
    for bad in ("5-2", "a", "1-", "-3", ""):
        with pytest.raises(InvalidSeedsError):
            parse_seeds(bad)


@pytest.fixture
def fake_method(monkeypatch):
    """A registered method that draws a flat image; ``crash_after`` interrupts the run like a kill."""
    state = {"calls": 0, "crash_after": None}

    def fake(pipe, record, seed, options):
        if state["crash_after"] is not None and state["calls"] >= state["crash_after"]:
            raise KeyboardInterrupt
        state["calls"] += 1
        return Generated(PIL.Image.new("RGB", (8, 8), (seed, 0, 0)), {"steps": options.steps}, {"note": record.prompt})

    monkeypatch.setitem(gen.METHODS, "fake", fake)
    return state


class NoPipe:
    weights_id = "none"


def test_resume_after_a_crash_leaves_no_partial_png(tmp_path, fake_method):
    fake_method["crash_after"] = 3
    with pytest.raises(KeyboardInterrupt):
        generate(NoPipe(), "fake", RECORDS, [0, 1], tmp_path, profile="tiny", progress=False)
    pngs = sorted(tmp_path.rglob("*.png"))
    assert len(pngs) == 3 and all(is_valid_image(path) for path in pngs)
    assert len(read_manifest(tmp_path)) == 3
    # what a kill -9 could leave: a temporary file, a truncated manifest line, and an image without its line
    folder = tmp_path / "fake" / prompt_folder_name("a red apple")
    (folder / ".1.png.123.tmp").write_bytes(b"\x89PNG partial")
    with open(tmp_path / "manifest.jsonl", "a") as manifest:
        manifest.write('{"prompt": "a red ap')
    orphan = image_path(tmp_path, "fake", "a red apple", 0)
    lines = [line for line in read_manifest(tmp_path) if line["path"] != str(orphan.relative_to(tmp_path))]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"prompt": "a red ap')

    fake_method["crash_after"] = None
    summary = generate(NoPipe(), "fake", RECORDS, [0, 1], tmp_path, profile="tiny", progress=False)
    assert (summary.written, summary.skipped) == (2, 2)  # the orphan image is redone, the two complete ones kept
    assert not list(tmp_path.rglob("*.tmp"))
    manifest = read_manifest(tmp_path)
    assert sorted((line["prompt"], line["seed"]) for line in manifest) == sorted(
        (record.prompt, seed) for record in RECORDS for seed in (0, 1)
    )
    assert all(is_valid_image(tmp_path / line["path"]) for line in manifest)
    assert manifest[-1]["extras"] == {"note": "a red apple"} and manifest[-1]["weights"] == "none"
    assert generate(NoPipe(), "fake", RECORDS, [0, 1], tmp_path, profile="tiny", progress=False).written == 0


def test_a_corrupt_png_is_regenerated(tmp_path, fake_method):
    generate(NoPipe(), "fake", RECORDS[:1], [0], tmp_path, profile="tiny", progress=False)
    path = image_path(tmp_path, "fake", RECORDS[0].prompt, 0)
    path.write_bytes(path.read_bytes()[:20])
    assert not is_valid_image(path)
    assert generate(NoPipe(), "fake", RECORDS[:1], [0], tmp_path, profile="tiny", progress=False).written == 1
    assert is_valid_image(path)


def test_sd_and_ae_on_the_tiny_pipeline(tmp_path, tiny_pipe):
    records = load_prompts("ae_animal_animal")[:1]
    options = GenerationOptions(steps=2)
    for method in ("sd", "ae"):
        generate(tiny_pipe, method, records, [0], tmp_path, profile="tiny", options=options, progress=False)
    sd, ae = read_manifest(tmp_path)
    assert (tmp_path / "ae" / records[0].prompt / "0.png").is_file()
    assert sd["path"] == f"sd/{records[0].prompt}/0.png" and sd["set"] == "ae_animal_animal"
    assert sd["config"] == {"num_inference_steps": 2, "guidance_scale": 7.5, "image_size": None} and sd["extras"] == {}
    assert ae["config"]["thresholds"] == {"0": 0.05, "10": 0.5, "20": 0.8}
    assert ae["extras"]["token_indices"] == list(records[0].subject_token_indices)
    assert len(ae["extras"]["losses"]) == 3 and ae["extras"]["refinement_iterations"] == {"0": 20}
    assert ae["weights"] == "tiny-random(seed=0)" and ae["seconds"] > 0


def test_cli_writes_the_layout(tmp_path):
    out = tmp_path / "images"
    args = ["--method", "sd", "--prompts", "ae_object_object", "--seeds", "0-1", "--out", str(out)]
    assert main([*args, "--profile", "tiny", "--steps", "1", "--limit", "1"]) == 0
    prompt = load_prompts("ae_object_object")[0].prompt
    assert sorted(path.name for path in (out / "sd" / prompt).iterdir()) == ["0.png", "1.png"]
    assert len(read_manifest(out)) == 2


@pytest.mark.parametrize(
    "extra, error",
    [
        (["--prompts", "no_such_set"], "UnknownPromptSetError"),
        (["--seeds", "5-2"], "InvalidSeedsError"),
        (["--token-indices", "0,2"], "TokenIndexError"),
        (["--token-indices", "2,6"], "TokenIndexError: Token index 6 points at <|endoftext|>"),
        (["--token-indices", "2,30"], "padding"),
    ],
)
def test_cli_bad_inputs(tmp_path, capsys, extra, error):
    args = {"--method": "ae", "--prompts": "ae_animal_animal", "--seeds": "0", "--out": str(tmp_path), "--profile": "tiny"}
    args.update(dict(zip(extra[::2], extra[1::2])))
    assert main([item for pair in args.items() for item in pair]) == 2
    assert error in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.png"))


def test_empty_prompt_and_bad_method(tmp_path, fake_method):
    with pytest.raises(EmptyPromptError):
        generate(NoPipe(), "fake", [PromptRecord("test", 0, "  ", ())], [0], tmp_path, profile="tiny", progress=False)
    with pytest.raises(TokenIndexError):
        generate(NoPipe(), "fake", RECORDS, [0], tmp_path, profile="tiny", options=GenerationOptions(token_indices=(9,)), progress=False)
    with pytest.raises(KeyError, match="Unknown method"):
        generate(NoPipe(), "st-nope", RECORDS, [0], tmp_path, profile="tiny", progress=False)
    assert not list(tmp_path.rglob("*.png"))


def test_prompts_that_fit_splits_on_the_text_encoder_window():
    from fidelity_lib.datasets import load_prompts
    from fidelity_lib.generate import prompts_that_fit
    from fidelity_lib.models import clip_tokenizer

    records = load_prompts("mscoco")[:10]
    fit, skipped = prompts_that_fit(records, clip_tokenizer(model_max_length=16))
    tokenizer = clip_tokenizer()
    assert fit and skipped and len(fit) + len(skipped) == 10
    assert all(len(tokenizer(r.prompt).input_ids) <= 16 for r in fit)
    assert all(len(tokenizer(r.prompt).input_ids) > 16 for r in skipped)


def test_named_sets_skip_prompts_the_toy_text_encoder_cannot_read(tmp_path, capsys):
    from fidelity_lib.generate import main

    assert main(["--method", "sd", "--prompts", "mscoco", "--seeds", "0", "--limit", "2", "--steps", "1",
                 "--out", str(tmp_path), "--profile", "toy"]) == 0
    assert "skipping 150 prompts longer than the 14 tokens" in capsys.readouterr().err
    assert len(list(tmp_path.rglob("*.png"))) == 2


def test_batched_methods_write_what_one_image_per_call_writes(tmp_path, tiny_pipe):
    import numpy as np
    from fidelity_lib.attend_excite import AttendExciteConfig

    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    config = AttendExciteConfig(max_iter_to_alter=2, thresholds={})
    try:
        for batch_size in (1, 3):
            options = GenerationOptions(steps=2, batch_size=batch_size, ae_config=config)
            for method in ("sd", "ae"):
                generate(tiny_pipe, method, RECORDS, [0, 1], tmp_path / f"b{batch_size}", profile="tiny", options=options, progress=False)
    finally:
        handle.remove()
    assert max(calls) == 6  # CFG forwards of three images at once (the fourth image runs alone)
    for batch_size in (1, 3):
        lines = read_manifest(tmp_path / f"b{batch_size}")
        assert len(lines) == 8 and {line["config"]["max_iter_to_alter"] for line in lines if line["method"] == "ae"} == {2}
    for method in ("sd", "ae"):
        for record in RECORDS:
            for seed in (0, 1):
                one, three = (np.asarray(PIL.Image.open(image_path(tmp_path / f"b{b}", method, record.prompt, seed)), dtype=float) for b in (1, 3))
                assert np.abs(one - three).max() <= 1  # at most one 8-bit level apart


def test_stated_layouts_and_st_settings_reach_spatial_temporal_control(tmp_path, tiny_pipe):
    from fidelity_lib.layout.predictor import ObjectPlacement
    from fidelity_lib.spacetime import SpaceTimeConfig

    layout = [ObjectPlacement("cat", "a cat", 0.25, 0.5), ObjectPlacement("dog", "a dog", 0.75, 0.5)]
    options = GenerationOptions(
        steps=2, st_config=SpaceTimeConfig(passes=1, radius=0.3, checkpointing=False), layouts={RECORDS[0].prompt: layout}
    )
    generate(tiny_pipe, "st", RECORDS[:1], [0], tmp_path, profile="tiny", options=options, progress=False)
    (line,) = read_manifest(tmp_path)
    assert [(p["phrase"], p["x"], p["y"]) for p in line["extras"]["layout"]] == [("a cat", 0.25, 0.5), ("a dog", 0.75, 0.5)]
    # the options' steps win over the config's, the rest of the config is the one given
    assert line["config"]["num_inference_steps"] == 2 and line["config"]["passes"] == 1 and line["config"]["radius"] == 0.3


def test_resuming_with_other_weights_is_refused(tmp_path, fake_method):
    generate(NoPipe(), "fake", RECORDS[:1], [0], tmp_path, profile="tiny", progress=False)
    other = type("OtherPipe", (), {"weights_id": "~/weights/sdxl [SDXL base 1.0]"})()
    with pytest.raises(gen.OtherWeightsError, match=r"made with none, not ~/weights/sdxl \[SDXL base 1.0\]"):
        generate(other, "fake", RECORDS, [0], tmp_path, profile="tiny", progress=False)
    assert len(read_manifest(tmp_path)) == 1  # nothing written by the refused run
    summary = generate(NoPipe(), "fake", RECORDS, [0], tmp_path, profile="tiny", progress=False)
    assert (summary.written, summary.skipped) == (1, 1)
