"""``push_to_hub``: publish an exported folder (or a model) to the Hugging Face Hub in one commit.

Composes ``HfApi.create_repo(exist_ok=True)`` and one ``HfApi.create_commit`` holding every file of the folder. The model card is regenerated
from ``config.json`` for the target repo on every push, the weights' sha256 is re-checked before anything is sent,
and the token is only ever handed to ``HfApi`` (never printed, logged, or written into a file).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch.nn as nn

from .card import render_card
from .errors import InvalidRepoIdError, MissingTokenError

__all__ = ["push_to_hub", "check_repo_id", "resolve_token", "PublishPlan", "plan_publish"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is ``ORG/NAME`` as the Hub accepts it, else raise ``InvalidRepoIdError``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    problem = None
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        problem = "it must be ORG/NAME: one '/', letters, digits, '-', '_' and '.', not starting with '-' or '.'"
    else:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as e:
            problem = str(e).splitlines()[0]
        if len(repo_id.split("/")[1]) > 96:
            problem = "the name part is longer than 96 characters"
    if problem:
        raise InvalidRepoIdError(f"Invalid Hub repo id {repo_id!r}: {problem}. Use ORG/NAME, e.g. 'my-org/deit_tiny_lift-fmnist'.")
    return repo_id


def resolve_token(token: str | None = None) -> str:
    """The token to publish with: ``token``, else ``HF_TOKEN`` / the one saved by ``hf auth login``."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise MissingTokenError(
            "Publishing needs a Hugging Face token with write access and none was found. Run `hf auth login`, or set "
            "the HF_TOKEN environment variable, or pass token=... (the token is never printed or written into the "
            "repo). `vitkd-zoo publish --dry-run` checks a folder without one."
        )
    return found


class PublishPlan(dict):
    """What a push would upload: ``repo_id``, ``revision``, ``files`` ({name: bytes}), ``card`` (str)."""


def plan_publish(folder: str | os.PathLike, repo_id: str, revision: str | None = None) -> PublishPlan:
    """Check an exported folder (sha256 of the weights, config) and render its card for ``repo_id``; no network."""
    from .load import verify_folder

    folder = Path(folder)
    check_repo_id(repo_id)
    config = verify_folder(folder)
    card = str(render_card(config, repo_id=repo_id))
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != "README.md"}
    files["README.md"] = len(card.encode())
    return PublishPlan(repo_id=repo_id, revision=revision or "main", files=files, card=card, config=config)


def push_to_hub(
        folder_or_model: str | os.PathLike | nn.Module,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        card: Mapping[str, Any] | None = None,
        endpoint: str | None = None,
        progress: Callable[[str], None] | None = None,
) -> str:
    """Publish an exported folder, or export ``model`` and publish it, as one commit.

    Args:
        folder_or_model: a folder written by ``save_pretrained``, or a model (exported to a temporary folder first,
            with ``card``).
        repo_id: ``ORG/NAME``.
        revision: branch to commit to (created from ``main`` if missing; default ``main``).
        private: visibility when the repo is created (an existing repo keeps its visibility).
        token: a write token (default: ``HF_TOKEN`` or the one saved by ``hf auth login``). Never printed or written.
        commit_message: default ``"Upload <architecture> with vitkd_zoo <version>"``.
        create_pr: open a pull request instead of committing to ``revision``.
        card: ``CardInfo`` fields, only when ``folder_or_model`` is a model.
        endpoint: Hub endpoint (default: ``HF_ENDPOINT`` / huggingface.co).
        progress: called with one line per step (the CLI prints them).

    Returns:
        The commit URL (the pull-request URL with ``create_pr=True``).

    Raises:
        InvalidRepoIdError, MissingTokenError, WeightsHashMismatchError (folder changed since export),
        huggingface_hub errors from the server (nothing is committed when any step fails: one commit or none).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    say = progress or (lambda line: None)
    check_repo_id(repo_id)
    if create_pr and revision not in (None, "main"):
        raise ValueError("create_pr=True opens a pull request against main; do not also pass revision")
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="vitkd-push-") as tmp:
        if isinstance(folder_or_model, nn.Module):
            from .export import save_pretrained

            say("Exporting the model")
            folder = save_pretrained(folder_or_model, Path(tmp) / "export", card=card, repo_id=repo_id)
        else:
            if card is not None:
                raise ValueError("card= only applies when pushing a model; re-export the folder to change its card")
            folder = Path(folder_or_model)
        say(f"Checking {folder}")
        plan = plan_publish(folder, repo_id, revision)
        # Stage a copy with the card regenerated for this repo, so the user's folder is never modified.
        stage = Path(tmp) / "stage"
        stage.mkdir()
        for name in plan["files"]:
            if name != "README.md":
                src = folder / name
                try:
                    os.link(src, stage / name)
                except OSError:
                    shutil.copy2(src, stage / name)
        (stage / "README.md").write_text(plan["card"], encoding="utf-8")
        config = plan["config"]
        message = commit_message or f"Upload {config['architecture']} with vitkd_zoo {config['vitkd']['package_version']}"
        api = HfApi(endpoint=endpoint, token=token)
        say(f"Creating {repo_id} if needed")
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main" and not create_pr:
            say(f"Creating branch {revision} if needed")
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        total = sum(plan["files"].values())
        say(f"Uploading {len(plan['files'])} files ({total / 1e6:.1f} MB) as one commit")
        # create_commit, not upload_folder: with hf_xet installed, huggingface_hub 2.x routes upload_folder through a
        # batched multi-commit pipeline; one create_commit is one commit or none.
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(stage / name))
                      for name in sorted(plan["files"])]
        info = api.create_commit(
            repo_id=repo_id, operations=operations, repo_type="model", revision=None if create_pr else revision,
            commit_message=message, create_pr=create_pr,
        )
    url = info.pr_url if create_pr and info.pr_url else info.commit_url
    say(f"Committed: {url}")
    return str(url)

