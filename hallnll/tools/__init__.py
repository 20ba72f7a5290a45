"""What stands around the method (the core is ``hallnll``'s top-level modules):

- the command line: :mod:`~hallnll.tools.cli` (``hallnll ...``, ``python -m hallnll ...``);
- many runs: :mod:`~hallnll.tools.jobs` (one skip rule, one runner), :mod:`~hallnll.tools.cluster`
  (a SLURM job array), :mod:`~hallnll.tools.reproduce` with :mod:`~hallnll.tools.tables` (the
  paper's tables), :mod:`~hallnll.tools.fidelity` (the CPU-scale grid on real CIFAR-10);
- speed: :mod:`~hallnll.tools.bench` (``hallnll bench``) and what it stands on;
- the notebooks' helpers: :mod:`~hallnll.tools.notebook` (setup, papermill),
  :mod:`~hallnll.tools.analysis` (the steps of a run measured against the truth) and
  :mod:`~hallnll.tools.figures` (every plot). They compute nothing of the method: they call
  :class:`hallnll.run.Run`'s steps.
"""
