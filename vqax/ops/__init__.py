"""Layer forms for XLA:CPU and the host allocator: how the models run fast on a CPU, kept out of model code.

Everything here computes the same function as XLA's own layers with the same parameters. Models use
`Conv`, `Dense` and `DenseGeneral` (flax layers that take the XLA:CPU forms where `forms` says so) and set
the form once, on their top-level module (`layer_forms`). On GPU and TPU the forms resolve to XLA's own layers.
"""
import functools

import flax.linen as nn

from vqax.ops import forms
from vqax.ops.conv import conv_general_dilated
from vqax.ops.dense import dense_dot_general, materialized

Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
Dense = functools.partial(nn.Dense, dot_general=dense_dot_general)
DenseGeneral = functools.partial(nn.DenseGeneral, dot_general=dense_dot_general)

__all__ = ["Conv", "Dense", "DenseGeneral", "forms", "materialized"]
