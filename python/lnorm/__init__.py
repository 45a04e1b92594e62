"""lnorm: fast, accurate LayerNorm, RMSNorm, GroupNorm, InstanceNorm and BatchNorm for NumPy arrays, on a
header-only C++ core."""

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
from ._channel import (
    batch_norm,
    batch_norm_backward,
    group_norm,
    group_norm_backward,
    instance_norm,
    instance_norm_backward,
)
from ._modules import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm

_check_environment()
del _check_environment

__all__ = [
    "MAX_THREADS",
    "__version__",
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "RMSNorm",
    "add_layer_norm",
    "add_rms_norm",
    "available_isas",
    "batch_norm",
    "batch_norm_backward",
    "cmake_dir",
    "config",
    "get_num_threads",
    "group_norm",
    "group_norm_backward",
    "include_dir",
    "instance_norm",
    "instance_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
    "set_buffer_cache",
    "set_isa",
    "set_num_threads",
]
