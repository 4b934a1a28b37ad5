"""The memory allocator main.py runs under: a retaining one, chosen before the process starts.

Why: XLA's CPU runtime allocates each step's temporaries (XLA's estimate: 289 MiB for the
embedded training step) and frees them at its end. glibc's malloc serves blocks above its mmap
threshold with fresh mappings and unmaps them on free, so every step faults its temporaries
back in page by page (107 million minor page faults in a 13-minute run of the embedded
default). An allocator that keeps freed memory for the next step removes that work. The
embedded training step (`python -m benchmarks.model_speed --settings=embedded --frameworks=jax
--modes=train --allocator=A`, one run, 2-core CPU; benchmarks/RESULTS.md): glibc as it comes
0.668 s, glibc without mmap ('glibc_tuned') 0.491 s, jemalloc 0.564 s, tcmalloc 0.436 s.

Choices (RVOS_JAX_ALLOCATOR, default 'auto'):
  auto         tcmalloc when its shared library is installed (Debian / Ubuntu:
               `apt install libtcmalloc-minimal4`), else glibc_tuned; nothing to install.
  tcmalloc     LD_PRELOAD=libtcmalloc_minimal.so.4 (or libtcmalloc.so.4); an error if absent.
  jemalloc     LD_PRELOAD=libjemalloc.so.2; an error if absent.
  glibc_tuned  glibc with MALLOC_MMAP_MAX_=0 (every block from the heap, none mmapped) and
               MALLOC_TRIM_THRESHOLD_ at its maximum (the heap is never given back): the peak
               stays resident, freed blocks are reused without faults.
  system       whatever the process started with (nothing set; the fallback if a choice breaks
               something on your system).

LD_PRELOAD is read by the dynamic loader when a process starts and glibc's variables at its
first allocation, so `reexec()` runs main.py again (same interpreter, same arguments, same pid)
with them set; RVOS_JAX_ALLOCATOR_ACTIVE marks the second start. Subprocesses inherit the
environment. This module imports nothing heavy: it runs before JAX and TensorFlow are loaded.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping, MutableMapping

CHOICES = ('auto', 'tcmalloc', 'jemalloc', 'glibc_tuned', 'system')
ENV = 'RVOS_JAX_ALLOCATOR'
ACTIVE = 'RVOS_JAX_ALLOCATOR_ACTIVE'

# Library names ctypes.util.find_library resolves through the loader's cache (ldconfig).
_LIBRARIES = {'tcmalloc': ('tcmalloc_minimal', 'tcmalloc'), 'jemalloc': ('jemalloc',)}
_GLIBC_TUNED = {
    'MALLOC_MMAP_MAX_': '0',
    'MALLOC_TRIM_THRESHOLD_': str(2**64 - 1),
}


def find_library(name: str) -> str | None:
  """The shared library of allocator `name` ('tcmalloc' or 'jemalloc'), or None."""
  for lib in _LIBRARIES[name]:
    found = ctypes.util.find_library(lib)
    if found:
      return found
  return None


def resolve(choice: str) -> tuple[str, dict[str, str]]:
  """(the allocator `choice` means here, the environment variables it needs)."""
  if choice not in CHOICES:
    raise ValueError(f'{ENV}={choice!r}: expected one of {", ".join(CHOICES)}')
  if choice == 'system':
    return 'system', {}
  if choice == 'glibc_tuned':
    return 'glibc_tuned', dict(_GLIBC_TUNED)
  name = 'tcmalloc' if choice == 'auto' else choice
  lib = find_library(name)
  if lib is None:
    if choice == 'auto':
      return 'glibc_tuned', dict(_GLIBC_TUNED)
    raise ValueError(f'{ENV}={choice}: lib{_LIBRARIES[name][0]} is not installed (Debian / '
                     f'Ubuntu: apt install '
                     f'{"libtcmalloc-minimal4" if name == "tcmalloc" else "libjemalloc2"}); '
                     f'{ENV}=glibc_tuned needs nothing')
  return name, {'LD_PRELOAD': lib}


def environment(choice: str, environ: Mapping[str, str]) -> dict[str, str]:
  """`environ` with allocator `choice` applied (LD_PRELOAD put first) and ACTIVE set."""
  name, extra = resolve(choice)
  env = dict(environ)
  for key, value in extra.items():
    if key == 'LD_PRELOAD' and env.get(key):
      value = f'{value}:{env[key]}'
    env[key] = value
  env[ACTIVE] = name
  return env


def reexec(environ: MutableMapping[str, str] | None = None) -> None:
  """Runs this process again under the chosen allocator, unless it already does.

  Returns only when nothing needs to change (ACTIVE already set, or 'system'); otherwise the
  process image is replaced (os.execve) and this call never returns."""
  environ = os.environ if environ is None else environ
  if environ.get(ACTIVE):
    return
  env = environment(environ.get(ENV, 'auto'), environ)
  if env[ACTIVE] == 'system':
    environ[ACTIVE] = 'system'
    return
  sys.stdout.flush()
  sys.stderr.flush()
  # sys.orig_argv keeps the interpreter's own options (-m, -u, -X ...) as they were given.
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def describe(environ: Mapping[str, str] | None = None) -> str:
  """One line for the log: which allocator this process runs under."""
  environ = os.environ if environ is None else environ
  name = environ.get(ACTIVE, 'system (not set by rvos_jax.allocator)')
  if name in ('tcmalloc', 'jemalloc'):
    return f'{name} (LD_PRELOAD={environ.get("LD_PRELOAD", "")})'
  if name == 'glibc_tuned':
    hint = ('' if find_library('tcmalloc') else
            '; faster: apt install libtcmalloc-minimal4')
    return f'glibc_tuned (MALLOC_MMAP_MAX_=0, no trimming{hint})'
  return name
