"""Issue 24, part 1: no code from the metric and backbone weight empty_caches, the teachers' files or a TorchScript
archive, and model files whose names hold undecodable bytes (docs/reliability.md, rows 40–49).

A crafted pickle (``__reduce__`` → ``exec`` writing a marker file) is planted where ctsr's own missing-weights
message tells users to put each downloaded file; every reader must refuse it in one line naming the file, and the
marker must never appear. Never touches the network or the user's caches."""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from poisoned import RunsCode, crafted_pickle

from ctsr.checkpoints import load_torchscript_state, read_weights, weights_only_loads
from ctsr.cli import main
from ctsr.errors import ConfigError
from ctsr.metrics import REQUIRED_FILES, MetricSuite, networks, weight_files

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread", "lightning_logs_to_stderr", "no_network")


# -- helpers -------------------------------------------------------------------------------------------------------
def crafted_torchscript(path: Path, marker: Path) -> Path:
    """A zip laid out as a TorchScript archive (``top/data.pkl``, ``top/constants.pkl``, ``top/code/``) whose
    data.pkl runs the payload when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("RN50/data.pkl", pickle.dumps(RunsCode(marker), protocol=2))
        z.writestr("RN50/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("RN50/code/__torch__.py", "class CLIP(Module):\n  __parameters__ = []\n")
        z.writestr("RN50/version", "3\n")
    return path


def _hf_file(w, name: str) -> Path:
    """Where huggingface_hub's cache keeps ``name`` of ``w.repo`` (models--owner--name/snapshots/<rev>/name)."""
    repo = w.folder() / f"models--{w.repo.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    path = repo / "snapshots" / ("0" * 40) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _plant_valid(w) -> None:
    """A harmless stand-in at ``w``'s place: a tensors-only file (or the arrays a .mat/.npz needs)."""
    if w.store == "hf_hub":
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(_hf_file(w, w.file)))
        return
    path = w.folder() / w.file
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mat":
        import scipy.io

        scipy.io.savemat(path, {k: np.eye(2) for k in w.keys})
    elif path.suffix == ".npz":
        np.savez(path, **{k: np.eye(2) for k in w.keys})
    else:
        torch.save({"w": torch.zeros(1)}, path)


def _plant_crafted(w, marker: Path) -> Path:
    if w.store == "hf_hub":  # timm falls back to pytorch_model.bin when the repo has no safetensors
        return crafted_pickle(_hf_file(w, "pytorch_model.bin"), marker, state_dict={}, params={})
    path = w.folder() / w.file
    if path.suffix == ".npz":  # an object array: np.load would unpickle it with allow_pickle=True
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{k: np.array([RunsCode(marker)], dtype=object) for k in w.keys})
        return path
    return crafted_pickle(path, marker, state_dict={}, params={})


def _one_line_error(capsys, *texts: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("ctsr")]
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith("ctsr: error:"), err[-2000:]
    for text in texts:
        assert text in lines[-1], lines[-1]
    return lines[-1]


# every file a metric reads, one case each (NIQE: pyiqa's .mat and BasicSR's .npz, the two it accepts)
FILES = [(m, i, w) for m, ws in REQUIRED_FILES.items() for i, w in enumerate(ws)
         if not isinstance(w, weight_files.EitherFile)]
FILES += [("niqe", 0, weight_files.NIQE_PYIQA), ("niqe", 1, weight_files.NIQE_BASICSR)]


# -- 1. every cache path: refused before any network is built ---------------------------------------------------------
@pytest.mark.parametrize("metric,index,w", FILES, ids=[f"{m}:{w.file}" for m, _, w in FILES])
def test_a_crafted_file_in_any_metric_cache_is_refused_naming_it(metric, index, w, empty_caches, monkeypatch):
    marker = empty_caches / "MARKER"
    for other in REQUIRED_FILES[metric]:
        if other is not w and not isinstance(other, weight_files.EitherFile):
            _plant_valid(other)
    planted = _plant_crafted(w, marker)

    def no_build(*args, **kwargs):
        raise AssertionError("a network was built before the file check")

    monkeypatch.setattr("ctsr.metrics.suite.build_scorer", no_build)
    monkeypatch.setattr("ctsr.metrics.suite.build_fid_features", no_build)
    with pytest.raises(ConfigError) as err:
        MetricSuite(["psnr", metric])
    line = str(err.value)
    assert "\n" not in line and str(planted) in line and f"metric '{metric}'" in line, line
    if planted.suffix in (".mat", ".npz"):
        assert "parameter file" in line  # scipy/numpy refuse it; neither unpickles
    else:
        assert "refuses to run code" in line and "exec" in line
    assert not marker.exists()


