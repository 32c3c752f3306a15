"""Per-image prompts (ctsr.models.prompting): DAPE tags → c for the student, the teachers, validation, upscale, demo.

The tagger is the reduced RAM/DAPE of tests/fixtures/dape (files written here as the releases are laid out); the
generator is the tiny random-init one. Nothing is downloaded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ctsr.errors import ConfigError, MissingWeightsError
from ctsr.models.generator import OneStepGenerator
from ctsr.models.prompting import Prompting, configure_prompts
from ctsr.models.prompts import PromptEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

DAPE_FIXTURES = Path(__file__).parent / "fixtures" / "dape"
CONFIG = json.loads((DAPE_FIXTURES / "reduced_config.json").read_text())


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    """``prompting`` options for the reduced tagger (release-style .pth files, the reduced tag list)."""
    folder = tmp_path_factory.mktemp("dape")
    torch.save({"model": load_file(str(DAPE_FIXTURES / "reduced_ram.safetensors"))}, folder / "ram.pth")
    torch.save(load_file(str(DAPE_FIXTURES / "reduced_dape.safetensors")), folder / "DAPE.pth")
    (folder / "tags.txt").write_text("\n".join(CONFIG["tags"]), encoding="utf-8")
    (folder / "thresholds.txt").write_text("\n".join(CONFIG["thresholds"]) + "\n")
    swin, head = CONFIG["swin"], CONFIG["q2l_config"]
    tagger = dict(image_size=CONFIG["image_size"], embed_dim=swin["embed_dim"], depths=swin["depths"],
                  num_heads=swin["num_heads"], window_size=swin["window_size"], hidden_size=head["hidden_size"],
                  intermediate_size=head["intermediate_size"], num_hidden_layers=head["num_hidden_layers"],
                  num_attention_heads=head["num_attention_heads"], tag_list=str(folder / "tags.txt"),
                  thresholds=str(folder / "thresholds.txt"))
    return dict(mode="dape", ram_weights=str(folder / "ram.pth"), dape_weights=str(folder / "DAPE.pth"),
                tagger=tagger)


@pytest.fixture(scope="module")
def x_lr() -> torch.Tensor:
    """Two LR photo crops (32×48) whose reduced-DAPE tags differ."""
    images = load_file(str(DAPE_FIXTURES / "reduced_io.safetensors"))["images"].float() / 255
    return F.interpolate(images, size=(32, 48), mode="area")


def dape_generator(spec, **overrides) -> OneStepGenerator:
    return OneStepGenerator("tiny", seed=0, prompt="a photo", prompting={**spec, **overrides})


def expected_prompts(gen: OneStepGenerator, x_lr: torch.Tensor, spec: dict) -> list[str]:
    """OSEDiff's test_osediff.py prompt, computed here from the tagger directly: f"{tags}, {prompt},"."""
    from ctsr.models.ram import load_tagger

    tagger = load_tagger(spec["ram_weights"], spec["dape_weights"], **spec["tagger"])
    tags = tagger.tag(gen.upsample(x_lr))
    return [f"{', '.join(t)}, a photo," for t in tags]


# -- options ---------------------------------------------------------------------------------------------------------
def test_options_are_checked_and_named():
    with pytest.raises(ConfigError, match="prompting.mode"):
        Prompting(mode="tags")
    with pytest.raises(ConfigError, match="prompting.template"):
        Prompting(template="{tags} {caption}")
    with pytest.raises(ConfigError, match="unknown option"):
        Prompting.parse({"mode": "dape", "ram": "x"})
    assert Prompting.parse("dape").mode == "dape"


def test_without_dape_the_generator_is_unchanged():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    plain = OneStepGenerator("tiny", seed=0).eval()
    fixed = OneStepGenerator("tiny", seed=0, prompting={"mode": "fixed"}).eval()
    assert plain.prompter is None and fixed.prompter is None
    assert "prompting" not in plain.config  # files written without the option stay as they were
    with torch.no_grad():
        assert torch.equal(plain(x)[0], fixed(x)[0])
    assert plain.context.shape[0] == 1


