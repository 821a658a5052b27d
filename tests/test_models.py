"""The Lift and WideLast students as timm models: architecture facts, the timm API, and weight loading."""
from __future__ import annotations

import argparse
import copy
import logging

import pytest
import timm
import torch
from timm.models import group_parameters

import vitkd_zoo
from vitkd_zoo.models import VisionTransformerLift, VisionTransformerWideLast

TINY = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=3, num_heads=2, num_classes=10)
TINY_LIFT = dict(TINY, lift_dim=64)
TINY_WIDE = dict(TINY, wide_dim=64, wide_heads=4)
STUDENTS = [("deit_tiny_lift", TINY_LIFT), ("deit_tiny_widelast", TINY_WIDE)]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(2, 1, 28, 28)


# --- architecture facts (paper-facts.md §4-§6) -------------------------------------------------------------------

def test_parameter_counts_match_the_authors_architectures():
    assert n_params(timm.create_model("deit_tiny_lift")) == 5_983_528
    assert n_params(timm.create_model("deit_tiny_widelast")) == 7_313_896
    # Small students lifted to 768: trunk of deit_small + 384*768 projector + LN(768) + 768->1000 head
    small = n_params(timm.create_model("deit_small_patch16_224"))
    assert n_params(timm.create_model("deit_small_lift")) == small - (384 * 2) - (384 * 1000 + 1000) + 384 * 768 + 2 * 768 + 768 * 1000 + 1000


def test_lift_layout_is_the_authors():
    model = timm.create_model("deit_tiny_lift")
    assert isinstance(model, VisionTransformerLift)
    assert model.norm.proj.bias is None and model.norm.proj.weight.shape == (384, 192)
    assert model.norm.ln.eps == 1e-5 and model.norm.ln.normalized_shape == (384,)
    assert model.head.weight.shape == (1000, 384)
    assert model.global_pool == "avg" and isinstance(model.fc_norm, torch.nn.Identity)
    assert model.blocks[0].norm1.eps == 1e-6 and model.num_features == model.head_hidden_size == 384


def test_widelast_layout_is_the_authors():
    model = timm.create_model("deit_tiny_widelast")
    assert isinstance(model, VisionTransformerWideLast)
    assert all(b.attn.qkv.weight.shape == (576, 192) for b in model.blocks[:11])
    last = model.blocks[11]
    assert last.proj_in.bias is None and last.proj_in.weight.shape == (384, 192)
    assert last.proj_norm.eps == 1e-6 and last.attn.num_heads == 6 and last.attn.head_dim == 64
    assert last.mlp.fc1.weight.shape == (1536, 384)
    assert model.norm.normalized_shape == (384,) and model.head.weight.shape == (1000, 384)
    assert model.global_pool == "token"


def test_widelast_transition_replaces_the_residual_stream(images):
    """No skip around proj_in: block 11's output depends on its input only through proj_norm(proj_in(x))."""
    block = timm.create_model("deit_tiny_widelast", **TINY_WIDE).blocks[-1].eval()
    x = torch.randn(2, 17, 32)
    manual = block.proj_norm(block.proj_in(x))
    manual = manual + block.attn(block.norm1(manual))
    manual = manual + block.mlp(block.norm2(manual))
    torch.testing.assert_close(block(x), manual)