def test_a_crafted_torchscript_clip_archive_is_refused(empty_caches):
    marker = empty_caches / "MARKER"
    w = REQUIRED_FILES["clipiqa"][0]
    planted = crafted_torchscript(w.folder() / w.file, marker)
    for build in (lambda: MetricSuite(["clipiqa"]), lambda: networks._clip_tensors_only("RN50")):
        with pytest.raises(ConfigError, match="refuses to run code") as err:
            build()
        assert str(planted) in str(err.value) and "exec" in str(err.value)
    assert not marker.exists()


# -- 2. the library's own read goes through ctsr too (a file the check did not see, or swapped after it) -------------
@pytest.mark.parametrize("metric,which", [("lpips", 0), ("lpips", 1), ("dists", 0), ("fid", 0), ("musiq", 0),
                                          ("lpips_vgg", 0)])
def test_the_librarys_own_torch_load_is_weights_only(metric, which, empty_caches, monkeypatch):
    """With the pre-check switched off, torchvision's / pyiqa's / lpips' ``torch.load`` of the planted file is
    ctsr's weights-only loader: refused in one line naming the file, the payload not run. (For the LPIPS heads,
    AlexNet is built without its file, so pyiqa gets as far as the heads.)"""
    import torchvision

    marker = empty_caches / "MARKER"
    files = REQUIRED_FILES[metric]
    planted = _plant_crafted(files[which], marker)
    monkeypatch.setattr(weight_files, "check_present", lambda metrics: None)
    monkeypatch.setattr("ctsr.nets.lpips.check_weight_file", lambda path, what: None)
    if metric == "lpips" and which == 1:
        alexnet = torchvision.models.alexnet
        monkeypatch.setattr(torchvision.models, "alexnet", lambda *a, **k: alexnet(weights=None))
    build = (lambda: networks.build_fid_features()) if metric == "fid" else (lambda: networks.build_scorer(metric))
    with pytest.raises(ConfigError, match="refuses to run code") as err:
        build()
    assert str(planted) in str(err.value)
    assert not marker.exists()
    assert torch.load is getattr(torch.load, "_ctsr_original", torch.load)  # the patch ended with the build


def test_weights_only_loads_restores_torch_load_and_refuses_torchscript(tmp_path):
    real_load, real_jit = torch.load, torch.jit.load
    with weights_only_loads("outer"):
        with weights_only_loads("inner"):
            with pytest.raises(ConfigError, match="inner: .*TorchScript"):
                torch.jit.load(str(tmp_path / "x.pt"))
            torch.save({"a": torch.ones(1)}, tmp_path / "ok.pt")
            assert torch.equal(torch.load(tmp_path / "ok.pt", weights_only=False)["a"], torch.ones(1))
            with open(tmp_path / "ok.pt", "rb") as f:  # an open file too
                assert torch.load(f)["a"].item() == 1.0
        assert torch.load is not real_load
    assert torch.load is real_load and torch.jit.load is real_jit


# -- 3. as users meet it: score, test, fit --------------------------------------------------------------------------
@pytest.fixture()
def folders(tmp_path):
    from PIL import Image

    for name in ("sr", "hr"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (32, 32), (10, 120, 200)).save(tmp_path / name / "a.png")
    return tmp_path


@pytest.mark.parametrize("metric,which", [("lpips", 0), ("lpips", 1), ("dists", 0), ("dists", 1), ("musiq", 0),
                                          ("fid", 0), ("niqe", 0)])
def test_score_refuses_a_crafted_cache_file_in_one_line(metric, which, empty_caches, folders, capsys):
    marker = empty_caches / "MARKER"
    files = REQUIRED_FILES[metric]
    for w in files:
        if not isinstance(w, weight_files.EitherFile):
            _plant_valid(w)
    target = weight_files.NIQE_PYIQA if metric == "niqe" else files[which]
    planted = _plant_crafted(target, marker)
    argv = ["score", str(folders / "sr"), str(folders / "hr"), "--metrics", metric, "--out", str(folders / "t")]
    assert main(argv) == 2
    _one_line_error(capsys, str(planted), f"metric '{metric}'")
    assert not marker.exists() and not (folders / "t" / "metrics.csv").exists()  # no table with lpips 0.0000


