"""Bad inputs at every public entry point: an error that says what is wrong and what to do, nothing half-written."""

import fcntl
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from fidelity_lib.attend_excite import ImageSizeError, attend_and_excite
from fidelity_lib.book import ParameterTypeError, check_parameters
from fidelity_lib.datasets import UnknownPromptSetError, load_prompts
from fidelity_lib.prompts import EmptyPromptError, PromptTooLongError, TokenIndexError
from fidelity_lib.generate import (
    LOCK_NAME,
    InvalidSeedsError,
    OutputFolderError,
    OutputLockedError,
    generate,
    main,
    parse_seeds,
)
from fidelity_lib.components import load_pipeline
from fidelity_lib.models import WeightsNotFoundError

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a cat and a dog"  # tokens: 0=<sot> 1=a 2=cat 3=and 4=a 5=dog 6=<eot>, padding after
LONG_PROMPT = " ".join(["red cat"] * 50)  # 100 words, 100 tokens


@pytest.mark.parametrize(
    "indices, message",
    [
        ((2, 99), "Token index 99 is out of range (0..76)"),
        ((0, 5), "Token index 0 points at <|startoftext|>"),
        ((2, 6), "Token index 6 points at <|endoftext|>"),
        ((2, 30), "Token index 30 points at padding after the prompt"),
        (("2",), "Token index '2' is not an integer"),
    ],
)
def test_attend_and_excite_token_indices(tiny_pipe, indices, message):
    with pytest.raises(TokenIndexError) as error:
        attend_and_excite(tiny_pipe, PROMPT, indices, num_inference_steps=1)
    assert message in str(error.value)
    if message.endswith(("76)", "text|>", "prompt")):
        assert "the prompt's tokens are: 0=<|startoftext|>, 1=a</w>, 2=cat</w>, 3=and</w>" in str(error.value)


@pytest.mark.parametrize("prompt, error, message", [("", EmptyPromptError, "write what the image should show"), (LONG_PROMPT, PromptTooLongError, "100 tokens; the text encoder reads 75")])
def test_attend_and_excite_prompt(tiny_pipe, prompt, error, message):
    with pytest.raises(error, match=message):
        attend_and_excite(tiny_pipe, prompt, num_inference_steps=1)


def test_image_size_not_a_multiple_of_8(tiny_pipe):
    with pytest.raises(ImageSizeError, match="height=60 must be a positive multiple of 8"):
        attend_and_excite(tiny_pipe, PROMPT, (2, 5), num_inference_steps=1, height=60, width=64)


def _cli(tmp_path, *extra: str) -> list[str]:
    args = {"--method": "sd", "--prompts": "ae_animal_animal", "--seeds": "0", "--out": str(tmp_path / "out"), "--profile": "tiny", "--steps": "1"}
    args.update(dict(zip(extra[::2], extra[1::2])))
    return [item for pair in args.items() for item in pair]


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--seeds", "5-2"), "InvalidSeedsError: Seeds '5-2': the range '5-2' runs backwards; write 2-5."),
        (("--prompts", "no_such_set"), "is neither a prompt set (ae_animal_animal"),
        (("--prompts", "{long}"), "PromptTooLongError: The prompt has 100 tokens"),
        (("--prompts", "{empty}"), "holds no prompts: write one prompt per line"),
        (("--method", "ae", "--token-indices", "2,30"), "points at padding after the prompt"),
        (("--out", "{under_file}"), "OutputFolderError: Cannot write images to"),
        (("--profile", "paper", "--weights", "{missing}"), "huggingface-cli download CompVis/stable-diffusion-v1-4"),
    ],
)
def test_generate_cli_refuses_and_writes_nothing(tmp_path, capsys, extra, message):
    files = {"long": tmp_path / "long.txt", "empty": tmp_path / "empty.txt", "under_file": tmp_path / "file" / "out", "missing": tmp_path / "no_weights"}
    files["long"].write_text(LONG_PROMPT + "\n")
    files["empty"].write_text("# nothing\n\n")
    (tmp_path / "file").write_text("a regular file, not a folder")
    argv = _cli(tmp_path, *(item.format(**{k: str(v) for k, v in files.items()}) for item in extra))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--method", "nope"), "argument --method: invalid choice: 'nope'"),
        (("--profile", "huge"), "argument --profile: invalid choice: 'huge'"),
        (("--steps", "0"), "argument --steps: expected a positive integer, not '0'"),
        (("--token-indices", "2,x"), "token indices must be comma-separated integers"),
    ],
)
def test_generate_cli_rejects_bad_arguments(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_:
        main(_cli(tmp_path, *extra))
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_seeds_running_backwards():
    with pytest.raises(InvalidSeedsError, match="runs backwards; write 2-5"):
        parse_seeds("5-2")


def test_unknown_prompt_set_and_profile():
    with pytest.raises(UnknownPromptSetError, match="choose one of|neither a prompt set"):
        load_prompts("coco2017")
    with pytest.raises(ValueError, match="Unknown profile 'huge': choose one of smoke, tiny, toy, paper"):
        load_pipeline("huge")


def test_generate_unknown_method_and_empty_prompt(tmp_path, tiny_pipe):
    from fidelity_lib.datasets import PromptRecord

    with pytest.raises(KeyError, match="Unknown method 'nope': choose one of sd, ae"):
        generate(tiny_pipe, "nope", load_prompts("ae_animal_animal")[:1], [0], tmp_path / "out", profile="tiny")
    with pytest.raises(EmptyPromptError):
        generate(tiny_pipe, "sd", [PromptRecord("test", 0, " ", ())], [0], tmp_path / "out", profile="tiny")
    assert not (tmp_path / "out").exists()


def test_incomplete_weights_folder(tmp_path):
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "unet").mkdir()
    with pytest.raises(WeightsNotFoundError, match="the folder is incomplete, it lacks vae/, text_encoder/, tokenizer/, scheduler/") as error:
        load_pipeline("paper", weights=tmp_path, device="cpu")
    assert "huggingface-cli download CompVis/stable-diffusion-v1-4" in str(error.value)


