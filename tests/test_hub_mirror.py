"""Downloads through a real Hub-compatible mirror (olah serving local git repos on 127.0.0.1, via ``HF_ENDPOINT``),
and what a user gets without ``import vitkd_zoo``. Clients run in fresh interpreters: ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` are read when huggingface_hub is imported."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = "vitkd-test/deit_tiny_lift-fmnist"
ROOT = Path(__file__).resolve().parents[1]


def _olah_bin() -> Path:
    return Path(os.environ.get("VITKD_OLAH_BIN") or ROOT / ".venv-olah" / "bin" / "olah-cli")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git_repo(path: Path, files: dict[str, Path]) -> None:
    path.mkdir(parents=True)
    for name, src in files.items():
        shutil.copyfile(src, path / name)
    git = ["git", "-c", "user.name=vitkd", "-c", "user.email=vitkd@localhost", "-c", "init.defaultBranch=main"]
    subprocess.run(git + ["init", "-q", "-b", "main"], cwd=path, check=True)
    subprocess.run(git + ["add", "."], cwd=path, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "export"], cwd=path, check=True)


@pytest.fixture(scope="module")
def olah(hub_lift_export, tmp_path_factory):
    binary = _olah_bin()
    if not binary.exists():
        pytest.skip(f"olah not installed at {binary} (`make olah`)")
    _, folder = hub_lift_export
    root = tmp_path_factory.mktemp("olah")
    _git_repo(root / "mirrors" / "models" / REPO, {p.name: p for p in folder.iterdir()})
    port, dead = _free_port(), _free_port()
    (root / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{root / "repos"}"\n'
        f'mirrors-path = ["{root / "mirrors"}"]\nhf-scheme = "http"\nhf-netloc = "127.0.0.1:{dead}"\n'
        f'hf-lfs-netloc = "127.0.0.1:{dead}"\nmirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f'\n[accessibility]\noffline = true\n')
    log = open(root / "olah.log", "wb")
    proc = subprocess.Popen([str(binary), "-c", str(root / "olah.toml")], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/{REPO}/resolve/main/config.json", timeout=2).read()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"olah did not start: {(root / 'olah.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _run(code: str, tmp_path: Path, **env_extra) -> dict:
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "home"),
               HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_DISABLE_TELEMETRY="1", **env_extra)
    env.pop("HF_TOKEN", None)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


MIRROR_CLIENT = """
import json, torch, timm
from huggingface_hub import hf_hub_download, snapshot_download
import vitkd_zoo
from vitkd_zoo.hub import load_model
from transformers import AutoModelForImageClassification
folder, repo = FOLDER, REPO
out = {}
out["bytes"] = {n: open(hf_hub_download(repo, n), "rb").read() == open(f"{folder}/{n}", "rb").read()
                for n in ("config.json", "model.safetensors", "README.md", "vitkd_remote.py")}
out["snapshot"] = sorted(p for p in __import__("os").listdir(snapshot_download(repo)))
x = torch.randn(4, 3, 28, 28)
with torch.inference_mode():
    ref = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x)
    out["timm_hf_hub"] = torch.equal(timm.create_model(f"hf-hub:{repo}", pretrained=True).eval()(x), ref)
    out["load_model"] = torch.equal(load_model(repo).eval()(x), ref)
    out["transformers"] = torch.equal(AutoModelForImageClassification.from_pretrained(repo).eval()(x).logits, ref)
print(json.dumps(out))
"""


def test_downloads_through_olah_mirror(olah, hub_lift_export, tmp_path):
    _, folder = hub_lift_export
    code = MIRROR_CLIENT.replace("FOLDER", repr(str(folder))).replace("REPO", repr(REPO))
    out = _run(code, tmp_path, HF_ENDPOINT=olah, HF_HUB_OFFLINE="0")
    assert out["bytes"] == {n: True for n in ("config.json", "model.safetensors", "README.md", "vitkd_remote.py")}
    assert out["snapshot"] == [".gitattributes", "README.md", "config.json", "model.safetensors",
                               "vitkd_remote.py"] or out["snapshot"] == ["README.md", "config.json",
                                                                         "model.safetensors", "vitkd_remote.py"]
    assert out == dict(out, timm_hf_hub=True, load_model=True, transformers=True)


NO_IMPORT_CLIENT = """
import json, sys, torch
folder = FOLDER
out = {}
import timm
try:
    timm.create_model(f"local-dir:{folder}", pretrained=True)
except RuntimeError as e:
    out["timm"] = str(e)
from transformers import AutoModelForImageClassification
try:
    AutoModelForImageClassification.from_pretrained(folder)
except ImportError as e:
    out["transformers"] = str(e)
sys.modules["vitkd_zoo"] = None  # as if vitkd_zoo were not installed
try:
    AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
except ImportError as e:
    out["remote_not_installed"] = str(e)
del sys.modules["vitkd_zoo"]
out["imported_before"] = "vitkd_zoo" in sys.modules
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
out["imported_after"] = "vitkd_zoo" in sys.modules
out["remote_class"] = type(model).__name__
x = torch.randn(2, 3, 28, 28)
with torch.inference_mode():
    ref = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x)  # works now: vitkd_zoo was imported
    out["remote_logits"] = torch.equal(model(x).logits, ref)
    from transformers import AutoModel
    backbone = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    features = timm.create_model(f"local-dir:{folder}", pretrained=True).eval().forward_features(x)
    out["remote_features"] = torch.equal(backbone(x).last_hidden_state, features)
print(json.dumps(out))
"""


def test_without_import_vitkd_zoo(hub_lift_export, tmp_path):
    """Bare timm / transformers cannot know the architecture (their messages are theirs); trust_remote_code=True
    imports vitkd_zoo for the user, and says `pip install vitkd-zoo` / `import vitkd_zoo` when it is missing."""
    _, folder = hub_lift_export
    out = _run(NO_IMPORT_CLIENT.replace("FOLDER", repr(str(folder))), tmp_path, HF_HUB_OFFLINE="1")
    assert "Unknown model (deit_tiny_lift)" in out["timm"]  # timm's own message: why every card starts with the import
    assert "not supported in your version of timm" in out["transformers"]  # transformers' own (misleading) message
    assert "pip install vitkd-zoo" in out["remote_not_installed"] and "import vitkd_zoo" in out["remote_not_installed"]
    assert out["imported_before"] is False and out["imported_after"] is True
    assert out["remote_class"] == "VitKDForImageClassification" and out["remote_logits"] is True
    assert out["remote_features"] is True


def test_our_loaders_turn_an_unknown_architecture_into_the_import_message(hub_lift_export, tmp_path):
    import vitkd_zoo
    from vitkd_zoo.hub import load_model, load_transformers

    _, folder = hub_lift_export
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    config = json.loads((other / "config.json").read_text())
    config["architecture"] = "deit_tiny_lfit"  # e.g. a student from a newer vitkd_zoo, or a typo
    (other / "config.json").write_text(json.dumps(config))
    for load in (load_model, load_transformers):
        with pytest.raises(vitkd_zoo.UnknownModelError) as info:
            load(str(other))
        assert "import vitkd_zoo" in str(info.value) and "deit_tiny_lift" in str(info.value)
