"""vitkd_zoo: Lift and WideLast ViT students (arXiv 2511.15572) for timm, Accelerate and the Hugging Face Hub.

``import vitkd_zoo`` registers the students with timm, after which
``timm.create_model("deit_tiny_lift", pretrained=True)`` works like any timm model.
"""
from . import models  # noqa: F401  (registers the architectures with timm)
from .models import (
    STUDENT_ARCHITECTURES,
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnknownModelError,
    UnsafeCheckpointError,
    create_model,
    load_checkpoint_file,
)
from .version import __version__

__all__ = [
    "__version__", "create_model", "load_checkpoint_file", "STUDENT_ARCHITECTURES",
    "CheckpointError", "CheckpointMismatchError", "CorruptCheckpointError", "UnsafeCheckpointError",
    "UnknownModelError",
]
