"""Export: folder layout, config.json for timm + transformers, the generated model card, atomic writes, errors, CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import HUB_DATA_CONFIG, HUB_TINY_LIFT, hub_card
from huggingface_hub import ModelCard

import vitkd_zoo
from vitkd_zoo.hub import (
    CardInfo,
    ExportError,
    InvalidRepoIdError,
    UnregisteredModelError,
    render_card,
    save_pretrained,
)
from vitkd_zoo.models import sha256_file


def test_folder_has_safetensors_config_card_and_remote_code_only(hub_lift_export):
    _, folder = hub_lift_export
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "vitkd_remote.py"]
    assert not list(folder.parent.glob(".*tmp-*")), "no temporary folder left behind"


def test_config_json_is_timm_format_without_model_args_num_classes(hub_lift_export):
    model, folder = hub_lift_export
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "deit_tiny_lift"
    assert config["num_classes"] == 10 and config["pretrained_cfg"]["num_classes"] == 10
    assert config["label_names"][0] == "T-shirt/top" and len(config["label_names"]) == 10
    assert "num_classes" not in config["model_args"], "transformers' TimmWrapper would get num_classes twice"
    assert "model_type" not in config
    # every architecture argument, so the folder does not depend on the entry point's defaults
    for key, value in dict(embed_dim=32, depth=2, num_heads=2, lift_dim=64, patch_size=7, in_chans=3).items():
        assert config["model_args"][key] == value
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 28, 28] and cfg["mean"] == list(HUB_DATA_CONFIG["mean"])
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0 and cfg["license"] == "apache-2.0"
    assert cfg["paper_ids"] == "arXiv:2511.15572"
    assert "tag" not in cfg and "notes" not in cfg, "registry tag / authors' notes must not leak into an export"
    vitkd = config["vitkd"]
    assert vitkd["teacher"].startswith("vit_tiny") and vitkd["method"].startswith("Lift")
    assert vitkd["metrics"] == {"top1": 71.25, "top5": 98.5} and vitkd["recipe"]["epochs"] == 1
    assert vitkd["package_version"] == vitkd_zoo.__version__
    assert vitkd["weights_sha256"] == sha256_file(folder / "model.safetensors")
    rows = {r["role"]: r for r in vitkd["cost"]}
    assert rows["model"]["params"] == sum(p.numel() for p in model.parameters())
    assert rows["baseline"]["model"] == "deit_tiny_patch16_224" and rows["baseline"]["params"] < rows["model"]["params"]
    assert config["auto_map"]["AutoModelForImageClassification"] == "vitkd_remote.VitKDForImageClassification"


def test_model_card_metadata_and_body(hub_lift_export):
    _, folder = hub_lift_export
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "timm" and data.pipeline_tag == "image-classification"
    assert data.license == "apache-2.0"
    assert {"knowledge-distillation", "deit_tiny_lift", "timm", "transformers", "vitkd_zoo"} <= set(data.tags)
    assert data.datasets == ["zalando-datasets/fashion_mnist"] and data.metrics == ["accuracy"]
    assert data.base_model == "timm/deit_tiny_patch16_224.fb_in1k"
    results = {r.metric_name: r.metric_value for r in data.eval_results}
    assert results == {"Top-1 Accuracy": 71.25, "Top-5 Accuracy": 98.5}
    assert all(r.dataset_type == "zalando-datasets/fashion_mnist" for r in data.eval_results)
    body = card.text
    # the import note comes before anything else, and every snippet imports vitkd_zoo before it loads
    assert body.lstrip().splitlines()[2].startswith("> **Run `import vitkd_zoo` first**")
    for block in re.findall(r"```python\n(.*?)```", body, re.S)[:2]:  # the timm and the transformers snippet
        assert block.startswith("import vitkd_zoo")
    assert "| **deit_tiny_lift** (this model) | 71.25 | 98.50 |" in body
    assert "| deit_tiny_patch16_224 (same trunk, no Lift/WideLast) | 69.50 | 98.10 |" in body
    assert "num_classes=5" in body and "num_labels=5, ignore_mismatched_sizes=True" in body
    assert "features_only=True" in body and "forward_intermediates" in body
    assert "## Limitations" in body and "@inproceedings" in body and "2511.15572" in body
    assert sha256_file(folder / "model.safetensors") in body
    assert "Teacher:** `vit_tiny" in body and "| optimizer | AdamW, lr 1e-3 |" in body


def test_card_is_regenerated_whole_for_a_repo_id(hub_lift_export):
    _, folder = hub_lift_export
    config = json.loads((folder / "config.json").read_text())
    card = str(render_card(config, repo_id="my-org/deit_tiny_lift-fmnist"))
    assert 'timm.create_model("hf-hub:my-org/deit_tiny_lift-fmnist", pretrained=True)' in card
    assert "ORG/NAME" not in card
    assert card.count("Top-1 Accuracy") == 1, "regenerated, not appended to"
    config["vitkd"]["card"]["baseline"] = "plain ViT, logit KD"
    assert "| plain ViT, logit KD (cost: `deit_tiny_patch16_224`, same trunk) | 69.50 |" in str(render_card(config))
    assert ModelCard(card).data.model_name == "deit_tiny_lift-fmnist"


def test_export_failure_leaves_no_folder_and_keeps_the_old_one(tmp_path, monkeypatch):
    import timm

    import vitkd_zoo.hub.export as export

    model = timm.create_model("deit_tiny_lift", **HUB_TINY_LIFT).eval()

    def broken_card(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(export, "render_card", broken_card)
    with pytest.raises(OSError, match="injected"):
        save_pretrained(model, tmp_path / "new", card=hub_card(), benchmark_seconds=0.01)
    assert list(tmp_path.iterdir()) == [], "nothing half-written, no temporary folder"

    old = tmp_path / "old"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"previous export")
    with pytest.raises(OSError, match="injected"):
        save_pretrained(model, old, card=hub_card(), overwrite=True, benchmark_seconds=0.01)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert (old / "model.safetensors").read_bytes() == b"previous export"


def test_export_refuses_to_overwrite_unless_asked(hub_lift_export, tmp_path):
    model, _ = hub_lift_export
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained(model, tmp_path / "x", benchmark_seconds=0.01)
    out = save_pretrained(model, tmp_path / "x", overwrite=True, benchmark_seconds=0.01)
    assert (out / "model.safetensors").is_file()


def test_export_of_unregistered_class_is_refused(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    from vitkd_zoo.models import VisionTransformerLift

    direct = VisionTransformerLift(**HUB_TINY_LIFT)  # built without timm.create_model: no registered architecture
    with pytest.raises(UnregisteredModelError, match="not built by timm.create_model"):
        save_pretrained(direct, tmp_path / "a")

    class MyViT(VisionTransformer):
        pass

    mine = MyViT(img_size=28, patch_size=7, embed_dim=32, depth=1, num_heads=2, num_classes=10)
    mine.pretrained_cfg = dict(architecture="my_vit_tiny")
    with pytest.raises(UnregisteredModelError, match="not registered with timm.*register_model"):
        save_pretrained(mine, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_config_that_does_not_rebuild_the_model(tmp_path):
    import timm

    model = timm.create_model("deit_tiny_lift", **HUB_TINY_LIFT).eval()
    model._model_args = dict(model._model_args, mlp_ratio=2.0)  # a wrong recorded argument: reload would differ
    with pytest.raises(ExportError, match="does not rebuild"):
        save_pretrained(model, tmp_path / "bad", benchmark_seconds=0.01)
    assert list(tmp_path.iterdir()) == []


def test_card_info_rejects_unknown_fields_and_invalid_repo_id(hub_lift_export, tmp_path):
    model, _ = hub_lift_export
    with pytest.raises(TypeError, match="Unknown card field"):
        CardInfo.from_dict({"top1": 3})
    with pytest.raises(InvalidRepoIdError, match="ORG/NAME"):
        save_pretrained(model, tmp_path / "x", repo_id="no slash here")


def test_cli_export_then_dry_run_publish(hub_lift_export, tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    from vitkd_zoo.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    model, _ = hub_lift_export
    ckpt = tmp_path / "best.safetensors"
    save_file(model.state_dict(), str(ckpt))
    model_args = json.dumps({k: v for k, v in HUB_TINY_LIFT.items()})
    out = tmp_path / "exported"
    rc = main(["export", "--model", "deit_tiny_lift", "--checkpoint", str(ckpt), "--model-args", model_args,
               "--metrics", '{"top1": 70.1}', "--dataset", "fashion_mnist", "--teacher", "toy-teacher",
               "--out", str(out), "--benchmark-seconds", "0.02"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "Exported deit_tiny_lift (10 classes)" in printed and "sha256(model.safetensors)" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["vitkd"]["metrics"] == {"top1": 70.1} and config["vitkd"]["teacher"] == "toy-teacher"
    reloaded = vitkd_zoo.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))

    assert main(["publish", str(out), "--repo-id", "my-org/deit_tiny_lift-fmnist", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "Dry run: would commit to my-org/deit_tiny_lift-fmnist@main" in printed and "model.safetensors" in printed

    assert main(["publish", str(out), "--repo-id", "not a repo id", "--dry-run"]) == 1
    assert "Invalid Hub repo id 'not a repo id'" in capsys.readouterr().err

    assert main(["export", "--model", "deit_tiny_lift", "--checkpoint", str(ckpt), "--model-args", model_args,
                 "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err


def test_cli_export_of_unknown_model_says_import(tmp_path, capsys):
    from vitkd_zoo.cli import main

    assert main(["export", "--model", "deit_tiny_lfit", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "Unknown model 'deit_tiny_lfit'" in err and "deit_tiny_lift" in err
    assert not (tmp_path / "x").exists()


def test_hand_written_cards_cover_every_pretrained_tag():
    import timm

    root = Path(__file__).resolve().parents[1] / "model_cards"
    tags = [t for arch in vitkd_zoo.STUDENT_ARCHITECTURES for t in timm.list_pretrained(f"{arch}.*")]
    assert "deit_tiny_lift.kd_cait_s24_in1k" in tags and "deit_tiny_widelast.kd_cait_s24_in1k" in tags
    for tag in tags:
        path = root / f"{tag}.md"
        assert path.is_file(), f"no hand-written card for {tag}"
        card = ModelCard.load(path)
        arch = tag.split(".")[0]
        assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
        assert {"knowledge-distillation", arch} <= set(card.data.tags)
        assert "import vitkd_zoo" in card.text.split("```python")[0], "import note before the first snippet"
        assert card.text.split("```python\n")[1].startswith("import vitkd_zoo")
        assert f'timm.create_model("{tag}", pretrained=True)' in card.text
    lift = ModelCard.load(root / "deit_tiny_lift.kd_cait_s24_in1k.md")
    assert [r.metric_value for r in lift.data.eval_results] == [77.53]
    widelast = ModelCard.load(root / "deit_tiny_widelast.kd_cait_s24_in1k.md")
    assert [r.metric_value for r in widelast.data.eval_results] == [78.23]
