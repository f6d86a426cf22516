"""localize: find where knowledge lives inside text-to-image diffusion models, and edit it."""

from localize.lazy import lazy_exports

_EXPORTS = {
    "CrossAttentionLayer": "localize.model",
    "Model": "localize.model",
    "Patch": "localize.patches",
    "PatchRun": "localize.engine",
    "TextEncoderLayer": "localize.model",
    "UNetComponent": "localize.model",
    "capturing": "localize.engine",
    "generate": "localize.generation",
    "load_model": "localize.model",
    "patching": "localize.engine",
    "random_model": "localize.random_models",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