# -- the generator and the teachers ----------------------------------------------------------------------------------
def test_each_image_is_conditioned_on_its_own_dape_prompt(spec, x_lr):
    gen = dape_generator(spec).eval()
    expected = expected_prompts(gen, x_lr, spec)
    assert expected[0] != expected[1] and all(p.split(",")[0] for p in expected)
    with torch.no_grad():
        out = gen(x_lr)[0]
    assert gen.prompter.last_prompts == expected
    assert gen.context.shape[0] == 2
    reference = PromptEncoder(gen.prompter.text_encoder, gen.prompter.tokenizer)  # one text at a time
    for i, prompt in enumerate(expected):
        torch.testing.assert_close(gen.context[i], reference.encode(prompt)[0], rtol=1e-5, atol=1e-5)
    # the UNet reads it: the same weights with the fixed prompt give another picture
    fixed = OneStepGenerator("tiny", seed=0, prompt="a photo").eval()
    with torch.no_grad():
        assert (fixed(x_lr)[0] - out).abs().max() > 1e-4
        alone = gen(x_lr[1:])[0]  # and a batch is the images one by one
    torch.testing.assert_close(alone, out[1:], rtol=0, atol=1e-5)


def test_the_teachers_receive_the_per_image_prompts(spec, x_lr):
    from ctsr.losses.stage1 import DualTeacherLoss, Stage1Weights
    from ctsr.models.teachers import UNetTeacher

    gen = dape_generator(spec)
    seen = []

    class Spy(UNetTeacher):
        def eps(self, z_t, tau, context, cond=None):
            seen.append(context.detach().clone())
            return super().eps(z_t, tau, context, cond)

    teacher = Spy(unet=gen.unet)
    loss = DualTeacherLoss(Stage1Weights(lambda_lp=0.0, lambda_fl=0.0), perceptual=None)
    hr = F.interpolate(x_lr, scale_factor=4, mode="bicubic").clamp(0, 1)
    loss(gen, {"rn": teacher}, x_lr, hr, torch.Generator().manual_seed(0))
    assert len(seen) == 2 and all(c.shape[0] == 2 for c in seen)
    assert torch.equal(seen[0], gen.context) and not torch.equal(seen[0][0], seen[0][1])


def test_training_batches_can_be_tagged_from_the_ground_truth(spec, x_lr):
    from ctsr.lit.prompting import GroundTruthPrompts
    from ctsr.models.ram import load_tagger

    gen = dape_generator(spec)  # train_source gt, train_tagger ram, train_template "{tags}" (train_osediff.py)

    class Module(GroundTruthPrompts):
        generator = gen

    hr = F.interpolate(x_lr, scale_factor=4, mode="bicubic").clamp(0, 1).flip(0)  # other images than the LR
    module = Module()
    module.on_train_batch_start({"hr": hr, "lr": x_lr}, 0)
    ram = load_tagger(spec["ram_weights"], None, **spec["tagger"])
    assert gen.prompter.last_prompts == [", ".join(t) for t in ram.tag(hr)]
    pinned = gen.context.clone()
    gen(x_lr)  # the student's pass keeps the pinned contexts
    assert torch.equal(gen.context, pinned)
    module.on_train_batch_end(None, {}, 0)
    gen(x_lr)  # then every LR batch is tagged again
    assert gen.prompter.last_prompts == expected_prompts(gen, x_lr, spec)


def test_prompt_embeddings_are_cached_within_a_bound(spec):
    gen = dape_generator(spec, cache_size=2)
    first = gen.prompter.encode(["a", "b", "c"], torch.device("cpu"))
    assert list(gen.prompter._cache) == ["b", "c"]
    again = gen.prompter.encode(["a"], torch.device("cpu"))
    torch.testing.assert_close(again[0], first[0])


