"""tfquant: post-training int8 quantization of TensorFlow SavedModels of causal LMs.

Pipeline (one module each): savedmodel.extract -> calibrate -> rewrite (quantizers/) -> lower -> savedmodel.save.
"""
import os as _os

# Keep TensorFlow's C++ start-up chatter (CUDA plugin "errors" on CPU-only machines) out of the
# user's terminal unless they set the variable themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# tfquant runs TensorFlow models only; where torch is installed too (the test environment has it),
# transformers would import it in every process: ~2 s and ~175 MB RSS for nothing.
_os.environ.setdefault("USE_TORCH", "0")

__version__ = "0.1.0"


def ConvertSavedModel(*args, **kwargs):
    """See tfquant.convert.ConvertSavedModel (imported lazily: TensorFlow is slow to import)."""
    from .convert import ConvertSavedModel as _convert

    return _convert(*args, **kwargs)


__all__ = ["ConvertSavedModel", "__version__"]
