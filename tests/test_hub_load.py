"""Every offline loading path of an exported student gives the logits of the model that was exported.

Runs with ``HF_HUB_OFFLINE=1`` (set by ``make test`` before Python starts): Hub ids resolve from a hand-built cache.
"""
from __future__ import annotations

import shutil

import pytest
import timm
import torch
from conftest import HUB_DATA_CONFIG, HUB_TINY_LIFT, hub_build_cache
from huggingface_hub import constants

import vitkd_zoo
from vitkd_zoo.hub import WeightsHashMismatchError, load_model, load_transformers

REPO = "vitkd-test/deit_tiny_lift-fmnist"


@pytest.fixture(scope="module")
def hub_cache(hub_lift_export, tmp_path_factory):
    _, folder = hub_lift_export
    cache = tmp_path_factory.mktemp("hf-cache")
    hub_build_cache(cache, REPO, {p.name: p for p in folder.iterdir()})
    return cache


def _logits(model, x):
    with torch.inference_mode():
        return model.eval()(x)


def test_suite_runs_offline():
    assert constants.HF_HUB_OFFLINE, "run the hub tests with HF_HUB_OFFLINE=1 set before Python starts (make test)"


def test_local_dir(hub_lift_export, hub_images):
    model, folder = hub_lift_export
    _, x, _ = hub_images
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert loaded.pretrained_cfg["source"] == "local-dir"
    assert torch.equal(_logits(loaded, x), _logits(model, x))
    assert tuple(timm.data.resolve_model_data_config(loaded)["mean"]) == HUB_DATA_CONFIG["mean"]


def test_pretrained_cfg_overlay_file(hub_lift_export, hub_images):
    model, folder = hub_lift_export
    _, x, _ = hub_images
    args = {k: v for k, v in HUB_TINY_LIFT.items() if k != "num_classes"}
    loaded = timm.create_model("deit_tiny_lift", pretrained=True, num_classes=10, **args,
                               pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"), num_classes=10))
    assert torch.equal(_logits(loaded, x), _logits(model, x))
    # the overlay route also serves features_only, where checkpoint_path does not (timm #488)
    features = timm.create_model("deit_tiny_lift", pretrained=True, features_only=True, out_indices=(1,), **args,
                                 pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"), num_classes=10))
    with torch.inference_mode():
        expected = model.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
        assert torch.equal(features(x)[0], expected)


def test_hf_hub_id_from_offline_cache_and_cache_dir(hub_lift_export, hub_cache, hub_images):
    model, _ = hub_lift_export
    _, x, _ = hub_images
    loaded = timm.create_model(f"hf-hub:{REPO}", pretrained=True, cache_dir=hub_cache)
    assert loaded.pretrained_cfg["hf_hub_id"] == REPO
    assert torch.equal(_logits(loaded, x), _logits(model, x))
    checked = load_model(REPO, cache_dir=hub_cache)  # same path, weights' sha256 checked first
    assert torch.equal(_logits(checked, x), _logits(model, x))


def test_not_cached_offline_fails_fast_with_local_entry_error(tmp_path):
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(LocalEntryNotFoundError):
        timm.create_model("hf-hub:vitkd-test/not-cached", pretrained=True, cache_dir=tmp_path)


@pytest.mark.parametrize("arch,filename", [
    ("deit_tiny_lift", "models/Lift/pytorch_model.pth"),
    ("deit_tiny_widelast", "models/WideLast/pytorch_model.pth"),
])
def test_registry_tag_full_size_through_hf_hub_id(arch, filename, tmp_path):
    """``timm.create_model(arch, pretrained=True)`` resolves the default tag's hf_hub_id/filename from the cache."""
    cfg = timm.models.get_pretrained_cfg(arch)
    assert (cfg.hf_hub_id, cfg.hf_hub_filename) == ("Huiyuancs/Encoding_Mismatch", filename)
    torch.manual_seed(2)
    source = timm.create_model(arch).eval()
    pth = tmp_path / "weights.pth"
    torch.save(source.state_dict(), pth)
    cache = tmp_path / "cache"
    hub_build_cache(cache, cfg.hf_hub_id, {filename: pth})
    loaded = timm.create_model(arch, pretrained=True, cache_dir=cache)
    assert loaded.pretrained_cfg["tag"] == "kd_cait_s24_in1k"
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(_logits(loaded, x), _logits(source, x))


def test_fine_tuning_head_timm(hub_lift_export, hub_images):
    model, folder = hub_lift_export
    _, x, _ = hub_images
    tuned = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=5)
    assert tuned.head.out_features == 5
    ours, theirs = model.state_dict(), tuned.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("head."))
    with torch.inference_mode():
        assert torch.equal(tuned.forward_head(tuned.forward_features(x), pre_logits=True),
                           model.forward_head(model.forward_features(x), pre_logits=True))


