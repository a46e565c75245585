"""CLIP: InfoNCE, tokenizers, the transformers-format loader, the clip conditioner, captioned digits."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sciddpm.components.clip import ClipConditioner, ClipConditionerConfig
from sciddpm.components.metrics import CLIPScore
from sciddpm.components.text import ByteTokenizer, HFTokenizer, TruncationWarning
from sciddpm.data import DigitsSource, collate
from sciddpm.data.captions import (
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    CaptionedDigits,
    CaptionedDigitsConfig,
    caption,
    class_captions,
)
from sciddpm.interfaces import Conditioning, DataSource, Sample
from sciddpm.nn.clip import CLIP, MAX_LOGIT_SCALE, clip_loss, load_pretrained, save_pretrained
from sciddpm.nn.unet import UNet, UNetConfig
from sciddpm.pipeline import Pipeline
from sciddpm.registry import get_registry
from tests.tiny import TINY_UNET

#: A CLIP that trains in a second on 8x8 digits.
TINY_CLIP = {
    "type": "clip",
    "width": 16,
    "layers": 1,
    "heads": 2,
    "projection_dim": 16,
    "context_length": 40,
    "steps": 30,
    "batch_size": 32,
    "warmup_steps": 5,
}


def _tiny_source(n: int = 200) -> CaptionedDigits:
    source = CaptionedDigits(CaptionedDigitsConfig(size=8, split="train"))
    source._x, source._labels, source._template = source._x[:n], source._labels[:n], source._template[:n]
    return source


@pytest.fixture(scope="module")
def fitted() -> ClipConditioner:
    params = {k: v for k, v in TINY_CLIP.items() if k != "type"}
    cond = ClipConditioner(ClipConditionerConfig(data_shape=[1, 8, 8], **params))
    cond.fit(_tiny_source())
    return cond


# --------------------------------------------------------------------------- InfoNCE


def test_clip_loss_is_symmetric_and_matches_closed_form():
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    logits_per_image = 10 * image @ text.t()
    loss = clip_loss(logits_per_image)
    # Swapping the roles of image and text gives the same loss.
    torch.testing.assert_close(clip_loss(10 * text @ image.t()), loss)
    # Closed form: the mean of the two cross-entropies with the diagonal as targets.
    diag = logits_per_image.diag()
    by_row = (torch.logsumexp(logits_per_image, 1) - diag).mean()
    by_col = (torch.logsumexp(logits_per_image, 0) - diag).mean()
    torch.testing.assert_close(loss, (by_row + by_col) / 2)


def test_temperature_is_clamped_at_100_and_sharpens_the_loss():
    model = CLIP(_tiny_config())
    torch.testing.assert_close(model.scale(), torch.tensor(1 / 0.07), rtol=1e-4, atol=0)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)
    model.scale().backward()
    assert model.logit_scale.grad.item() == 0.0  # beyond the clamp the temperature stops moving
    # Matched pairs: a larger scale lowers the loss; at scale -> 0 it tends to log(B).
    emb = F.normalize(torch.eye(5) + 0.1, dim=-1)
    sims = emb @ emb.t()
    losses = [clip_loss(s * sims).item() for s in (1e-6, 1.0, 10.0, 100.0)]
    assert losses[0] == pytest.approx(math.log(5), rel=1e-5)
    assert losses == sorted(losses, reverse=True)


def test_tiny_contrastive_training_reduces_the_loss_and_keeps_the_clamp():
    cond = ClipConditioner(
        ClipConditionerConfig(data_shape=[1, 8, 8], **{**_params(), "steps": 60, "lr": 3e-3})
    )
    with torch.no_grad():
        cond.clip.logit_scale.fill_(MAX_LOGIT_SCALE + 1)  # training must clamp it back in place
    cond.fit(_tiny_source())
    assert len(cond.losses) == 6
    assert cond.losses[-1] < cond.losses[0] - 0.3
    assert cond.clip.logit_scale.item() <= MAX_LOGIT_SCALE
    assert not any(p.requires_grad for p in cond.parameters())  # frozen after fit
    assert bool(cond.fitted)


# --------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trip_and_layout():
    tok = ByteTokenizer(context_length=24)
    texts = ["a handwritten seven", "naïve café ✓ 7", ""]
    ids = tok(texts)
    assert ids.shape == (3, 24) and ids.dtype == torch.long
    assert [tok.decode(row) for row in ids] == texts
    row = ids[0].tolist()
    n = len(texts[0].encode())
    assert row[0] == tok.bos_id and row[n + 1] == tok.eos_id
    assert set(row[n + 2 :]) == {tok.pad_id}
    assert ids[2].tolist()[:2] == [tok.bos_id, tok.eos_id]
    with pytest.raises(TypeError, match="captions must be strings"):
        tok(["ok", 7])


def test_long_caption_is_truncated_with_a_warning_not_an_error():
    tok = ByteTokenizer(context_length=10)
    with pytest.warns(TruncationWarning, match="longer than the text context"):
        ids = tok("a handwritten seven")
    assert ids.shape == (1, 10) and ids[0, -1] == tok.eos_id
    assert tok.decode(ids[0]) == "a handwr"  # 10 = start + 8 bytes + end
    with pytest.warns(TruncationWarning):  # a multi-byte character is never split
        ids = tok("abcdefg✓✓")
    assert tok.decode(ids[0]) == "abcdefg"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok("12345678")  # no warning when it fits exactly


# --------------------------------------------------------------------------- pretrained loader


def _tiny_config():
    from sciddpm.components.clip import small_clip_config

    return small_clip_config([1, 8, 8], width=16, layers=2, heads=2, projection_dim=12, context_length=16)


def _features(out):
    """transformers 4 returns the projected features, 5 an output whose pooler_output holds them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _hf_directory(tmp_path: Path) -> Path:
    import transformers

    ours = _tiny_config()
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(**ours.to_hf())).eval()
    directory = tmp_path / "hf_clip"
    model.save_pretrained(directory)  # config.json + model.safetensors
    return directory


