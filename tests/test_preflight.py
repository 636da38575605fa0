"""The paper preflight: with nothing on disk every component is missing, with a download command, and nothing is written;
with the random-weight stand-ins (fidelity_lib.standins) everything is found and every real paper loader loads its
stand-in offline (slow); removing one stand-in file makes exactly that component missing (slow)."""

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from PIL import Image

from fidelity_lib import preflight
from fidelity_lib.components import load_captioner, load_detector, load_loss_clip, load_metric_clip, load_pipeline
from fidelity_lib.layout import LayoutPredictor, coco_examples
from fidelity_lib.preflight import (
    BLIP_CAPTIONER, COCO_ANNOTATIONS, LAVIS_CHECKPOINT, LAVIS_ENVIRONMENT, LAVIS_TOKENIZER, LOSS_CLIP, METRIC_CLIP,
    ROBERTA_ENCODER, RTDETR_DETECTOR, SD_WEIGHTS, MissingComponentsError, check_paper_run, paper_components, preflight_table,
)
from fidelity_lib.standins import STANDIN_REVISION, snapshot_folder, write_sd14_folder, write_standins

COMMON = [SD_WEIGHTS, METRIC_CLIP, LOSS_CLIP, RTDETR_DETECTOR, ROBERTA_ENCODER, COCO_ANNOTATIONS]
EXPECTED = {
    "transformers": [SD_WEIGHTS, METRIC_CLIP, LOSS_CLIP, BLIP_CAPTIONER, *COMMON[3:]],
    "lavis": [SD_WEIGHTS, METRIC_CLIP, LOSS_CLIP, LAVIS_ENVIRONMENT, LAVIS_CHECKPOINT, LAVIS_TOKENIZER, *COMMON[3:]],
}


def point_caches_at(patch: pytest.MonkeyPatch, root: Path) -> None:
    """HF cache, torch hub folder, fidelity_lib's cache and the LAVIS venv, all under ``root``."""
    hub = root / "hf" / "hub"
    folders = {"HF_HOME": root / "hf", "HF_HUB_CACHE": hub, "TORCH_HOME": root / "torch", "FIDELITY_CACHE": root / "cache"}
    for key, value in folders.items():
        patch.setenv(key, str(value))
    patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))  # read at import: patch it
    patch.setattr(preflight, "LAVIS_VENV", root / "venv-lavis")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    (tmp_path / "torch").mkdir()
    point_caches_at(monkeypatch, tmp_path)
    return tmp_path


def all_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if not path.is_dir()]


@pytest.mark.parametrize("captioner", ["transformers", "lavis"])
def test_with_nothing_on_disk_all_is_missing_with_a_command_and_nothing_is_written(empty_caches, captioner, capsys):
    checks = paper_components("/nonexistent", "/nonexistent", captioner)
    assert [check.component for check in checks] == EXPECTED[captioner]
    assert all(not check.found and check.reason and check.download for check in checks)
    commands = {check.component: check.download for check in checks}
    assert commands[SD_WEIGHTS].startswith("huggingface-cli download CompVis/stable-diffusion-v1-4 --local-dir /nonexistent")
    assert commands[RTDETR_DETECTOR].startswith("huggingface-cli download PekingU/rtdetr_r101vd_coco_o365")
    assert "annotations_trainval2017.zip -d /nonexistent" in commands[COCO_ANNOTATIONS]
    with pytest.raises(MissingComponentsError) as raised:
        check_paper_run("/nonexistent", "/nonexistent", captioner)
    message = str(raised.value)
    assert f"{len(checks)} of the {len(checks)} paper components are missing" in message
    assert all(check.component in message and check.download in message for check in checks)
    assert "MISSING" in capsys.readouterr().out
    assert all_files(empty_caches) == [] and not Path("/nonexistent").exists()


def test_no_coco_folder_and_an_unknown_captioner_are_reported_plainly(empty_caches):
    coco = paper_components()[-1]
    assert coco.component == COCO_ANNOTATIONS and not coco.found and "pass --coco-dir" in coco.reason
    with pytest.raises(ValueError, match="choose one of transformers, lavis"):
        paper_components(captioner="blip2")


def test_the_table_has_one_row_per_check_and_says_found_or_missing(empty_caches):
    checks = paper_components("/nonexistent", "/nonexistent")
    lines = preflight_table(checks).splitlines()
    assert len(lines) == len(checks) + 2 and lines[0].startswith("component") and set(lines[1]) <= {"-", "+"}
    assert all(f"| MISSING | {check.download}" in line for check, line in zip(checks, lines[2:]))


