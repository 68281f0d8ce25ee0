"""Weight-only int8 for the decoder: each matrix stored as int8 with one scale per output row.

A one-token decode step reads every weight once and does little arithmetic with it, so halving the bytes again after
bfloat16 is what makes it faster. Quantizing uses PyTorch's own per-channel observer and quantizer, and a step uses
PyTorch's weight-only int8 matrix product (`_weight_int8pack_mm`), which takes bfloat16, float16 or float32
activations; no quantization maths is written here.
"""

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 (registers torch.ops.quantized_decomposed)
from torch import Tensor, nn
from torch.ao.quantization.observer import PerChannelMinMaxObserver


class Int8Linear(nn.Module):
    """`nn.Linear` without bias whose weight [N, K] is int8 with scales [N]. The product runs in the linear's own
    dtype, except on a CPU, where it always takes bfloat16 activations: PyTorch's CPU kernel is vectorised for
    those (0.27 ms for a 4096 × 1024 matrix and two rows on a 2-core EPYC) and not for float32 (6.7 ms)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        observer(weight)
        scales, zero_points = (t.to(weight.device) for t in observer.calculate_qparams())
        quantized = torch.ops.quantized_decomposed.quantize_per_channel(
            weight, scales, zero_points, 0, -128, 127, torch.int8
        )
        self.weight: Tensor
        self.scales: Tensor
        self.register_buffer("weight", quantized)
        compute = torch.bfloat16 if weight.device.type == "cpu" else linear.weight.dtype
        self.register_buffer("scales", scales.to(compute))

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(self.scales.dtype)
        out = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales)
        return out.view(*x.shape[:-1], -1).to(x.dtype)


def quantize_int8(model: nn.Module) -> None:
    """Replace every bias-free `nn.Linear` of `model` by its `Int8Linear`, in place."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) and child.bias is None:
                setattr(parent, name, Int8Linear(child))