def test_test_and_fit_refuse_crafted_backbones_in_one_line(empty_caches, tmp_path, monkeypatch, capsys, sample_dir,
                                                           tiny_model_file):
    """``ctsr test`` with the pretrained LPIPS column (heads crafted) and ``ctsr fit`` with
    ``lpips_weights: pretrained`` (VGG16 crafted): exit 2, one line naming the file, the payload not run."""
    marker = empty_caches / "MARKER"
    alexnet, heads = REQUIRED_FILES["lpips"]
    _plant_valid(alexnet)
    planted = _plant_crafted(heads, marker)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "samples").symlink_to(sample_dir)
    (tmp_path / "small.yaml").write_text("""
trainer:
  accelerator: cpu
  enable_progress_bar: false
  callbacks:
    - class_path: ctsr.callbacks.t_sweep.TSweepEvaluation
      init_args: {metrics: [psnr, lpips], metric_weights: pretrained, num_images: 1}
data:
  init_args: {test_pairs: null, test_dirs: [data/samples/val], val_crop_size: 64, val_batch_size: 2, num_workers: 0}
""")
    argv = ["test", "--config", str(ROOT / "experiments" / "eval.yaml"), "--config", "small.yaml",
            "--model.init_args.model_path", str(tiny_model_file(stage1_lora=False))]
    assert main(argv) == 2
    _one_line_error(capsys, str(planted))
    vgg = _plant_crafted(REQUIRED_FILES["lpips_vgg"][0], marker)
    argv = ["fit", "--config", str(ROOT / "experiments" / "tiny_stage1.yaml"), "--trainer.logger.init_args.save_dir",
            "runs", "--model.init_args.lpips_weights", "pretrained"]
    assert main(argv) == 2
    _one_line_error(capsys, str(vgg), "LPIPS(vgg) loss")
    assert not marker.exists()
    assert not list(tmp_path.glob("runs/**/*.ckpt"))


# -- 4. TorchScript archives: tensors without torch.jit.load --------------------------------------------------------
@pytest.fixture(scope="module")
def traced_clip(tmp_path_factory):
    """A small CLIP of OpenAI's RN layout, traced and saved as OpenAI ships RN50.pt (a TorchScript archive); the
    text side keeps OpenAI's context (77) and vocabulary (49408) so that CLIP-IQA's prompts tokenise."""
    from pyiqa.archs.clip_model import CLIP

    torch.manual_seed(0)
    model = CLIP(16, 224, (1, 1, 1, 1), 8, None, 77, 49408, 64, 1, 1).float().eval()
    path = tmp_path_factory.mktemp("clip") / "RN50.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, (torch.rand(1, 3, 224, 224), torch.randint(0, 49408, (1, 77)))).save(str(path))
    return path


def test_torchscript_tensors_equal_jit_loads_state_dict(traced_clip, tmp_path):
    ours = load_torchscript_state(traced_clip)
    ref = torch.jit.load(str(traced_clip)).state_dict()  # a file this test made: safe to jit-load here
    assert list(ours) and sorted(ours) == sorted(ref)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
    meta = load_torchscript_state(traced_clip, data=False)  # the check: shapes only, nothing read
    assert all(v.device.type == "meta" and v.shape == ref[k].shape for k, v in meta.items())

    class Scripted(torch.nn.Module):  # parameters, a buffer, an attribute tensor (not in state_dict), a list
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.register_buffer("pos", torch.ones(2))
            self.plain = torch.zeros(3)
            self.sizes = [1, 2]

        def forward(self, x):
            return self.bn(self.conv(x)) + self.plain.sum() + self.sizes[0]

    with warnings.catch_warnings():  # torch.jit.script is deprecated (FutureWarning)
        warnings.simplefilter("ignore")
        torch.jit.script(Scripted()).save(str(tmp_path / "s.pt"))
    ours = load_torchscript_state(tmp_path / "s.pt")
    ref = torch.jit.load(str(tmp_path / "s.pt")).state_dict()
    assert sorted(ours) == sorted(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)