def test_stand_ins_never_overwrite_a_real_download(tmp_path):
    real = tmp_path / "hub" / "models--roberta-base" / "refs" / "main"
    real.parent.mkdir(parents=True)
    real.write_text("e" * 40)
    with pytest.raises(FileExistsError, match="real download of roberta-base"):
        snapshot_folder(tmp_path / "hub", "roberta-base")
    assert snapshot_folder(tmp_path / "hub", "Salesforce/blip-image-captioning-base").name == STANDIN_REVISION
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a stand-in"):
        write_sd14_folder(tmp_path / "sd")


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """The stand-ins in a temporary cache, weights and COCO folder; all deleted afterwards (the CLIP files are 600 MB)."""
    root = tmp_path_factory.mktemp("standins")
    with pytest.MonkeyPatch.context() as patch:
        point_caches_at(patch, root)
        written = write_standins(root / "hf", root / "sd", root / "coco")
        yield root, written
    shutil.rmtree(root)


@pytest.mark.slow
def test_with_the_stand_ins_everything_is_found(standins):
    root, written = standins
    checks = check_paper_run(str(root / "sd"), str(root / "coco"), "transformers")
    assert all(check.found and check.reason == "" for check in checks)
    assert list(written) == [check.component for check in checks]
    lavis = {check.component: check.found for check in paper_components(str(root / "sd"), str(root / "coco"), "lavis")}
    assert [name for name, found in lavis.items() if not found] == [LAVIS_ENVIRONMENT, LAVIS_CHECKPOINT, LAVIS_TOKENIZER]


@pytest.mark.slow
def test_each_paper_loader_loads_its_stand_in_offline(standins):
    root, _ = standins
    pipe = load_pipeline("paper", weights=root / "sd", device="cpu")
    assert pipe.profile == "paper" and pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 64
    image = pipe("a cat to the left of a dog", num_inference_steps=1, height=64, width=64, output_type="pil",
                 generator=torch.Generator("cpu").manual_seed(0)).images[0]
    for clip in (load_metric_clip("paper"), load_loss_clip("paper")):
        assert str(root) in clip.name
    assert "ViT-B-16" in load_metric_clip("paper").name and "ViT-B-32" in load_loss_clip("paper").name
    captions = load_captioner("paper", device="cpu").caption([image])
    assert len(captions) == 1 and isinstance(captions[0], str)
    detector = load_detector("paper", device="cpu")
    assert len(detector.model.config.id2label) == 80 and isinstance(detector.detect(Image.new("RGB", (64, 64))), list)
    placements = LayoutPredictor.from_roberta().predict("a cat to the left of a dog", seed=0)
    assert [placement.name for placement in placements] == ["cat", "dog"]
    examples, names = coco_examples(root / "coco")
    assert examples and "cat" in names


@pytest.mark.slow
def test_sd_weights_are_found_and_loaded_under_their_repo_id_in_the_cache(standins):
    root, _ = standins
    snapshot = snapshot_folder(root / "hf" / "hub", "CompVis/stable-diffusion-v1-4")
    shutil.copytree(root / "sd", snapshot, dirs_exist_ok=True)
    try:
        check = paper_components(None, str(root / "coco"))[0]
        assert check.found and check.looked.endswith("(CompVis/stable-diffusion-v1-4)")
        assert load_pipeline("paper", device="cpu").weights_id.startswith("CompVis/stable-diffusion-v1-4")
        (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        assert "unet/diffusion_pytorch_model.safetensors" in paper_components(None, str(root / "coco"))[0].reason
    finally:
        shutil.rmtree(snapshot.parents[1])


REMOVED = {  # one file per component, relative to the stand-in root; the HF snapshot folder is spelled SNAPSHOT
    SD_WEIGHTS: "sd/unet/diffusion_pytorch_model.safetensors",
    METRIC_CLIP: "hf/hub/models--timm--vit_base_patch16_clip_224.openai/SNAPSHOT/open_clip_model.safetensors",
    LOSS_CLIP: "hf/hub/models--timm--vit_base_patch32_clip_224.openai/SNAPSHOT/open_clip_model.safetensors",
    BLIP_CAPTIONER: "hf/hub/models--Salesforce--blip-image-captioning-base/SNAPSHOT/processor_config.json",
    RTDETR_DETECTOR: "hf/hub/models--PekingU--rtdetr_r101vd_coco_o365/SNAPSHOT/model.safetensors",
    ROBERTA_ENCODER: "hf/hub/models--roberta-base/SNAPSHOT/tokenizer.json",
    COCO_ANNOTATIONS: "coco/annotations/instances_synthetic.json",
}


@pytest.mark.slow
@pytest.mark.parametrize("component", list(REMOVED))
def test_removing_one_stand_in_file_makes_exactly_that_component_missing(standins, component):
    root, _ = standins
    path = root / REMOVED[component].replace("SNAPSHOT", f"snapshots/{STANDIN_REVISION}")
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    try:
        checks = paper_components(str(root / "sd"), str(root / "coco"))
    finally:
        aside.rename(path)
    missing = [check for check in checks if not check.found]
    assert [check.component for check in missing] == [component]
    assert path.name in missing[0].reason or component == COCO_ANNOTATIONS
