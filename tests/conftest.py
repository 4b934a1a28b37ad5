"""The "parity figures" table at the end of a pytest run, and a compilation cache for the run.

Compilation cache: many tests (and the main.py / benchmark subprocesses they start) compile the
same programs, the smoke model's steps above all, each through its own jax.jit. JAX's
persistent cache (in a temporary folder for this run, removed at its end; inherited by
subprocesses through the environment) compiles each once. Measured on a fresh clone, the same
hour: the default suite 557 s with it, 579 s without (JAX_ENABLE_COMPILATION_CACHE=false); a
subset (test_train, test_precision, test_model_parity, test_main) 307 s against 395 s.
XLA_FLAGS are part of the cache key, so tests that set their own flags get their own entries.
A JAX_COMPILATION_CACHE_DIR you set yourself is used as it is.

tests/parity.py appends every measured parity figure (kind, what, measured, tolerance) to
`parity.FIGURES`. After each test the figures move to the test's `user_properties`, which travel
with its report (to a pytest-xdist controller, and into --junitxml), and the terminal summary
prints the worst figure per test and kind, so that `pytest -q` shows them for passing tests too.
"""

from __future__ import annotations

import collections
import os
import shutil
import sys
import tempfile

import pytest

_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # set before any test imports JAX
  _OWN_CACHE = tempfile.mkdtemp(prefix='rvos_jax_test_jit_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)

_PROPERTY = 'parity'
# nodeid -> (outcome, [(kind, what, measured, tolerance), ...]), in report order.
_FIGURES: dict[str, tuple[str, list]] = {}
_KINDS = ('out', 'loss', 'grad')


def _drain() -> list[tuple[str, str, float, float]]:
  # Looked up, not imported: a run that collects no parity test should not import torch and jax.
  parity = sys.modules.get('tests.parity')
  if parity is None:
    return []
  figures = list(parity.FIGURES)
  parity.FIGURES.clear()
  return figures


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
  _drain()  # nothing recorded outside a test's call phase is attributed to it
  try:
    return (yield)
  finally:  # a failing check recorded its figure before it raised: keep it
    item.user_properties.extend((_PROPERTY, fig) for fig in _drain())


def pytest_runtest_logreport(report):
  if report.when != 'call':
    return
  figures = [tuple(value) for name, value in report.user_properties if name == _PROPERTY]
  if figures:
    _FIGURES[report.nodeid] = (report.outcome, figures)


def _ratio(figure) -> float:
  # Ranked by measured / tolerance, so a check with its own tolerance ranks fairly; NaN worst.
  _, _, measured, tolerance = figure
  return float('inf') if measured != measured else measured / tolerance


def pytest_terminal_summary(terminalreporter):
  if not _FIGURES:
    return
  tr = terminalreporter
  tr.write_sep('=', 'parity figures')
  tr.write_line('worst per test: out = max|diff| / max|ref|, loss = |diff| / |ref|, '
                'grad = ||diff|| / ||ref|| of a leaf; measured<=tolerance [check] xN checks')
  every = []
  for nodeid, (outcome, figures) in _FIGURES.items():
    by_kind = collections.defaultdict(list)
    for fig in figures:
      by_kind[fig[0]].append(fig)
    every.extend((nodeid, fig) for fig in figures)
    cells = []
    for kind in sorted(by_kind, key=lambda k: (_KINDS + (k,)).index(k)):
      _, what, measured, tol = max(by_kind[kind], key=_ratio)
      what = what if len(what) <= 40 else what[:37] + '...'
      cells.append(f'{kind} {measured:.1e}<={tol:.0e} [{what}] x{len(by_kind[kind])}')
    flag = '' if outcome == 'passed' else f' {outcome.upper()}'
    tr.write_line(f'{nodeid.removeprefix("tests/")}{flag}: ' + '; '.join(cells))
  nodeid, (kind, what, measured, tol) = max(every, key=lambda e: _ratio(e[1]))
  tr.write_line(f'{len(every)} checks in {len(_FIGURES)} tests; closest to its tolerance: '
                f'{kind} {measured:.1e}<={tol:.0e} [{what}] in {nodeid}')
