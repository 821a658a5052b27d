"""`vitkd-zoo quickstart --fast` end to end on real Fashion-MNIST, the results table, and stage failures."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vitkd_zoo import quickstart
from vitkd_zoo.cli import main


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    assert main(["quickstart", "--fast", "--out", str(out)]) == 0
    return out


def test_every_stage_leaves_a_valid_artifact(fast_run):
    stages = json.loads((fast_run / "stages.json").read_text())
    assert [s["status"] for s in stages] == ["ok"] * 5
    results = json.loads((fast_run / "results.json").read_text())
    names = [r["variant"] for r in results["students"]]
    assert names == [v.name for v in quickstart.QUICKSTART_VARIANTS]
    for row in results["students"] + [results["teacher"]]:
        assert 0.0 <= row["top1"] <= 100.0 and row["params"] > 0 and row["gmacs"] > 0 and row["img_per_s"] > 0
        assert 1 <= row["svd99_p99"] and 0.0 < row["sep90"] <= 1.0
    # the comparison is fair: one recipe, seed and budget for every student
    configs = {n: json.loads((fast_run / "students" / n / "summary.json").read_text())["config"] for n in names}
    for key in ("epochs", "max_train_samples", "seed", "lr", "global_batch_size"):
        assert len({json.dumps(c[key]) for c in configs.values()}) == 1, key
    assert configs["lift_kd"]["model"] == "deit_tiny_lift" and configs["widelast_kd"]["model"] == "deit_tiny_widelast"
    assert configs["ce"]["teacher"] is None and configs["kd_pool"]["feature_adapter"] == "pool"

    table = quickstart.parse_results_markdown((fast_run / "results.md").read_text())
    assert [r["variant"] for r in table] == ["teacher"] + names
    assert table[1]["top1"] == pytest.approx(results["students"][0]["top1"], abs=0.01)

    for png in ("rank_histograms.png", "rank_vs_layer.png", "sep_curve.png", "svd_vs_pca.png"):
        data = (fast_run / "analysis" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    analysis = json.loads((fast_run / "analysis" / "analysis.json").read_text())
    assert [m["name"].replace(" (lifted)", "") for m in analysis["models"]] == ["teacher"] + names


def test_the_exported_student_reloads_from_the_local_hub_with_identical_logits(fast_run):
    results = json.loads((fast_run / "results.json").read_text())
    hub = results["hub"]
    assert hub["max_abs_diff"] == 0.0 and len(hub["predictions"]) == 5
    export = fast_run / "export" / "fmnist-quickstart"
    card = (export / "README.md").read_text()
    assert "import vitkd_zoo" in card and "knowledge-distillation" in card and "2511.15572" in card
    config = json.loads((export / "config.json").read_text())
    assert config["label_names"][0] == "T-shirt/top" and "num_classes" not in config["model_args"]
    # the cached snapshot is byte-identical to the export, and the trained student's weights are what was exported
    snapshot = next((fast_run / "hub-cache").glob("models--vitkd-zoo--fmnist-quickstart/snapshots/*"))
    assert (snapshot / "model.safetensors").read_bytes() == (export / "model.safetensors").read_bytes()
    best = fast_run / "students" / hub["best"] / "export" / "model.safetensors"
    trained, exported = load_file(best), load_file(export / "model.safetensors")
    assert trained.keys() == exported.keys() and all(torch.equal(trained[k], exported[k]) for k in trained)


def test_second_run_reuses_the_cached_teacher(fast_run, capsys):
    before = (fast_run / "teacher" / "summary.json").stat().st_mtime_ns
    job = quickstart._teacher_job(fast_run, quickstart.PROFILES["fast"], 0, {})
    seen = []
    done = quickstart._run_jobs([job], 1, lambda job, summary, cached: seen.append(cached))
    assert seen == [True] and done["teacher"]["top1"] >= 0
    assert (fast_run / "teacher" / "summary.json").stat().st_mtime_ns == before
    # a different recipe is a different teacher
    changed = quickstart._teacher_job(fast_run, dict(quickstart.PROFILES["fast"], teacher={"epochs": 2}), 0, {})
    assert changed.cache_key != job.cache_key and quickstart._cached(changed) is None


def test_a_failing_stage_is_named_and_earlier_artifacts_are_kept(fast_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(fast_run / "teacher", out / "teacher")  # cached: the run goes straight to the students

    def broken(config, output_dir, overrides):
        raise RuntimeError("disk full while writing the checkpoint")

    monkeypatch.setattr(quickstart, "_train", broken)
    assert main(["quickstart", "--fast", "--jobs", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "stage 'train" in err and "disk full" in err and "kept" in err
    stages = json.loads((out / "stages.json").read_text())
    assert [s["status"] for s in stages] == ["ok", "failed"]
    assert "disk full" in stages[-1]["traceback"]
    assert (out / "teacher" / "export" / "model.safetensors").is_file()


def test_results_table_round_trip_and_bad_tables():
    rows = [dict(variant="lift_kd", label="Lift, KD", architecture="deit_tiny_lift", top1=81.25, top5=99.1,
                 params=216_074, gmacs=0.0117, img_per_s=309.3, svd99_p99=12.8, sep90=0.906),
            dict(variant="kd", label="ViT, KD", architecture="deit_tiny_patch16_224",
                 top1={"mean": 80.5, "std": 0.25}, top5=None, params=207_114, gmacs=0.0113, img_per_s=250.0)]
    parsed = quickstart.parse_results_markdown(quickstart.format_results_markdown(rows))
    assert parsed[0]["top1"] == 81.25 and parsed[0]["params"] == 216_074 and parsed[0]["gmacs"] == 0.0117
    assert parsed[1]["top1"] == {"mean": 80.5, "std": 0.25} and parsed[1]["top5"] is None
    assert parsed[1]["architecture"] == "deit_tiny_patch16_224"
    with pytest.raises(ValueError, match="no Markdown table"):
        quickstart.parse_results_markdown("nothing here")
    with pytest.raises(ValueError, match="unknown columns"):
        quickstart.parse_results_markdown("| a | b |\n|---|---|\n| 1 | 2 |")


def test_place_in_hf_cache_uses_the_hub_cache_layout(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    snapshot = quickstart.place_in_hf_cache(folder, "org/name", tmp_path / "cache")
    repo = tmp_path / "cache" / "models--org--name"
    assert (repo / "refs" / "main").read_text() == snapshot.name and len(snapshot.name) == 40
    assert (snapshot / "model.safetensors").is_symlink() and (snapshot / "model.safetensors").read_bytes() == b"weights"
