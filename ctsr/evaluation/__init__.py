"""Evaluation outside training: the metric tables (``tables``), ``ctsr score`` (any folder of SR images, with the
suite's protocol) and ``ctsr select-t`` (choose t on a validation split and record it in the model file)."""
