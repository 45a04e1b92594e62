"""lnorm: fast, accurate LayerNorm and RMSNorm for NumPy arrays, on a header-only C++ core."""

from ._config import (
    MAX_THREADS,
    __version__,
    available_isas,
    cmake_dir,
    config,
    get_num_threads,
    include_dir,
    set_buffer_cache,
    set_isa,
    set_num_threads,
)
from ._config import _check_environment
from ._functional import (
    add_layer_norm,
    add_rms_norm,
    layer_norm,
    layer_norm_backward,
    rms_norm,
    rms_norm_backward,
)
from ._modules import LayerNorm, RMSNorm

_check_environment()
del _check_environment

__all__ = [
    "MAX_THREADS",
    "__version__",
    "LayerNorm",
    "RMSNorm",
    "add_layer_norm",
    "add_rms_norm",
    "available_isas",
    "cmake_dir",
    "config",
    "get_num_threads",
    "include_dir",
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
    "set_buffer_cache",
    "set_isa",
    "set_num_threads",
]