def test_loader_matches_transformers(tmp_path):
    from transformers import CLIPModel

    directory = _hf_directory(tmp_path)
    reference = CLIPModel.from_pretrained(directory).eval()
    ours = load_pretrained(directory).eval()
    tok = ByteTokenizer(16)
    ids = tok(["a three", "the digit 7", ""])
    pixels = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        ref = reference(input_ids=ids, pixel_values=pixels)
        logits_per_image, logits_per_text = ours(pixels, ids)
        torch.testing.assert_close(
            ours.encode_text(ids),
            _features(reference.get_text_features(input_ids=ids)),
            atol=1e-5,
            rtol=1e-5,
        )
        torch.testing.assert_close(
            ours.encode_image(pixels),
            _features(reference.get_image_features(pixel_values=pixels)),
            atol=1e-5,
            rtol=1e-5,
        )
        torch.testing.assert_close(
            ours.text_model(ids)[0],
            reference.text_model(input_ids=ids).last_hidden_state,
            atol=1e-5,
            rtol=1e-5,
        )
    torch.testing.assert_close(logits_per_image, ref.logits_per_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_per_text, ref.logits_per_text, atol=1e-5, rtol=1e-5)
    # Sharded checkpoints (an index + several files) load too.
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    sharded = load_pretrained(tmp_path / "sharded").eval()
    torch.testing.assert_close(sharded(pixels, ids)[0], logits_per_image)
    # And back: what we write, transformers reads to the same numbers.
    save_pretrained(ours, tmp_path / "ours")
    again = CLIPModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=ids, pixel_values=pixels).logits_per_image, ref.logits_per_image
        )


def test_loader_errors_name_the_tensor_and_refuse_pickles(tmp_path):
    directory = _hf_directory(tmp_path)
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["text_projection.weight"] = torch.zeros(5, 16)
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'text_projection.weight' has shape \(5, 16\).*expects \(12, 16\)"):
        load_pretrained(directory)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(
        ValueError, match=r"pytorch_model.bin, a pickled checkpoint.*convert it to safetensors"
    ):
        load_pretrained(directory)
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_pretrained(tmp_path)
    from sciddpm.config import ConfigError, load_run

    run = {
        "data": {"type": "digits_captions"},
        "pipeline": {"conditioner": {"type": "clip", "weights": "nope"}},
    }
    with pytest.raises(
        ConfigError, match=r"pipeline\.conditioner: .*weights: CLIP directory 'nope' does not exist"
    ):
        load_run(run)


