"""The SD1.x / SD2.x / SDXL denoiser, diffusers' ``UNet2DConditionModel`` in
Flax NNX, parameter for parameter (see ``diffusers_layout.py`` for the name mapping)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bdpo_jax.models.config import UNetConfig
from bdpo_jax.models.embeddings import TimestepEmbedding, sinusoidal_embedding
from bdpo_jax.models.layers import conv, group_norm
from bdpo_jax.models.options import ModelOptions
from bdpo_jax.models.unet_blocks import BlockSpec, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D


class UNet2DConditionModel(nnx.Module):
    """Predicts noise (or v) for NHWC latents given timesteps and text states.

    SDXL (``addition_embed_type == "text_time"``) also takes the pooled text
    vector and the six micro-conditioning time ids per sample.
    """

    def __init__(self, config: UNetConfig, opts: ModelOptions = ModelOptions(), *, rngs: nnx.Rngs):
        self.config = config
        self.opts = opts
        channels = config.block_out_channels
        n = len(channels)
        temb = config.time_embed_dim

        self.conv_in = conv(config.in_channels, channels[0], config.conv_in_kernel, opts, rngs)
        self.time_embedding = TimestepEmbedding(channels[0], temb, opts, rngs=rngs)
        if config.addition_embed_type == "text_time":
            self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, temb, opts, rngs=rngs)
        else:
            self.add_embedding = None

        def spec(i: int, num_layers: int, cross_attention: bool, transformer_layers: int) -> BlockSpec:
            return BlockSpec(
                num_layers=num_layers,
                temb_channels=temb,
                groups=config.norm_num_groups,
                eps=config.norm_eps,
                cross_attention=cross_attention,
                heads=config.num_attention_heads[i],
                context_dim=config.cross_attention_dim[i],
                transformer_layers=transformer_layers,
                use_linear_projection=config.use_linear_projection,
            )

        down_blocks = []
        for i, block_type in enumerate(config.down_block_types):
            down_spec = spec(
                i,
                config.layers_per_block[i],
                block_type == "CrossAttnDownBlock2D",
                config.transformer_layers_per_block[i],
            )
            in_channels = channels[i - 1] if i > 0 else channels[0]
            down_blocks.append(DownBlock2D(in_channels, channels[i], down_spec, i < n - 1, opts, rngs=rngs))
        self.down_blocks = nnx.List(down_blocks)

        mid_spec = spec(n - 1, 1, True, config.transformer_layers_per_block[-1])
        self.mid_block = UNetMidBlock2DCrossAttn(channels[-1], mid_spec, config.mid_block_scale_factor, opts, rngs=rngs)

        # Up blocks mirror the down blocks: block j pairs with down block n-1-j.
        up_blocks = []
        prev_output = channels[-1]
        for j, block_type in enumerate(config.up_block_types):
            i = n - 1 - j
            up_spec = spec(
                i,
                config.layers_per_block[i] + 1,
                block_type == "CrossAttnUpBlock2D",
                config.transformer_layers_per_block[i],
            )
            in_channels = channels[max(i - 1, 0)]
            up_blocks.append(UpBlock2D(in_channels, prev_output, channels[i], up_spec, j < n - 1, opts, rngs=rngs))
            prev_output = channels[i]
        self.up_blocks = nnx.List(up_blocks)

        self.conv_norm_out = group_norm(channels[0], config.norm_num_groups, config.norm_eps, opts, rngs)
        self.conv_out = conv(channels[0], config.out_channels, config.conv_out_kernel, opts, rngs)

    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array,
        encoder_hidden_states: jax.Array,
        text_embeds: jax.Array | None = None,
        time_ids: jax.Array | None = None,
    ) -> jax.Array:
        """sample: (B, H, W, C); timesteps: (B,) or scalar; encoder_hidden_states:
        (B, L, D); SDXL: text_embeds (B, pooled) and time_ids (B, 6). Returns fp32."""
        config = self.config
        factor = 2**config.num_upsamplers
        if sample.shape[1] % factor or sample.shape[2] % factor:
            raise ValueError(
                f"latent size {sample.shape[1]}x{sample.shape[2]} must be a multiple of {factor} "
                f"for this UNet's {config.num_upsamplers} downsamplings."
            )
        batch = sample.shape[0]
        dtype = self.opts.dtype
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))

        t_emb = sinusoidal_embedding(timesteps, config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift)
        emb = self.time_embedding(t_emb.astype(dtype))
        if self.add_embedding is not None:
            if text_embeds is None or time_ids is None:
                raise ValueError("this UNet (SDXL, addition_embed_type='text_time') needs text_embeds and time_ids.")
            time_emb = sinusoidal_embedding(
                time_ids.reshape(-1), config.addition_time_embed_dim, config.flip_sin_to_cos, config.freq_shift
            ).reshape(batch, -1)
            emb = emb + self.add_embedding(
                jnp.concatenate([text_embeds.astype(jnp.float32), time_emb], -1).astype(dtype)
            )

        if config.center_input_sample:
            sample = 2 * sample - 1.0
        h = self.conv_in(sample.astype(dtype))
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, encoder_hidden_states)
            skips.extend(block_skips)
        h = self.mid_block(h, emb, encoder_hidden_states)
        for block in self.up_blocks:
            num_skips = len(block.resnets)
            h = block(h, skips[-num_skips:], emb, encoder_hidden_states)
            skips = skips[:-num_skips]
        h = self.conv_out(nnx.silu(self.conv_norm_out(h)))
        return h.astype(jnp.float32)