def test_pretrained_cfgs_carry_the_authors_eval_preprocessing():
    for name in ("deit_tiny_lift", "deit_tiny_widelast"):
        model = timm.create_model(name)
        cfg = model.pretrained_cfg
        assert cfg["tag"] == "kd_cait_s24_in1k" and cfg["hf_hub_id"] == "Huiyuancs/Encoding_Mismatch"
        assert cfg["paper_ids"] == "arXiv:2511.15572" and cfg["license"] == "apache-2.0"
        data = timm.data.resolve_model_data_config(model)
        assert data["crop_pct"] == 0.875 and data["interpolation"] == "bicubic"
        assert data["input_size"] == (3, 224, 224) and data["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    assert timm.list_pretrained("deit_tiny_lift*") == ["deit_tiny_lift.fb_in1k_trunk", "deit_tiny_lift.kd_cait_s24_in1k"]
    assert set(timm.list_models(module="lift")) == {"deit_tiny_lift", "deit_small_lift"}
    assert set(timm.list_models(module="widelast")) == {"deit_tiny_widelast", "deit_small_widelast"}


# --- the timm API ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kwargs", STUDENTS)
def test_forward_features_and_head(name, kwargs, images):
    model = timm.create_model(name, **kwargs).eval()
    feats = model.forward_features(images)
    assert feats.shape == (2, 1 + 16, 64)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
    torch.testing.assert_close(model.forward_head(feats), model(images))
    assert model(images).shape == (2, 10) and model.num_features == 64


@pytest.mark.parametrize("name,kwargs", STUDENTS)
def test_forward_distill_gives_logits_and_the_paper_feature_in_one_pass(name, kwargs, images):
    model = timm.create_model(name, **kwargs).eval()
    logits, feature = model.forward_distill(images)
    torch.testing.assert_close(logits, model(images))
    assert feature.shape == (2, 64, 4, 4) and model.distill_feature_info["num_chs"] == 64
    tokens = model.forward_tokens(images)[:, 1:]
    expected = model.norm(tokens) if name.endswith("lift") else tokens  # Lift: lifted + LN; WideLast: raw
    torch.testing.assert_close(feature, expected.reshape(2, 4, 4, 64).permute(0, 3, 1, 2))


@pytest.mark.parametrize("name,kwargs", STUDENTS)
def test_forward_intermediates_across_the_width_change(name, kwargs, images):
    model = timm.create_model(name, **kwargs).eval()
    final, inter = model.forward_intermediates(images)
    torch.testing.assert_close(final, model.forward_features(images))
    widths = [t.shape[1] for t in inter]
    assert [t.shape[2:] for t in inter] == [(4, 4)] * 3
    assert widths == ([32, 32, 32] if name.endswith("lift") else [32, 32, 64])

    nlc = model.forward_intermediates(images, indices=[2], output_fmt="NLC", intermediates_only=True)
    assert len(nlc) == 1 and nlc[0].shape[:2] == (2, 16)
    with_prefix = model.forward_intermediates(images, indices=1, return_prefix_tokens=True, intermediates_only=True)
    spatial, prefix = with_prefix[0]
    assert prefix.shape == (2, 1, nlc[0].shape[-1]) and spatial.shape[1] == nlc[0].shape[-1]

    # norm=True: the model's final per-token transform where it applies (Lift: the lift; WideLast: wide block only)
    normed = model.forward_intermediates(images, indices=[0, 2], norm=True, intermediates_only=True)
    _, feature = model.forward_distill(images)
    if name.endswith("lift"):
        assert [t.shape[1] for t in normed] == [64, 64]
        torch.testing.assert_close(normed[1], feature)
    else:
        assert [t.shape[1] for t in normed] == [32, 64]
        torch.testing.assert_close(normed[0], inter[0])
        raw_last = model.forward_tokens(images)[:, 1:]
        torch.testing.assert_close(normed[1], model.norm(raw_last).reshape(2, 4, 4, 64).permute(0, 3, 1, 2))
    as_dict = model.forward_intermediates(images, indices=[2], norm=True, output_dict=True)
    torch.testing.assert_close(as_dict["image_intermediates"][0], normed[1])
    torch.testing.assert_close(as_dict["image_features"], final)


@pytest.mark.parametrize("name,kwargs", STUDENTS)
def test_features_only(name, kwargs, images):
    model = timm.create_model(name, features_only=True, out_indices=(0, 2), **kwargs).eval()
    outs = model(images)
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    assert model.feature_info.channels() == ([32, 32] if name.endswith("lift") else [32, 64])
    assert model.feature_info.reduction() == [7, 7]


@pytest.mark.parametrize("name,kwargs", STUDENTS)
def test_prune_intermediate_layers(name, kwargs, images):
    model = timm.create_model(name, **kwargs).eval()
    reference = model.forward_intermediates(images, indices=[1], intermediates_only=True)[0]
    kept_norm = copy.deepcopy(model)
    kept = model.prune_intermediate_layers(indices=[1], prune_norm=True)
    assert kept == [1] and len(model.blocks) == 2
    torch.testing.assert_close(model.forward_intermediates(images, indices=[1], intermediates_only=True)[0], reference)
    assert model.num_features == 32 and model.forward_features(images).shape == (2, 17, 32)  # as timm: no pool, no head

    kept_norm.prune_intermediate_layers(indices=[1], prune_norm=False)
    final, inter = kept_norm.forward_intermediates(images, indices=[1])
    torch.testing.assert_close(inter[0], reference)
    assert final.shape[-1] == (64 if name.endswith("lift") else 32)  # the lift stays; a pruned wide block takes its norm


@pytest.mark.parametrize("name,kwargs", STUDENTS)
def test_reset_classifier_and_global_pool(name, kwargs, images):
    model = timm.create_model(name, **kwargs).eval()
    model.reset_classifier(5)
    assert model.get_classifier().weight.shape == (5, 64) and model(images).shape == (2, 5)
    model.reset_classifier(0)
    assert model(images).shape == (2, 64)
    model.reset_classifier(3, global_pool="max")
    assert model.global_pool == "max" and model(images).shape == (2, 3)
    assert timm.create_model(name, **dict(kwargs, num_classes=0))(images).shape == (2, 64)


@pytest.mark.parametrize("name,kwargs", STUDENTS)
def test_grad_checkpointing_gives_the_same_output_and_gradients(name, kwargs, images):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).train()
    out = model(images).sum()
    out.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(images).sum()
    out_ckpt.backward()
    torch.testing.assert_close(out_ckpt, out)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], msg=k)


