"""The captions member with its sentence encoder's top layers fine-tuned on cached token states."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from competition import load_dataset, load_spec
from competition.errors import UserError
from competition.layout import RunLayout
from folds.split import write_folds
from pipelines import caption_tuning, text_encoder
from pipelines.captions import CaptionModel
from pipelines.config import resolve
from pipelines.run import train_model

CAPTIONS = ["A man riding a bike down a street.", "two cats", "  A red double decker bus driving past a tall "
            "building, with \"quoted\" people  ", "a"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return text_encoder.save_encoder("minilm", "offline", tmp_path_factory.mktemp("enc") / "encoder")


@pytest.mark.parametrize("k", [1, 2, 6])
def test_the_top_layers_are_the_encoders_own(encoder, k):
    """Token states below the top k layers, through this module's copies of those layers and the mean pooling:
    the encoder's own sentence embeddings (up to the fp16 rounding of the states)."""
    states = caption_tuning.TokenStates(*caption_tuning.encode_states(encoder, CAPTIONS, 6 - k))
    net = caption_tuning.pretrained_top(encoder, k, 5).eval()
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(net.pooled(*states.batch(np.arange(len(CAPTIONS)))), dim=1)
    assert np.abs(pooled.numpy() - text_encoder.encode(encoder, CAPTIONS)).max() < 1e-3
    assert states.states.dtype == np.float16 and list(states.lengths) == [
        len(t) for t in text_encoder.load(encoder)[0].tokenizer([c.strip() for c in CAPTIONS])["input_ids"]]


def test_bad_tuning_settings_are_refused(encoder):
    with pytest.raises(UserError, match="TF-IDF has none"):
        resolve("captions", ["tune_layers=2"])
    with pytest.raises(UserError, match="has 6 layers"):
        caption_tuning.pretrained_top(encoder, 7, 3)
    with pytest.raises(UserError, match="tune_lr"):
        resolve("captions_minilm_tuned", ["tune_lr=0"])


def test_a_tuned_member_trains_and_its_saved_folds_predict_as_trained(demo_data, tmp_path):
    """Folds and refit train (the loss falls), the fold's saved arrays (fp16) predict its test rows exactly as
    training did, and the size counts the shared encoder once beside each fit's layers."""
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path, "demo")
    write_folds(run, ds, spec, 3, 0, False)
    train_model(spec, ds, run, resolve("captions_minilm_tuned", ["tune_epochs=3", "tune_lr=3e-4", "fullfit=true"]),
                log=lambda *_: None)
    d = run.model("captions_minilm_tuned")
    history = pd.read_csv(d.fold(0).history)
    assert list(history["epoch"]) == [1, 2, 3] and history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert "micro_f1" in history and not np.isnan(history["micro_f1"].iloc[-1])
    model = CaptionModel.load(d.fold(2).captions_model)
    assert model.tuned == 2 and model.coef is None
    test = pd.read_csv(d.test_fold(2))[spec.tokens].to_numpy()
    assert np.allclose(model.predict(ds.test.caption.to_numpy()), test, atol=1e-6)
    meta = json.loads(d.meta.read_text())
    assert meta["shared_weights"] == ["encoder"] and 40 < meta["shared_mb"] < 50
    assert 5 < meta["weights_mb_per_fold"]["0"] < 8  # 2 layers + head, 3.6M parameters in fp16
    assert d.test_full.exists()


def test_a_fit_depends_on_its_seed_alone(encoder):
    """The head's initial weights come from the seed, not from what drew from torch's generator before in the
    process: before, it was drawn from the process's generator (and fold 0 of one command scored 0.8230 and 0.8269
    in two runs)."""
    cfg = resolve("captions_minilm_tuned", ["tune_layers=1", "tune_epochs=1", "tune_batch=2"])
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], float)
    x = caption_tuning.TokenStates(*caption_tuning.encode_states(encoder, CAPTIONS, 5))

    def fitted(seed):
        torch.rand(1000)  # other work in the process before the fit
        return CaptionModel.of(cfg, encoder).fit(CAPTIONS, y, x=x, seed=seed).predict(x=x)
    first = fitted(0)
    assert np.array_equal(first, fitted(0)) and not np.array_equal(first, fitted(1))