def test_a_second_run_on_a_locked_folder_is_refused(tmp_path, tiny_pipe):
    records = load_prompts("ae_animal_animal")[:1]
    (tmp_path / LOCK_NAME).write_text("4242")
    with open(tmp_path / LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputLockedError, match="Another generator run \\(pid 4242\\) is writing .* pass a different --out"):
            generate(tiny_pipe, "sd", records, [0], tmp_path, profile="tiny", progress=False)
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.glob("manifest*"))


def test_generate_into_an_unwritable_place(tmp_path, tiny_pipe):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="file is not a folder; pass --out \\(or out=\\) a folder you can create and write to"):
        generate(tiny_pipe, "sd", load_prompts("ae_animal_animal")[:1], [0], tmp_path / "file" / "out", profile="tiny")


def test_corrupt_image_in_the_eval_folder_is_reported_and_left_out(tmp_path):
    from fidelity_lib.clip import tiny_clip
    from fidelity_lib.metrics import ClipScorer, clip_score

    prompt = load_prompts("ae_animal_animal")[0].prompt
    folder = tmp_path / "sd" / prompt
    folder.mkdir(parents=True)
    PIL.Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "0.png")
    (folder / "1.png").write_bytes((folder / "0.png").read_bytes()[:60])
    result = clip_score(tmp_path, "ae_animal_animal", scorer=ClipScorer(tiny_clip()))
    (problem,) = result.aggregates["sd"]["unreadable_images"]
    assert problem["path"].endswith("1.png") and "truncated" in problem["reason"].lower()
    assert result.frame["full_text"].notna().sum() == 1


def test_eval_folder_missing_or_without_the_method(tmp_path):
    from fidelity_lib.metrics import NoImagesError, UnknownMethodError, collect_images

    with pytest.raises(NoImagesError, match="generate images first"):
        collect_images(tmp_path / "nothing", "mscoco")
    (tmp_path / "sd").mkdir()
    with pytest.raises(UnknownMethodError, match="No folder for method\\(s\\) \\['ae'\\]"):
        collect_images(tmp_path, "mscoco", ["ae"])


def test_layout_object_outside_the_image():
    from fidelity_lib.layout import ObjectPlacement

    with pytest.raises(ValueError, match="x=1.5 is outside \\[0, 1\\] \\(centres are fractions of the image\\)"):
        ObjectPlacement("cat", "a cat", 1.5, 0.5)
    with pytest.raises(ValueError, match="y=-0.1 is outside"):
        ObjectPlacement("cat", "a cat", 0.5, -0.1)


def test_coco_folder_without_captions(tmp_path):
    from fidelity_lib.layout import CocoAnnotationsMissingError, coco_examples

    (tmp_path / "instances_val2017.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(CocoAnnotationsMissingError, match="expected .*captions_val2017.json.*Download .* unzip into"):
        coco_examples(tmp_path)


def test_notebook_parameter_of_the_wrong_type():
    values = {"limit": "3", "steps": None, "seeds": 5, "original_counting": 1, "n_boot": True, "scale": 2}
    with pytest.raises(ParameterTypeError) as error:
        check_parameters(values, limit=(int, None), steps=(int, None), seeds=(str, None), original_counting=bool, n_boot=int, scale=float)
    message = str(error.value)
    assert "limit='3' is a str, expected int or None" in message and "seeds=5 is a int, expected str or None" in message
    assert "original_counting=1 is a int, expected bool" in message and "n_boot=True is a bool, expected int" in message
    assert "steps" not in message and "scale" not in message and "papermill -p NAME VALUE" in message


def test_papermill_run_with_a_wrong_parameter_stops_before_any_work(tmp_path):
    import papermill

    from fidelity_lib.book import kernel_name

    with pytest.raises(papermill.PapermillExecutionError, match="ParameterTypeError.*limit='abc' is a str"):
        papermill.execute_notebook(
            str(REPO / "notebooks" / "02_generate.ipynb"), str(tmp_path / "out.ipynb"),
            parameters={"limit": "abc", "reports_dir": str(tmp_path / "reports")}, kernel_name=kernel_name(),
            cwd=str(REPO / "notebooks"), progress_bar=False,
        )
    assert not (tmp_path / "reports").exists()


def test_a_folder_with_only_the_components_the_book_loads(tmp_path, tiny_pipe):
    tiny_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index |= {"feature_extractor": ["transformers", "CLIPImageProcessor"],
              "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]}  # listed, not downloaded
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert not (tmp_path / "feature_extractor").exists() and not (tmp_path / "safety_checker").exists()
    pipe = load_pipeline("paper", weights=tmp_path, device="cpu")
    assert pipe.feature_extractor is None and pipe.safety_checker is None
    image = pipe("a cat and a dog", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    reference = tiny_pipe("a cat and a dog", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert np.abs(image - reference).max() <= 1e-5
