"""The inference record (pipelines/inference.py): written once per fit, read by every consumer, nothing filled in."""
import json

import numpy as np
import pytest
import torch

from competition import load_dataset, load_spec
from competition.errors import UserError
from competition.formats import FitRecord
from competition.layout import RunLayout
from pipelines.config import resolve
from pipelines.inference import InferenceRecord, fit_record, load_network, predict_images

CPU = torch.device("cpu")


def test_a_record_round_trips_through_json_and_refuses_what_it_is_not():
    cfg = resolve("tf_efficientnet_lite0", ["pretrained=none", "train_from=4", "head=mlp", "head_hidden=[64, 32]"])
    record = InferenceRecord.of(cfg, 18, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), CPU)
    assert record.net.head_hidden == (64, 32) and record.feature_dtype == "float16" and record.trunk_runtime
    assert InferenceRecord.from_json(json.loads(json.dumps(record.to_json())), "x") == record
    plain = InferenceRecord.of(resolve("tiny"), 18, (0.5,) * 3, (0.25,) * 3, CPU)
    assert plain.train_from is None and plain.trunk_runtime is None and plain.feature_dtype is None
    data = record.to_json()
    with pytest.raises(UserError, match="fold 2: inference record of format 0, not 4; train the model again"):
        InferenceRecord.from_json({**data, "format": 0}, "fold 2")
    with pytest.raises(UserError, match="no record: trained before inference records"):
        fit_record(FitRecord.from_json({"best_epoch": 1, "seconds": 1.0, "hours": 0.0, "gpu_hours": 0.0,
                                        "device": "cpu", "weights": "w", "shared_weights": [], "params": 1},
                                       "done.json"), "fold 0")
    with pytest.raises(UserError, match="malformed inference record"):
        InferenceRecord.from_json({**data, "img_size": 64}, "fold 0")  # a key it does not have
    with pytest.raises(UserError, match="malformed inference record"):
        InferenceRecord.from_json({**data, "net": {k: v for k, v in data["net"].items() if k != "dropout"}}, "f")
    # Format 1 predates caption inputs: its networks had none; format 2 grouped queries: one per label. Format 3
    # must say both.
    old = {**data, "format": 1, "net": {k: v for k, v in data["net"].items()
                                        if k not in ("caption_input", "head_groups")}}
    assert InferenceRecord.from_json(old, "f") == record and record.net.caption_input == "none"
    assert InferenceRecord.from_json({**old, "format": 2, "net": {**old["net"], "caption_input": "none"}},
                                     "f") == record and record.net.head_groups == 0
    with pytest.raises(UserError, match="malformed inference record"):
        InferenceRecord.from_json({**old, "format": 3}, "f")


@pytest.mark.parametrize("captions", [False, True])
def test_training_and_the_record_predict_the_same(demo_data, tmp_path, captions):
    """A fold's OOF (training's predict over cached trunk features, flip TTA) equals what its record predicts
    from the decoded images (pipelines.inference.predict_images, which `make predict` runs), to float rounding;
    with a caption input, from the images and the captions' embeddings, which it reads (other captions, other
    probabilities)."""
    from folds.split import write_folds
    from pipelines import text_encoder
    from pipelines.cache import build_cache
    from pipelines.run import train_model
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name)
    write_folds(run, ds, spec, 2, 0)
    fused = ["head=attention", "caption_input=minilm"] if captions else []
    train_model(spec, ds, run, resolve("tiny", ["epochs=1", "train_from=2", *fused]), log=lambda *_: None)
    fold = run.model("tiny").fold(0)
    record = fit_record(FitRecord.read(fold.done), "fold 0")
    assert record.train_from == 2 and record.tta and record.net.img_size == 32
    assert record.net.caption_input == ("minilm" if captions else "none")
    net = load_network(record, fold.best_weights, CPU)
    oof = __import__("pandas").read_csv(run.model("tiny").oof, dtype={"ImageID": str})
    rows = np.nonzero(oof["fold"].to_numpy() == 0)[0]
    images = np.load(build_cache(ds, run, record.net.img_size))[rows]
    emb = (torch.from_numpy(text_encoder.encode(run.model("tiny").encoder, ds.train["caption"])[rows])
           if captions else None)

    def predict(emb):
        return np.concatenate([predict_images(net, images[i:i + 32], CPU, None, None if emb is None else emb[i:i + 32])
                               .numpy() for i in range(0, len(rows), 32)])
    prob = predict(emb)
    assert np.abs(prob - oof[spec.tokens].to_numpy()[rows]).max() < 1e-5
    if captions:
        assert np.abs(predict(emb.flip(0)) - prob).max() > 1e-3
        with pytest.raises(ValueError, match="captions missing"):
            predict(None)
