"""The 3D U-Net with residual units (Kerfoot et al. 2018, as MONAI builds it): the research's residual U-Net."""
from __future__ import annotations

from monai.networks.nets import UNet

#: the layer Grad-CAM explains by default: the last decoder up-block before the full-resolution output block
#: (16 channels at half resolution in the bundled model). The output block itself yields the class logits,
#: which would make the "explanation" the prediction again.
DEFAULT_LAYER = "model.1.submodule.2"


def residual_unet(
    in_channels: int = 1,
    out_channels: int = 2,
    channels=(16, 32, 64, 128, 256),
    strides=(2, 2, 2, 2),
    num_res_units: int = 2,
    norm: str = "instance",
    dropout: float = 0.0,
) -> UNet:
    """A MONAI ``UNet`` whose every encoder/decoder block is a residual unit.

    Input (B, in_channels, D, H, W) → logits (B, out_channels, D, H, W); each spatial size must be divisible
    by the product of ``strides``.
    """
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )
