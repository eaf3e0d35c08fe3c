"""A synthetic competition in exactly the COMP5329 format, generated from a seed with no downloads.

Each of the 18 labels is a distinct shape drawn at random position, scale, colour and rotation
over a textured background, with occluders and noise. Label sets follow COMP5329-like
statistics (person on ~76% of images, ~1.55 labels per image, street/animal/travel scenes
that co-occur); captions name some of the objects with synonyms and omissions, and a few
carry the real file's quirks (unescaped inner quotes, a line break).
"""
from __future__ import annotations

import argparse
import math
import os
import re
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from competition.artifacts import read_yaml, write_text
from competition.errors import UserError
from competition.reader import image_files
from competition.spec import load_spec, spec_path

# (token, shape, caption words). Shapes are polygons in a unit box, rotated and scaled per draw.
OBJECTS = {
    "1": ("person", ["person", "man", "woman", "child", "people"]),
    "2": ("ring", ["bicycle", "bike"]),
    "3": ("square", ["car", "sedan", "vehicle"]),
    "4": ("triangle", ["motorcycle", "motorbike"]),
    "5": ("star", ["airplane", "plane", "jet"]),
    "6": ("bar", ["bus"]),
    "7": ("zigzag", ["train", "locomotive"]),
    "8": ("trapezoid", ["truck", "lorry", "pickup"]),
    "9": ("crescent", ["boat", "ship", "sailboat"]),
    "10": ("stack", ["traffic light", "signal"]),
    "11": ("plus", ["fire hydrant", "hydrant"]),
    "13": ("octagon", ["stop sign"]),
    "14": ("lshape", ["parking meter", "meter"]),
    "15": ("tshape", ["bench", "park bench"]),
    "16": ("arrow", ["bird", "pigeon", "seagull"]),
    "17": ("diamond", ["cat", "kitten"]),
    "18": ("hexagon", ["dog", "puppy"]),
    "19": ("cross", ["horse", "pony"]),
}

# Scene mixture: each scene includes each of its labels with the given probability.
SCENES = [  # (weight, {token: p})
    (0.42, {"3": 0.45, "8": 0.25, "6": 0.15, "10": 0.2, "13": 0.08, "11": 0.08, "14": 0.04,
            "2": 0.07, "4": 0.08}),
    (0.24, {"17": 0.25, "18": 0.28, "19": 0.18, "16": 0.17, "15": 0.1}),
    (0.20, {"5": 0.22, "7": 0.25, "9": 0.22, "6": 0.05, "8": 0.05}),
    (0.14, {"15": 0.3, "16": 0.15, "2": 0.12, "18": 0.12}),
]
PERSON_P = 0.76
SCENE_SCALE = 0.62
SCENERY = ["on a street", "in a field", "near the water", "in a city", "at the park",
           "next to a building", "on a sunny day", "in the snow", "at night"]


