"""Student architectures, registered with timm on import."""
from ._checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint_file,
    sha256_file,
    unwrap_state_dict,
)
from ._factory import STUDENT_ARCHITECTURES, UnknownModelError, create_model
from .lift import LiftProjector, VisionTransformerLift
from .widelast import VisionTransformerWideLast, WideBlock

__all__ = [
    "STUDENT_ARCHITECTURES", "create_model", "load_checkpoint_file", "unwrap_state_dict", "sha256_file",
    "VisionTransformerLift", "LiftProjector", "VisionTransformerWideLast", "WideBlock",
    "CheckpointError", "CheckpointMismatchError", "CorruptCheckpointError", "UnsafeCheckpointError",
    "UnknownModelError",
]
