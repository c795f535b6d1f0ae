"""Native CPU kernels for decode-shaped work, called through jax.ffi, each beside a pure-jnp reference."""
