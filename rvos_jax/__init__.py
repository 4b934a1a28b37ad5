"""rvos-jax: MLRL-SA (CVPR 2022) in JAX/Flax."""

from rvos_jax import xla_flags as _xla_flags

# Before any JAX computation creates the backend: see rvos_jax/xla_flags.py.
_xla_flags.apply()
