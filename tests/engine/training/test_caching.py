import pytest
import torch

from engine.pipelines.qwen_image import encode_prompts
from engine.training.caching import EMPTY_PROMPT, TrainingCache, build_cache, encode_captions
from engine.training.data import ShapesSamples


def test_cached_embeddings_match_the_pipelines_encoding_of_each_prompt_alone(encoders):
    captions = [sample.caption for sample in ShapesSamples(6, first_seed=40)]
    embeds, lengths = encode_captions(encoders, captions, batch_size=4)
    for row, length, caption in zip(embeds, lengths, captions):
        alone = encode_prompts(encoders, [caption]).embeds[0]
        assert int(length) == alone.shape[0]
        torch.testing.assert_close(row[:length], alone, atol=1e-5, rtol=1e-5)
        assert not row[length:].any()


def test_batch_is_cut_to_its_longest_prompt_with_a_mask_only_when_padded(shapes_cache):
    lengths = shapes_cache.lengths
    same = torch.nonzero(lengths == lengths[0]).flatten()[:2]
    embeds, mask = shapes_cache.text_batch(same)
    assert embeds.shape[1] == int(lengths[0]) and mask is None
    mixed = torch.tensor([int(lengths.argmin()), int(lengths.argmax())])
    embeds, mask = shapes_cache.text_batch(mixed)
    assert embeds.shape[1] == int(lengths.max())
    assert mask.sum(dim=1).tolist() == [int(lengths.min()), int(lengths.max())]


def test_dropped_captions_are_replaced_by_the_empty_prompt(shapes_cache, encoders):
    embeds, mask = shapes_cache.text_batch(torch.tensor([0, 1]), dropped=torch.tensor([True, False]))
    empty = encode_prompts(encoders, [EMPTY_PROMPT]).embeds[0]
    torch.testing.assert_close(embeds[0, :empty.shape[0]], empty)
    assert int(mask[0].sum()) == empty.shape[0]
    assert torch.equal(embeds[1, :int(shapes_cache.lengths[1])], shapes_cache.embeds[1, :int(shapes_cache.lengths[1])])


def test_latents_are_normalized_with_the_vae_statistics(shapes_cache, encoders):
    from engine.training.caching import encode_images

    image = ShapesSamples(1, size=64)[0].image
    vae = encoders.vae
    raw = vae.encode(torch.tensor(list(image.getdata()), dtype=torch.float32).view(1, 64, 64, 3)
                     .permute(0, 3, 1, 2).div(127.5).sub(1).unsqueeze(2)).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)
    torch.testing.assert_close(encode_images(encoders, [image]), (raw - mean) / std, atol=1e-5, rtol=1e-4)
    assert shapes_cache.latents.shape == (32, 16, 8, 8)


def test_cache_reads_back_only_with_the_same_key(shapes_cache, tmp_path):
    path = tmp_path / "cache.safetensors"
    shapes_cache.save(path)
    loaded = TrainingCache.load(path, shapes_cache.key)
    assert torch.equal(loaded.embeds, shapes_cache.embeds) and torch.equal(loaded.latents, shapes_cache.latents)
    assert TrainingCache.load(path, "another dataset") is None
    assert TrainingCache.load(tmp_path / "absent.safetensors", shapes_cache.key) is None


def test_error_raised_if_latents_and_captions_differ_in_count(shapes_cache):
    with pytest.raises(ValueError, match="32 latents"):
        TrainingCache(shapes_cache.latents, shapes_cache.embeds[:3], shapes_cache.lengths[:3], shapes_cache.empty_embeds)


def test_loss_weights_travel_with_the_cache(shapes_cache, tmp_path):
    from dataclasses import replace

    weights = torch.rand(32, 8, 8, generator=torch.Generator().manual_seed(2))
    weighted = replace(shapes_cache, loss_weights=weights)
    path = tmp_path / "weighted.safetensors"
    weighted.save(path)
    assert torch.equal(TrainingCache.load(path, shapes_cache.key).loss_weights, weights)
    shapes_cache.save(tmp_path / "plain.safetensors")
    assert TrainingCache.load(tmp_path / "plain.safetensors", shapes_cache.key).loss_weights is None


def test_error_raised_if_loss_weights_do_not_fit_the_latents(shapes_cache):
    from dataclasses import replace

    with pytest.raises(ValueError) as caught:
        replace(shapes_cache, loss_weights=torch.ones(32, 16, 16))
    assert str(caught.value) == ("cache: loss weights of shape (32, 16, 16) for latents of shape (32, 16, 8, 8); "
                                 "expected (32, 8, 8)")


def test_masked_loss_weights_average_each_masks_pixels_per_latent_position_and_scale_to_mean_one():
    from PIL import Image

    from engine.training.caching import masked_loss_weights

    half = Image.new("L", (16, 16), 0)
    half.paste(255, (0, 0, 8, 16))  # the left half counts
    quarter = Image.new("L", (16, 16), 0)
    quarter.paste(255, (0, 0, 8, 8))
    quarter.paste(51, (8, 0, 16, 8))  # a fifth as much
    weights = masked_loss_weights([half, None, quarter, Image.new("L", (16, 16), 0)], (2, 2))
    torch.testing.assert_close(weights[0], torch.tensor([[2.0, 0.0], [2.0, 0.0]]))
    torch.testing.assert_close(weights[1], torch.ones(2, 2))
    torch.testing.assert_close(weights[2], torch.tensor([[1.0, 0.2], [0.0, 0.0]]) / 0.3)
    torch.testing.assert_close(weights[3], torch.zeros(2, 2))  # cropped to nothing: teaches nothing


