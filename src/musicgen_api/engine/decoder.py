"""MusicGen's audio-token decoder in plain PyTorch, shaped for fast autoregressive decoding.

Same maths and weights as transformers' `MusicgenForCausalLM` (its state dict is converted in memory by
`from_transformers`; the user never converts anything), laid out the gpt-fast way: a static KV cache written by
index, cross-attention keys/values computed once per request, fused projections, all codebook embeddings and heads
as one gather and one matmul, and `forward(tokens, pos, kv_len, ...)` with static shapes so a step can be captured in
a CUDA graph. Every row of the batch has its own positions, so rows of different requests, each at its own point
of its piece, decode in one step (`--slots`). Attention reads only the first `kv_len` cache positions (and the text
slots the caller passes): a one-token step is bound by the bytes it reads, and attending over the whole static
cache and text buffer cost as much as the weights themselves.
"""

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import MusicgenDecoderConfig


@dataclass(frozen=True)
class DecoderArgs:
    n_layer: int  # transformer blocks
    n_head: int  # attention heads (self and cross)
    dim: int  # model width
    ffn_dim: int  # feed-forward width
    codebook_size: int  # logits per codebook; the embedding tables have one more row, the BOS/pad id
    num_codebooks: int  # codebooks per step (8 for stereo: left/right interleaved)
    embed_scale: float  # sqrt(dim) when the checkpoint scales embeddings, else 1
    max_positions: int  # rows of the sinusoidal position table

    @classmethod
    def from_config(cls, config: MusicgenDecoderConfig) -> "DecoderArgs":
        if config.activation_function != "gelu":
            raise ValueError(f"unsupported decoder activation '{config.activation_function}' (only gelu is)")
        return cls(
            n_layer=config.num_hidden_layers,
            n_head=config.num_attention_heads,
            dim=config.hidden_size,
            ffn_dim=config.ffn_dim,
            codebook_size=config.vocab_size,
            num_codebooks=config.num_codebooks,
            embed_scale=math.sqrt(config.hidden_size) if config.scale_embedding else 1.0,
            max_positions=config.max_position_embeddings,
        )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head


def sinusoidal_positions(n: int, dim: int) -> Tensor:
    """The tensor2tensor table MusicGen uses: [cos | sin] halves, frequencies 10000^(-i/(half-1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(n, dtype=torch.float32)[:, None] * freqs[None, :]
    table = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(table, (0, dim % 2))  # [n, dim]


class KVCache(nn.Module):
    """Self-attention keys/values for every position of the request, preallocated and written by index."""

    def __init__(self, batch: int, n_head: int, length: int, head_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        shape = (batch, n_head, length, head_dim)
        self.k: Tensor
        self.v: Tensor
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    def reset(self, rows: slice) -> None:
        """Zero every position of these rows: stale values at masked positions get weight 0, but 0 × NaN would
        still be NaN."""
        self.k[rows].zero_()
        self.v[rows].zero_()

    def update(self, rows: slice, pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, T, D] of cache rows `rows` at their positions pos [B, T]; returns those rows' cache."""
        keys, values = self.k[rows], self.v[rows]
        index = pos[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        keys.scatter_(2, index, k.to(keys.dtype))
        values.scatter_(2, index, v.to(values.dtype))
        return keys, values


class DecoderLayer(nn.Module):
    def __init__(self, a: DecoderArgs) -> None:
        super().__init__()
        self.n_head, self.head_dim = a.n_head, a.head_dim
        self.self_attn_norm = nn.LayerNorm(a.dim)
        self.self_qkv = nn.Linear(a.dim, 3 * a.dim, bias=False)
        self.self_out = nn.Linear(a.dim, a.dim, bias=False)
        self.cross_attn_norm = nn.LayerNorm(a.dim)
        self.cross_q = nn.Linear(a.dim, a.dim, bias=False)
        self.cross_kv = nn.Linear(a.dim, 2 * a.dim, bias=False)
        self.cross_out = nn.Linear(a.dim, a.dim, bias=False)
        self.ffn_norm = nn.LayerNorm(a.dim)
        self.fc1 = nn.Linear(a.dim, a.ffn_dim, bias=False)
        self.fc2 = nn.Linear(a.ffn_dim, a.dim, bias=False)
        self.cache: KVCache | None = None

    def heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, T, D]

    def merge(self, x: Tensor) -> Tensor:
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)  # [B, T, C]

    def cross_keys_values(self, text: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.cross_kv(text).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)  # [B, H, S, D] each

    def forward(
        self,
        x: Tensor,
        rows: slice,
        pos: Tensor,
        kv_len: int,
        self_mask: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        cross_mask: Tensor,
    ) -> Tensor:
        assert self.cache is not None, "call MusicgenDecoder.setup_cache first"
        q, k, v = self.self_qkv(self.self_attn_norm(x)).chunk(3, dim=-1)
        keys, values = self.cache.update(rows, pos, self.heads(k), self.heads(v))
        keys, values = keys[:, :, :kv_len], values[:, :, :kv_len]  # [B, H, kv_len, D]: the positions that exist
        q = self.heads(q).to(keys.dtype)  # attention runs in the cache's precision (see setup_cache)
        h = F.scaled_dot_product_attention(q, keys, values, attn_mask=self_mask)
        x = x + self.self_out(self.merge(h).to(x.dtype))
        q = self.heads(self.cross_q(self.cross_attn_norm(x))).to(cross_k.dtype)
        h = F.scaled_dot_product_attention(q, cross_k, cross_v, attn_mask=cross_mask)
        x = x + self.cross_out(self.merge(h).to(x.dtype))
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))


