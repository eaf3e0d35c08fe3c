"""Images as one grayscale file per channel (issue 42: HPA's <id>_red.png, _green, _blue, _yellow): decoded to
H x W x 4 everywhere, a timm backbone with offline weights built with in_chans=4 and its first layer adapted as
timm adapts it, the chain from folds to a bundle's predictions, and each bad channel file named."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.export import export_bundle
from bundle.predict import predict_bundle
from competition import load_dataset, load_spec
from competition.demo_data import generate
from competition.errors import UserError
from competition.images import load_resized
from competition.layout import RunLayout
from folds.split import write_folds
from pipelines.augment import BatchAugment, train_transform
from pipelines.config import resolve
from pipelines.model import build_model
from pipelines.run import train_model
from submissions.cam import as_picture, picture_channels
from submissions.submit import run_submit

from helpers import settings

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def hpa(tmp_path_factory):
    spec, data = load_spec("hpa2018"), tmp_path_factory.mktemp("hpa")
    generate(data, n_train=150, n_test=30, size=32, seed=3, workers=1, spec=spec)
    return spec, data


def copy_of(hpa, tmp_path):
    spec, data = hpa
    shutil.copytree(data, tmp_path / "data")
    return spec, tmp_path / "data"


def test_four_channel_files_decode_to_one_four_channel_image(hpa):
    spec, data = hpa
    ds = load_dataset(spec, data)
    files = ds.image_paths(ds.train)[0]
    assert [p.name.rsplit("_", 1)[1] for p in files] == ["red.png", "green.png", "blue.png", "yellow.png"]
    image = load_resized(files, 16)
    assert image.shape == (16, 16, 4) and image.dtype == np.uint8
    for k, p in enumerate(files):  # each channel is its own file, resized alone
        assert (image[..., k] == np.asarray(Image.open(p).resize((16, 16), Image.BILINEAR))).all()


def test_a_pretrained_first_layer_is_adapted_as_timm_adapts_it():
    """Offline ImageNet weights (strict load) into a 4-channel network: the first convolution is timm's
    adapt_input_conv of the RGB one (filters repeated, scaled by 3/4), rounded as the fp16 weight file holds it;
    the normalisation follows the same channel order."""
    from timm.models import adapt_input_conv

    from pipelines.weights import offline_file, read_state_dict
    rgb = read_state_dict(offline_file("tf_efficientnet_lite0"))["_conv_stem.weight"]
    net, source, mean, std = build_model(resolve("tf_efficientnet_lite0", ["img_size=32"]), 5, in_chans=4)
    first = net.backbone.conv_stem.weight.detach()
    assert source.startswith("offline") and first.shape[1] == 4
    assert torch.equal(first, adapt_input_conv(4, rgb).half().float())
    assert torch.equal(first[:, 3], (rgb[:, 0] * 0.75).half().float())  # yellow reads red's filters
    rgb_net, _, rgb_mean, rgb_std = build_model(resolve("tf_efficientnet_lite0", ["img_size=32"]), 5)
    assert mean == (*rgb_mean, rgb_mean[0]) and std == (*rgb_std, rgb_std[0])
    assert torch.equal(net.backbone.blocks[0][0].conv_dw.weight, rgb_net.backbone.blocks[0][0].conv_dw.weight)


@pytest.mark.parametrize("level", ["light", "strong"])
def test_augmentation_keeps_four_channels(level):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    assert train_transform(level, 32, 4)(image=image)["image"].shape == (32, 32, 4)
    batch = torch.from_numpy(np.stack([image] * 3)).permute(0, 3, 1, 2).float()
    out = BatchAugment(level, 32)(batch)
    assert out.shape == (3, 4, 32, 32) and out.min() >= 0 and out.max() <= 255


def test_grad_cam_shows_three_channels_and_says_which():
    image = np.arange(2 * 2 * 4, dtype=np.uint8).reshape(2, 2, 4)
    assert (as_picture(image) == image[..., :3]).all() and as_picture(image[..., :1]).shape == (2, 2, 3)
    assert picture_channels(["red", "green", "blue", "yellow"]) == \
        "red as red, green as green, blue as blue (yellow not shown)"


@pytest.mark.parametrize("trunk", [[], ["train_from=5"]])
def test_a_four_channel_competition_runs_with_offline_weights_to_identical_bundle_rows(hpa, tmp_path, trunk):
    """folds -> train (tf_efficientnet_lite0, offline weights, in_chans=4; fine-tuned, or on a cached frozen
    trunk shared by the folds) -> submit -> export -> predict: the bundle reads the channel files and writes the
    submission's rows byte for byte."""
    spec, data = copy_of(hpa, tmp_path)
    ds = load_dataset(spec, data)
    run = RunLayout.of(tmp_path / "runs", spec.name)
    write_folds(run, ds, spec, 3, 0)
    cfg = resolve("tf_efficientnet_lite0", ["img_size=32", "epochs=1", "batch_size=32", *trunk])
    meta = train_model(spec, ds, run, cfg, **QUIET)
    record = meta.folds[0].inference
    assert meta.folds[0].weights_source.startswith("offline") and record["net"]["in_chans"] == 4
    # each stain normalised by its own statistics over the labelled images, the same for every fold, in the record
    cache = np.load(run.image_cache(ds.images_key, 32), mmap_mode="r")[:len(ds.train)] / 255.0
    np.testing.assert_allclose(record["mean"], cache.reshape(-1, 4).mean(0), rtol=1e-9)
    np.testing.assert_allclose(record["std"], cache.reshape(-1, 4).std(0), rtol=1e-9)
    assert all(meta.folds[f].inference["mean"] == record["mean"] for f in meta.folds)
    sub = run_submit(spec, ds, run, settings(spec, method="global", trials=2, blends=("mean",)), "test",
                     [meta.model], **QUIET)
    folder = export_bundle(spec, ds, run, sub.path, **QUIET)
    assert predict_bundle(folder, data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()
    assert sub.path.read_text().splitlines()[0] == "Id,Predicted"


def save_gray(path, size=(32, 32), bits=8):
    """A grayscale channel file: 8-bit (mode L) or 16-bit (Pillow reads a 16-bit PNG as I;16 or I)."""
    Image.fromarray(np.full(size[::-1], 1000 if bits == 16 else 10, np.uint16 if bits == 16 else np.uint8)).save(path)


@pytest.mark.parametrize("edit, problem", [
    (lambda p: p.unlink(), r"\S+_yellow.png: missing file"),
    (lambda p: save_gray(p, (24, 32)), r"channels of different sizes: \S+_red.png 32x32, .*_yellow.png 24x32"),
    (lambda p: save_gray(p, bits=16), r"8-bit and 16-bit channels mixed: .*_yellow.png I(;16)?$"),
    (lambda p: Image.new("RGB", (32, 32)).save(p, format="PNG"),
     r"channel files hold one channel each: \S+_yellow.png \(RGB\) holds more"),
])
def test_a_bad_channel_file_is_named(hpa, tmp_path, edit, problem):
    """A missing channel file, channels of different sizes, 8-bit beside 16-bit, a channel file of three
    channels: one error naming the id and the file, before anything is written."""
    spec, data = copy_of(hpa, tmp_path)
    ds = load_dataset(spec, data, check=False)
    image_id, files = ds.train["id"][4], ds.image_paths(ds.train)[4]
    edit(files[3])
    with pytest.raises(UserError, match=rf"images missing or unreadable.*\n.*train id {image_id}: {problem}"):
        load_dataset(spec, data)
    run = RunLayout.of(tmp_path / "runs", spec.name)
    assert not run.root.exists()


def test_a_spec_names_its_channel_files_with_its_channels(tmp_path):
    from competition.spec import SPEC_DIR
    text = (SPEC_DIR / "hpa2018.yaml").read_text()
    for edit, problem in [(("channels: [red, green, blue, yellow]\n", ""), "names a {channel}, and the spec lists no"),
                          (("'{}_{channel}.png'", "'{}.png'"), r"channels need a csv format's image_file with"),
                          (("[red, green, blue, yellow]", "[red, red]"), "a list of distinct names")]:
        path = tmp_path / "spec.yaml"
        path.write_text(text.replace(*edit))
        with pytest.raises(UserError, match=problem):
            load_spec(str(path))


def test_sixteen_bit_channel_files_scale_down_as_rgb_images_do(tmp_path):
    """Four 16-bit channel files (the full-size HPA release's): each scaled by 1/257 to 8 bits, as a 16-bit RGB
    file's gray is, not clipped at 255."""
    files = tuple(tmp_path / f"x_{c}.png" for c in ("red", "green", "blue", "yellow"))
    for k, p in enumerate(files):
        Image.fromarray(np.full((8, 8), 257 * (10 + k), np.uint16)).save(p)
    assert load_resized(files, 8)[0, 0].tolist() == [10, 11, 12, 13]
