"""rvos_jax/xla_flags.py: the default XLA flags only add, never override, and reach XLA."""

import os
import subprocess
import sys

from rvos_jax import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flags_are_added_after_the_users():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  out = xla_flags.apply(env)
  assert out.startswith('--xla_force_host_platform_device_count=8 ')
  for name, value in xla_flags.DEFAULTS.items():
    assert f'--{name}={value}' in out.split()
  assert xla_flags.apply(env) == out  # idempotent: a second import adds nothing


def test_a_flag_the_user_set_keeps_the_users_value():
  name = next(iter(xla_flags.DEFAULTS))
  env = {'XLA_FLAGS': f'--{name}=default'}
  assert xla_flags.apply(env) == f'--{name}=default'


def test_none_turns_them_off():
  env = {'RVOS_JAX_XLA_FLAGS': 'none'}
  assert xla_flags.apply(env) == ''
  assert 'XLA_FLAGS' not in env


def test_importing_rvos_jax_sets_the_flags_before_the_backend_starts():
  """In a fresh process: XLA accepts the flags (an unknown one aborts) and sees them."""
  code = ('import os, rvos_jax, jax.numpy as jnp; print(float(jnp.ones(3).sum())); '
          'print(os.environ["XLA_FLAGS"])')
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'RVOS_JAX_XLA_FLAGS')}
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  value, flags = proc.stdout.split('\n')[:2]
  assert value == '3.0'
  assert all(f'--{k}={v}' in flags for k, v in xla_flags.DEFAULTS.items())
