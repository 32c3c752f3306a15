"""The LightningModules, the only classes here that subclass Lightning's: ``stage1`` (dual-teacher distillation),
``stage2`` (controllability distillation), ``evaluate`` (any trained file, without its training config), and what
they share (``common``)."""
