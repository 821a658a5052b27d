"""``vitkd-zoo export`` and ``vitkd-zoo publish``.

    vitkd-zoo export --model deit_tiny_lift --checkpoint runs/lift/best.safetensors --metrics metrics.json --out exported/lift
    vitkd-zoo publish exported/lift --repo-id my-org/deit_tiny_lift-in1k [--revision v1] [--private] [--dry-run]

The token for ``publish`` comes from ``HF_TOKEN`` or ``hf auth login``; there is deliberately no ``--token`` flag
(command lines end up in shell histories and process lists).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run_export", "run_publish"]


def _json_arg(value: str | None, what: str) -> Any:
    """A JSON literal, or the path of a JSON file."""
    if value is None:
        return None
    path = Path(value)
    text = path.read_text(encoding="utf-8") if not value.lstrip().startswith(("{", "[")) and path.is_file() else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {what} must be a JSON object or a JSON file ({e})") from None


def _previous_card(name: str) -> dict:
    """The card fields of an earlier vitkd_zoo export when ``--model`` names a folder or a (cached) Hub repo."""
    from vitkd_zoo.hub.load import _local_dir, _split_hub, fetch_folder

    folder = _local_dir(name)
    if folder is None and ("/" in name or name.startswith(("hf-hub:", "hf_hub:"))):
        repo_id, revision = _split_hub(name)
        folder = fetch_folder(repo_id, revision=revision)
    if folder is None or not (folder / "config.json").is_file():
        return {}
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return dict((config.get("vitkd") or {}).get("card") or {})


def _say(line: str) -> None:
    print(f"  {line}", flush=True)


def run_export(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    import vitkd_zoo
    from vitkd_zoo.hub import HubError, save_pretrained
    from vitkd_zoo.hub.load import load_model

    start = time.perf_counter()
    metrics = _json_arg(args.metrics, "--metrics") or {}
    card = dict(_json_arg(args.card, "--card") or {})
    if not isinstance(metrics, dict) or not isinstance(card, dict):
        print("error: --metrics and --card must be JSON objects", file=sys.stderr)
        return 2
    # --metrics may hold just numbers ({"top1": 71.2}) or a dict of card fields ({"metrics": ..., "dataset": ...}).
    if "metrics" in metrics or "baseline_metrics" in metrics:
        card.update(metrics)
    elif metrics:
        card["metrics"] = metrics
    for key in ("teacher", "method", "dataset", "base_model", "license", "title"):
        if getattr(args, key, None):
            card[key] = getattr(args, key)
    model_args = _json_arg(args.model_args, "--model-args") or {}
    print(f"Exporting {args.model} to {args.out}")
    try:
        if args.checkpoint:
            _say(f"Building {args.model} from {args.checkpoint}")
            model = vitkd_zoo.create_model(args.model, checkpoint_path=args.checkpoint, **model_args)
        else:
            _say(f"Loading {args.model} with its pretrained weights")
            model = load_model(args.model, **model_args)
        card = {**_previous_card(args.model), **card}  # re-exporting a vitkd_zoo folder/repo keeps its card fields
        _say("Writing model.safetensors, config.json, model card; verifying the reload; measuring cost")
        out = save_pretrained(
            model.eval(), args.out, card=card, data_config=_json_arg(args.data_config, "--data-config"),
            repo_id=args.repo_id, overwrite=args.overwrite, benchmark_seconds=args.benchmark_seconds,
        )
    except (HubError, vitkd_zoo.CheckpointError, vitkd_zoo.UnknownModelError, FileExistsError, FileNotFoundError,
            TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except HfHubHTTPError as e:  # e.g. repository not found or not accessible: one line, no headers
        print(f"error: could not download {args.model} ({type(e).__name__}: {str(e).splitlines()[0]})", file=sys.stderr)
        return 1
    config = json.loads((out / "config.json").read_text())
    vitkd = config["vitkd"]
    print(f"Exported {config['architecture']} ({config['num_classes']} classes) in {time.perf_counter() - start:.1f} s")
    for row in vitkd["cost"]:
        print(f"  {row['model']}: {row['params']:,} params, {row['gmacs']:.3f} GMACs, {row['img_per_s']:.1f} img/s")
    for path in sorted(out.iterdir()):
        print(f"  {path.name:20s} {path.stat().st_size:>12,d} bytes")
    print(f"  sha256(model.safetensors) = {vitkd['weights_sha256']}")
    print(f"Next: vitkd-zoo publish {out} --repo-id ORG/NAME --dry-run")
    return 0


def run_publish(args: argparse.Namespace) -> int:
    from vitkd_zoo.hub import HubError, plan_publish, push_to_hub
    from vitkd_zoo.models import CheckpointError

    try:
        if args.dry_run:
            plan = plan_publish(args.folder, args.repo_id, args.revision)
            print(f"Dry run: would commit to {plan['repo_id']}@{plan['revision']}"
                  f"{' (private if created)' if args.private else ''}:")
            for name, size in plan["files"].items():
                print(f"  {name:20s} {size:>12,d} bytes")
            print("  weights sha256 matches config.json and the card; card regenerated for this repo id")
            return 0
        print(f"Publishing {args.folder} to {args.repo_id}")
        url = push_to_hub(args.folder, args.repo_id, revision=args.revision, private=args.private or None,
                          commit_message=args.commit_message, create_pr=args.create_pr, progress=_say)
    except (HubError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # server / network errors from huggingface_hub: one line, no traceback, no headers
        print(f"error: publishing failed, nothing was committed ({type(e).__name__}: {str(e).splitlines()[0]})",
              file=sys.stderr)
        return 1
    print(f"Done: {url}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a Hub-ready folder (model.safetensors, config.json, model card) from a checkpoint",
        description="Export a student (or any timm model) as a Hub-ready folder: model.safetensors, timm config.json "
                    "loadable by timm and transformers, vitkd_remote.py, and a generated model card.",
    )
    p.add_argument("--model", required=True,
                   help="registry name (deit_tiny_lift[.tag]), hf-hub:ORG/NAME, ORG/NAME or local-dir:DIR")
    p.add_argument("--checkpoint", help="weights to export (.safetensors or .pth); default: the model's pretrained weights")
    p.add_argument("--metrics", help="JSON object or file: {\"top1\": .., \"top5\": ..} (or card fields incl. metrics)")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--model-args", help="JSON object of architecture kwargs (img_size, num_classes, ...)")
    p.add_argument("--card", help="JSON object or file of card fields (recipe, label_names, baseline_metrics, ...)")
    p.add_argument("--data-config", help="JSON: preprocessing of these weights (mean, std, crop_pct, interpolation)")
    p.add_argument("--teacher")
    p.add_argument("--method")
    p.add_argument("--dataset", help="imagenet-1k, fashion_mnist or a Hub dataset id")
    p.add_argument("--base-model", help="Hub id of the checkpoint the student was initialised from")
    p.add_argument("--license")
    p.add_argument("--title")
    p.add_argument("--repo-id", help="repo id the card's snippets name (publish regenerates the card anyway)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--benchmark-seconds", type=float, default=None,
                   help="CPU timing window per model for img/s (default: $VITKD_BENCHMARK_SECONDS or 2)")
    p.set_defaults(func=run_export)

    q = subparsers.add_parser(
        "publish", help="publish an exported folder to the Hugging Face Hub (one commit, card regenerated)",
        description="Publish an exported folder as one commit. Token: HF_TOKEN or `hf auth login`.",
    )
    q.add_argument("folder", help="folder written by `vitkd-zoo export`")
    q.add_argument("--repo-id", required=True, help="ORG/NAME")
    q.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    q.add_argument("--private", action="store_true", help="create the repo private")
    q.add_argument("--commit-message")
    q.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    q.add_argument("--dry-run", action="store_true", help="check the folder and show what would be uploaded; no token needed")
    q.set_defaults(func=run_publish)
