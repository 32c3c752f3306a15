"""The one LightningDataModule both stages share: HR crops on the loader workers, degradation on the device.

Training batches arrive as ``{"hr"}``; ``on_after_batch_transfer`` adds ``"lr"`` by running the degradation model
on the batch's device with a ``torch.Generator`` of its own. Validation/test batches either carry real ``"lr"``
(paired folders) or are degraded with a fixed seed per image, so every run and every batch size sees the same LR.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader

from ctsr.data.datasets import (
    EpochSampler,
    HRTrainDataset,
    HRValDataset,
    PairedDataset,
    PairedTrainDataset,
    PairListDataset,
    collect_files,
    match_pairs,
    missing_folder_hint,
    read_pair_list,
)
from ctsr.data.degradations import RealESRGANDegradation, usm_sharp
from ctsr.data.images import list_images
from ctsr.errors import DataError, check, shown


class ResumableLoader(DataLoader):
    """A DataLoader Lightning sees as resumable: the position is the data module's (saved in its state, applied to
    the :class:`EpochSampler` on resume), so the loader's own state is empty."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class BicubicDegradation(nn.Module):
    """Bicubic ×1/4 (antialiased): the simplest LR, for smoke runs and as a reference point."""

    def forward(self, hr: Tensor, generator: torch.Generator | None = None, seeds=None) -> Tensor:
        lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
        return (lr.clamp(0, 1) * 255).round() / 255


TASK_SCALE = {"sr": 4, "lle": 1}