def test_transformers_classification_model_and_config(hub_lift_export, hub_images):
    from transformers import AutoConfig, AutoModelForImageClassification

    model, folder = hub_lift_export
    _, x, _ = hub_images
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "timm_wrapper" and config.architecture == "deit_tiny_lift"
    assert config.num_labels == 10 and config.id2label[9] == "Ankle boot"
    assert "num_classes" not in config.model_args
    hf = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        assert torch.equal(hf(x).logits, _logits(model, x))
        # the timm-format extra metadata survives transformers' own save, and timm reloads that save
    hf.save_pretrained(folder.parent / "hf-resaved")
    again = timm.create_model(f"local-dir:{folder.parent / 'hf-resaved'}", pretrained=True)
    assert torch.equal(_logits(again, x), _logits(model, x))


def test_transformers_auto_model_features(hub_lift_export, hub_images):
    from transformers import AutoModel

    model, folder = hub_lift_export
    _, x, _ = hub_images
    backbone = AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        out = backbone(x, output_hidden_states=True)
        features = model.forward_features(x)
        assert torch.equal(out.last_hidden_state, features)
        assert torch.equal(out.pooler_output, model.forward_head(features, pre_logits=True))
        assert out.last_hidden_state.shape[-1] == 64, "lifted tokens, not the 32-wide trunk"


def test_transformers_image_processor_and_pipeline(hub_lift_export, hub_images):
    from transformers import AutoImageProcessor, pipeline

    model, folder = hub_lift_export
    pil, _, _ = hub_images
    processor = AutoImageProcessor.from_pretrained(folder)
    exported = timm.create_model(f"local-dir:{folder}", pretrained=True)  # carries the export's data config
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(exported), is_training=False)
    pixels = processor(pil, return_tensors="pt")["pixel_values"]
    expected = torch.stack([transform(p) for p in pil])
    assert torch.allclose(pixels, expected, atol=1e-5)
    classifier = pipeline("image-classification", model=str(folder), top_k=3)
    predictions = classifier(pil[:4])
    logits = _logits(model, expected[:4])
    for pred, row in zip(predictions, logits, strict=True):
        top = row.softmax(-1).topk(3)
        assert pred[0]["label"] == vitkd_zoo.data.FASHION_MNIST_CLASSES[top.indices[0]]
        assert pred[0]["score"] == pytest.approx(top.values[0].item(), abs=1e-5)


def test_transformers_fine_tuning_head(hub_lift_export):
    from transformers import AutoModelForImageClassification

    model, folder = hub_lift_export
    tuned = AutoModelForImageClassification.from_pretrained(folder, num_labels=5, ignore_mismatched_sizes=True)
    assert tuned.config.num_labels == 5 and tuned.timm_model.head.out_features == 5
    ours, theirs = model.state_dict(), tuned.timm_model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("head."))


def test_transformers_by_repo_id_from_offline_cache(hub_lift_export, hub_cache, hub_images):
    model, _ = hub_lift_export
    _, x, _ = hub_images
    hf = load_transformers(REPO, cache_dir=hub_cache).eval()
    with torch.inference_mode():
        assert torch.equal(hf(x).logits, _logits(model, x))


def test_widelast_export_loads_in_timm_and_transformers(hub_widelast_export, hub_images):
    from transformers import AutoModel, AutoModelForImageClassification

    model, folder = hub_widelast_export
    _, x, _ = hub_images
    assert torch.equal(_logits(timm.create_model(f"local-dir:{folder}", pretrained=True), x), _logits(model, x))
    with torch.inference_mode():
        assert torch.equal(AutoModelForImageClassification.from_pretrained(folder).eval()(x).logits, _logits(model, x))
        hidden = AutoModel.from_pretrained(folder).eval()(x, output_hidden_states=True).hidden_states
        assert hidden[-1].shape[1] == 64 and hidden[0].shape[1] == 32  # wide last block, narrow trunk


@pytest.mark.parametrize("damage", ["bit-flip", "truncate"])
def test_corrupt_weights_name_the_file_and_the_sha256(hub_lift_export, tmp_path, damage):
    _, folder = hub_lift_export
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "bit-flip":
        data[len(data) // 2] ^= 0x01  # still a valid safetensors file: timm alone would load it silently
    else:
        data = data[: len(data) // 2]
    weights.write_bytes(bytes(data))
    for load in (load_model, load_transformers):
        with pytest.raises(WeightsHashMismatchError) as info:
            load(str(bad))
        message = str(info.value)
        assert str(weights) in message and "sha256" in message and "differs" in message
        assert "config.json" in message and "model card (README.md)" in message
    assert isinstance(info.value, vitkd_zoo.CorruptCheckpointError)
    if damage == "truncate":  # without the check, vitkd_zoo.create_model still says what is wrong
        with pytest.raises(vitkd_zoo.CorruptCheckpointError, match="truncated or corrupt"):
            vitkd_zoo.create_model(f"local-dir:{bad}", pretrained=True)