def test_pretrained_directory_without_tokenizer_json_needs_a_byte_vocabulary(tmp_path):
    import transformers

    hf = _tiny_config().to_hf()
    hf["text_config"] = {**hf["text_config"], "vocab_size": 300}  # not trained on bytes
    directory = tmp_path / "bpe_clip"
    transformers.CLIPModel(transformers.CLIPConfig(**hf)).save_pretrained(directory)
    with pytest.raises(ValueError, match=r"has no tokenizer.json .* vocab_size=300, not the byte"):
        ClipConditionerConfig(weights=str(directory))
    # Forcing the byte tokenizer is the user's call (a vocabulary larger than 259 holds the bytes).
    assert ClipConditionerConfig(weights=str(directory), tokenizer="byte").tokenizer == "byte"
    # A CLIP trained here (byte vocabulary) needs no tokenizer.json.
    assert ClipConditionerConfig(weights=str(_hf_directory(tmp_path))).tokenizer == "byte"


def test_conditioner_from_pretrained_directory_with_tokenizer_json(tmp_path):
    import tokenizers

    directory = _hf_directory(tmp_path)
    # A word-level tokenizer.json whose post-processor adds start/end tokens, as CLIP's does.
    vocab = {f"w{i}": i for i in range(250)} | {"<pad>": 256, "<bos>": 257, "<eos>": 258, "<unk>": 255}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 257), ("<eos>", 258)]
    )
    tok.save(str(directory / "tokenizer.json"))
    (directory / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<pad>"}))
    cond = ClipConditioner(ClipConditionerConfig(weights=str(directory)))
    assert cond.config.tokenizer == "tokenizer.json" and cond.config.model.projection_dim == 12
    cond.fit(None)
    assert cond.losses == [] and cond.fit_seconds is None  # nothing was trained here
    ids = cond.tokenizer(["w3 w4 w5"])
    assert ids[0, :5].tolist() == [257, 3, 4, 5, 258] and ids[0, 5:].eq(256).all()
    assert cond.tokenizer.decode(ids[0]) == "w3 w4 w5"
    with pytest.warns(TruncationWarning):
        long = cond.tokenizer([" ".join(["w1"] * 30)])
    assert long.shape == (1, 16) and long[0, -1] == 258
    # the pooled vector equals transformers' text features
    from transformers import CLIPModel

    reference = CLIPModel.from_pretrained(directory).eval()
    with torch.no_grad():
        expected = _features(reference.get_text_features(input_ids=ids))
    torch.testing.assert_close(cond("w3 w4 w5", 1).vector, expected, atol=1e-5, rtol=1e-5)
    # In a pipeline: fit loads the directory; the saved pipeline reloads without it.
    config = {
        "denoiser": {**TINY_UNET, "mid_attention": True},
        "conditioner": {"type": "clip", "weights": str(directory)},
    }
    pipe = Pipeline.from_config(config, _tiny_source(4))
    pipe.save(tmp_path / "pipe")
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    loaded = Pipeline.load(tmp_path / "pipe")
    assert loaded.conditioner.config.tokenizer == "tokenizer.json"
    torch.testing.assert_close(loaded.conditioner("w3 w4 w5", 1).tokens, cond("w3 w4 w5", 1).tokens)


def test_pad_token_of_special_tokens_map_is_used_and_saved(tmp_path):
    # OpenAI's CLIP pads with its end-of-text token (special_tokens_map.json), not config's pad_token_id.
    import tokenizers

    directory = _hf_directory(tmp_path)
    vocab = {f"w{i}": i for i in range(250)} | {"<pad>": 256, "<bos>": 257, "<eos>": 258, "<unk>": 255}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 257), ("<eos>", 258)]
    )
    tok.save(str(directory / "tokenizer.json"))
    (directory / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<eos>"}}))
    cond = ClipConditioner(ClipConditionerConfig(weights=str(directory)))
    cond.fit(None)
    assert cond.tokenizer(["w3 w4"])[0].tolist() == [257, 3, 4, *[258] * 13]
    config = {
        "denoiser": {**TINY_UNET, "mid_attention": True},
        "conditioner": {"type": "clip", "weights": str(directory)},
    }
    pipe = Pipeline.from_config(config, _tiny_source(4))
    pipe.save(tmp_path / "pipe")
    (directory / "special_tokens_map.json").unlink()
    loaded = Pipeline.load(tmp_path / "pipe").conditioner
    assert loaded.tokenizer(["w3 w4"]).tolist() == cond.tokenizer(["w3 w4"]).tolist()


def test_tokenizer_json_keeps_its_own_end_token_under_a_legacy_config(tmp_path):
    # OpenAI's checkpoints say eos_token_id = 2 (token "#"); the real end token comes from the
    # tokenizer's post-processor, and a truncated caption must still end with it.
    import tokenizers

    vocab = {f"w{i}": i for i in range(250)} | {"<pad>": 256, "<bos>": 257, "<eos>": 258, "<unk>": 255}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 257), ("<eos>", 258)]
    )
    legacy = HFTokenizer(tok.to_str(), 8, pad_id=256, bos_id=0, eos_id=2)
    assert (legacy.bos_id, legacy.eos_id) == (257, 258)
    with pytest.warns(TruncationWarning):
        ids = legacy([" ".join(["w1"] * 20)])
    assert ids[0].tolist() == [257, *[1] * 6, 258]
    assert legacy.decode(legacy(["w2 w3"])[0]) == "w2 w3"