class MusicgenDecoder(nn.Module):
    def __init__(self, a: DecoderArgs) -> None:
        super().__init__()
        self.args = a
        rows = a.codebook_size + 1
        self.embed = nn.Parameter(torch.empty(a.num_codebooks * rows, a.dim))  # codebook k owns rows [k*rows, ...)
        self.embed_offsets: Tensor
        self.positions: Tensor
        self.register_buffer("embed_offsets", torch.arange(a.num_codebooks) * rows, persistent=False)
        self.register_buffer("positions", sinusoidal_positions(a.max_positions, a.dim), persistent=False)
        self.layers = cast(list[DecoderLayer], nn.ModuleList(DecoderLayer(a) for _ in range(a.n_layer)))
        self.norm = nn.LayerNorm(a.dim)
        self.heads = nn.Linear(a.dim, a.num_codebooks * a.codebook_size, bias=False)  # all codebooks' heads
        self.cache_index: Tensor | None = None  # 0 … length - 1, what the causal mask compares positions with

    def setup_cache(self, batch: int, length: int, dtype: torch.dtype | None = None) -> None:
        """Allocate the KV cache and causal mask for `batch` streams of up to `length` positions. `dtype` is the
        attention's precision (default: the weights'); keys, values and queries are cast to it, so bfloat16
        weights can keep a float32 cache, as the fast engine does on a CPU (`loading.resolve_attention_dtype`)."""
        a, p = self.args, self.embed
        if length > a.max_positions:
            raise ValueError(f"{length} positions exceed the decoder's {a.max_positions}")
        for layer in self.layers:
            layer.cache = KVCache(batch, a.n_head, length, a.head_dim, dtype or p.dtype).to(p.device)
        self.cache_index = torch.arange(length, device=p.device)

    def forward(
        self,
        tokens: Tensor,
        pos: Tensor,
        kv_len: int,
        cross_kv: list[tuple[Tensor, Tensor]],
        cross_mask: Tensor,
        rows: slice = slice(None),
    ) -> Tensor:
        """tokens [B, K, T] at positions pos [B, T] → logits [B, K, T, V] (float32), attending to the first `kv_len`
        cache positions (at least max(pos) + 1; more is correct, only masked) and to the text slots of `cross_kv`
        ([B, H, S, D] each) and `cross_mask` [B, 1, 1, S]. `rows`: the cache rows these B rows are (default all)."""
        assert self.cache_index is not None, "call setup_cache first"
        b, k, t = tokens.shape
        x = F.embedding(tokens + self.embed_offsets[None, :, None], self.embed).sum(1)  # [B, T, C]
        if self.args.embed_scale != 1.0:
            x = x * self.args.embed_scale
        x = x + self.positions[pos].to(x.dtype)
        self_mask = (self.cache_index[:kv_len] <= pos[..., None])[:, None]  # [B, 1, T, kv_len]: causal, per row
        for layer, (ck, cv) in zip(self.layers, cross_kv, strict=True):
            x = layer(x, rows, pos, kv_len, self_mask, ck, cv, cross_mask)
        logits = self.heads(self.norm(x)).view(b, t, k, self.args.codebook_size)
        return logits.transpose(1, 2).float()

    def cross_keys_values(self, text: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [layer.cross_keys_values(text) for layer in self.layers]

    @classmethod
    def from_transformers(cls, hf_decoder: nn.Module, config: MusicgenDecoderConfig) -> "MusicgenDecoder":
        """Build from a loaded `MusicgenForCausalLM`, moving its weights into the fused layout."""
        a = DecoderArgs.from_config(config)
        sd = hf_decoder.state_dict()
        p = "model.decoder."
        ours: dict[str, Tensor] = {
            "embed": torch.cat([sd[f"{p}embed_tokens.{k}.weight"] for k in range(a.num_codebooks)]),
            "heads.weight": torch.cat([sd[f"lm_heads.{k}.weight"] for k in range(a.num_codebooks)]),
            "norm.weight": sd[f"{p}layer_norm.weight"],
            "norm.bias": sd[f"{p}layer_norm.bias"],
        }
        for i in range(a.n_layer):
            src, dst = f"{p}layers.{i}.", f"layers.{i}."
            ours[dst + "self_qkv.weight"] = torch.cat([sd[f"{src}self_attn.{n}_proj.weight"] for n in "qkv"])
            ours[dst + "self_out.weight"] = sd[f"{src}self_attn.out_proj.weight"]
            ours[dst + "cross_q.weight"] = sd[f"{src}encoder_attn.q_proj.weight"]
            ours[dst + "cross_kv.weight"] = torch.cat([sd[f"{src}encoder_attn.{n}_proj.weight"] for n in "kv"])
            ours[dst + "cross_out.weight"] = sd[f"{src}encoder_attn.out_proj.weight"]
            ours[dst + "fc1.weight"] = sd[f"{src}fc1.weight"]
            ours[dst + "fc2.weight"] = sd[f"{src}fc2.weight"]
            for mine, theirs in (
                ("self_attn_norm", "self_attn_layer_norm"),
                ("cross_attn_norm", "encoder_attn_layer_norm"),
                ("ffn_norm", "final_layer_norm"),
            ):
                ours[f"{dst}{mine}.weight"] = sd[f"{src}{theirs}.weight"]
                ours[f"{dst}{mine}.bias"] = sd[f"{src}{theirs}.bias"]
        ref = ours["embed"]
        with torch.device("meta"):
            model = cls(a)
        model.load_state_dict(ours, strict=True, assign=True)
        # Buffers were made on meta; rebuild them where the weights live.
        model.embed_offsets = torch.arange(a.num_codebooks, device=ref.device) * (a.codebook_size + 1)
        model.positions = sinusoidal_positions(a.max_positions, a.dim).to(ref.device)
        return model.eval()
