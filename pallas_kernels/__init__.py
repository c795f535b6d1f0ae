"""Attention kernels for spectax: each kernel beside a pure-jnp reference with the same signature."""
