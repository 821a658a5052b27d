"""Errors of the Hub layer. Each message says what went wrong and what to do next; none ever contains a token."""
from __future__ import annotations

from ..models import CorruptCheckpointError

__all__ = [
    "HubError", "UnregisteredModelError", "ExportError", "InvalidRepoIdError", "MissingTokenError",
    "WeightsHashMismatchError",
]


class HubError(RuntimeError):
    """Base class of vitkd_zoo's Hub errors (export, publish, load)."""


class UnregisteredModelError(HubError, ValueError):
    """The model's class is not a timm-registered architecture, so a config.json could not rebuild it."""


class ExportError(HubError):
    """The exported folder does not rebuild the model it came from (checked before the folder is published)."""


class InvalidRepoIdError(HubError, ValueError):
    """A repo id that is not ``ORG/NAME`` with the Hub's allowed characters."""


class MissingTokenError(HubError, PermissionError):
    """Publishing needs a Hugging Face token and none was found."""


class WeightsHashMismatchError(CorruptCheckpointError):
    """``model.safetensors`` does not have the sha256 recorded in ``config.json`` / the model card."""
