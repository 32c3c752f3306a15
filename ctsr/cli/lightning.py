"""``ctsr fit | validate | test | predict``: the LightningCLI, with the run folder's rules.

The model and the data module are chosen by ``class_path`` in the YAML (``experiments/*.yaml``). Every run lives
in one folder, ``<save_dir>/<name>`` of its TensorBoard logger: event files, ``checkpoints/``, the resolved
``config.yaml`` (a resume adds ``config.resume-N.yaml`` beside it, never overwriting it), ``run.json`` (the run's
id: a moved folder is adopted, a copied one refused unless ``--fork NAME``), ``run.lock`` while a process works in it
and, after evaluation, the metric tables.

Reliability (docs/reliability.md): checkpoints and the metric/backbone weight caches are read with
``weights_only=True`` (a pickle cannot run code); checkpoints, exports, tables and images are written atomically, a
full disk or a read-only folder is one line naming the path; ``--ckpt_path last`` is the readable checkpoint with
the highest recorded step, never step 0; a resume with other settings is refused unless ``--resume_with_changes
true``; every float setting must be finite; SIGINT/SIGTERM save ``last.ckpt`` and exit 130/143; non-finite
losses/gradients are skipped and stop the run after ``--nonfinite_patience`` in a row
(:class:`ctsr.lit.common.RunGuard`). The training bar counts steps out of ``max_steps``
(:class:`ctsr.callbacks.progress.StepProgressBar`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ctsr.errors import ConfigError, CTSRError

_LOCKS: list = []  # the run locks this process holds; main() releases them however it ends
# Folder and file names that are not valid UTF-8 reach Python as surrogates (U+DC80–U+DCFF, one per byte); YAML is
# UTF-8 text and cannot hold them. In the config (command line, --config files, the saved config.yaml) such a byte
# is the private-use character U+F0080–U+F00FF and turns back into the file system's byte when the config is read.
_RAW_BYTES, _STAND_INS = re.compile("[\udc80-\udcff]"), re.compile("[\U000f0080-\U000f00ff]")


def _map_strings(value, pattern: re.Pattern, shift: int):
    if isinstance(value, str):
        return pattern.sub(lambda m: chr(ord(m.group()) + shift), value)
    if isinstance(value, dict):
        return {_map_strings(k, pattern, shift): _map_strings(v, pattern, shift) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_strings(v, pattern, shift) for v in value)
    return value


def _yaml_with_raw_bytes() -> None:
    """jsonargparse's YAML loader and dumper with undecodable file-name bytes (see ``_RAW_BYTES``), once."""
    import yaml
    from jsonargparse import get_loader, set_dumper, set_loader

    load = get_loader("yaml")
    if getattr(load, "ctsr_raw_bytes", False):
        return
    shift = 0xF0000 - 0xDC00

    def loader(text):
        return _map_strings(load(_map_strings(text, _RAW_BYTES, shift)), _STAND_INS, -shift)

    def dumper(data) -> str:  # jsonargparse's own yaml dump, with the stand-ins for undecodable bytes
        return yaml.safe_dump(_map_strings(data, _RAW_BYTES, shift), default_flow_style=False, allow_unicode=True,
                              sort_keys=False)

    loader.ctsr_raw_bytes = True
    set_loader("yaml", loader, (yaml.YAMLError,))
    set_dumper("yaml", dumper)


