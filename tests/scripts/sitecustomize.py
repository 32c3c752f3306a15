"""Only for the subprocesses of tests/test_reliability.py (tests/scripts on PYTHONPATH): with
``CTSR_FAULT=moment:step:SIGNAL`` every Trainer gets a ``ctsr_faults.KillAt`` callback that is not part of the run's
config — so a re-run with the same command line is a true re-run (same config.yaml)."""
import os

if os.environ.get("CTSR_FAULT"):
    import lightning.pytorch as pl
    from ctsr_faults import KillAt

    _moment, _step, _signal = os.environ["CTSR_FAULT"].split(":")
    _init = pl.Trainer.__init__

    def _with_fault(self, *args, callbacks=None, **kwargs):
        callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
        _init(self, *args, callbacks=callbacks + [KillAt(_moment, int(_step), _signal)], **kwargs)

    pl.Trainer.__init__ = _with_fault
