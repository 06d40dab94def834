"""BalancedDPO in JAX: the sharded Diffusion-DPO trainer and its Flax UNet.

Imports nothing here, so that the torch side can import the modules without
JAX that both sides share (``storage``, ``cache``, ``records``, ``errors``).
"""