def _lightning_cli(args: list[str] | None = None):
    import lightning as L
    import yaml
    from lightning.pytorch.callbacks.progress import ProgressBar
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
    from lightning.pytorch.plugins.io import CheckpointIO

    from ctsr.callbacks.progress import StepProgressBar
    from ctsr.errors import non_finite_entries
    from ctsr.lit.common import AtomicCheckpointIO, RunGuard, checkpoint_targets
    from ctsr.runs import (
        RunLock,
        adopt_run,
        changed_keys,
        fork_run_info,
        new_run_info,
        next_config_name,
        read_run_info,
        resolve_last,
        stamp,
        write_run_info,
    )

    class _FirstBatch(L.Callback):
        """Marks the run folder as started at its first batch: a command that fails before it leaves no folder."""

        def _started(self, trainer, *args) -> None:
            _STARTED.add(Path(trainer.log_dir or trainer.default_root_dir))

        on_train_batch_start = on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _started

    class CTSRCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--resume_with_changes", type=bool, default=False,
                                help="allow `--ckpt_path` to resume a run with settings other than its config.yaml "
                                     "(each resume's config is kept as config.resume-N.yaml)")
            parser.add_argument("--nonfinite_patience", type=int, default=3,
                                help="stop after this many optimiser steps in a row skipped for a non-finite loss "
                                     "or gradient (default 3)")
            parser.add_argument("--fork", type=str | None, default=None,
                                help="with `fit --ckpt_path`: continue that checkpoint as a new run NAME (same "
                                     "save_dir, a new run id, the run it came from recorded in its run.json), e.g. "
                                     "from a copied run folder")

        def init_parser(self, **kwargs):
            # a command line that does not parse raises (one line from main()) instead of printing the usage block
            kwargs.setdefault("exit_on_error", False)
            return super().init_parser(**kwargs)

        def _parse_ckpt_path(self) -> None:
            """Lightning would overlay a checkpoint's saved hyperparameters on the config. Here the YAML (saved as
            config.yaml in every run folder) is the one record of a run, and ``ctsr test --ckpt_path`` may load a
            checkpoint into another module (``TrainedModel``): checkpoints carry weights and loop state only."""

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            for key, value in non_finite_entries(config):
                if key != "config" and not key.startswith("config."):
                    raise ConfigError(f"{key}: must be a finite number, got {value}")
            self._fork_source = None
            if config.get("fork") is not None:
                self._prepare_fork(config, str(config["fork"]))

        def _prepare_fork(self, config, name: str) -> None:
            """``--fork NAME``: the run named in the config is the source; the logger writes into NAME instead."""
            if self.subcommand != "fit" or config.get("ckpt_path") is None:
                raise ConfigError("--fork: only with `ctsr fit … --ckpt_path` (the checkpoint to continue as a new "
                                  "run)")
            if not name or name in (".", "..") or "/" in name or os.sep in name:
                raise ConfigError(f"--fork: '{name}' must be a plain run name (no '/')")
            logger = config.get("trainer.logger")
            args = logger.get("init_args") if hasattr(logger, "get") else None
            if args is None or args.get("name") in (None, "") or args.get("save_dir") is None:
                raise ConfigError("--fork: needs a logger with a save_dir and a name (trainer.logger.init_args)")
            version = args.get("version")
            if version is None:
                raise ConfigError("--fork: needs a fixed trainer.logger.init_args.version (e.g. \"\")")
            if args["name"] == name:
                raise ConfigError(f"--fork: '{name}' is the run's own name; give the new run another one")
            version = version if isinstance(version, str) else f"version_{version}"
            self._fork_source = Path(str(args["save_dir"])) / str(args["name"]) / version
            config["trainer.logger.init_args.name"] = name

        def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
            patience = self._get(self.config_init, "nonfinite_patience", 3)
            callbacks = list(callbacks) + [RunGuard(patience), _FirstBatch()]
            if config.get("enable_progress_bar") is not False and not any(
                    isinstance(c, ProgressBar) for c in [*callbacks, *(config.get("callbacks") or [])]):
                callbacks.append(StepProgressBar())  # steps out of max_steps, not `Epoch 14/-2`
            plugins = config.get("plugins")
            plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                plugins.append(AtomicCheckpointIO())
            config["plugins"] = plugins
            return super()._instantiate_trainer(config, callbacks)

        def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
            kwargs = super()._prepare_subcommand_kwargs(subcommand)
            if "weights_only" in self._subcommand_method_arguments[subcommand]:
                kwargs["weights_only"] = True  # never unpickle code, whatever the command line says
            if getattr(self, "_resolved_ckpt", None) is not None:
                kwargs["ckpt_path"] = self._resolved_ckpt
            return kwargs

        # -- the run folder --------------------------------------------------------------------------------------
        def _run_dir(self) -> Path:
            return Path(self.trainer.log_dir or self.trainer.default_root_dir)

        def _ckpt_dir(self, run_dir: Path) -> Path:
            mc = self.trainer.checkpoint_callback
            dirpath = getattr(mc, "dirpath", None)
            return Path(dirpath) if dirpath else run_dir / "checkpoints"

        def _config_callback(self):
            return next((c for c in self.trainer.callbacks if isinstance(c, SaveConfigCallback)), None)

        def _take_folder(self) -> Path:
            run_dir = self._run_dir()
            try:
                str(run_dir.resolve()).encode("utf-8")
            except UnicodeEncodeError:
                from ctsr.errors import shown

                raise ConfigError(f"the run folder '{shown(run_dir)}' (trainer.logger.init_args.save_dir/name) holds "
                                  f"bytes that are not UTF-8, and TensorBoard writes only to UTF-8 paths: give the "
                                  f"run a UTF-8 name (data folders and model files may keep such names)") from None
            if self._rank_zero():
                created = _new_folder(run_dir)
                _LOCKS.append(RunLock.acquire(run_dir))
                if created is not None:  # removed again if the command fails before its first batch
                    _NEW_RUNS[run_dir] = created
            return run_dir

        def _resolve_ckpt(self, ckpt, run_dir: Path) -> dict | None:
            """The checkpoint as a file path (``last`` resolved), read once here: a crafted or corrupt file fails
            with one line before Lightning touches it."""
            from ctsr.checkpoints import load_checkpoint

            self._resolved_ckpt = None
            if ckpt is None:
                return None
            if str(ckpt) == "last":
                path, loaded = resolve_last(self._ckpt_dir(run_dir), run_dir)
            elif str(ckpt) in ("best", "hpc", "registry"):
                return None
            else:
                path, loaded = Path(ckpt), load_checkpoint(ckpt, "--ckpt_path")
                if "pytorch-lightning_version" in loaded and isinstance(loaded.get("state_dict"), dict):
                    self._resolved_ckpt = str(path)
                    return loaded
                from ctsr.errors import shown

                raise ConfigError(f"--ckpt_path: '{shown(path)}' is not a Lightning checkpoint of `ctsr fit` (no "
                                  f"'pytorch-lightning_version' and 'state_dict'); an exported model file goes to "
                                  f"--model.init_args.model_path")
            self._resolved_ckpt = str(path)
            return loaded

        def before_fit(self) -> None:
            ckpt = self.config_init[self.subcommand].get("ckpt_path")
            run_dir = self._run_dir()
            if ckpt is None:
                self._take_folder()
                if self._has_checkpoints(run_dir):
                    raise CTSRError(
                        f"the run folder '{run_dir}' already holds checkpoints. Resume it with `--ckpt_path last`, "
                        f"or start a new run with `--trainer.logger.init_args.name NEW_NAME`.")
                self._start_run(run_dir, new_run_info(run_dir))
                return
            fork = getattr(self, "_fork_source", None)
            if fork is not None:
                if self._explicit_ckpt_dir():
                    raise ConfigError("--fork: the ModelCheckpoint's dirpath is set explicitly; a fork writes its "
                                      "checkpoints into its own run folder (leave dirpath unset)")
                # nothing is written before every check has passed: a refused fork leaves no folder behind
                if self._has_checkpoints(run_dir):
                    raise ConfigError(f"--fork: the run folder '{run_dir}' already holds checkpoints; choose another "
                                      f"NAME for the new run")
                loaded = self._resolve_ckpt(ckpt, fork)
                if loaded is None:
                    raise ConfigError(f"--fork: needs `--ckpt_path last` or a checkpoint file, got '{ckpt}'")
                source = fork if str(ckpt) == "last" else _run_folder(Path(self._resolved_ckpt or fork))
                self._check_settings(source, run_dir)
                self._take_folder()
                info = fork_run_info(run_dir, source, self._resolved_ckpt or str(ckpt), loaded)
                self._start_run(run_dir, info, resumed=True, fresh=True)
                return
            self._take_folder()
            loaded = self._resolve_ckpt(ckpt, run_dir)
            info = adopt_run(run_dir, self._resolved_ckpt or str(ckpt), loaded) if self._rank_zero() else None
            self._check_settings(run_dir, run_dir)
            self._start_run(run_dir, info, resumed=True)

        @staticmethod
        def _rank_zero() -> bool:
            return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0 and int(os.environ.get("NODE_RANK", "0") or 0) == 0

        def _explicit_ckpt_dir(self) -> bool:
            return getattr(self.trainer.checkpoint_callback, "dirpath", None) is not None

        def _has_checkpoints(self, run_dir: Path) -> bool:
            ckpt_dir = self._ckpt_dir(run_dir)
            return ckpt_dir.is_dir() and any(ckpt_dir.glob("*.ckpt"))

        def _check_settings(self, source: Path, run_dir: Path) -> None:
            """A resume with other settings than the run's config.yaml (``source``: the forked run's) is refused
            unless --resume_with_changes; the settings of each resume are kept as config.resume-N.yaml."""
            saver = self._config_callback()
            old_file = source / "config.yaml"
            if saver is None or not old_file.is_file():
                return
            new = yaml.safe_load(saver.parser.dump(saver.config, skip_none=False))
            old = yaml.safe_load(old_file.read_text()) or {}
            changed = changed_keys(old, new)
            if changed and not self.config_init[self.subcommand].get("resume_with_changes"):
                shown = ", ".join(changed[:8]) + (" …" if len(changed) > 8 else "")
                raise ConfigError(
                    f"--ckpt_path: resuming '{source}' with settings other than its config.yaml: {shown}. "
                    f"The optimiser and loops continue from the checkpoint; to resume anyway give "
                    f"--resume_with_changes true (the new settings are kept as config.resume-N.yaml), or start a "
                    f"new run")
            if (run_dir / "config.yaml").is_file():
                saver.config_filename = next_config_name(run_dir, "resume")

        def _start_run(self, run_dir: Path, info: dict | None, resumed: bool = False, fresh: bool = False) -> None:
            """Record the run's identity (run.json, rank 0) and have every checkpoint carry it; a resume moves the
            callbacks' saved record of files onto this run's checkpoint folder (AtomicCheckpointIO)."""
            from ctsr.checkpoints import check_writable

            check_writable(self._ckpt_dir(run_dir), "checkpoints")  # before any step: a read-only folder is one line
            if self._rank_zero() and info is not None:
                if read_run_info(run_dir, strict=False) != info:
                    write_run_info(run_dir, info)
            else:
                info = read_run_info(run_dir, strict=False)
            io = self.trainer.strategy.checkpoint_io
            if not isinstance(io, AtomicCheckpointIO):
                return
            trainer = self.trainer
            io.set_run(stamp(info) if info else None, (lambda: checkpoint_targets(trainer)) if resumed else None,
                       fresh)

        def _before_evaluation(self) -> None:
            run_dir = self._take_folder()
            loaded = self._resolve_ckpt(self.config_init[self.subcommand].get("ckpt_path"), run_dir)
            saver = self._config_callback()
            if saver is not None and (run_dir / "config.yaml").is_file():
                saver.config_filename = next_config_name(run_dir, self.subcommand)
            if loaded is not None and isinstance(loaded.get("global_step"), int):
                # the step the weights were trained to: the tables and TensorBoard say which step was evaluated
                loop = self.trainer.fit_loop.epoch_loop
                loop.automatic_optimization.optim_progress.optimizer.step.total.completed = loaded["global_step"]
                loop._batches_that_stepped = loaded["global_step"]

        before_validate = before_test = before_predict = _before_evaluation

    return CTSRCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
        parser_kwargs={"prog": "ctsr", "description": "CTSR: controllable fidelity-realness trade-off distillation for x4 SR: "
                       "training and evaluation from YAML configs (`ctsr --help` lists every command)."},
    )


