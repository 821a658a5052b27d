"""Publishing through a loopback Hub stand-in (tests/hub_server.py) that speaks the real HfApi protocol.

In-process tests lift ``HF_HUB_OFFLINE`` by patching huggingface_hub's constant (ecosystem.md §6) and pass the
stand-in's URL as ``endpoint``; the end-to-end test runs a fresh interpreter with ``HF_ENDPOINT`` set before import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import hub_stand_in
from huggingface_hub import constants, hf_hub_download

from vitkd_zoo.hub import InvalidRepoIdError, MissingTokenError, push_to_hub

TOKEN = "hf_test_token"
SECRET = "hf_SECRETdoNotLeak0123456789"
REPO = "vitkd-test/deit_tiny_lift-fmnist"


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with hub_stand_in(tokens=(TOKEN, SECRET)) as server:
        yield server


def test_publish_then_download_gives_the_exact_bytes(hub, hub_lift_export, tmp_path):
    _, folder = hub_lift_export
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    url = push_to_hub(folder, REPO, token=TOKEN, endpoint=hub.url)
    sha = hub.head(REPO)
    assert url == f"{hub.url}/{REPO}/commit/{sha}"
    assert [m for m, p in hub.requests if p == f"/api/models/{REPO}/commit/main"] == ["POST"], "one commit"
    assert set(hub.files(REPO)) == {".gitattributes", "README.md", "config.json", "model.safetensors", "vitkd_remote.py"}
    for name in ("config.json", "model.safetensors", "vitkd_remote.py"):
        downloaded = hf_hub_download(REPO, name, cache_dir=tmp_path, endpoint=hub.url)
        assert Path(downloaded).read_bytes() == before[name]
    card = Path(hf_hub_download(REPO, "README.md", cache_dir=tmp_path, endpoint=hub.url)).read_text()
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in card, "card regenerated for the repo"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "the local folder is not modified"


def test_every_push_regenerates_the_card(hub, hub_lift_export, tmp_path):
    import shutil

    _, folder = hub_lift_export
    mine = tmp_path / "export"
    shutil.copytree(folder, mine)
    push_to_hub(mine, REPO, token=TOKEN, endpoint=hub.url)
    (mine / "README.md").write_text("---\nlicense: mit\n---\nhand edit that would drift from config.json\n")
    push_to_hub(mine, REPO, token=TOKEN, endpoint=hub.url, commit_message="second release")
    card = hub.files(REPO)["README.md"].decode()
    assert "hand edit" not in card and "license: apache-2.0" in card and card.count("Top-1 Accuracy") == 1
    repo = hub.repos[REPO]
    assert repo["commits"][hub.head(REPO)]["message"] == "second release"


def test_failed_upload_commits_nothing(hub, hub_lift_export):
    from huggingface_hub.errors import HfHubHTTPError

    _, folder = hub_lift_export
    push_to_hub(folder, REPO, token=TOKEN, endpoint=hub.url)
    head = hub.head(REPO)
    for step, status in (("preupload", 403), ("commit", 422), ("commit", 503)):  # (a 5xx preupload is retried)
        hub.fail_next = {step: status}
        with pytest.raises(HfHubHTTPError, match="injected"):
            push_to_hub(folder, REPO, token=TOKEN, endpoint=hub.url, commit_message="broken")
        assert hub.head(REPO) == head, f"a failed {step} leaves the branch where it was"
    assert len(hub.repos[REPO]["commits"]) == 2  # initial + the one good push


def test_revision_private_and_pull_request(hub, hub_lift_export):
    _, folder = hub_lift_export
    push_to_hub(folder, "vitkd-test/private-one", token=TOKEN, endpoint=hub.url, private=True, revision="v1")
    repo = hub.repos["vitkd-test/private-one"]
    assert repo["private"] and "config.json" in hub.files("vitkd-test/private-one", "v1")
    assert "config.json" not in hub.files("vitkd-test/private-one", "main")
    url = push_to_hub(folder, "vitkd-test/private-one", token=TOKEN, endpoint=hub.url, create_pr=True)
    assert url.endswith("/discussions/1")
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):  # private: not readable without the token
        hf_hub_download("vitkd-test/private-one", "config.json", revision="v1", endpoint=hub.url, token=False)


def test_push_a_model_exports_it_first(hub, hub_lift_export, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    model, _ = hub_lift_export
    monkeypatch.setenv("VITKD_BENCHMARK_SECONDS", "0.02")
    url = push_to_hub(model, "vitkd-test/direct", token=TOKEN, endpoint=hub.url,
                      card=dict(dataset="fashion_mnist", metrics={"top1": 60.0}))
    assert url.endswith(hub.head("vitkd-test/direct"))
    files = hub.files("vitkd-test/direct")
    (tmp_path / "w.safetensors").write_bytes(files["model.safetensors"])
    weights = load_file(str(tmp_path / "w.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert b'hf-hub:vitkd-test/direct' in files["README.md"] and b"value: 60.0" in files["README.md"]


def test_a_corrupt_folder_is_not_published(hub, hub_lift_export, tmp_path, capsys):
    import shutil

    from vitkd_zoo.cli import main
    from vitkd_zoo.hub import WeightsHashMismatchError

    _, folder = hub_lift_export
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsHashMismatchError):
        push_to_hub(bad, REPO, token=TOKEN, endpoint=hub.url)
    assert main(["publish", str(bad), "--repo-id", REPO, "--dry-run"]) == 1
    assert "model.safetensors: its sha256" in capsys.readouterr().err
    assert hub.requests == []


def test_publishing_without_token_says_how_to_log_in(hub, hub_lift_export, monkeypatch, tmp_path):
    _, folder = hub_lift_export
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(MissingTokenError, match="hf auth login.*HF_TOKEN"):
        push_to_hub(folder, REPO, endpoint=hub.url)
    assert hub.requests == [], "nothing was sent"


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "org/bad name", "org/-dash", "org/" + "x" * 97, ""])
def test_invalid_repo_id_is_refused_before_any_request(hub, hub_lift_export, repo_id):
    _, folder = hub_lift_export
    with pytest.raises(InvalidRepoIdError, match="ORG/NAME"):
        push_to_hub(folder, repo_id, token=TOKEN, endpoint=hub.url)
    assert hub.requests == []


def test_token_is_never_printed_nor_written(hub, hub_lift_export, capsys, monkeypatch):
    _, folder = hub_lift_export
    lines = []
    push_to_hub(folder, REPO, token=SECRET, endpoint=hub.url, progress=lines.append)
    assert SECRET in hub.auth_seen, "the token was used"
    hub.fail_next = {"commit": 422}
    with pytest.raises(Exception) as info:
        push_to_hub(folder, REPO, token=SECRET, endpoint=hub.url, progress=lines.append)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    # the CLI, with the token in the environment, on success and on failure
    from vitkd_zoo.cli import main

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    assert main(["publish", str(folder), "--repo-id", REPO]) == 0
    hub.fail_next = {"commit": 422}
    assert main(["publish", str(folder), "--repo-id", REPO]) == 1
    captured = capsys.readouterr()
    assert "Done: " in captured.out and "nothing was committed" in captured.err
    assert SECRET not in captured.out + captured.err + "\n".join(lines)
    for repo in hub.repos.values():
        for commit in repo["commits"].values():
            assert all(SECRET.encode() not in data for data in commit["files"].values())
    assert all(SECRET not in (p.read_text() if p.suffix != ".safetensors" else "") for p in folder.iterdir())


def _code_blocks(markdown: str, section: str, language: str) -> list[str]:
    """The ```<language> blocks of one ``## section`` of a markdown file, in order."""
    import re

    body = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", body, re.S)


def test_readme_carries_the_tested_snippets():
    """README.md's "Load / publish / fine-tune" section must hold exactly the snippets the next test runs."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text() if (root / "README.md").is_file() else ""
    section = "Load / publish / fine-tune"
    if f"## {section}\n" not in readme:
        pytest.skip(f"README.md has no '## {section}' section yet: copy it from docs/hub.md")
    doc = (root / "docs" / "hub.md").read_text()
    for language in ("python", "bash"):
        assert _code_blocks(readme, section, language) == _code_blocks(doc, section, language)


def test_readme_snippets_publish_download_load_fine_tune(hub, tmp_path):
    """Runs docs/hub.md's "Load / publish / fine-tune" snippets verbatim, in a fresh interpreter whose HF_ENDPOINT is
    the stand-in (set before import), then checks the round trip: bytes on the "Hub" == bytes exported."""
    import timm
    import torch

    import vitkd_zoo  # noqa: F401

    doc = (Path(__file__).resolve().parents[1] / "docs" / "hub.md").read_text()
    blocks = _code_blocks(doc, "Load / publish / fine-tune", "python")
    commands = _code_blocks(doc, "Load / publish / fine-tune", "bash")
    assert len(blocks) >= 6 and len(commands) == 1
    # The registry tag snippet downloads the authors' file: serve a (random, full-size) stand-in for it.
    torch.manual_seed(3)
    authors = timm.create_model("deit_tiny_lift").eval()
    pth = tmp_path / "authors.pth"
    torch.save(authors.state_dict(), pth)
    hub.seed("Huiyuancs/Encoding_Mismatch", {"models/Lift/pytorch_model.pth": pth.read_bytes()})
    script = tmp_path / "snippets.py"
    script.write_text("\n".join(blocks) + "\nimport json, torch\n"
                      "json.dump(dict(url=url, pred=pred[0]['label']), open('result.json', 'w'))\n"
                      "torch.save(model_a.state_dict(), 'registry.pt')\n")
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN,
               HF_HUB_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "home"), HF_HUB_DISABLE_TELEMETRY="1",
               VITKD_BENCHMARK_SECONDS="0.05")
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert TOKEN not in run.stdout + run.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    repo_id = "your-org/deit_tiny_lift-fmnist"
    assert result["url"] == f"{hub.url}/{repo_id}/commit/{hub.head(repo_id)}"
    exported = tmp_path / "exported" / "deit_tiny_lift-fmnist"
    for name in ("model.safetensors", "config.json", "vitkd_remote.py"):
        assert hub.files(repo_id)[name] == (exported / name).read_bytes()
    assert torch.equal(torch.load(tmp_path / "registry.pt")["head.weight"], authors.state_dict()["head.weight"])
    from vitkd_zoo.data import FASHION_MNIST_CLASSES

    assert result["pred"] in FASHION_MNIST_CLASSES

    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cli = subprocess.run(["bash", "-euo", "pipefail", "-c", commands[0]], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=240)
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-3000:]
    assert "Dry run: would commit to your-org/deit_tiny_lift-fmnist@main" in cli.stdout
    v2 = json.loads((tmp_path / "exported" / "deit_tiny_lift-fmnist-v2" / "config.json").read_text())
    assert v2["vitkd"]["metrics"] == {"top1": 71.3, "top5": 98.9}
    assert v2["vitkd"]["teacher"] == "vit_small (Fashion-MNIST)", "re-export keeps the earlier card fields"
    assert v2["label_names"] == list(vitkd_zoo.data.FASHION_MNIST_CLASSES)
    assert v2["pretrained_cfg"]["mean"] == [0.286] * 3
    assert (tmp_path / "exported" / "deit_tiny_lift-fmnist-v2" / "model.safetensors").read_bytes() == \
        (exported / "model.safetensors").read_bytes()
