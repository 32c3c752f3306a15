"""Mechanism lab: a toy world where CTSR's claims are measured on the CPU in a few minutes.

    python -m ctsr.toy.lab --out results/toy        # report.md, summary.json, results.json and PNG figures

- :mod:`ctsr.toy.world` — ``MixtureWorld``: a Gaussian mixture in R^d, y = A·z + noise, and the exact answers
  (noised-mixture ε, posterior weights / mean / samples, log-density); metrics ``mse``, ``energy_distance``.
- :mod:`ctsr.toy.models` — ``ToyUNet`` (ε-prediction MLP), ``ToyGenerator`` (OSEDiff's one-step generator in the
  student protocol of ``DualTeacherLoss``), ``FrozenEpsTeacher`` / ``ExactEpsTeacher`` (T_r), ``PosteriorMeanSR``
  (the model ``AnchoredTeacher`` wraps as T_f), ``ToyControllableSR`` (the project's ``ControllableSR``).
- :mod:`ctsr.toy.train` — ``pretrain``, ``stage1`` (the project's ``DualTeacherLoss``), ``stage2`` /
  ``toy_stage2_terms`` (the project's ``ctsr.losses.stage2.stage2_terms``, called as ``ControllabilityDistillation``
  calls it), ``stage1_conditional`` and ``train_delta_knob`` (beyond the chord), ``EvalSet``.
- :mod:`ctsr.toy.lab` — ``run_lab(out, LabConfig())``: every experiment, the figures (:mod:`ctsr.toy.figures`)
  and the report (:mod:`ctsr.toy.report`).

Nothing here is a copy of the project's losses or models: the toy supplies networks and teachers in the project's
protocols and calls the project's code.
"""
