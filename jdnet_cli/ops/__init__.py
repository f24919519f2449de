"""The ops under the network: each picks its back end (C++ CPU kernels, Triton, torch).

JDNet's blocks call one function here per operation; the conditions for a fused kernel (eval
mode, float32 CPU, channels-last, 32 channels, a built kernel library) live with the ops.
``backend("reference")`` runs them all as plain torch ops instead.
"""
from .attention import ATTENTION_OPS, AttentionOp, pairwise_self_attention, sam_attention
from .backend import BACKENDS, backend, current_backend
from .bn_leaky import batchnorm_leaky
from .calibration_gate import self_calibration
from .cpu_kernels import cpu_kernels_status, prepare_cpu_kernels
from .dense_stack import dense_units
from .fuse_1x1 import conv1x1_concat_residual_leaky, conv1x1_pair_leaky, conv1x1_residual
from .mixed_precision import low_precision_region
from .pairwise_attention import pairwise_attention_fast, pairwise_attention_reference, position_planes
from .scale_aggregate import aggregate_scales

__all__ = [
    "ATTENTION_OPS", "AttentionOp", "BACKENDS", "aggregate_scales", "backend", "batchnorm_leaky",
    "conv1x1_concat_residual_leaky", "conv1x1_pair_leaky", "conv1x1_residual", "cpu_kernels_status",
    "current_backend", "dense_units", "low_precision_region", "pairwise_attention_fast", "pairwise_attention_reference",
    "pairwise_self_attention", "position_planes", "prepare_cpu_kernels", "sam_attention", "self_calibration",
]
