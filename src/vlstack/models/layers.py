"""Transformer building blocks shared by the vision tower and the fusion encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class SelfAttention(nn.Module):
    """Multi-head self-attention through PyTorch SDPA (flash / memory-efficient kernels)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, N, D]; attn_mask: bool, True = may attend, broadcastable to [B, H, N, N]."""
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, N, Dh]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, N, Dh]
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    """Two linear layers with an activation between (a `transformers` name, GELU by default):
    dim -> hidden -> out_dim (default dim)."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.activation = activation
        self.act = ACT2FN[activation]
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block around any attention module; kwargs go to the attention."""

    def __init__(self, dim: int, mlp_ratio: float, norm_eps: float, attn: nn.Module, activation: str = "gelu"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, round(dim * mlp_ratio), activation=activation)

    def forward(self, x: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), **attn_kwargs)
        return x + self.mlp(self.norm2(x))