@pytest.mark.parametrize("name,kwargs", STUDENTS)
def test_weight_decay_and_layer_groups_cover_every_parameter(name, kwargs):
    model = timm.create_model(name, **kwargs)
    assert {"pos_embed", "cls_token"} <= model.no_weight_decay()
    groups = group_parameters(model, model.group_matcher())
    grouped = [p for g in groups.values() for p in g]
    assert sorted(grouped) == sorted(k for k, _ in model.named_parameters())
    wide = "norm.proj.weight" if name.endswith("lift") else "blocks.2.proj_in.weight"
    assert any(wide in g for g in groups.values())


def test_drop_path_reaches_the_wide_block():
    model = timm.create_model("deit_tiny_widelast", drop_path_rate=0.3, **TINY_WIDE)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.3)
    assert model.blocks[0].drop_path1.__class__.__name__ == "Identity"


# --- weight loading ----------------------------------------------------------------------------------------------

def _authors_lift_checkpoint(model: VisionTransformerLift) -> dict:
    """A training checkpoint in the authors' ChannelExpansionWrapper layout (authors-checkpoints.md §3.1), built
    from the documented key names, with the dead base norm/head and a DeiT-style training dict around it."""
    sd = model.state_dict()
    depth = len(model.blocks)
    out = {}
    for k, v in sd.items():
        if k.startswith("norm.proj."):
            out[f"projections.{depth - 1}.weight"] = v.clone()
        elif k.startswith("norm.ln."):
            out[f"layer_norms.{depth - 1}.{k.split('.')[-1]}"] = v.clone()
        elif k.startswith("head."):
            out[k] = v.clone()
        else:
            out[f"base_model.{k}"] = v.clone()
    embed = model.embed_dim
    out["base_model.norm.weight"], out["base_model.norm.bias"] = torch.ones(embed), torch.zeros(embed)
    out["base_model.head.weight"], out["base_model.head.bias"] = torch.randn(1000, embed), torch.zeros(1000)
    return {"model": out, "optimizer": {"state": {}, "param_groups": []}, "epoch": 299,
            "model_ema": {k: torch.zeros_like(v) for k, v in out.items()},
            "args": argparse.Namespace(model="deit_tiny_patch16_224", expansion_target_dim=384)}