# --------------------------------------------------------------------------- U-Net cross-attention


def test_cross_attention_changes_the_output_only_through_each_samples_tokens():
    torch.manual_seed(0)
    unet = {k: v for k, v in TINY_UNET.items() if k != "type"}
    cfg = UNetConfig(**{**unet, "mid_attention": True, "token_dim": 6, "dims": 2, "in_channels": 1})
    net = UNet(cfg).eval()
    with torch.no_grad():  # undo the zero-init of output layers so every path carries signal
        for p in net.parameters():
            p.normal_(0, 0.2)
    x, noise = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    a, b, c = torch.randn(3, 4, 6)
    out_ab = net(x, noise, Conditioning(tokens=torch.stack([a, b])))
    out_ac = net(x, noise, Conditioning(tokens=torch.stack([a, c])))
    torch.testing.assert_close(out_ab[0], out_ac[0])  # sample 0's tokens did not change
    assert (out_ab[1] - out_ac[1]).abs().max() > 1e-3  # sample 1's did
    torch.testing.assert_close(net(x, noise, Conditioning(tokens=torch.stack([a, b]))), out_ab)


# --------------------------------------------------------------------------- captioned data


def test_captioned_digits_reuse_digits_and_split_templates():
    source = CaptionedDigits(CaptionedDigitsConfig(size=8, split="test", templates="heldout"))
    assert isinstance(source, DigitsSource) and source.num_classes == 0
    plain = DigitsSource(source.config.model_copy())
    assert torch.equal(source[3].x, plain[3].x)
    for i in range(20):
        text = source[i].condition
        assert text in [caption(int(source.labels[i]), t) for t in HELDOUT_TEMPLATES]
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    assert (
        caption(8, "this is {a_word}") == "this is an eight"
        and caption(7, "the digit {num}") == "the digit 7"
    )
    assert class_captions(TRAIN_TEMPLATES)[3][0] == "a handwritten three"
    built = get_registry().build("data", {"type": "digits_captions", "size": 8})
    assert built.describe()["type"] == "digits_captions" and isinstance(built[0].condition, str)


# --------------------------------------------------------------------------- the conditioner


def _params() -> dict:
    return {k: v for k, v in TINY_CLIP.items() if k != "type"}


