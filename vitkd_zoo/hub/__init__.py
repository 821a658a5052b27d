"""Hub layer: export students as Hub-ready folders, publish them with generated model cards, load them back.

    >>> import timm, vitkd_zoo
    >>> from vitkd_zoo.hub import save_pretrained, push_to_hub, load_model
    >>> save_pretrained(model, "exported/my-student", card=dict(teacher="cait_s24_224", dataset="imagenet-1k"))
    >>> push_to_hub("exported/my-student", "my-org/my-student")          # token: HF_TOKEN or `hf auth login`
    >>> model = load_model("my-org/my-student")                           # == timm hf-hub:, weights sha256-checked
"""
from .card import CITATION, CardInfo, card_from_folder, render_card
from .errors import (
    ExportError,
    HubError,
    InvalidRepoIdError,
    MissingTokenError,
    UnregisteredModelError,
    WeightsHashMismatchError,
)
from .export import save_pretrained
from .load import fetch_folder, load_model, load_transformers, verify_folder
from .publish import check_repo_id, plan_publish, push_to_hub

__all__ = [
    "save_pretrained", "push_to_hub", "load_model", "load_transformers", "verify_folder", "fetch_folder",
    "plan_publish", "check_repo_id", "CardInfo", "render_card", "card_from_folder", "CITATION",
    "HubError", "UnregisteredModelError", "ExportError", "InvalidRepoIdError", "MissingTokenError",
    "WeightsHashMismatchError",
]