def _authors_widelast_checkpoint(model: VisionTransformerWideLast) -> dict:
    """The authors' CustomVisionTransformer uses our key names (authors-checkpoints.md §3.2)."""
    return {"model": {k: v.clone() for k, v in model.state_dict().items()}, "epoch": 299,
            "args": argparse.Namespace(custom_arch=True, arch_schedule="heads_step")}


def test_authors_lift_checkpoint_has_the_documented_layout_and_loads_strictly(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("deit_tiny_lift").eval()
    ckpt = _authors_lift_checkpoint(source)
    assert len(ckpt["model"]) == 157 and sum(v.numel() for v in ckpt["model"].values()) == 6_176_912
    path = tmp_path / "pytorch_model.pth"
    torch.save(ckpt, path)
    loaded = vitkd_zoo.create_model("deit_tiny_lift", checkpoint_path=path).eval()
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_authors_widelast_checkpoint_loads_strictly(tmp_path):
    torch.manual_seed(2)
    source = timm.create_model("deit_tiny_widelast").eval()
    ckpt = _authors_widelast_checkpoint(source)
    assert len(ckpt["model"]) == 155 and sum(v.numel() for v in ckpt["model"].values()) == 7_313_896
    torch.save(ckpt, tmp_path / "pytorch_model.pth")
    loaded = vitkd_zoo.create_model("deit_tiny_widelast", checkpoint_path=tmp_path / "pytorch_model.pth").eval()
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def _hand_built_hf_cache(cache_dir, repo_id: str, files: dict) -> None:
    """The HF cache layout (refs/main -> snapshots/<sha>/...) that hf_hub_download reads with HF_HUB_OFFLINE=1."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    for rel, write in files.items():
        target = repo / "snapshots" / sha / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        write(target)


@pytest.mark.parametrize("name,subdir,build", [
    ("deit_tiny_lift", "Lift", _authors_lift_checkpoint),
    ("deit_tiny_widelast", "WideLast", _authors_widelast_checkpoint),
])
def test_registry_pretrained_true_loads_the_authors_release_through_the_hub_path(tmp_path, name, subdir, build):
    """timm.create_model(name, pretrained=True) -> hf_hub_download(Huiyuancs/Encoding_Mismatch, models/X/...)
    -> the authors' full training checkpoint -> checkpoint_filter_fn -> strict load (offline, hand-built cache)."""
    torch.manual_seed(3)
    source = timm.create_model(name).eval()
    _hand_built_hf_cache(tmp_path, "Huiyuancs/Encoding_Mismatch", {
        f"models/{subdir}/pytorch_model.pth": lambda p: torch.save(build(source), p)})
    model = timm.create_model(name, pretrained=True, cache_dir=tmp_path).eval()
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    finetune = timm.create_model(name, pretrained=True, cache_dir=tmp_path, num_classes=7)
    torch.testing.assert_close(finetune.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert finetune.head.weight.shape == (7, 384)


@pytest.mark.parametrize("name", ["deit_tiny_lift", "deit_tiny_widelast"])
def test_init_from_plain_deit_tiny_loads_the_trunk_and_names_what_stays_initialised(tmp_path, name, caplog):
    from safetensors.torch import save_file

    torch.manual_seed(4)
    deit = timm.create_model("deit_tiny_patch16_224")
    save_file(deit.state_dict(), tmp_path / "deit.safetensors")
    with caplog.at_level(logging.WARNING):
        student = vitkd_zoo.create_model(name, checkpoint_path=tmp_path / "deit.safetensors", num_classes=1000)
    sd, ref = student.state_dict(), deit.state_dict()
    last = 11 if name.endswith("lift") else 10
    for k in ("patch_embed.proj.weight", "pos_embed", "cls_token", f"blocks.{last}.mlp.fc2.weight"):
        torch.testing.assert_close(sd[k], ref[k], msg=k)
    assert "head.weight" in caplog.text and "left at their initial values" in caplog.text
    if name.endswith("widelast"):
        assert "blocks.11.attn.qkv.weight" in caplog.text  # 192-wide block 11 cannot seed the wide block

    # the registered init tag does the same through the Hub path
    _hand_built_hf_cache(tmp_path / "cache", "timm/deit_tiny_patch16_224.fb_in1k", {
        "model.safetensors": lambda p: save_file(deit.state_dict(), p)})
    tagged = timm.create_model(f"{name}.fb_in1k_trunk", pretrained=True, cache_dir=tmp_path / "cache")
    torch.testing.assert_close(tagged.blocks[0].attn.qkv.weight, ref["blocks.0.attn.qkv.weight"])


def test_our_export_passes_through_unchanged(tmp_path, images):
    from safetensors.torch import save_file

    for name, kwargs in STUDENTS:
        source = timm.create_model(name, **kwargs).eval()
        save_file(source.state_dict(), tmp_path / f"{name}.safetensors")
        loaded = vitkd_zoo.create_model(name, checkpoint_path=tmp_path / f"{name}.safetensors", **kwargs).eval()
        torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)
        # timm's own overlay route with a file reaches the same filter
        overlay = timm.create_model(name, pretrained=True, **kwargs,
                                    pretrained_cfg_overlay=dict(file=str(tmp_path / f"{name}.safetensors"), num_classes=10))
        torch.testing.assert_close(overlay.eval()(images), source(images), rtol=0, atol=0)


# --- clear errors ------------------------------------------------------------------------------------------------

def test_unknown_name_suggests_the_right_one_and_the_import():
    with pytest.raises(vitkd_zoo.UnknownModelError, match="deit_tiny_lift") as err:
        vitkd_zoo.create_model("deit_tiny_lfit")
    assert "import vitkd_zoo" in str(err.value)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    from safetensors.torch import save_file

    save_file(timm.create_model("deit_tiny_lift", **dict(TINY_LIFT, lift_dim=48)).state_dict(), tmp_path / "a.safetensors")
    with pytest.raises(vitkd_zoo.CheckpointMismatchError, match=r"norm\.proj\.weight: checkpoint \(48, 32\) vs model \(64, 32\)"):
        vitkd_zoo.create_model("deit_tiny_lift", checkpoint_path=tmp_path / "a.safetensors", **TINY_LIFT)
    save_file(timm.create_model("deit_tiny_widelast", **dict(TINY_WIDE, depth=2)).state_dict(), tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="pass depth=2"):
        vitkd_zoo.create_model("deit_tiny_widelast", checkpoint_path=tmp_path / "b.safetensors", **TINY_WIDE)
    save_file(timm.create_model("resnet18", num_classes=10).state_dict(), tmp_path / "c.safetensors")
    with pytest.raises(vitkd_zoo.CheckpointMismatchError, match="not a ViT/DeiT of this width and depth"):
        vitkd_zoo.create_model("deit_tiny_lift", checkpoint_path=tmp_path / "c.safetensors", **TINY_LIFT)


def test_corrupt_truncated_and_pickled_files_are_refused_clearly(tmp_path):
    from safetensors.torch import save_file

    model = timm.create_model("deit_tiny_lift", **TINY_LIFT)
    save_file(model.state_dict(), tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(vitkd_zoo.CorruptCheckpointError, match="cut.safetensors.*truncated or corrupt"):
        vitkd_zoo.create_model("deit_tiny_lift", checkpoint_path=tmp_path / "cut.safetensors", **TINY_LIFT)

    torch.save({"model": model.state_dict()}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(vitkd_zoo.CorruptCheckpointError, match="cut.pth"):
        vitkd_zoo.load_checkpoint_file(tmp_path / "cut.pth")

    torch.save({"model": model.state_dict(), "hook": _Unsafe()}, tmp_path / "pickled.pth")
    with pytest.raises(vitkd_zoo.UnsafeCheckpointError, match="weights_only=True"):
        vitkd_zoo.load_checkpoint_file(tmp_path / "pickled.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        vitkd_zoo.load_checkpoint_file(tmp_path / "missing.pth")


class _Unsafe:
    """Any non-allow-listed class makes a .pth need full pickle."""