class SRDataModule(L.LightningDataModule):
    """HR folders → (LR, HR) batches (``task: sr``, ×4), or low-/normal-light pairs (``task: lle``, same size).

    Args:
        task: ``sr`` (×4 super-resolution, the paper) or ``lle`` (low-light enhancement, Table 9: input and target
            of the same size; paired training data, e.g. LOL-v2-synthetic's Low/Normal folders, or normal-light
            folders darkened on the device, :class:`~ctsr.data.lowlight.SyntheticDarkening`).
        train_pairs: paired training folders ``[[lr_dir, hr_dir], …]`` (matched by name; no synthetic degradation).
        train_pair_meta / test_pair_meta: pair lists (``LR_PATH HR_PATH`` per line, relative to the list;
            ``data/lolv2_meta.py`` writes LOL-v2's).
        train_dirs: folders of HR images (searched recursively), merged.
        train_meta: meta-info list files (one path per line, relative to the list), merged with ``train_dirs``.
        val_dirs: HR-only folders for validation (degraded — or darkened — with a fixed seed per image).
        val_pairs: paired folders ``[[lr_dir, hr_dir], …]`` for validation (real LR, no degradation).
        test_dirs / test_pairs: the same for ``ctsr test``.
        crop_size: HR training crop (the LR is crop_size/4, or the same size for ``lle``); a multiple of 32.
        val_crop_size: HR centre crop of validation/test images (None: whole images, use batch 1).
        small_images: training images smaller than the crop are ``pad``-ded (reflect) or ``skip``-ped.
        flip / rotate: training augmentation.
        degradation: the LR model run on the device; None = the Real-ESRGAN second-order model (DESIGN §7), or
            :class:`~ctsr.data.lowlight.SyntheticDarkening` for ``lle`` (used only where there are no pairs).
        pool_size: Real-ESRGAN's sample pool ("queue"): training pairs are swapped with random pairs of a pool of
            this many, so a batch mixes degradations of earlier batches (0: off; a multiple of batch_size).
        batch_size / val_batch_size / num_workers: loader settings.
        seed: seed of the training order, crops and flips (a function of (seed, epoch, index)) and of the
            degradation's generator (offset by the rank under DDP). The generator, the pool and the position in the
            epoch are saved in every checkpoint: a resumed run continues the same stream of batches.
    """

    def __init__(
        self,
        train_dirs: list[str] | None = None,
        train_meta: list[str] | None = None,
        val_dirs: list[str] | None = None,
        val_pairs: list[list[str]] | None = None,
        test_dirs: list[str] | None = None,
        test_pairs: list[list[str]] | None = None,
        crop_size: int = 512,
        val_crop_size: int | None = 512,
        small_images: Literal["pad", "skip"] = "pad",
        flip: bool = True,
        rotate: bool = False,
        degradation: nn.Module | None = None,
        pool_size: int = 0,
        batch_size: int = 1,
        val_batch_size: int = 1,
        num_workers: int = 4,
        seed: int = 0,
        task: Literal["sr", "lle"] = "sr",
        train_pairs: list[list[str]] | None = None,
        train_pair_meta: list[str] | None = None,
        test_pair_meta: list[str] | None = None,
    ) -> None:
        super().__init__()
        check(task in TASK_SCALE, "data.task", f"must be sr or lle, got {task!r}")
        check(not ((train_pairs or train_pair_meta) and (train_dirs or train_meta)), "data.train_pairs",
              "paired training data and HR-only folders/lists cannot be mixed in one run")
        for pair in train_pairs or []:
            check(len(pair) == 2, "data.train_pairs", f"each entry is [lr_dir, hr_dir], got {pair}")
        self.task, self.scale = task, TASK_SCALE[task]
        self.train_pairs = [list(p) for p in (train_pairs or [])]
        self.train_pair_meta, self.test_pair_meta = list(train_pair_meta or []), list(test_pair_meta or [])
        check(crop_size > 0 and crop_size % 32 == 0, "data.crop_size", f"must be a positive multiple of 32, got {crop_size}")
        check(val_crop_size is None or (val_crop_size > 0 and val_crop_size % 32 == 0), "data.val_crop_size",
              f"must be a positive multiple of 32 or null, got {val_crop_size}")
        check(small_images in ("pad", "skip"), "data.small_images", f"must be pad or skip, got {small_images!r}")
        check(batch_size >= 1 and val_batch_size >= 1, "data.batch_size", "must be ≥ 1")
        check(pool_size >= 0 and pool_size % batch_size == 0, "data.pool_size",
              f"must be 0 or a multiple of batch_size ({batch_size}), got {pool_size}")
        check(isinstance(seed, int), "data.seed", f"must be an integer, got {seed!r}")
        for pair in (val_pairs or []) + (test_pairs or []):
            check(len(pair) == 2, "data.val_pairs/test_pairs", f"each entry is [lr_dir, hr_dir], got {pair}")
        self.train_dirs, self.train_meta = list(train_dirs or []), list(train_meta or [])
        self.val_dirs, self.val_pairs = list(val_dirs or []), [list(p) for p in (val_pairs or [])]
        self.test_dirs, self.test_pairs = list(test_dirs or []), [list(p) for p in (test_pairs or [])]
        self.crop_size, self.val_crop_size = crop_size, val_crop_size
        self.small_images, self.flip, self.rotate = small_images, flip, rotate
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.seed = seed
        if degradation is None:
            from ctsr.data.lowlight import SyntheticDarkening

            degradation = RealESRGANDegradation() if task == "sr" else SyntheticDarkening()
        self.degradation = degradation
        self.pool_size = pool_size
        self._pool: dict[str, Tensor] | None = None
        self.skipped: dict[str, str] = {}  # path → reason, for every training file passed over
        self._generator: torch.Generator | None = None
        self._resume_generator_state: Tensor | None = None
        self._position: tuple[int, int] = (0, 0)            # (epoch, training batches consumed in it)
        self._resume_position: tuple[int, int] | None = None
        self.train_set = self.val_set = self.test_set = None

    # -- datasets ----------------------------------------------------------------------------------------------
    def _eval_set(self, dirs: list[str], pairs: list[list[str]], flag: str):
        sets = []
        for d in dirs:
            if not Path(d).is_dir() or not list_images(d):
                raise DataError(f"data.{flag}_dirs: folder '{shown(d)}' is missing or holds no images; "
                                f"{missing_folder_hint(d)}")
            sets.append(HRValDataset(list_images(d), self.val_crop_size))
        sets += [PairedDataset(lr, hr, self.val_crop_size, self.scale) for lr, hr in pairs]
        if flag == "test" and self.test_pair_meta:
            sets.append(PairListDataset([p for m in self.test_pair_meta for p in read_pair_list(m)],
                                        self.val_crop_size, self.scale))
        return ConcatDataset(sets) if sets else None

    def _check_scale(self) -> None:
        """The model must upscale by the task's factor (×4 for sr, 1 for lle); said before any image is read."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        gen = getattr(getattr(module, "model", None), "generator", None) or getattr(module, "generator", None)
        scale = getattr(gen, "scale", None)
        check(scale is None or scale == self.scale, "data.task",
              f"'{self.task}' pairs inputs and targets at ×{self.scale}, but the model's generator upscales ×{scale} "
              f"(set model.init_args.generator.init_args.scale: {self.scale})")

    def setup(self, stage: str) -> None:
        self._check_scale()
        if stage == "fit" and self.train_set is None:
            if self.train_pairs or self.train_pair_meta:
                pairs = [p for lr, hr in self.train_pairs for p in match_pairs(lr, hr)[0]]
                pairs += [p for m in self.train_pair_meta for p in read_pair_list(m)]
                self.train_set = PairedTrainDataset(pairs, self.crop_size, self.scale, self.flip, self.rotate,
                                                    self.seed)
            else:
                files = collect_files(self.train_dirs, self.train_meta, "data.train_dirs/train_meta")
                self.train_set = HRTrainDataset(files, self.crop_size, self.flip, self.rotate, self.small_images,
                                                self.seed)
        if stage in ("fit", "validate") and self.val_set is None:
            self.val_set = self._eval_set(self.val_dirs, self.val_pairs, "val")
            if stage == "validate" and self.val_set is None:
                raise DataError("validate: no validation data (set data.val_dirs or data.val_pairs)")
        if stage in ("test", "predict") and self.test_set is None:
            self.test_set = self._eval_set(self.test_dirs, self.test_pairs, "test")
            if self.test_set is None:
                raise DataError(f"{stage}: no test data (set data.test_dirs, data.test_pairs or data.test_pair_meta)")

    def _loader(self, dataset, batch_size: int, shuffle: bool, sampler=None) -> DataLoader:
        return (ResumableLoader if sampler is not None else DataLoader)(
            dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else None, sampler=sampler,
            num_workers=self.num_workers, drop_last=shuffle, pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds: never a draw from the global RNG
        )

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(len(self.train_set), self.seed, shuffle=True)
        world = self.trainer.world_size if self.trainer is not None else 1
        if self._resume_position is not None and world == 1:  # continue the epoch where the checkpoint left it
            epoch, batches = self._resume_position
            sampler.resume_at(epoch, batches * self.batch_size)
            self._position = self._resume_position
        self._resume_position = None
        return self._loader(self.train_set, self.batch_size, True, sampler)

    def val_dataloader(self):
        return self._loader(self.val_set, self.val_batch_size, False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.val_batch_size, False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # -- degradation on the device -------------------------------------------------------------------------------
    def _train_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self._generator = torch.Generator(device=device).manual_seed(self.seed + 1000003 * rank)
            if self._resume_generator_state is not None:  # continue the same stream of degradations on resume
                self._generator.set_state(self._resume_generator_state)
                self._resume_generator_state = None
        return self._generator

    def _note_skipped(self, batch: dict) -> None:
        for entry in batch.pop("skipped", []) or []:
            for line in filter(None, entry.split("\n")):
                path, _, reason = line.partition("\t")
                if path not in self.skipped:
                    self.skipped[path] = reason
                    # shown(): text that always prints (and pickles to a test worker), undecodable bytes as \xNN
                    rank_zero_warn(shown(f"skipped training image {path}: {reason} ({len(self.skipped)} skipped "
                                         f"so far)"))

    def _swap_with_pool(self, batch: dict, generator: torch.Generator) -> dict:
        """Real-ESRGAN's queue: fill the pool first; once full, shuffle it, hand out b pairs, store the batch."""
        b = batch["hr"].shape[0]
        pairs = {"lr": batch["lr"], "hr": batch["hr"]}
        if self._pool is not None and self._pool["hr"].device != batch["hr"].device:  # restored from a checkpoint
            self._pool = {k: v.to(batch["hr"].device) for k, v in self._pool.items()}
        if self._pool is None or self._pool["hr"].shape[0] < self.pool_size:
            self._pool = pairs if self._pool is None else {k: torch.cat([self._pool[k], v]) for k, v in pairs.items()}
            return batch
        order = torch.randperm(self.pool_size, generator=generator, device=generator.device).to(batch["hr"].device)
        pool = {k: v[order] for k, v in self._pool.items()}
        out = {k: pool[k][:b].clone() for k in pairs}
        self._pool = {k: torch.cat([pairs[k], pool[k][b:]]) for k in pairs}
        return {**batch, **out}

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if not isinstance(batch, dict) or "hr" not in batch:
            return batch
        self._note_skipped(batch)
        if "lr" in batch:
            return batch
        self.degradation.to(batch["hr"].device)
        with torch.no_grad():
            if "seed" in batch:  # evaluation: fixed per-image seeds, the same LR whatever the batch size or run
                batch["lr"] = self.degradation(batch["hr"], seeds=batch["seed"])
                return batch
            if self.trainer is not None:  # the position in the epoch, for an exact resume
                epoch = self.trainer.current_epoch
                self._position = (epoch, self._position[1] + 1 if self._position[0] == epoch else 1)
            generator = self._train_generator(batch["hr"].device)
            config = getattr(self.degradation, "config", None)
            if getattr(config, "usm_sharpen_gt", False):
                # Real-ESRGAN's feed_data degrades the sharpened GT (gt_usm), which is also the target of its L1
                # and perceptual losses (l1_gt_usm, percep_gt_usm); no clamp, as there
                batch["hr"] = usm_sharp(batch["hr"])
            batch["lr"] = self.degradation(batch["hr"], generator=generator)
            if self.pool_size:
                batch = self._swap_with_pool(batch, generator)
        return batch

    def state_dict(self) -> dict:
        gen = self._generator.get_state() if self._generator is not None else None
        pool = {k: v.detach().cpu() for k, v in self._pool.items()} if self._pool is not None else None
        return {"skipped": dict(self.skipped), "generator_state": gen, "pool": pool,
                "position": list(self._position)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = dict(state.get("skipped", {}))
        self._resume_generator_state = state.get("generator_state")
        self._pool = state.get("pool")
        if state.get("position") is not None:
            self._resume_position = tuple(int(x) for x in state["position"])