def test_conditioner_outputs_null_and_drop(fitted):
    assert fitted.token_dim == 16 and fitted.vector_dim == 16
    cond = fitted(["a handwritten three", "the digit 7"], 2)
    assert cond.tokens.shape == (2, 40, 16) and cond.vector.shape == (2, 16) and cond.concat is None
    one = fitted("a handwritten three", 3)
    torch.testing.assert_close(one.vector[2], cond.vector[0])
    null = fitted.null(2)
    torch.testing.assert_close(null.vector[0], fitted([""], 1).vector[0])  # the empty caption
    torch.testing.assert_close(fitted(None, 2).tokens, null.tokens)
    raw = fitted.collate(["a handwritten three", "the digit 7"])
    dropped = fitted.drop(raw, torch.tensor([True, False]))
    torch.testing.assert_close(dropped.tokens[0], cond.tokens[0])
    torch.testing.assert_close(dropped.tokens[1], null.tokens[1])
    with pytest.raises(ValueError, match="not a caption"):
        fitted.collate(["ok", 3])
    with pytest.raises(ValueError, match="3 captions for a batch of 2"):
        fitted(["a", "b", "c"], 2)
    with pytest.raises(TypeError, match="caption string or a list of strings"):
        fitted(torch.tensor([1, 2]), 2)


def test_image_statistics_skip_masked_values():
    # A fill value under the mask (e.g. land in an ocean field) must not shift the image statistics.
    from sciddpm.data import ArraySource

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 4, 4, generator=g) * torch.tensor([1.0, 5.0]).view(1, 2, 1, 1) + 3.0
    mask = torch.ones(6, 1, 4, 4)
    mask[:, :, :2] = 0
    x[:, :, :2] = -999.0
    cond = ClipConditioner(ClipConditionerConfig(data_shape=[2, 4, 4], width=8, heads=2, layers=1, steps=0))
    cond.fit(ArraySource.from_array(x, mask=mask))
    valid = x[:, :, 2:].transpose(0, 1).flatten(1).double()
    torch.testing.assert_close(cond.image_mean, valid.mean(1).float())
    torch.testing.assert_close(cond.image_std, valid.std(1, unbiased=False).float())


def test_unfitted_conditioner_refuses_to_condition():
    cond = ClipConditioner(ClipConditionerConfig(data_shape=[1, 8, 8], **_params()))
    with pytest.raises(RuntimeError, match="not trained: call fit"):
        cond("a three", 1)


def test_zero_shot_is_the_nearest_class_embedding(fitted):
    source = _tiny_source(40)
    images = source._x
    captions = class_captions(HELDOUT_TEMPLATES[:2])
    pred = fitted.zero_shot(images, captions, batch_size=16)
    text = torch.stack(
        [F.normalize(F.normalize(fitted.encode_text(c)[1], dim=-1).sum(0), dim=0) for c in captions]
    )
    image = F.normalize(fitted.encode_images(images), dim=-1)
    assert torch.equal(pred, (image @ text.t()).argmax(-1))
    assert fitted.similarity(images[:3], ["a", "b"]).shape == (3, 2)


def test_clip_score_metric(fitted, tmp_path):
    images = _tiny_source(4)._x
    metric = CLIPScore(conditioner=fitted)
    cos = fitted.similarity(images, ["a handwritten three"])[:, 0]
    assert metric(images, "a handwritten three") == pytest.approx(
        float((100 * cos.clamp_min(0)).mean()), rel=1e-5
    )
    fitted.save_pretrained(tmp_path / "w")
    built = get_registry().build("metric", {"type": "clip_score", "weights": str(tmp_path / "w")})
    assert built.higher_is_better
    assert built(images, ["a handwritten three"] * 4) == pytest.approx(
        metric(images, "a handwritten three"), rel=1e-4
    )


