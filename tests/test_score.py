"""`ctsr score` and `ctsr select-t`: a folder written by `ctsr test` re-scores to the run's own numbers, baselines
join the same table, pairing and size errors name the files, t is chosen on validation rows and recorded in the
model file."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctsr.cli import main
from ctsr.evaluation import select_t as st
from ctsr.evaluation.score import pair_files, score_folder
from ctsr.evaluation.tables import Row, Table, read_table, write_table
from ctsr.models.control import ControllableSR

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
METRICS = ["psnr", "ssim", "lpips", "fid"]


@pytest.fixture(scope="module")
def model_file(tiny_model_file):
    return tiny_model_file(stage1_lora=False)


@pytest.fixture(scope="module")
def pairs(sample_dir, tmp_path_factory):
    """Three real LR-HR pairs whose LR (13x15) is not a multiple of 8: HR crops 52x60, LR = PIL bicubic /4."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "LR").mkdir(), (root / "HR").mkdir()
    for f in sorted((sample_dir / "train").glob("*.png"))[:3]:
        hr = Image.open(f).convert("RGB").crop((100, 80, 160, 132))
        hr.save(root / "HR" / f"{f.stem}_HR.png")
        hr.resize((15, 13), Image.BICUBIC).save(root / "LR" / f"{f.stem}_LR4.png")
    return root


def _test_run(model_file, pairs, tmp_path, monkeypatch, extra: str = "", metrics=METRICS) -> Path:
    """`ctsr test --config experiments/eval.yaml` on the pairs, whole images, saving the SR images."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.yaml").write_text(f"""
trainer:
  accelerator: cpu
  precision: 32-true
  enable_progress_bar: false
  callbacks:
    - class_path: ctsr.callbacks.t_sweep.TSweepEvaluation
      init_args: {{t_values: [0.0, 0.5, 1.0], metrics: {list(metrics)}, metric_weights: random, save_images: true{extra}}}
data:
  init_args: {{test_pairs: [[{pairs / 'LR'}, {pairs / 'HR'}]], val_crop_size: null, num_workers: 0}}
