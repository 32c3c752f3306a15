"""The paper's experiments as commands: ablation sweeps (``sweep``), the linear-combination baseline of Table 1
(``linear_combination``), and small SR models for teacher ablations (``sr_models``). Make targets: mk/experiments.mk."""
