"""3D TransUNet (Chen et al. 2021; 3D form as in Chen et al. 2023): CNN encoder → ViT over the
bottleneck's feature tokens → U-Net decoder with skip connections. Built from MONAI blocks."""
from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit, TransformerBlock, UnetOutBlock, UnetrUpBlock
from torch import nn

#: default explanation layer: the tokens after the last transformer block, folded back onto the 3D grid.
DEFAULT_LAYER = "vit_out"


class TransUNet3D(nn.Module):
    """Hybrid CNN-Transformer 3D segmentation network.

    Shapes, for ``img_size`` = (D, H, W) and ``channels`` = (c0 … cL−1):
      encoder: L residual units, each halving the grid (level l has c_l channels at size/2^(l+1)); as in
      MONAI's UNet, no convolution runs at full resolution, which keeps the net affordable on a CPU
      tokens: the last level's grid (D/2^L, H/2^L, W/2^L) flattened to N tokens, embedded to
      ``hidden_size``, plus learned position embeddings, through ``num_layers`` transformer blocks
      decoder: tokens folded back to 3D (``vit_out``), transposed-conv up blocks with the encoder's skips up
      to size/2, a last transposed convolution to full size and a 1×1×1 head to ``out_channels`` logits.
    The position embeddings fix the input size: windows must be exactly ``img_size`` (sliding-window
    inference guarantees that by padding).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        img_size: Sequence[int] = (96, 96, 96),
        channels: Sequence[int] = (16, 32, 64, 128),
        hidden_size: int = 256,
        num_layers: int = 6,
        num_heads: int = 8,
        mlp_dim: int = 1024,
        dropout: float = 0.0,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        levels = len(channels)
        factor = 2**levels
        if any(int(s) % factor for s in img_size):
            raise ValueError(f"img_size {tuple(img_size)} must be divisible by {factor} for {levels} levels")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.img_size = tuple(int(s) for s in img_size)
        self.token_grid = tuple(s // factor for s in self.img_size)
        self.hidden_size = hidden_size
        bottleneck = channels[-1]

        encoder = []
        for prev, cur in zip((in_channels,) + tuple(channels[:-1]), channels):
            encoder.append(ResidualUnit(3, prev, cur, strides=2, subunits=2, norm=norm, dropout=dropout))
        self.encoder = nn.ModuleList(encoder)

        n_tokens = 1
        for s in self.token_grid:
            n_tokens *= s
        self.embed = nn.Conv3d(bottleneck, hidden_size, kernel_size=1)
        self.position = nn.Parameter(torch.zeros(1, n_tokens, hidden_size))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(
            [TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate=dropout) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.vit_out = nn.Conv3d(hidden_size, bottleneck, kernel_size=1)

        ups = []
        below = bottleneck
        for skip in reversed(channels[:-1]):
            ups.append(UnetrUpBlock(3, below, skip, kernel_size=3, upsample_kernel_size=2, norm_name=norm, res_block=True))
            below = skip
        self.decoder = nn.ModuleList(ups)
        self.final_up = Convolution(3, channels[0], channels[0], strides=2, kernel_size=3, is_transposed=True, norm=norm)
        self.head = UnetOutBlock(3, channels[0], out_channels)

    def tokens_to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, hidden) tokens → (B, hidden, d, h, w) on the bottleneck grid."""
        b, n, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, *self.token_grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = self.embed(x)  # (B, hidden, d, h, w)
        tokens = x.flatten(2).transpose(1, 2) + self.position
        for block in self.blocks:
            tokens = block(tokens)
        x = self.vit_out(self.tokens_to_grid(self.norm(tokens)))
        for up, skip in zip(self.decoder, reversed(skips[:-1])):
            x = up(x, skip)
        return self.head(self.final_up(x))
