"""zppo_jax: Zone of Proximal Policy Optimization for Qwen3.5 in JAX."""
