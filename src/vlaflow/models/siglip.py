"""SigLIP ViT image encoder, as PaliGemma uses it: every patch token kept, no pooling head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vlaflow.models.config import SiglipConfig


class SiglipAttention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, width = x.shape
        head_dim = width // self.num_heads

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.num_heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)), scale=head_dim**-0.5
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, n, width))


class SiglipMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipBlock(nn.Module):
    """Pre-LayerNorm block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`."""

    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.attn = SiglipAttention(config.width, config.num_heads)
        self.norm2 = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.mlp = SiglipMLP(config.width, config.mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SiglipEncoder(nn.Module):
    """Images (N, 3, S, S) in [-1, 1] -> patch features (N, (S / patch)^2, width)."""

    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.config = config
        self.patch_embed = nn.Conv2d(3, config.width, kernel_size=config.patch_size, stride=config.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(config.num_patches, config.width))
        self.blocks = nn.ModuleList(SiglipBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.gradient_checkpointing = False

    def forward(self, images: Tensor) -> Tensor:
        patches = self.patch_embed(images.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        x = patches + self.pos_embed
        compute_dtype = self.blocks[0].attn.q_proj.weight.dtype if len(self.blocks) else x.dtype
        x = x.to(compute_dtype)
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return self.norm(x)
