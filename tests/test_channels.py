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


def miniature(tmp_path_factory, name: str, n_train: int, n_test: int, seed: int):
    spec, data = load_spec(name), tmp_path_factory.mktemp(name)
    generate(data, n_train=n_train, n_test=n_test, size=32, seed=seed, workers=1, spec=spec)
    return spec, data


@pytest.fixture(scope="module")
def hpa(tmp_path_factory):
    return miniature(tmp_path_factory, "hpa2018", 150, 30, seed=3)


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
    hpa = ["red", "green", "blue", "yellow"]
    assert (as_picture(image, hpa) == image[..., :3]).all() and as_picture(image[..., :1], ["dapi"]).shape == (2, 2, 3)
    assert picture_channels(hpa) == "red as red, green as green, blue as blue (yellow not shown)"
    planet = ["blue", "green", "red", "nir"]  # a red band is shown as red wherever it sits
    assert (as_picture(image, planet) == image[..., [2, 1, 0]]).all()
    assert picture_channels(planet) == "red as red, green as green, blue as blue (nir not shown)"
    assert picture_channels(["a", "b", "c", "d"]) == "a as red, b as green, c as blue (d not shown)"


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
                          (("image_file:", "format: voc\nimage_file:"), r"channels are read by the csv format"),
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


@pytest.fixture(scope="module")
def planet_tif(tmp_path_factory):
    return miniature(tmp_path_factory, "planet_tif", 40, 10, seed=4)


def test_one_file_of_four_sixteen_bit_bands_decodes_to_four_channels(planet_tif, tmp_path):
    """Planet's GeoTIFFs: one 16-bit TIFF of four bands (no {channel} in image_file) decodes to H x W x 4, each band
    scaled by 1/257 and resized alone as channel files are; the same bands stored planar, or as an 8-bit RGBA PNG
    (its alpha a channel, not composited), decode alike."""
    import tifffile

    from competition.images import Planes
    spec, data = planet_tif
    ds = load_dataset(spec, data)
    source = ds.image_paths(ds.train)[0]
    assert isinstance(source, Planes) and source.path.name == f"{ds.train['id'][0]}.tif" and source.channels == 4
    bands = tifffile.imread(source.path)
    assert bands.shape == (32, 32, 4) and bands.dtype == np.uint16 and bands.max() > 255
    image = load_resized(source, 16)
    planes = [np.asarray(Image.fromarray((bands[..., k] // 257).astype(np.uint8)).resize((16, 16), Image.BILINEAR))
              for k in range(4)]
    assert image.shape == (16, 16, 4) and (image == np.stack(planes, -1)).all()
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(bands, -1, 0), photometric="minisblack",
                     planarconfig="separate")
    assert (load_resized(Planes(tmp_path / "planar.tif", 4), 16) == image).all()
    Image.fromarray((bands // 257).astype(np.uint8), mode="RGBA").save(tmp_path / "rgba.png")
    assert (load_resized(Planes(tmp_path / "rgba.png", 4), 16) == image).all()


def test_a_file_of_other_bands_than_the_spec_lists_is_named(planet_tif, tmp_path):
    """A file of three bands where the spec lists four, a missing file, a file that is no image, float bands: one
    error each, naming the id and the file, before anything is written."""
    import tifffile
    spec, data = copy_of(planet_tif, tmp_path)
    ds = load_dataset(spec, data, check=False)
    ids, sources = ds.train["id"], ds.image_paths(ds.train)
    tifffile.imwrite(sources[1].path, tifffile.imread(sources[1].path)[..., :3], photometric="rgb")
    sources[2].path.unlink()
    sources[3].path.write_bytes(b"II*\0 not a tiff")
    tifffile.imwrite(sources[5].path, np.zeros((32, 32, 4), np.float32), photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(UserError) as e:
        load_dataset(spec, data)
    text = str(e.value)
    assert f"train id {ids[1]}: {ids[1]}.tif holds 3 channels (TIFF YXS uint16), the spec lists 4" in text
    assert f"train id {ids[2]}: missing file" in text and f"train id {ids[3]}: cannot read image" in text
    assert f"train id {ids[5]}: cannot read image: ValueError: a TIFF of float32 pixels: bands of 8- or 16-bit" in text
    assert not (tmp_path / "runs").exists()


def test_channel_statistics_make_eda_measures_are_what_training_normalises_by(planet_tif, tmp_path, capsys):
    """`make eda` prints and saves each band's mean and std; pasted into the spec, training normalises by them
    (the inference record keeps them) instead of measuring its own, which they come close to."""
    from competition.__main__ import main
    from competition.spec import SPEC_DIR
    spec, data = copy_of(planet_tif, tmp_path)
    runs = tmp_path / "runs"
    assert main(["eda", "--comp", "planet_tif", "--data", str(data), "--runs", str(runs)]) == 0
    lines = (runs / "planet_tif" / "eda" / "channel_stats.yaml").read_text()
    assert "channel_mean: [" in capsys.readouterr().out and lines.count("\n") == 3
    path = tmp_path / "planet_stats.yaml"
    path.write_text((SPEC_DIR / "planet_tif.yaml").read_text() + lines)
    given = load_spec(str(path), data)
    ds = load_dataset(given, data)
    run = RunLayout.of(runs, given.name)
    write_folds(run, ds, given, 3, 0)
    record = train_model(given, ds, run, resolve("tiny", ["epochs=1", "img_size=32"]), **QUIET).folds[0].inference
    assert tuple(record["mean"]) == given.channel_mean and tuple(record["std"]) == given.channel_std
    cache = np.load(run.image_cache(ds.images_key, 32), mmap_mode="r")[:len(ds.train)].reshape(-1, 4) / 255.0
    np.testing.assert_allclose(given.channel_mean, cache.mean(0), atol=0.01)
    np.testing.assert_allclose(given.channel_std, cache.std(0), atol=0.02)


@pytest.mark.parametrize("lines, problem", [
    ("channel_mean: [0.1, 0.2, 0.3, 0.4]\n", "channel_mean and channel_std go together"),
    ("channel_mean: [0.1, 0.2, 0.3]\nchannel_std: [0.1, 0.1, 0.1, 0.1]\n", r"channel_mean \[0.1, 0.2, 0.3\]: one"),
    ("channel_mean: [0.1, 0.2, 0.3, 1.5]\nchannel_std: [0.1, 0.1, 0.1, 0.1]\n", "in \\[0, 1\\] per channel"),
    ("channel_mean: [0.1, 0.2, 0.3, 0.4]\nchannel_std: [0.1, 0.1, 0, 0.1]\n", r"channel_std \[0.1, 0.1, 0, 0.1\]"),
])
def test_bad_channel_statistics_in_a_spec_are_named(tmp_path, lines, problem):
    from competition.spec import SPEC_DIR
    path = tmp_path / "spec.yaml"
    path.write_text((SPEC_DIR / "planet_tif.yaml").read_text() + lines)
    with pytest.raises(UserError, match=problem):
        load_spec(str(path))
    path.write_text((SPEC_DIR / "planet.yaml").read_text() + "channel_mean: [0.5]\nchannel_std: [0.2]\n")
    with pytest.raises(UserError, match="with channels"):
        load_spec(str(path))