_NEW_RUNS: dict[Path, Path] = {}  # run folder → the topmost folder this process created for it
_STARTED: set[Path] = set()       # run folders whose command reached its first batch


def _new_folder(run_dir: Path) -> Path | None:
    """The topmost folder that creating ``run_dir`` would create (None when it exists)."""
    top = None
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            break
        top = folder
    return top


def _remove_unstarted_runs() -> None:
    """Remove the run folders (and their new parents) this process created for a command that failed before its
    first batch: only start-up files are in them (run.json, config.yaml, an event file), never a checkpoint."""
    import shutil

    while _NEW_RUNS:
        run_dir, top = _NEW_RUNS.popitem()
        if run_dir in _STARTED or not top.is_dir() or any(top.rglob("*.ckpt")):
            continue
        shutil.rmtree(top, ignore_errors=True)


def _run_folder(ckpt: Path) -> Path:
    """The run folder of a checkpoint file: ``runs/x`` for ``runs/x/checkpoints/last.ckpt``."""
    parent = ckpt.parent
    return parent.parent if parent.name == "checkpoints" else parent


def run(argv: list[str] | None = None) -> int:
    """Run the LightningCLI on ``argv`` (None: ``sys.argv``); the run locks are released however it ends, and a
    run folder created for a command that failed before its first batch is removed."""
    finished = False
    try:
        _yaml_with_raw_bytes()
        _lightning_cli(argv)
        finished = True
        return 0
    finally:
        while _LOCKS:
            _LOCKS.pop().release()
        if finished:
            _NEW_RUNS.clear()
        _remove_unstarted_runs()
        _STARTED.clear()
