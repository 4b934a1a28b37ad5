"""rvos_jax.progress: the lines inference prints on long loops (a fake clock, no sleeping)."""

from rvos_jax import progress


def test_lines_count_rate_and_eta_at_most_every_interval():
  now, lines = [0.0], []
  log = progress.ProgressLog('predict valid', 200, 'expressions', every_s=10.0,
                             clock=lambda: now[0], log=lines.append)
  now[0] = 5.0
  log.update(10)  # 5 s since the start: too early for a line
  assert lines == []
  now[0] = 20.0
  log.update(50)  # 2.5 expressions/s, 150 to go: 60 s
  assert lines == ['predict valid: 50/200 expressions (25%)  2.50/s  elapsed 0:00:20  '
                   'ETA 0:01:00']
  now[0] = 25.0
  log.update(60)  # 5 s after the last line: none
  assert len(lines) == 1
  now[0] = 4000.0
  log.update(200)
  log.finish()
  assert lines[-1].startswith('predict valid: 200/200 expressions (100%)')
  assert lines[-1].endswith('elapsed 1:06:40  ETA 0:00:00')
  assert len(lines) == 3


def test_unknown_total_and_an_estimate_passed():
  now, lines = [0.0], []
  log = progress.ProgressLog('segment clip.mp4', None, 'windows', clock=lambda: now[0],
                             log=lines.append)
  now[0] = 2.0
  log.update(30)
  log.finish()
  assert lines == ['segment clip.mp4: 30 windows  15/s  elapsed 0:00:02']
  est = progress.ProgressLog('predict valid (host 1)', 10, 'expressions', clock=lambda: now[0],
                             log=lines.append)
  now[0] = 4.0
  est.update(12)  # a host's share was an estimate: capped at 100%, ETA 0
  est.finish()
  assert '12/10 expressions (100%)' in lines[-1] and lines[-1].endswith('ETA 0:00:00')
  assert progress.format_duration(3 * 3600 + 61.4) == '3:01:01'
