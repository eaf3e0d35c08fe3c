"""The two augmentation paths (albumentations per image, batched torch) implement the same levels."""
import numpy as np
import pytest
import torch

from competition.errors import UserError
from pipelines.augment import LEVELS, BatchAugment, seed_transform, stream_seed, train_transform

SIZE = 64


def coordinate_image(size=SIZE) -> np.ndarray:
    """R encodes x, G encodes y, B marks real pixels (padding is black)."""
    ramp = np.linspace(0, 255, size).round().astype(np.uint8)
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = ramp[None, :], ramp[:, None], 255
    return image


def geometry_stats(out: np.ndarray) -> tuple[float, bool]:
    """(share of the source area visible, mirrored?) of one augmented coordinate image."""
    valid = out[..., 2] > 128
    xs, ys = out[..., 0][valid] / 255.0, out[..., 1][valid] / 255.0
    area = (np.percentile(xs, 99) - np.percentile(xs, 1)) * (np.percentile(ys, 99) - np.percentile(ys, 1))
    cols = np.broadcast_to(np.arange(out.shape[1])[None, :], valid.shape)[valid]
    return float(area), bool(np.corrcoef(cols, xs)[0, 1] < 0)


def albumentations_stats(level, n):
    t, image = train_transform(level, SIZE), coordinate_image()
    stats = []
    for i in range(n):
        seed_transform(t, stream_seed(1, 0, i))
        stats.append(geometry_stats(t(image=image)["image"]))
    return np.array(stats, dtype=float)


def batched_stats(level, n):
    aug = BatchAugment(level, SIZE)
    aug.reseed(torch.device("cpu"), 1, 0)
    x = torch.from_numpy(coordinate_image()).permute(2, 0, 1).float()[None].repeat(n, 1, 1, 1)
    out = aug(x).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return np.array([geometry_stats(o) for o in out], dtype=float)


@pytest.mark.parametrize("level", ["light", "strong"])
def test_both_paths_draw_the_same_crops_and_flips(level, monkeypatch):
    # Geometry only: colour jitter and holes would blur the coordinate code.
    monkeypatch.setitem(LEVELS, "geo", {**LEVELS[level], "jitter_p": 0.0, "holes_p": 0.0})
    a, b = albumentations_stats("geo", 400), batched_stats("geo", 400)
    assert abs(a[:, 0].mean() - b[:, 0].mean()) < 0.03, (a[:, 0].mean(), b[:, 0].mean())
    assert abs(a[:, 0].std() - b[:, 0].std()) < 0.03
    assert abs(a[:, 1].mean() - 0.5) < 0.08 and abs(b[:, 1].mean() - 0.5) < 0.08  # flip rate
    lo = LEVELS[level]["crop_scale"][0]
    assert b[:, 0].min() > lo * 0.8 - 0.05 and a[:, 0].min() > lo * 0.8 - 0.05  # crops keep most of the scene


def test_batched_colour_and_holes_follow_their_probabilities():
    aug = BatchAugment("strong", SIZE)
    aug.reseed(torch.device("cpu"), 5, 0)
    x = torch.full((600, 3, SIZE, SIZE), 128.0)
    out = aug.holes(aug.colour(x.clone()))
    changed = (out != 128).flatten(1).any(1).float().mean().item()
    p = LEVELS["strong"]
    expected = 1 - (1 - p["jitter_p"]) * (1 - p["holes_p"])
    assert abs(changed - expected) < 0.06
    assert out.min() >= 0 and out.max() <= 255


def test_batched_augmentation_is_seeded():
    x = torch.from_numpy(coordinate_image()).permute(2, 0, 1).float()[None].repeat(8, 1, 1, 1)
    a, b = BatchAugment("strong", SIZE), BatchAugment("strong", SIZE)
    a.reseed(torch.device("cpu"), 42, 3)
    b.reseed(torch.device("cpu"), 42, 3)
    assert torch.equal(a(x), b(x))
    b.reseed(torch.device("cpu"), 42, 4)
    assert not torch.equal(a(x), b(x))
    assert torch.equal(BatchAugment("none", SIZE)(x), x)


def test_unknown_level_is_a_user_error():
    from pipelines.config import resolve
    with pytest.raises(UserError, match="augment='wild'; valid: none, light, strong"):
        resolve("tiny", ["augment=wild"])


def test_every_closed_choice_is_defined_once_and_implemented():
    """A closed set with an implementation table has its names from that table alone (no second list to keep
    equal), and an unknown name is refused with the table's names."""
    from pipelines import augment, losses, model, schedules
    from pipelines.config import ImageConfig, choices, keys, resolve
    tables = {"augment": augment.LEVELS, "loss": losses.LOSSES, "head": model.HEADS, "schedule": schedules.SCHEDULES,
              "amp_dtype": model.AMP_DTYPES}
    assert {k for k, f in keys(ImageConfig).items() if isinstance(f.metadata["choices"], dict)} == set(tables)
    for key, table in tables.items():
        assert keys(ImageConfig)[key].metadata["choices"] is table and keys(ImageConfig)[key].default in table, key
        assert choices(ImageConfig, key) == tuple(table)
        with pytest.raises(UserError, match=f"{key}='nope'; valid: {', '.join(table)}"):
            resolve("tiny", [f"{key}=nope"])