def test_the_cache_of_examples_with_masks_carries_their_weights(encoders):
    from PIL import Image

    from engine.training.data import Example

    image = Image.new("RGB", (64, 64), (10, 200, 10))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    cache = build_cache(encoders, [Example(image, "masked", mask), Example(image, "whole")])
    assert cache.loss_weights.shape == (2, 8, 8)
    assert torch.equal(cache.loss_weights[0, :, :4], torch.full((8, 4), 2.0))
    assert torch.equal(cache.loss_weights[0, :, 4:], torch.zeros(8, 4))
    assert torch.equal(cache.loss_weights[1], torch.ones(8, 8))
    assert build_cache(encoders, [Example(image, "whole")]).loss_weights is None


class _CountingVae:
    """The tiny VAE, counting the images it encodes."""

    def __init__(self, vae):
        self.vae, self.encoded = vae, 0

    def encode(self, pixels):
        self.encoded += pixels.shape[0]
        return self.vae.encode(pixels)

    def __getattr__(self, name):
        return getattr(self.vae, name)


def test_an_image_listed_several_times_is_encoded_once_and_its_rows_are_copies(encoders, tmp_path):
    from dataclasses import replace

    from engine.toyworld.world import make_sample
    from engine.training.bucketed import BucketExamples
    from engine.training.data import open_dataset

    (tmp_path / "3_zxq shape").mkdir()
    for seed, name in enumerate(["a", "b"]):
        make_sample(seed, size=64).image.save(tmp_path / "3_zxq shape" / f"{name}.png")
    (tmp_path / "3_zxq shape" / "b.txt").write_text("zxq shape, second")
    (tmp_path / "1_single").mkdir()
    make_sample(7, size=64).image.save(tmp_path / "1_single" / "c.png")
    dataset = open_dataset(tmp_path)  # rows: c, then a, a, a, then b, b, b
    examples = BucketExamples(dataset, range(len(dataset)), (64, 64), caption=lambda text: "trigger, " + text)
    counting = replace(encoders, vae=_CountingVae(encoders.vae))

    cache = build_cache(counting, examples)
    assert counting.vae.encoded == 3
    every_row = build_cache(encoders, [examples[index] for index in range(len(examples))])  # a list: no keys
    for name in ("latents", "embeds", "lengths"):
        torch.testing.assert_close(getattr(cache, name), getattr(every_row, name))
    assert torch.equal(cache.latents[1], cache.latents[3]) and not torch.equal(cache.latents[3], cache.latents[4])
    assert torch.equal(cache.embeds[4], cache.embeds[6]) and not torch.equal(cache.embeds[1], cache.embeds[4])


def test_the_copies_of_a_repeated_image_carry_its_loss_weights(encoders, tmp_path):
    from PIL import Image

    from engine.training.bucketed import BucketExamples
    from engine.training.data import open_dataset

    (tmp_path / "2_half").mkdir()
    left_opaque = Image.new("RGBA", (64, 64), (200, 30, 30, 0))
    left_opaque.paste((200, 30, 30, 255), (0, 0, 32, 64))
    left_opaque.save(tmp_path / "2_half" / "a.png")
    Image.new("RGB", (64, 64), (30, 30, 200)).save(tmp_path / "2_half" / "b.png")
    dataset = open_dataset(tmp_path, alpha_mask=True)
    cache = build_cache(encoders, BucketExamples(dataset, range(4), (64, 64)))
    assert cache.loss_weights.shape == (4, 8, 8)
    for row in (0, 1):
        assert torch.equal(cache.loss_weights[row, :, :4], torch.full((8, 4), 2.0))
        assert torch.equal(cache.loss_weights[row, :, 4:], torch.zeros(8, 4))
    assert torch.equal(cache.loss_weights[2:], torch.ones(2, 8, 8))


def test_take_returns_the_examples_at_the_indices_in_order_with_repeats(shapes_cache):
    from dataclasses import replace

    weights = torch.rand(32, 8, 8, generator=torch.Generator().manual_seed(3))
    weighted = replace(shapes_cache, loss_weights=weights)
    taken = weighted.take([5, 0, 5, 31])
    assert len(taken) == 4
    for row, source in enumerate([5, 0, 5, 31]):
        assert torch.equal(taken.latents[row], weighted.latents[source])
        assert torch.equal(taken.embeds[row], weighted.embeds[source])
        assert taken.lengths[row] == weighted.lengths[source]
        assert torch.equal(taken.loss_weights[row], weights[source])
    assert taken.key == weighted.key and taken.empty_embeds is weighted.empty_embeds
    assert shapes_cache.take([1, 2]).loss_weights is None


def test_take_refuses_an_index_outside_the_cache(shapes_cache):
    with pytest.raises(IndexError) as caught:
        shapes_cache.take([0, 32])
    assert str(caught.value) == "cache: indices must lie in 0 .. 31, got 0 .. 32"
