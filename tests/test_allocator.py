"""rvos_jax/allocator.py: which allocator each choice means, and main.py's re-execution."""

import os
import subprocess
import sys
import textwrap

import pytest

from rvos_jax import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _libraries(monkeypatch, **found):
  monkeypatch.setattr(allocator, 'find_library', lambda name: found.get(name))


def test_resolve(monkeypatch):
  _libraries(monkeypatch, tcmalloc='libtcmalloc_minimal.so.4', jemalloc='libjemalloc.so.2')
  assert allocator.resolve('auto') == ('tcmalloc', {'LD_PRELOAD': 'libtcmalloc_minimal.so.4'})
  assert allocator.resolve('jemalloc') == ('jemalloc', {'LD_PRELOAD': 'libjemalloc.so.2'})
  assert allocator.resolve('system') == ('system', {})
  name, env = allocator.resolve('glibc_tuned')
  assert name == 'glibc_tuned' and env['MALLOC_MMAP_MAX_'] == '0'
  assert int(env['MALLOC_TRIM_THRESHOLD_']) == 2**64 - 1
  _libraries(monkeypatch)  # nothing installed: auto falls back, an explicit choice is refused
  assert allocator.resolve('auto')[0] == 'glibc_tuned'
  with pytest.raises(ValueError, match='apt install libtcmalloc-minimal4'):
    allocator.resolve('tcmalloc')
  with pytest.raises(ValueError, match='apt install libjemalloc2'):
    allocator.resolve('jemalloc')
  with pytest.raises(ValueError, match="RVOS_JAX_ALLOCATOR='tcmaloc': expected one of auto"):
    allocator.resolve('tcmaloc')


def test_environment_puts_the_allocator_first(monkeypatch):
  _libraries(monkeypatch, tcmalloc='libtcmalloc_minimal.so.4')
  env = allocator.environment('auto', {'LD_PRELOAD': 'libother.so', 'PATH': '/bin'})
  assert env['LD_PRELOAD'] == 'libtcmalloc_minimal.so.4:libother.so'
  assert env[allocator.ACTIVE] == 'tcmalloc' and env['PATH'] == '/bin'


def test_reexec_only_once(monkeypatch):
  calls = []
  monkeypatch.setattr(os, 'execve', lambda *a: calls.append(a))
  _libraries(monkeypatch, tcmalloc='libtcmalloc_minimal.so.4')
  allocator.reexec({allocator.ACTIVE: 'tcmalloc'})  # already the second start
  environ = {allocator.ENV: 'system'}
  allocator.reexec(environ)  # nothing to change: no new process
  assert not calls and environ[allocator.ACTIVE] == 'system'
  monkeypatch.setattr(sys, 'orig_argv', ['python3', '-u', 'main.py', '--mode', 'eval'])
  allocator.reexec({})
  (exe, argv, env), = calls
  assert exe == sys.executable and argv == [sys.executable, '-u', 'main.py', '--mode', 'eval']
  assert env['LD_PRELOAD'] == 'libtcmalloc_minimal.so.4' and env[allocator.ACTIVE] == 'tcmalloc'


def test_reexec_runs_the_same_process_again(tmp_path):
  """A real re-execution: the same pid and arguments, the second start under glibc_tuned (the
  choice that needs nothing installed); a chosen library really is loaded (jemalloc or tcmalloc,
  where this machine has one)."""
  script = tmp_path / 'entry.py'
  script.write_text(textwrap.dedent(f"""
      import os, sys
      sys.path.insert(0, {REPO!r})
      from rvos_jax import allocator
      print('start', os.getpid(), os.environ.get(allocator.ACTIVE), sys.argv[1:], flush=True)
      allocator.reexec()
      maps = open('/proc/self/maps').read()
      print('after', os.getpid(), os.environ[allocator.ACTIVE], os.environ.get('MALLOC_MMAP_MAX_'),
            'tcmalloc' in maps, 'jemalloc' in maps, flush=True)
      """))
  env = {k: v for k, v in os.environ.items() if k != allocator.ACTIVE}

  def run(choice):
    out = subprocess.run([sys.executable, '-u', str(script), '--x=1'], env={
        **env, allocator.ENV: choice}, capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.splitlines()]

  (s1, p1, a1, *args1), (s2, p2, a2, *args2), (after, p3, active, mmap, tc, je) = run(
      'glibc_tuned')
  assert (s1, s2, after) == ('start', 'start', 'after') and p1 == p2 == p3
  assert (a1, a2) == ('None', 'glibc_tuned') and args1 == args2 == ["['--x=1']"]
  assert (active, mmap) == ('glibc_tuned', '0')
  for name in ('tcmalloc', 'jemalloc'):
    if allocator.find_library(name):
      *_, (_, _, active, _, tc, je) = run(name)
      assert active == name and (tc if name == 'tcmalloc' else je) == 'True'
