"""Memory layout of feature maps: which format a map is in, and a map made dense in another's format."""
from __future__ import annotations

import torch


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last for a dense channels-last 4-D map (that is not also NCHW-contiguous), else contiguous_format."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def in_layout_of(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` dense in ``like``'s memory layout.

    Next to channels-last convolutions an NCHW map (or a strided channel slice as a gradient)
    makes oneDNN reorder on every call, up to 2-6x that conv's own backward time.
    """
    return t.contiguous(memory_format=memory_format_of(like))
