"""Progress lines with a rate and an ETA for the long loops of inference (a whole split, a long
video): `predict valid: 120/556 expressions (22%)  4.1/s  ETA 0:01:47`.

Lines go to absl's log (what `main.py` prints) at most every `every_s` seconds and once at the
end, so a 10-hour split and a 2-second one both print a handful, and a log file stays readable
(no carriage-return bar). The training loop reports its own steps/s and ETA.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from absl import logging


def format_duration(seconds: float) -> str:
  """0:01:47 / 12:03:00: hours:minutes:seconds, rounded to the second."""
  s = max(0, round(seconds))
  return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}'


class ProgressLog:
  """Counts done units out of `total` and logs `<what>: done/total unit (p%)  rate  ETA`.

  total may be None (unknown: no percentage, no ETA) or an estimate (a host's share of a
  split); done may pass it, the ETA then reads 0. clock and log are there for tests.
  """

  def __init__(self, what: str, total: int | None, unit: str, *, every_s: float = 10.0,
               clock: Callable[[], float] = time.monotonic,
               log: Callable[[str], None] = logging.info):
    self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
    self._clock, self._log = clock, log
    self._start = self._last = clock()
    self.done = 0

  def line(self) -> str:
    elapsed = self._clock() - self._start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    parts = [f'{self.what}: {self.done}']
    if self.total:
      parts[0] += f'/{self.total} {self.unit} ({100 * min(self.done / self.total, 1):.0f}%)'
    else:
      parts[0] += f' {self.unit}'
    parts.append(f'{rate:.2f}/s' if rate < 10 else f'{rate:.0f}/s')
    parts.append(f'elapsed {format_duration(elapsed)}')
    if self.total and rate > 0:
      parts.append(f'ETA {format_duration(max(self.total - self.done, 0) / rate)}')
    return '  '.join(parts)

  def update(self, done: int) -> None:
    """Sets the count of finished units; logs if `every_s` passed since the last line."""
    self.done = done
    now = self._clock()
    if now - self._last >= self.every_s:
      self._last = now
      self._log(self.line())

  def finish(self) -> None:
    self._log(self.line())
