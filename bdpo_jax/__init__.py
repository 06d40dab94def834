"""BalancedDPO in JAX: the sharded Diffusion-DPO trainer and its Flax UNet."""
