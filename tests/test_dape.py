"""RAM / DAPE tagger (ctsr.models.ram) against fixtures made with the official code (tests/fixtures/dape)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ctsr.errors import ConfigError, MissingWeightsError
from ctsr.models import ram
from ctsr.models.ram import RAMTagger, load_tagger, preprocess, read_ram_state

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).parent / "fixtures" / "dape"
CONFIG = json.loads((FIXTURES / "reduced_config.json").read_text())


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The reduced release files as the real ones are laid out: RAM a ``{'model': state}`` pickle, DAPE a flat
    pickle of LoRA tensors; the reduced tag list and thresholds as text files."""
    folder = tmp_path_factory.mktemp("ram")
    ram_state = load_file(str(FIXTURES / "reduced_ram.safetensors"))
    torch.save({"model": ram_state}, folder / "ram_swin_large_14m.pth")
    torch.save(load_file(str(FIXTURES / "reduced_dape.safetensors")), folder / "DAPE.pth")
    (folder / "tags.txt").write_text("\n".join(CONFIG["tags"]), encoding="utf-8")
    (folder / "thresholds.txt").write_text("\n".join(CONFIG["thresholds"]) + "\n")
    return {"ram": folder / "ram_swin_large_14m.pth", "dape": folder / "DAPE.pth", "tags": folder / "tags.txt",
            "thresholds": folder / "thresholds.txt", "folder": folder}


def reduced_config(files, antialias: bool = False) -> dict:
    swin, head = CONFIG["swin"], CONFIG["q2l_config"]
    return dict(image_size=CONFIG["image_size"], embed_dim=swin["embed_dim"], depths=swin["depths"],
                num_heads=swin["num_heads"], window_size=swin["window_size"], hidden_size=head["hidden_size"],
                intermediate_size=head["intermediate_size"], num_attention_heads=head["num_attention_heads"],
                num_hidden_layers=head["num_hidden_layers"], tag_list=files["tags"], thresholds=files["thresholds"],
                antialias=antialias)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "reduced_io.safetensors"))