def test_clipiqa_reads_openais_torchscript_file_as_tensors(traced_clip, empty_caches, monkeypatch):
    """RN50.pt placed where the check says: CLIP-IQA builds without torch.jit.load, and scores as pyiqa's own
    loader (torch.jit.load, then build_model) does on the same file."""
    import shutil

    with networks._openai_clip_importable():  # the clip package needs pkg_resources (see networks)
        from pyiqa.archs import clip_model, clipiqa_arch

    w = REQUIRED_FILES["clipiqa"][0]
    w.folder().mkdir(parents=True)
    shutil.copy(traced_clip, w.folder() / w.file)
    suite = MetricSuite(["clipiqa"])
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    suite.update(img)
    ours = suite.compute()["clipiqa"]
    with mock.patch.object(clipiqa_arch, "load", lambda name, device: clip_model.load(str(traced_clip), device)):
        ref = networks._pyiqa_net("clipiqa").eval()
    from ctsr.metrics.functional import quantize_8bit

    assert ours == pytest.approx(ref(quantize_8bit(img)).item(), rel=1e-6)


# -- 5. teachers (spandrel, ResShift) ----------------------------------------------------------------------------------
def test_spandrel_teachers_are_read_by_ctsr_tensors_only(tmp_path):
    """A crafted .pth, a crafted TorchScript .pt (spandrel itself would torch.jit.load it): refused in one line;
    a real TorchScript .pt of an ESRGAN loads from its tensors."""
    from spandrel.architectures.ESRGAN import ESRGAN

    from ctsr.models.teachers import AnchoredTeacher

    marker = tmp_path / "MARKER"
    evils = (crafted_pickle(tmp_path / "evil.pth", marker, state_dict={}, params={}),
             crafted_torchscript(tmp_path / "evil.pt", marker))
    for evil in evils:
        with pytest.raises(ConfigError, match="refuses to run code") as err:
            AnchoredTeacher(str(evil))
        assert str(evil) in str(err.value)
    assert not marker.exists()
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).eval()
    x = torch.rand(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, x).save(str(tmp_path / "esrgan.pt"))
    teacher = AnchoredTeacher(str(tmp_path / "esrgan.pt"))
    assert torch.allclose(teacher.upscale(x), net(x).clamp(0, 1), atol=1e-6)


# -- 6. file names with undecodable bytes ------------------------------------------------------------------------------
def test_model_files_with_undecodable_names_load(tmp_path, tiny_model_file, capsys):
    """A folder and a file name holding bytes that are not UTF-8 (Python keeps them as surrogates; safetensors'
    safe_open refuses such names): the model loads, upscales, takes a selected t, exports and is a teacher."""
    from PIL import Image
    from safetensors.torch import save
    from spandrel.architectures.ESRGAN import ESRGAN

    from ctsr.evaluation.select_t import read_selection, record_selection
    from ctsr.models.export import load_model
    from ctsr.models.teachers import load_sr_model

    folder = tmp_path / os.fsdecode(b"mod\xe8les")
    folder.mkdir()
    model_path = folder / os.fsdecode(b"ctsr-\xff.safetensors")
    model_path.write_bytes(tiny_model_file(stage1_lora=False).read_bytes())
    from safetensors import safe_open

    with pytest.raises(Exception, match="UTF-8"):  # the library's own reader refuses the name
        safe_open(str(model_path), "pt")
    model = load_model(model_path)
    again = folder / os.fsdecode(b"copie-\xff.safetensors")
    model.export(again)
    assert load_model(again).control_lora().keys() == model.control_lora().keys()
    record_selection(model_path, {"t": 0.5, "rule": "psnr-drop", "split": "val", "metrics": {}})
    assert read_selection(model_path)["t"] == 0.5
    Image.new("RGB", (16, 16), (200, 30, 60)).save(tmp_path / "in.png")
    out = folder / os.fsdecode(b"sortie-\xe9.png")
    assert main(["upscale", str(tmp_path / "in.png"), str(out), "--ckpt", str(model_path), "--t", "0.5",
                 "--tile", "0", "--vae-tile", "0"]) == 0
    assert Image.open(out).size == (64, 64)
    assert "sortie-\\xe9.png" in capsys.readouterr().out  # printed with the byte escaped, not a crash
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    teacher = folder / os.fsdecode(b"esrgan-\xff.safetensors")
    teacher.write_bytes(save(net.state_dict()))
    assert load_sr_model(str(teacher))(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    assert set(read_weights(teacher)) == set(net.state_dict())
