"""The small world: BalancedDPO's whole loop on a CPU, where no real weights can be downloaded.

Procedural prompts and their renders (``scene``), four weight-free scorers that
conflict and a hidden human (``scorers``), a tiny SD-style pipeline whose UNet
``bdpo_jax.train`` pretrains (``pipeline``, ``stages``), and the commands:
``world.demo`` (one draw, BalancedDPO against the base), ``world.replicate``
(every variant over many draws, the paper's tables with intervals over draws),
``world.select`` (settings chosen on the validation prompts) and
``world.diagnosis`` (why a model wins or loses a metric). The only package that
uses both sides: JAX to train, torch to sample and score.
"""