""")
    code = main(["test", "--config", str(ROOT / "experiments" / "eval.yaml"), "--config", "small.yaml",
                 "--model.init_args.model_path", str(model_file)])
    assert code == 0
    return tmp_path / "runs" / "eval"


def test_scoring_the_saved_images_gives_the_run_table_and_baselines_join_it(model_file, pairs, tmp_path,
                                                                            monkeypatch, capsys):
    run = _test_run(model_file, pairs, tmp_path, monkeypatch)
    table = read_table(run)
    assert [(r.method, r.t) for r in table.rows] == [("CTSR", 0.0), ("CTSR", 0.5), ("CTSR", 1.0)]
    images = run / "images" / "test" / "t=0.5"
    saved = sorted(p.name for p in images.glob("*.png"))
    assert saved == ["astronaut_HR.png", "chelsea_HR.png", "coffee_HR.png"]
    assert Image.open(images / "chelsea_HR.png").size == (60, 52)  # LR 13x15 padded, SR cropped back: whole image

    # re-score one t of the saved folder into another table: the same numbers as the run's own
    out = tmp_path / "rescored"
    assert main(["score", str(images), str(pairs / "HR"), "--metrics", *METRICS, "--metric-weights", "random",
                 "--out", str(out), "--name", "CTSR", "--t", "0.5"]) == 0
    again = read_table(out).rows[0]
    own = next(r for r in table.rows if r.t == 0.5)
    assert set(again.values) == set(METRICS)
    for name in METRICS:
        assert again.values[name] == pytest.approx(own.values[name], rel=1e-6, abs=1e-9), name
    assert read_table(out).protocol() == table.protocol()

    # another method's outputs (here: bicubic ×4 of the LR) join the run's table as a row of its own
    osediff = tmp_path / "osediff"
    osediff.mkdir()
    for f in (pairs / "LR").glob("*.png"):
        Image.open(f).resize((60, 52), Image.BICUBIC).save(osediff / f.name)  # named like the LR: pairs by key
    for _ in range(2):  # the second time replaces the row
        assert main(["score", str(osediff), str(pairs / "HR"), "--metrics", *METRICS, "--metric-weights", "random",
                     "--out", str(run), "--name", "OSEDiff"]) == 0
    merged = read_table(run)
    assert [(r.method, r.t) for r in merged.rows] == [("CTSR", 0.0), ("CTSR", 0.5), ("CTSR", 1.0), ("OSEDiff", None)]
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["method", "t", "psnr"] and rows[-1]["method"] == "OSEDiff" and rows[-1]["t"] == ""
    md = (run / "metrics.md").read_text()
    assert "| method | t | PSNR↑ | SSIM↑ | LPIPS↓ | FID↓ |" in md and "| OSEDiff |  |" in md

    # a new `ctsr test` in the same folder rewrites CTSR's rows and keeps OSEDiff's
    _test_run(model_file, pairs, tmp_path, monkeypatch, metrics=["psnr"])
    assert [r.method for r in read_table(run).rows] == ["CTSR"] * 3 + ["OSEDiff"]
    md = (run / "metrics.md").read_text()
    assert md.count("CTSR rows: colour correction `adain`") == 1 and "OSEDiff: 3 images of" in md


def test_pairing_and_size_errors_name_the_files(pairs, tmp_path, capsys):
    sr = tmp_path / "sr"
    sr.mkdir()
    for f in sorted((pairs / "HR").glob("*.png"))[:2]:
        Image.open(f).save(sr / f.name.replace("_HR", ""))
    assert main(["score", str(sr), str(pairs / "HR"), "--metrics", "psnr", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctsr: error:") and "1 HR image(s) without an SR image" in err and "coffee_HR.png" in err

    Image.open(pairs / "HR" / "coffee_HR.png").resize((56, 52)).save(sr / "coffee.png")
    assert main(["score", str(sr), str(pairs / "HR"), "--metrics", "psnr", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "size mismatch" in err and str(sr / "coffee.png") in err and str(pairs / "HR" / "coffee_HR.png") in err
    first = pair_files(pairs / "HR", pairs / "HR")[0]
    assert (first[0].name, first[1].name) == ("astronaut_HR.png",) * 2


def test_no_reference_mode_scores_sr_alone(sample_dir, tmp_path, capsys):
    from ctsr.metrics.networks import build_scorer

    sr = tmp_path / "sr"
    sr.mkdir()
    for f in sorted((sample_dir / "val").glob("*.png")):
        Image.open(f).convert("RGB").crop((0, 0, 128, 112)).save(sr / f.name)  # NIQE needs 96x96 at least
    assert main(["score", str(sr), "--metrics", "niqe", "--metric-weights", "random", "--out", str(tmp_path / "o"),
                 "--name", "mine"]) == 0
    row = read_table(tmp_path / "o").rows[0]
    niqe = build_scorer("niqe", "random")
    expected = np.mean([niqe(torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 255).permute(2, 0, 1)[None])
                        .item() for f in sorted(sr.glob("*.png"))])
    assert (row.method, row.t) == ("mine", None) and row.values["niqe"] == pytest.approx(expected, rel=1e-6)
    assert main(["score", str(sr), "--metrics", "psnr", "niqe", "--out", str(tmp_path / "o")]) == 2
    assert "['psnr'] need HR images" in capsys.readouterr().err
    assert score_folder(sr, None, weights="random", metrics=["niqe"])[2] == 2


def test_select_t_rules_on_a_known_table():
    rows = {0.0: {"psnr": 24.3, "ssim": 0.60, "lpips": 0.30, "musiq": 70.0},
            0.2: {"psnr": 24.5, "ssim": 0.61, "lpips": 0.31, "musiq": 69.0},
            0.6: {"psnr": 24.7, "ssim": 0.62, "lpips": 0.33, "musiq": 68.0},
            1.0: {"psnr": 24.9, "ssim": 0.63, "lpips": 0.36, "musiq": 66.0}}
    # psnr-drop: PSNR ≥ 24.9 − X, then the best realness (lpips low, musiq high)
    assert st.select_t(rows, "psnr-drop", 0.3)[0] == 0.6
    assert st.select_t(rows, "psnr-drop", 0.45)[0] == 0.2
    assert st.select_t(rows, "psnr-drop", 1.0)[0] == 0.0
    assert st.select_t(rows, "psnr-drop", 0.0)[0] == 1.0
    # weighted: fidelity F = (0, 1/3, 2/3, 1), realness R = (1, 0.79, 0.5, 0) (lpips (1, 5/6, 1/2, 0), musiq
    # (1, 3/4, 1/2, 0)); w = 0.5: (0.5, 0.56, 0.58, 0.5) -> 0.6; w = 0.3: (0.7, 0.65, 0.55, 0.3) -> 0
    assert st.select_t(rows, "weighted", fidelity_weight=0.5)[0] == 0.6
    assert st.select_t(rows, "weighted", fidelity_weight=0.3)[0] == 0.0
    assert st.select_t(rows, "weighted", fidelity_weight=1.0)[0] == 1.0
    assert st.select_t(rows, "weighted", fidelity_weight=0.0)[0] == 0.0
    only_psnr = {t: {"psnr": r["psnr"]} for t, r in rows.items()}
    assert st.select_t(only_psnr, "psnr-drop", 0.45)[0] == 0.2  # no realness column: the smallest eligible t
    with pytest.raises(Exception, match="weighted needs"):
        st.select_t(only_psnr, "weighted")


def test_select_t_records_the_choice_in_the_model_file(model_file, tmp_path, capsys):
    from safetensors import safe_open

    model = tmp_path / "m.safetensors"
    model.write_bytes(Path(model_file).read_bytes())
    with safe_open(str(model), "pt") as f:
        before_meta, before = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    rows = [Row("CTSR", t, {"psnr": 24.0 + t, "lpips": 0.3 + 0.05 * t}) for t in (0.0, 0.5, 1.0)]
    write_table(tmp_path / "val", Table(rows, {"color_space": "y", "crop_border": 0, "weights": "pretrained",
                                               "quantize": True}, "val metrics", split="val"))
    assert main(["select-t", str(tmp_path / "val"), "--model", str(model), "--max-psnr-drop", "0.6",
                 "--split", "DIV2K-val"]) == 0
    assert "selected t = 0.5" in capsys.readouterr().out
    with safe_open(str(model), "pt") as f:
        meta, after = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    record = json.loads(meta["selected_t"])
    assert record == {"t": 0.5, "rule": "psnr-drop", "params": {"max_psnr_drop": 0.6, "reference_t": 1.0},
                      "split": "DIV2K-val", "metrics": {"psnr": 24.5, "lpips": 0.325}}
    assert {k: v for k, v in meta.items() if k != "selected_t"} == before_meta  # the rest of the metadata kept
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.safetensors")]  # no temp file left
    ControllableSR.load(model)  # still a CTSR model file

    # a test-split table is refused
    write_table(tmp_path / "test", Table(rows, {}, "test metrics", split="test"))
    assert main(["select-t", str(tmp_path / "test"), "--model", str(model)]) == 2
    assert "validation split" in capsys.readouterr().err


def test_test_table_at_the_selected_t_only(model_file, pairs, tmp_path, monkeypatch, capsys):
    model = tmp_path / "sel.safetensors"
    model.write_bytes(Path(model_file).read_bytes())
    st.record_selection(model, {"t": 0.5, "rule": "psnr-drop", "split": "val-set", "metrics": {}})
    run = _test_run(model, pairs, tmp_path, monkeypatch, extra=", use_selected_t: true", metrics=["psnr"])
    table = read_table(run)
    assert [(r.method, r.t) for r in table.rows] == [("CTSR", 0.5)]
    assert "t = 0.5 selected on 'val-set' by the rule `psnr-drop`" in (run / "metrics.md").read_text()
    # the default (use_selected_t: null, experiments/eval.yaml): `ctsr test` evaluates the recorded t, and says so
    (tmp_path / "auto").mkdir()
    run = _test_run(model, pairs, tmp_path / "auto", monkeypatch, metrics=["psnr"])
    assert [(r.method, r.t) for r in read_table(run).rows] == [("CTSR", 0.5)]
    assert "ctsr test: evaluating the model's t = 0.5" in capsys.readouterr().err
    assert read_table(run).model["file"] == str(model) and read_table(run).model["stage"] == 2


def test_select_t_refuses_another_stage_or_run_and_a_table_without_choice(tiny_controllable, tmp_path, capsys):
    """One truth for t: select-t chooses only on a sweep of this model (its training run, stage 2), names both when
    not, and says when it replaces a recorded t."""
    model = tiny_controllable()
    model.source = {"run": "a" * 32, "path": "/runs/stage2", "stage": 2, "step": 40}
    path = model.export(tmp_path / "m.safetensors")
    settings = {"color_space": "y", "crop_border": 0, "weights": "pretrained", "quantize": True}
    rows = [Row("CTSR", t, {"psnr": 24.0 + t, "lpips": 0.3 + 0.05 * t}) for t in (0.0, 0.5, 1.0)]

    def table(name, model_record, table_rows=rows):
        write_table(tmp_path / name, Table(table_rows, settings, "val metrics", split="val", model=model_record))
        return str(tmp_path / name)

    before = path.read_bytes()
    stage1 = table("stage1", {"run": "b" * 32, "path": "/runs/stage1", "stage": 1, "step": 30})
    assert main(["select-t", stage1, "--model", str(path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stage-1 model (run bbbbbbbb (/runs/stage1))" in line and "stage-2 model (run aaaaaaaa (/runs/stage2))" in line
    other = table("other", {"run": "c" * 32, "path": "/runs/other", "stage": 2, "step": 40})
    assert main(["select-t", other, "--model", str(path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "run cccccccc" in line and "run aaaaaaaa" in line
    single = table("single", {"run": "a" * 32, "stage": 2}, [Row("CTSR", 0.0, {"psnr": 24.0})])
    assert main(["select-t", single, "--model", str(path)]) == 2
    assert "t = 0 only: nothing to choose" in capsys.readouterr().err
    assert path.read_bytes() == before  # every refusal left the file as it was
    own = table("own", {"run": "a" * 32, "path": "/runs/eval", "stage": 2, "step": 40, "file": str(path)})
    assert main(["select-t", own, "--model", str(path), "--max-psnr-drop", "0.6"]) == 0
    assert st.read_selection(path)["t"] == 0.5
    assert main(["select-t", own, "--model", str(path), "--max-psnr-drop", "0"]) == 0
    assert "replaces the recorded t = 0.5" in capsys.readouterr().err
    assert ControllableSR.load(path).selected_t == 1.0


def test_score_pairs_ctsr_upscale_outputs_and_says_how(tmp_path, capsys):
    rng = np.random.default_rng(0)
    sr, hr, only, sfx = (tmp_path / n for n in ("sr", "hr", "only", "sfx"))
    for folder in (sr, hr, only, sfx):
        folder.mkdir()
    for name in ("a", "b_HR"):
        image = Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8"))
        image.save(hr / f"{name}.png")
        stem = name.removesuffix("_HR")
        for t in ("0", "0.5"):
            image.save(sr / f"{stem}_t{t}.png")  # what `ctsr upscale … --t 0 0.5` writes
        image.save(only / f"{stem}_t0.5.png")
        image.save(sfx / f"{stem}_sr.png")
    out = str(tmp_path / "table")
    assert main(["score", str(sr), str(hr), "--metrics", "psnr", "--out", out]) == 2  # two t: which one?
    assert "several t (0, 0.5" in capsys.readouterr().err
    assert main(["score", str(sr), str(hr), "--metrics", "psnr", "--out", out, "--t", "0.5", "--name", "x"]) == 0
    assert "paired 2 SR/HR image(s) SR suffix '_t0.5' removed" in capsys.readouterr().err
    assert main(["score", str(only), str(hr), "--metrics", "psnr", "--out", out, "--name", "y"]) == 0
    assert "(`ctsr upscale` outputs of t = 0.5)" in capsys.readouterr().err
    assert main(["score", str(sfx), str(hr), "--metrics", "psnr", "--out", out, "--name", "z", "--sr-suffix",
                 "_sr"]) == 0
    assert "SR suffix '_sr' removed (--sr-suffix)" in capsys.readouterr().err
    rows = {(r.method, r.t): r.values["psnr"] for r in read_table(out).rows}
    assert set(rows) == {("x", 0.5), ("y", 0.5), ("z", None)} and all(v > 60 for v in rows.values())  # same pixels