# -- the released configuration --------------------------------------------------------------------------------------
def test_released_tagger_has_the_official_state_dict_layout():
    official = json.loads((FIXTURES / "released_keys.json").read_text())
    with torch.device("meta"):
        tagger = RAMTagger()
    mine = {k: list(v.shape) for k, v in tagger.state_dict().items()}
    assert mine == official["tagger"]
    assert list(mine) == list(official["tagger"])  # the official order too
    assert len(tagger.tags) == official["n_tags"] == 4585
    # every LoRA DAPE.pth holds for the tagger lands on a weight of it, with loralib's shapes
    for key, shape in official["dape_lora"].items():
        stem = key.rsplit(".", 1)[0]
        out_features, in_features = mine[stem + ".weight"]
        if key.endswith("lora_A"):
            assert shape[1] == in_features
        else:
            assert shape[0] in (out_features, 2 * out_features // 3)  # Linear / MergedLinear (q and v)


def test_shipped_tag_files_are_rams():
    tags = ram.read_lines(ram.TAG_LIST)
    assert len(tags) == 4585 and tags[0] == "3D CG rendering" and tags[-1] == "zoo"
    assert len([v for v in ram.read_lines(ram.TAG_THRESHOLDS) if v.strip()]) == 4585


# -- parity with the official code on reduced random weights ----------------------------------------------------------
@pytest.mark.parametrize("antialias", [False, True])
def test_preprocess_is_torchvisions_resize_and_normalize(antialias):
    from torchvision import transforms

    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    reference = transforms.Compose([
        transforms.Resize((224, 224), antialias=antialias),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])(x)
    torch.testing.assert_close(preprocess(x, 224, antialias), reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["dape", "ram"])
@pytest.mark.parametrize("antialias", [False, True])
def test_tagger_matches_the_official_logits_and_tags(files, io, variant, antialias):
    tagger = load_tagger(files["ram"], files["dape"] if variant == "dape" else None, **reduced_config(files, antialias))
    name = f"{variant}_aa{int(antialias)}"
    x = preprocess(io["images"].float() / 255, CONFIG["image_size"], antialias)
    with torch.no_grad():
        if not antialias:
            embeds = tagger.image_proj(tagger.visual_encoder(x))
            torch.testing.assert_close(embeds, io[f"{name}_image_embeds"], rtol=0, atol=1e-6)  # bit-exact here
        logits = tagger(x)
    torch.testing.assert_close(logits, io[f"{name}_logits"], rtol=0, atol=1e-6)  # bit-exact on this machine
    assert torch.equal(tagger.selected(logits).float(), io[f"{name}_targets"])
    tags = [", ".join(t) for t in tagger.tag(io["images"].float() / 255)]
    assert tags == CONFIG["official"][name]["tags"]
    assert all(tags)  # the fixture selects tags (and different ones per image / per variant)


def test_fixture_exercises_every_lora_and_the_tied_weight_merge(files, io):
    """Without DAPE's LoRA, or without the caption branch's (tied) LoRA, the logits would differ: the parity above
    covers the Swin qkv LoRA, the head's query/key LoRA and loralib's shared-weight merge."""
    state = load_file(str(FIXTURES / "reduced_dape.safetensors"))
    untied = {k: v for k, v in state.items() if not k.startswith("tag_encoder.")}
    torch.save(untied, files["folder"] / "untied.pth")
    tagger = load_tagger(files["ram"], files["folder"] / "untied.pth", **reduced_config(files))
    x = preprocess(io["images"].float() / 255, CONFIG["image_size"])
    with torch.no_grad():
        gap = (tagger(x) - io["dape_aa0_logits"]).abs().max()
    assert gap > 1e-3
    assert (io["dape_aa0_logits"] - io["ram_aa0_logits"]).abs().max() > 1e-2


def test_half_precision_keeps_float32_thresholds(files, io):
    tagger = load_tagger(files["ram"], files["dape"], **reduced_config(files)).to(torch.bfloat16)
    assert tagger.class_threshold.dtype == torch.float32
    x = preprocess(io["images"].float() / 255, CONFIG["image_size"])
    with torch.no_grad():
        logits = tagger(x)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), io["dape_aa0_logits"], rtol=0, atol=0.1)


# -- the files: weights-only, strict, one-line errors -----------------------------------------------------------------
def test_missing_files_name_the_file_and_the_release_page(tmp_path, files):
    with pytest.raises(MissingWeightsError) as err:
        load_tagger(tmp_path / "ram_swin_large_14m.pth", None)
    msg = str(err.value)
    assert "\n" not in msg and "ram_swin_large_14m.pth" in msg and "github.com/xinyu1205/recognize-anything" in msg
    with pytest.raises(MissingWeightsError) as err:
        load_tagger(files["ram"], tmp_path / "DAPE.pth")
    msg = str(err.value)
    assert "\n" not in msg and "DAPE.pth" in msg and "github.com/cswry/OSEDiff" in msg


def test_files_are_checked_strictly(tmp_path, files):
    state = load_file(str(FIXTURES / "reduced_ram.safetensors"))
    broken = dict(state)
    broken.pop("fc.weight")
    broken["extra.weight"] = torch.zeros(2)
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(ConfigError, match=r"missing 1 \(e\.g\. fc\.weight\); unexpected 1 \(e\.g\. extra\.weight\)"):
        load_tagger(tmp_path / "broken.pth", None, **reduced_config(files))
    torch.save(state, tmp_path / "not_lora.pth")
    with pytest.raises(ConfigError, match="not LoRA weights"):
        load_tagger(files["ram"], tmp_path / "not_lora.pth", **reduced_config(files))
    # a safetensors copy of the same release reads the same
    save_file(state, str(tmp_path / "ram.safetensors"))
    a = read_ram_state(tmp_path / "ram.safetensors")
    b = read_ram_state(files["ram"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, files, capsys):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": _Payload()}, f)
    with pytest.raises(ConfigError):
        load_tagger(tmp_path / "evil.pth", None, **reduced_config(files))
    assert "code ran" not in capsys.readouterr().out