def test_strings_through_sample_save_and_load(tmp_path):
    source = _tiny_source(120)
    config = {
        "encoder": {"type": "standardize"},
        "denoiser": {**TINY_UNET, "mid_attention": True},
        "conditioner": TINY_CLIP,
    }
    pipe = Pipeline.from_config(config, source)
    assert pipe.config.conditioner.params["model"]["text_config"]["hidden_size"] == 16
    assert pipe.denoiser.config.token_dim == 16 and pipe.denoiser.config.vector_dim == 16
    assert bool(pipe.conditioner.fitted) and bool(pipe.ema["conditioner"].fitted)
    _, raw, _ = collate([source[i] for i in range(3)], pipe.conditioner)
    assert raw == [source[i].condition for i in range(3)]
    with torch.no_grad():  # a denoiser that is not zero, so conditions show in the samples
        for p in pipe.ema["denoiser"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    kw = {"steps": 3, "seed": 1}
    one = pipe.sample(2, "a handwritten three", **kw)
    torch.testing.assert_close(pipe.sample(2, ["a handwritten three"] * 2, **kw), one)
    mixed = pipe.sample(2, ["a handwritten three", "the digit 0"], **kw)
    torch.testing.assert_close(mixed[0], one[0])
    assert (mixed[1] - one[1]).abs().max() > 1e-4
    guided = pipe.sample(2, ["a handwritten three", "the digit 0"], guidance_scale=2.0, **kw)
    assert guided.shape == (2, 1, 8, 8)
    pipe.save(tmp_path / "pipe")
    loaded = Pipeline.load(tmp_path / "pipe")
    torch.testing.assert_close(
        loaded.sample(2, ["a handwritten three", "the digit 0"], guidance_scale=2.0, **kw), guided
    )
    # The command line takes captions with --caption (repeated: one per sample, cycled).
    import numpy as np

    from sciddpm.cli import main

    out = tmp_path / "captions.npy"
    args = ["sample", str(tmp_path / "pipe"), "--n", "2", "--steps", "3", "--seed", "1", "--guidance", "2"]
    captions = ["--caption", "a handwritten three", "--caption", "the digit 0"]
    assert main([*args, *captions, "--out", str(out)]) == 0
    torch.testing.assert_close(torch.from_numpy(np.load(out)), guided)


def test_diffusion_training_leaves_clip_frozen(tmp_path):
    from sciddpm.training.trainer import train

    run = {
        "data": {"type": "digits_captions", "size": 8, "classes": [0, 1]},
        "pipeline": {
            "encoder": {"type": "standardize"},
            "denoiser": {**TINY_UNET, "mid_attention": True},
            "conditioner": TINY_CLIP,
        },
        "train": {"steps": 3, "batch_size": 8, "checkpoint_every": 0, "log_every": 1, "cond_drop": 0.5},
    }
    pipe = train(run, tmp_path / "run", progress=False)
    source = CaptionedDigits(CaptionedDigitsConfig(size=8, classes=[0, 1]))
    alone = ClipConditioner(ClipConditionerConfig(data_shape=[1, 8, 8], **_params()))
    alone.fit(source)  # the same seeded contrastive stage, outside the diffusion trainer
    for key, value in alone.state_dict().items():
        torch.testing.assert_close(pipe.conditioner.state_dict()[key], value, msg=key)
        torch.testing.assert_close(pipe.ema["conditioner"].state_dict()[key], value, msg=key)


class _CaptionedFields(DataSource):
    """Random 1-D or 3-D fields whose caption says which of two patterns they hold."""

    def __init__(self, shape: tuple[int, ...], n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.sample_shape = shape
        self.labels = torch.arange(n) % 2
        self._x = torch.randn(n, *shape, generator=g) + 3 * self.labels.view(-1, *[1] * len(shape))

    def __len__(self) -> int:
        return len(self._x)

    def __getitem__(self, index: int) -> Sample:
        return Sample(self._x[index], condition=["a calm field", "a bright field"][int(self.labels[index])])


@pytest.mark.parametrize("shape", [(2, 10), (1, 6, 5, 7)])
def test_image_tower_takes_1d_and_3d_fields_of_any_size(shape):
    source = _CaptionedFields(shape)
    cond = ClipConditioner(
        ClipConditionerConfig(data_shape=list(shape), **{**_params(), "steps": 5, "warmup_steps": 1})
    )
    vision = cond.clip.vision_model.config
    assert vision.spatial_dims == len(shape) - 1 and vision.num_channels == shape[0]
    assert vision.image_size == 4 * math.ceil(max(shape[1:]) / 4)  # resized up to a multiple of 4
    cond.fit(source)
    assert cond.pixels(source._x[:3]).shape == (3, shape[0], *[vision.image_size] * (len(shape) - 1))
    assert cond.encode_images(source._x[:3]).shape == (3, 16)
    assert cond.zero_shot(source._x, ["a calm field", "a bright field"]).shape == (32,)
    with pytest.raises(ValueError, match="CLIP image tower takes"):
        cond.encode_images(torch.zeros(2, shape[0] + 1, *shape[1:]))