def test_missing_tagger_weights_are_one_line(spec, x_lr, tmp_path):
    gen = dape_generator(spec, ram_weights=str(tmp_path / "ram_swin_large_14m.pth"))
    with pytest.raises(MissingWeightsError) as err:
        gen(x_lr)
    assert "\n" not in str(err.value) and "ram_swin_large_14m.pth" in str(err.value)


# -- files, ctsr upscale, the demo -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dape_model_file(spec, tmp_path_factory) -> Path:
    from ctsr.models.control import ControllableSR

    torch.manual_seed(0)
    gen = dape_generator(spec)
    stage1 = {n: p.detach().clone() for n, p in gen.named_parameters() if p.requires_grad}
    model = ControllableSR.from_stage1(gen, stage1)
    with torch.no_grad():
        for n, p in model.generator.unet.named_parameters():
            if "lora_B.control" in n:
                p.normal_(0, 0.05)
    return model.export(tmp_path_factory.mktemp("model") / "dape.safetensors")


def test_the_model_file_records_the_prompting(dape_model_file, spec):
    from ctsr.models.export import load_model

    model = load_model(dape_model_file)
    prompter = model.generator.prompter
    assert prompter is not None and prompter.spec == Prompting.parse(spec)
    assert not prompter.taggers  # the tagger is read on first use only (`ctsr export` never needs it)


def test_upscaler_tags_the_unpadded_image_and_keeps_each_images_prompt(dape_model_file, spec, x_lr):
    from ctsr.inference.upscale import Upscaler
    from ctsr.models.export import load_model

    both = Upscaler(load_model(dape_model_file), "cpu", tile=4, tile_overlap=2, color="none")
    out = both(x_lr, [0.0, 1.0])
    assert both.last_prompts == expected_prompts(both.model.generator, x_lr, spec)
    for i in range(2):  # tiled, batched: each image still runs with its own prompt
        alone = Upscaler(load_model(dape_model_file), "cpu", tile=4, tile_overlap=2, color="none")
        single = alone(x_lr[i:i + 1], [0.0, 1.0])
        assert alone.last_prompts == [both.last_prompts[i]]
        for a, b in zip(single, out):
            torch.testing.assert_close(a[0], b[i], rtol=0, atol=1e-4)
    # a render after another image was prepared uses its own prompt again (the demo's slider)
    state_a = both.prepare(x_lr[:1])
    both.prepare(x_lr[1:])
    torch.testing.assert_close(both.render(state_a, 1.0)[0], out[1][0], rtol=0, atol=1e-4)


def test_ctsr_upscale_writes_the_prompt_beside_the_outputs(dape_model_file, x_lr, tmp_path, spec):
    from ctsr.data.images import write_image
    from ctsr.cli.upscale import main

    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(("astronaut.png", "cat.png")):
        write_image(x_lr[i], src / name)
    assert main([str(src), str(tmp_path / "out"), "--ckpt", str(dape_model_file), "--t", "0", "1",
                 "--device", "cpu", "--color", "none"]) == 0
    texts = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "out").glob("*.txt")}
    assert set(texts) == {"astronaut.txt", "cat.txt"}
    assert (tmp_path / "out" / "cat_t1.png").is_file()
    assert texts["cat.txt"].endswith(", a photo,") and texts["cat.txt"] != texts["astronaut.txt"]
    # --prompting fixed: the model's fixed prompt, nothing beside the outputs
    assert main([str(src), str(tmp_path / "fixed"), "--ckpt", str(dape_model_file), "--device", "cpu",
                 "--prompting", "fixed"]) == 0
    assert not list((tmp_path / "fixed").glob("*.txt"))
    with pytest.raises(MissingWeightsError, match="DAPE.pth"):
        main([str(src), str(tmp_path / "missing"), "--ckpt", str(dape_model_file), "--device", "cpu",
              "--dape-weights", str(tmp_path / "DAPE.pth")])


