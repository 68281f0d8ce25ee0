"""How the fast decoder stores its weight matrices when not in its own dtype: int8, or packed for x86 CPUs.

A one-token decode step reads every weight once and does little arithmetic with it, so the bytes a matrix takes and
how fast the kernel streams them decide the step. No quantization maths is written here: scales come from PyTorch's
per-channel observer, and the products are PyTorch's own kernels.

- `Int8Linear` (`--quantize int8` on CUDA, and on CPUs without fbgemm): int8 weights, activations in the decoder's
  dtype (`_weight_int8pack_mm`).
- `PackedLinear` (x86 CPUs, where PyTorch ships fbgemm): fbgemm's packed matrices with float32 activations. Float16
  weights (the default there) stream at ~19 GB/s on a 2-core AVX2 EPYC and ~31 GB/s on an AVX-512 one, against
  ~8 and ~18 GB/s for oneDNN's bfloat16 product; int8 weights with activations quantized per call (dynamic
  quantization, `--quantize int8`) at ~18 and ~28 GB/s, where the weight-only int8 kernel reaches ~6 and ~11.
"""

import warnings
from collections.abc import Callable
from typing import Literal

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 (registers torch.ops.quantized_decomposed)
from torch import Tensor, nn
from torch.ao.quantization.observer import PerChannelMinMaxObserver

Packing = Literal["float16", "int8"]


def per_row_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 scales and zero points [N] for weight [N, K], one per output row (PyTorch's observer)."""
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    observer(weight)
    scales, zero_points = observer.calculate_qparams()
    return scales.to(weight.device), zero_points.to(weight.device)


def fbgemm_available() -> bool:
    """Whether this PyTorch build has fbgemm's CPU kernels (x86 builds do; ARM builds do not)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


class Int8Linear(nn.Module):
    """`nn.Linear` without bias whose weight [N, K] is int8 with scales [N]. The product runs in the linear's own
    dtype, except on a CPU, where it always takes bfloat16 activations: PyTorch's CPU kernel is vectorised for
    those (0.27 ms for a 4096 × 1024 matrix and two rows on a 2-core EPYC) and not for float32 (6.7 ms)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales, zero_points = per_row_int8(weight)
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


class PackedLinear(nn.Module):
    """`nn.Linear` without bias on a CPU, its weight packed by fbgemm as float16 or int8 (scales per output row);
    takes and returns float32. With int8, each call quantizes its input with one scale for all its rows, so a row's
    result depends a little on the other rows of the batch; with float16 it does not. The activations get 8 bits
    where fbgemm multiplies with AVX-512 VNNI (32-bit sums) and 7 where it sums pairs in 16 bits (AVX2), since
    8-bit activations saturate those sums (top-1 agreement 72.8 %, KL 0.17 on the tiny model)."""

    def __init__(self, linear: nn.Linear, packing: Packing) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.packing = packing
        self.weight_bytes = weight.numel() * (2 if packing == "float16" else 1)
        if packing == "float16":
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight, None)
            return
        self.reduce_range = not torch.cpu._is_vnni_supported()  # 7-bit activations: no 16-bit saturation
        scales, zero_points = per_row_int8(weight)
        with warnings.catch_warnings():  # fbgemm's int8 packing takes only PyTorch's (deprecated) quantized tensors
            warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")
            quantized = torch.quantize_per_channel(weight, scales.double(), zero_points, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(quantized, None)
        self.weight_bytes += scales.numel() * 4

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        if self.packing == "float16":
            out = torch.ops.quantized.linear_dynamic_fp16(rows, self.packed)
        else:
            out = torch.ops.quantized.linear_dynamic(rows, self.packed, self.reduce_range)
        return out.view(*x.shape[:-1], -1)


def _replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> None:
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) and child.bias is None:
                setattr(parent, name, make(child))


def quantize_int8(model: nn.Module) -> None:
    """Replace every bias-free `nn.Linear` of `model` by its `Int8Linear`, in place."""
    _replace_linears(model, Int8Linear)


def pack_for_cpu(model: nn.Module, packing: Packing) -> None:
    """Replace every bias-free `nn.Linear` of `model` (float32, on a CPU) by its `PackedLinear`, in place."""
    _replace_linears(model, lambda linear: PackedLinear(linear, packing))