def unit_shape(kind: str) -> list[list[tuple[float, float]]]:
    """Polygons (list of point lists) inside [-1, 1]^2."""
    def poly(n, r=1.0, phase=0.0):
        return [(r * math.cos(phase + 2 * math.pi * i / n), r * math.sin(phase + 2 * math.pi * i / n))
                for i in range(n)]
    def rect(x0, y0, x1, y1):
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    shapes = {
        "person": [[(x, y - 0.65) for x, y in poly(12, 0.3)], rect(-0.3, -0.3, 0.3, 0.5),
                   rect(-0.3, 0.5, -0.1, 1.0), rect(0.1, 0.5, 0.3, 1.0), rect(-0.7, -0.3, 0.7, -0.15)],
        "ring": [poly(16, 1.0), poly(16, 0.55)],  # second polygon is cut out
        "square": [rect(-0.8, -0.8, 0.8, 0.8)],
        "triangle": [poly(3, 1.0, -math.pi / 2)],
        "star": [[(math.cos(a) * r, math.sin(a) * r) for i in range(10)
                  for a, r in [(-math.pi / 2 + i * math.pi / 5, 1.0 if i % 2 == 0 else 0.4)]]],
        "bar": [rect(-1.0, -0.35, 1.0, 0.35)],
        "zigzag": [[(-1, 0.2), (-0.5, -0.5), (0, 0.2), (0.5, -0.5), (1, 0.2), (1, 0.6), (0.5, -0.1),
                    (0, 0.6), (-0.5, -0.1), (-1, 0.6)]],
        "trapezoid": [[(-1, 0.6), (1, 0.6), (0.5, -0.6), (-0.5, -0.6)]],
        "crescent": [poly(16, 1.0), [(x + 0.45, y - 0.2) for x, y in poly(16, 0.85)]],
        "stack": [rect(-0.35, -1, 0.35, 1), [(x * 0.25, y * 0.25 - 0.6) for x, y in poly(10)],
                  [(x * 0.25, y * 0.25) for x, y in poly(10)], [(x * 0.25, y * 0.25 + 0.6) for x, y in poly(10)]],
        "plus": [rect(-1, -0.3, 1, 0.3), rect(-0.3, -1, 0.3, 1)],
        "octagon": [poly(8, 1.0, math.pi / 8)],
        "lshape": [rect(-0.8, -1, -0.2, 1), rect(-0.8, 0.4, 0.8, 1)],
        "tshape": [rect(-1, -1, 1, -0.4), rect(-0.3, -1, 0.3, 1)],
        "arrow": [[(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25), (-1, 0.25)]],
        "diamond": [[(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]],
        "hexagon": [poly(6, 1.0)],
        "cross": [[(-1, -0.7), (-0.7, -1), (0, -0.3), (0.7, -1), (1, -0.7), (0.3, 0), (1, 0.7), (0.7, 1),
                   (0, 0.3), (-0.7, 1), (-1, 0.7), (-0.3, 0)]],
    }
    return shapes[kind]


CUTOUT = {"ring", "crescent"}  # second polygon is drawn in the background colour


def sample_labels(rng: np.random.Generator) -> list[str]:
    labels = ["1"] if rng.random() < PERSON_P else []
    weights = np.array([w for w, _ in SCENES])
    scene = SCENES[rng.choice(len(SCENES), p=weights / weights.sum())][1]
    # Scaled so that images carry ~1.55 labels, as in COMP5329.
    labels += [t for t, p in scene.items() if rng.random() < p * SCENE_SCALE and t not in labels]
    if not labels:
        tokens = list(scene)
        probs = np.array([scene[t] for t in tokens])
        labels = [tokens[rng.choice(len(tokens), p=probs / probs.sum())]]
    return labels


def background(rng: np.random.Generator, size: int) -> Image.Image:
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    grad = (c0 * (1 - t) + c1 * t) * np.ones((1, size, 1))
    freq = rng.uniform(0.05, 0.4)
    yy, xx = np.mgrid[:size, :size]
    texture = 25 * np.sin(freq * (xx * rng.normal() + yy * rng.normal()))[..., None]
    img = np.clip(grad + texture + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(2, 6)):  # clutter: lines and blobs that are no label
        pts = [tuple(rng.integers(0, size, 2)) for _ in range(2)]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.line(pts, fill=colour, width=int(rng.integers(1, 4)))
        else:
            x, y = pts[0]
            r = int(rng.integers(2, max(3, size // 16)))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    return im


def draw_object(draw: ImageDraw.ImageDraw, rng, kind: str, size: int, bg) -> None:
    scale = size * rng.uniform(0.14, 0.28)
    cx, cy = rng.uniform(scale, size - scale, 2)
    angle = rng.uniform(0, 2 * math.pi)
    ca, sa = math.cos(angle), math.sin(angle)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    for k, polygon in enumerate(unit_shape(kind)):
        pts = [(cx + scale * (x * ca - y * sa), cy + scale * (x * sa + y * ca)) for x, y in polygon]
        fill = bg if (kind in CUTOUT and k == 1) else colour
        draw.polygon(pts, fill=fill)


def render(seed: int, labels: list[str], size: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    im = background(rng, size)
    draw = ImageDraw.Draw(im)
    bg = tuple(int(c) for c in np.asarray(im).reshape(-1, 3).mean(0))
    for token in rng.permutation(labels):
        for _ in range(1 if rng.random() < 0.85 else 2):
            draw_object(draw, rng, OBJECTS[token][0], size, bg)
    for _ in range(rng.integers(0, 3)):  # occluders partly cover objects
        x, y = rng.integers(0, size, 2)
        w, h = rng.integers(size // 12, size // 5, 2)
        draw.rectangle([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    noisy = np.asarray(im).astype(np.int16) + rng.normal(0, 8, (size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def caption(rng: np.random.Generator, labels: list[str]) -> str:
    named = [t for t in labels if rng.random() < 0.65]  # omissions: captions carry part of the signal
    if rng.random() < 0.06:  # a wrong mention now and then, like a caption about a poster
        named.append(str(rng.choice(list(OBJECTS))))
    words = [str(rng.choice(OBJECTS[t][1])) for t in dict.fromkeys(named)]
    words = [("an " if w[0] in "aeiou" else "a ") + w for w in words]
    place = str(rng.choice(SCENERY))
    if not words:
        return f"A picture taken {place}."
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"{listed[0].upper()}{listed[1:]} {place}."


def write_csv(path: Path, rows: list[str], header: str) -> None:
    """Lines after a header line; no header line when it is empty (label files)."""
    write_text(path, "".join(f"{line}\n" for line in ([header] if header else []) + list(rows)))


def write_label_files(folder: Path, tokens, ids, label_sets, rng) -> None:
    """One <token>.txt per label: the names of the images that carry it, in no particular order."""
    folder.mkdir(parents=True, exist_ok=True)
    for t in tokens:
        names = [i for i, labels in zip(ids, label_sets) if t in labels]
        write_csv(folder / f"{t}.txt", list(rng.permutation(names)) if names else [], "")


def write_voc_sets(folder: Path, tokens, sets: dict, rng) -> None:
    """PASCAL VOC's ImageSets/Main: <set>.txt (the ids) and <token>_<set>.txt (`<id> <1|-1|0>` per id, VOC's
    column alignment included); about one positive in ten is marked 0, "difficult"."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (ids, label_sets) in sets.items():
        write_csv(folder / f"{name}.txt", ids, "")
        for t in tokens:
            values = [(1 if rng.random() > 0.1 else 0) if t in labels else -1 for labels in label_sets]
            write_csv(folder / f"{t}_{name}.txt", [f"{i} {v:2d}" for i, v in zip(ids, values)], "")


def _render_job(args):
    seed, labels, size, source, channels = args
    image = render(seed, labels, size)
    if isinstance(source, Path):
        image.save(source, quality=90)
        return
    # Named channels: one named red, green or blue is the picture's; another, channel k, is the mean of two of them
    # (by position), so every channel shows the shapes.
    rgb = np.asarray(image).astype(np.uint16)
    colour = {"red": 0, "green": 1, "blue": 2}
    planes = [rgb[..., colour[c]] if c in colour else (rgb[..., k % 3] + rgb[..., (k + 1) % 3]) // 2
              for k, c in enumerate(channels)]
    if isinstance(source, tuple):  # one grayscale file per channel (HPA's stains)
        for plane, p in zip(planes, source):
            Image.fromarray(plane.astype(np.uint8), mode="L").save(p)
    elif source.path.suffix.lower() in (".tif", ".tiff"):  # one 16-bit TIFF of every channel (Planet's bands)
        import tifffile
        tifffile.imwrite(source.path, np.stack(planes, axis=-1) * 257, photometric="minisblack",
                         planarconfig="contig", compression="lzw")
    else:
        Image.fromarray(np.stack(planes, axis=-1).astype(np.uint8)).save(source.path)


def generate(out: Path, n_train: int = 2000, n_test: int = 500, size: int = 128, seed: int = 0,
             workers: int = 2, spec=None) -> None:
    """The demo competition in `spec`'s layout (default: the demo spec, COMP5329's CSVs)."""
    spec = spec or load_spec("demo")
    tokens = load_spec("demo").tokens
    kaggle = spec.format == "csv" and (spec.label_format == "one_hot" or spec.group_column or spec.no_label or
                                       spec.test_image_dir or spec.image_file != "{}" or spec.tokens != tokens or
                                       spec.channels)
    rng = np.random.default_rng(seed)
    (out / spec.image_dir).mkdir(parents=True, exist_ok=True)
    n = n_train + n_test
    label_sets = [sample_labels(rng) for _ in range(n)]
    if spec.format == "label_files" or spec.no_label or spec.label_format == "one_hot":
        # such data sets allow images without any label: a few empty scenes
        for i in range(5, n, 11):
            label_sets[i] = []
    captions = [caption(rng, ls) for ls in label_sets]
    # The real file's quirks, so the demo exercises the tolerant reader.
    for i in range(3, n, 397):
        captions[i] = captions[i][:-1] + ' with a sign that reads "open".'
    captions[7] = captions[7][:-1] + "\n\nseen from far away."
    ids = [f"{i}.jpg" if i < n_train else f"{30000 + i - n_train}.jpg" for i in range(n)]
    if spec.format == "voc":  # VOC ids are six digits; the image is label_file_image of the id
        voc_ids = [f"{i + 1:06d}" for i in range(n)]
        ids = [spec.label_file_image.format(i) for i in voc_ids]
    if kaggle:
        return kaggle_csv(out, spec, label_sets, seed, size, n_train, workers, rng)
    jobs = [(seed * 1_000_003 + i, label_sets[i], size, out / spec.image_dir / ids[i], None) for i in range(n)]
    with Pool(workers) as pool:
        pool.map(_render_job, jobs, chunksize=64)
    if spec.tokens != tokens:  # the spec's own labels (VOC's 20 classes), from the demo's by position
        mapped = spec_labels(spec, np.random.default_rng(seed + 1))
        label_sets, tokens = [mapped(labels) for labels in label_sets], spec.tokens
    if spec.format == "voc":
        write_voc_sets(out / spec.labels_dir, tokens, {
            spec.voc_train_set: (voc_ids[:n_train], label_sets[:n_train]),
            spec.voc_test_set: (voc_ids[n_train:], label_sets[n_train:])}, rng)
        return
    if spec.format == "label_files":
        write_label_files(out / spec.labels_dir, tokens, ids[:n_train], label_sets[:n_train], rng)
        write_csv(out / spec.test_csv, ids[n_train:], spec.id_column)
        return
    train_rows = []
    for i in range(n_train):
        order = rng.permutation(label_sets[i])  # real files list labels out of order
        assert set(order) <= set(tokens)
        train_rows.append(f'{ids[i]},{" ".join(order)},"{captions[i]}"')
    test_rows = [f'{ids[i]},"{captions[i]}"' for i in range(n_train, n)]
    write_csv(out / "test.csv", test_rows, "ImageID,Caption")
    write_csv(out / "train.csv", train_rows, "ImageID,Labels,Caption")


# Real competitions' id shapes, (row, train rows, patient) -> id: a miniature takes the first that its spec's
# id_pattern matches.
ID_SHAPES = [
    lambda i, n_train, patient: f"img_{i}",
    lambda i, n_train, patient: f"train_{i}" if i < n_train else f"test_{i - n_train}",  # Planet
    lambda i, n_train, patient: f"{i * 2654435761 % 2**64:016x}.jpg",                    # Plant Pathology 2021
    lambda i, n_train, patient: f"{i * 2654435761 % 2**64:016x}",                        # iMet 2019
    lambda i, n_train, patient: f"{i * 2654435761 % 2**32:08x}-bbc3-11e8-b2bc-ac1f6b6435d0",  # HPA 2018
    lambda i, n_train, patient: f"{patient:08d}_{i % 10:03d}.png",                        # ChestX-ray14
    lambda i, n_train, patient: f"Train_{i}" if i < n_train else f"Test_{i - n_train}",  # Plant Pathology 2020
    lambda i, n_train, patient: f"1.2.826.0.1.3680043.8.498.{i * 2654435761 % 10**20}",  # RANZCR CLiP
    lambda i, n_train, patient: f"tt{1000000 + i * 7919}",                               # IMDb ids (posters)
    lambda i, n_train, patient: f"{i}.jpg",
]


def spec_labels(spec, rng):
    """A function from a row's demo labels to the spec's: the spec's labels take the demo's under their own tokens,
    by position; a label past the demo's 18 is the one 18 places before it, present in half its rows."""
    demo = load_spec("demo").tokens
    as_spec = {t: [s for j, s in enumerate(spec.tokens) if j % len(demo) == k] for k, t in enumerate(demo)}
    return lambda labels: [s for t in labels for j, s in enumerate(as_spec[t]) if j == 0 or rng.random() < .5]


def kaggle_csv(out: Path, spec, label_sets, seed: int, size: int, n_train: int, workers: int, rng) -> None:
    """Another competition's csv layout, as its spec says: ids of a shape its id_pattern takes, train and test
    image folders, labels as tokens (with its separator and no_label) or one-hot columns, a group column (30% of
    the rows share their group with two others), a column the spec does not read, and a test file shaped as a
    sample submission. The spec's labels: `spec_labels` (a row left empty gets the first)."""
    n = len(label_sets)
    patient = [i // 10 * 10 + (i % 10 if i % 10 >= 3 else 0) for i in range(n)]  # rows 10j..10j+2 share one
    shape = next((s for s in ID_SHAPES if all(re.fullmatch(spec.id_pattern, s(i, n_train, patient[i]))
                                              for i in (0, n_train, n - 1))), None)
    if shape is None:
        raise UserError(f"{spec.source}: no id shape of the demo data matches id_pattern {spec.id_pattern!r}")
    ids = [shape(i, n_train, patient[i]) for i in range(n)]
    folders = [spec.image_dir if i < n_train else spec.test_images for i in range(n)]
    for folder in set(folders):
        (out / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(seed * 1_000_003 + i, label_sets[i], size, image_files(out / folders[i], [ids[i]], spec)[0],
             spec.channels) for i in range(n)]
    with Pool(workers) as pool:
        pool.map(_render_job, jobs, chunksize=64)
    mapped = spec_labels(spec, rng)
    needs_one = spec.label_format == "tokens" and not spec.no_label
    label_cols = spec.tokens if spec.label_format == "one_hot" else [spec.label_column]
    group = [spec.group_column] if spec.group_column else []
    rows = []
    for i in range(n_train):
        mine = mapped(rng.permutation(label_sets[i]))
        mine = mine or ([spec.tokens[0]] if needs_one else [])
        cells = ([str(int(t in mine)) for t in spec.tokens] if spec.label_format == "one_hot" else
                 [spec.label_separator.join(mine) or spec.no_label])
        rows.append(",".join([ids[i], *cells, *([f"{patient[i]}"] if group else []), "x"]))
    write_csv(out / spec.train_csv, rows, ",".join([spec.id_column, *label_cols, *group, "site"]))
    # The test file as a sample submission holds it: ids and placeholder labels (columns the reader skips).
    blank = ",".join(["0"] * len(spec.tokens)) if spec.label_format == "one_hot" else spec.tokens[0]
    submitted = spec.tokens if spec.label_format == "one_hot" else [spec.submission_column]
    write_csv(out / spec.test_csv, [f"{i},{blank}" for i in ids[n_train:]], ",".join([spec.id_column, *submitted]))


def miniature_spec(comp: str, out: Path, n_labels: int = 300):
    """The spec a miniature is written for. A spec whose labels live in the data (labels_file, iMet's labels.csv)
    gets a generated table of `n_labels` labels there first, in the competition's shape (`culture::` then `tag::`
    names), unless the folder has one."""
    raw = read_yaml(spec_path(comp), "competition spec")
    if isinstance(raw, dict) and raw.get("labels_file") and not (out / str(raw["labels_file"])).exists():
        cultures = round(n_labels * 398 / 1103)
        names = [f"culture::c{i}" if i < cultures else f"tag::t{i}" for i in range(n_labels)]
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / str(raw["labels_file"]), [f"{i},{name}" for i, name in enumerate(names)],
                  "attribute_id,attribute_name")
    return load_spec(comp, out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comp", default="demo", help="the spec whose layout to write (demo, demo_label_files, demo_voc)")
    ap.add_argument("--out", default=None, help="default: the spec's data folder")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels", type=int, default=300, help="labels of a generated label table (labels_file specs)")
    a = ap.parse_args(argv)
    out = Path(a.out or read_yaml(spec_path(a.comp), "competition spec").get("data", "."))
    spec = miniature_spec(a.comp, out, a.labels)
    generate(out, a.train, a.test, a.size, a.seed, workers=os.cpu_count() or 1, spec=spec)
    print(f"demo data ({spec.format}): {a.train} train + {a.test} test images at {a.size}px -> {out}")


if __name__ == "__main__":
    main()
