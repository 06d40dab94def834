"""Down, mid and up blocks of the SD UNet (diffusers' ``unet_2d_blocks.py``).

One class serves each direction: a block with ``attentions`` is diffusers'
``CrossAttn*Block2D``, one without is ``DownBlock2D``/``UpBlock2D``; the
parameter trees are the same as diffusers' either way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from bdpo_jax.models.attention import Transformer2DModel
from bdpo_jax.models.options import ModelOptions, remat
from bdpo_jax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """What one UNet level needs to know; filled in by ``UNet2DConditionModel``."""

    num_layers: int
    temb_channels: int
    groups: int
    eps: float
    cross_attention: bool
    heads: int
    context_dim: int
    transformer_layers: int
    use_linear_projection: bool

    def transformer(self, channels: int, opts: ModelOptions, rngs: nnx.Rngs) -> Transformer2DModel:
        return Transformer2DModel(
            channels,
            self.heads,
            self.context_dim,
            self.transformer_layers,
            self.groups,
            self.use_linear_projection,
            opts,
            rngs=rngs,
        )

    def transformers(self, channels: int, opts: ModelOptions, rngs: nnx.Rngs) -> nnx.List | None:
        """One transformer after each resnet, or None for a block without attention."""
        if not self.cross_attention:
            return None
        return nnx.List([self.transformer(channels, opts, rngs) for _ in range(self.num_layers)])

    def resnet(
        self, in_channels: int, out_channels: int, opts: ModelOptions, rngs: nnx.Rngs, scale: float = 1.0
    ) -> ResnetBlock2D:
        return ResnetBlock2D(
            in_channels,
            out_channels,
            self.temb_channels,
            self.groups,
            self.eps,
            opts,
            output_scale_factor=scale,
            rngs=rngs,
        )


def _resnet_then_attention(
    resnet: ResnetBlock2D,
    attention: Transformer2DModel | None,
    h: jax.Array,
    temb: jax.Array,
    context: jax.Array,
    policy: str,
) -> jax.Array:
    h = remat(ResnetBlock2D.__call__, policy)(resnet, h, temb)
    if attention is not None:
        h = attention(h, context)
    return h


class DownBlock2D(nnx.Module):
    def __init__(
        self, in_channels: int, out_channels: int, spec: BlockSpec, add_downsample: bool, opts: ModelOptions, *, rngs
    ):
        self.resnets = nnx.List(
            [
                spec.resnet(in_channels if i == 0 else out_channels, out_channels, opts, rngs)
                for i in range(spec.num_layers)
            ]
        )
        self.attentions = spec.transformers(out_channels, opts, rngs)
        self.downsamplers = nnx.List([Downsample2D(out_channels, opts, rngs=rngs)]) if add_downsample else None
        self.remat_policy = opts.remat

    def __call__(self, h: jax.Array, temb: jax.Array, context: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            attention = self.attentions[i] if self.attentions is not None else None
            h = _resnet_then_attention(resnet, attention, h, temb, context, self.remat_policy)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class UNetMidBlock2DCrossAttn(nnx.Module):
    def __init__(self, channels: int, spec: BlockSpec, scale: float, opts: ModelOptions, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([spec.resnet(channels, channels, opts, rngs, scale) for _ in range(2)])
        self.attentions = nnx.List([spec.transformer(channels, opts, rngs)])
        self.remat_policy = opts.remat

    def __call__(self, h: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
        resnet_forward = remat(ResnetBlock2D.__call__, self.remat_policy)
        h = resnet_forward(self.resnets[0], h, temb)
        h = self.attentions[0](h, context)
        return resnet_forward(self.resnets[1], h, temb)


class UpBlock2D(nnx.Module):
    """Each resnet takes the running features concatenated with one skip."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        spec: BlockSpec,
        add_upsample: bool,
        opts: ModelOptions,
        *,
        rngs: nnx.Rngs,
    ):
        resnets = []
        for i in range(spec.num_layers):
            skip_channels = in_channels if i == spec.num_layers - 1 else out_channels
            resnet_in = prev_output_channels if i == 0 else out_channels
            resnets.append(spec.resnet(resnet_in + skip_channels, out_channels, opts, rngs))
        self.resnets = nnx.List(resnets)
        self.attentions = spec.transformers(out_channels, opts, rngs)
        self.upsamplers = nnx.List([Upsample2D(out_channels, opts, rngs=rngs)]) if add_upsample else None
        self.remat_policy = opts.remat

    def __call__(self, h: jax.Array, skips: list[jax.Array], temb: jax.Array, context: jax.Array) -> jax.Array:
        for i, resnet in enumerate(self.resnets):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            attention = self.attentions[i] if self.attentions is not None else None
            h = _resnet_then_attention(resnet, attention, h, temb, context, self.remat_policy)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)
        return h
