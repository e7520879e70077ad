"""``ldm report RUN``: one static page of a training run, readable offline.

:func:`read_run` gathers what a run directory holds (configs, TensorBoard scalars, image grids, checkpoints,
starts with their hardware); :func:`write_report` plots the scalars with matplotlib and writes
``RUN/report.html`` with its PNG plots in ``RUN/report/``.
"""

from ldmkit.report.page import write_report
from ldmkit.report.run_record import RunRecord, read_run

__all__ = ["RunRecord", "read_run", "write_report"]