def test_configure_prompts_turns_dape_on_for_a_fixed_prompt_model(tiny_model_file, spec, x_lr):
    from ctsr.models.export import load_model

    model = load_model(tiny_model_file())
    assert model.generator.prompter is None
    prompter = configure_prompts(model.generator, "dape", spec["ram_weights"], spec["dape_weights"])
    prompter.spec.tagger = spec["tagger"]
    with torch.no_grad():
        model(x_lr)
    assert model.generator.context.shape[0] == 2 and len(prompter.last_prompts) == 2


def test_the_demo_shows_the_prompt(dape_model_file, x_lr, tmp_path):
    from ctsr.data.images import write_image
    from ctsr.inference.demo import Demo, prompt_line
    from ctsr.inference.upscale import Upscaler
    from ctsr.models.export import load_model

    write_image(x_lr[1], tmp_path / "cat.png")
    demo = Demo(Upscaler(load_model(dape_model_file), "cpu", color="none"), 10**6, tmp_path / "work")
    upload, *_ = demo.load(tmp_path / "cat.png")
    line = prompt_line(upload)
    assert upload.state.prompts[0] in line and line.startswith(" Prompt (DAPE tags)")


# -- ctsr fit ----------------------------------------------------------------------------------------------------------
def test_ctsr_fit_with_dape_prompts_tags_ground_truth_in_training_and_lr_in_validation(spec, tmp_path, monkeypatch,
                                                                                       sample_dir):
    """The quick start with ``prompting: dape`` (reduced tagger): the training step sees the GT's RAM prompts (pinned
    by the LightningModule's hook), the t sweep the LR's DAPE prompts; the run's config and checkpoint record it."""
    import yaml

    from ctsr.cli import main
    from ctsr.models.prompting import PromptProvider

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "samples").symlink_to(sample_dir)
    monkeypatch.chdir(tmp_path)
    override = {"trainer": {"max_steps": 2, "val_check_interval": 2, "limit_val_batches": 1, "log_every_n_steps": 1,
                            "enable_progress_bar": False},
                "model": {"init_args": {"generator": {"init_args": {"prompting": spec}},
                                        # the quick start's model; the shipped T_f stands in for Real-ESRGAN (whose
                                        # converted file lives in the checkout's weights/, not in this folder)
                                        "realness_teacher": {"init_args": {"sr_model": "mini"}}}},
                "data": {"init_args": {"crop_size": 32, "val_crop_size": 64, "batch_size": 2,
                                       "train_dirs": ["data/samples/train"], "val_dirs": ["data/samples/val"]}}}
    (tmp_path / "dape.yaml").write_text(yaml.safe_dump(override))
    seen: list[tuple[bool, list[str]]] = []
    real = PromptProvider._use

    def spy(self, generator, prompts, device):
        seen.append((self.pinned, list(prompts)))
        return real(self, generator, prompts, device)

    monkeypatch.setattr(PromptProvider, "_use", spy)
    cfg = str(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml")
    assert main(["fit", "--config", cfg, "--config", "dape.yaml"]) == 0
    train = [p for pinned, p in seen if all(not s.endswith(",") for s in p)]  # "{tags}": RAM on the GT
    val = [p for pinned, p in seen if all(s.endswith(", ,") for s in p)]     # "{tags}, {prompt},": DAPE on the LR
    assert len(train) >= 2 and len(val) >= 1
    run = tmp_path / "runs" / "quickstart-stage1"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["ctsr_generator_config"]["prompting"]["mode"] == "dape"


def test_stage2_refuses_another_prompting_than_stage1s():
    from ctsr.lit.stage2 import check_stage1_fits

    dape = {"pretrained": "tiny", "prompting": {"mode": "dape"}}
    check_stage1_fits(dape, {"pretrained": "tiny", "prompting": {"mode": "dape"}}, "s1.ckpt")
    with pytest.raises(ConfigError, match="model.generator.prompting.*dape.*fixed"):
        check_stage1_fits(dape, {"pretrained": "tiny"}, "s1.ckpt")
