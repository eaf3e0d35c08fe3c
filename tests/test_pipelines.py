import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from competition import load_dataset, load_spec
from competition.errors import UserError
from competition.layout import RunLayout
from pipelines.cache import build_cache
from pipelines.config import resolve
from pipelines.weights import WeightsError, load_pretrained

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, **kw)


def folds_for(data, runs, k=3):
    """`make folds K=k` in process (its command line has a test of its own, test_folds.py)."""
    from folds.split import write_folds
    spec = load_spec("demo")
    write_folds(RunLayout.of(runs, spec.name), load_dataset(spec, data, check=False), spec, k, 42)


def train(data, runs, model="tiny", *overrides, **kw):
    return cli("-m", "pipelines", "train", "--comp", "demo", "--data", str(data), "--runs", str(runs),
               "--model", model, *overrides, **kw)


def test_config_overrides_and_unknown_keys():
    cfg = resolve("tiny", ["epochs=3", "img_size=48", "folds=0,2", "lr=1e-2", "tta=false"])
    assert (cfg.epochs, cfg.img_size, cfg.folds, cfg.lr, cfg.tta) == (3, 48, "0,2", 0.01, False)
    with pytest.raises(UserError, match="unknown config keys \\['epoch'\\]; valid keys: .*epochs"):
        resolve("tiny", ["epoch=3"])
    with pytest.raises(UserError, match="unknown model 'nope'; valid: .*tf_efficientnet_lite0"):
        resolve("nope")
    assert resolve("tiny").name == "tiny" and resolve("tiny", [], "tiny-384").name == "tiny-384"
    with pytest.raises(UserError, match="model name '../x'"):
        resolve("tiny", [], "../x")


@pytest.mark.parametrize("override, message", [
    ("epochs=ten", "epochs='ten'; expected an integer"),
    ("ema=1", "ema=1; expected true or false"),
    ("augment=stong", "augment='stong'; valid: none, light, strong"),
    ("head_hidden=big", "head_hidden='big'; expected a list"),
    ("folds=a,b", "folds=.*expected all or fold numbers"),
    ("C=2", "C do not apply to an image model; its keys: .*epochs"),
])
def test_config_values_are_checked_for_type_choice_and_kind(override, message):
    with pytest.raises(UserError, match=f"overrides: {message}"):
        resolve("tiny", [override])


def test_config_types_coerce_only_what_is_safe(tmp_path):
    cfg = resolve("tiny", ["lr=1", "grad_clip=2", "train_from=None"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.grad_clip == 2.0
    with pytest.raises(UserError, match="epochs do not apply to a captions model"):
        resolve("captions", ["epochs=3"])
    own = tmp_path / "mine.yaml"
    own.write_text("backbone: resnet18\nlr: 1e-3\nepochs: 2.5\n")  # YAML 1.1 reads 1e-3 as a string
    with pytest.raises(UserError, match=f"{own}: epochs=2.5; expected an integer"):
        resolve(str(own))
    own.write_text("backbone: resnet18\nlr: 1e-3\n")
    assert resolve(str(own)).lr == 0.001


def test_a_config_is_one_typed_declaration():
    """Every key is one field: its meaning, what it accepts and its default are listed by `make options` from
    the declaration; a saved config (JSON) reads back equal; one saved before the typed configs (every key of
    both kinds, lists) still reads; anything else is refused by name."""
    import dataclasses

    from pipelines.config import KINDS, DistillRecord, ModelConfig, options_text, settable
    listing = options_text()
    for kind in KINDS.values():
        for f in dataclasses.fields(kind):
            assert f.metadata["meaning"], f.name
            assert (f"  {f.name} " in listing) == (f.name in settable(kind) and f.name != "kind"), f.name
    student = resolve("tiny", ["head=mlp", "head_hidden=[8,4]", "lr=1"]).replace(
        distill=DistillRecord(("a", "b"), "mean", "0" * 64, 0.5, 1.0, True), pseudo_sha256="f" * 64)
    assert ModelConfig.from_json(student.to_json(), "meta.json") == student
    captions = resolve("captions")
    old = {**resolve("tiny").to_json(), **captions.to_json()}  # before: one dict with every key of both kinds
    assert ModelConfig.from_json(old, "run.json") == captions
    for data, problem in [([1], "not a model config"), ({**old, "kind": "audio"}, "not a model config"),
                          ({**old, "lr_max": 1}, r"not a model config: unknown keys \['lr_max'\]"),
                          ({**old, "C": "high"}, "C='high'; expected a finite number"),
                          ({**student.to_json(), "distill": {"teacher": "a"}}, "distill is not a teacher record")]:
        with pytest.raises(UserError, match=f"saved.json: {problem}"):
            ModelConfig.from_json(data, "saved.json")
    with pytest.raises(UserError, match="unknown config keys \\['pseudo_sha256'\\]"):
        resolve("tiny", ["pseudo_sha256=abc"])  # written by a stage, never set


def config_names():
    from pipelines.config import available_configs
    return sorted(available_configs())


@pytest.mark.parametrize("name", config_names())
def test_every_config_builds(name):
    """Every shipped config builds as configured, on the meta device (no memory, no weights): its backbone, its
    head's widths, its input size through the whole network, and the trunk/top split of `train_from`."""
    from pipelines.captions import CaptionsRecord, vectorizers
    from pipelines.model import TopOfNet, build_model, trunk_forward
    cfg = resolve(name)
    if cfg.kind == "captions":
        record = CaptionsRecord.of(cfg)
        assert CaptionsRecord.from_json(record.to_json(), name) == record
        assert cfg.encoder in ("tfidf", "minilm") and (cfg.encoder == "minilm" or vectorizers(record))
        return
    with torch.device("meta"):
        net, _, mean, std = build_model(cfg.replace(pretrained="none"), 18)
        x = torch.empty(2, 3, cfg.img_size, cfg.img_size)
        captions = [torch.empty(2, 384)] if cfg.caption_input != "none" else []  # MiniLM's sentence embedding
        assert net.eval()(x, *captions).shape == (2, 18)
        if cfg.train_from is not None:
            top = TopOfNet(net, cfg.train_from)
            assert len(top.blocks) == len(net.backbone.blocks) - cfg.train_from
            with torch.inference_mode():  # as the trunk cache runs it
                assert top(trunk_forward(net, cfg.train_from, x), *captions).shape == (2, 18)
    linears = [m for m in net.head.modules() if isinstance(m, torch.nn.Linear)]
    widths = [m.out_features for m in linears]
    if cfg.head == "attention":  # embedding, then the label queries' group FC
        assert linears[0].in_features == net.backbone.num_features and widths[0] == cfg.head_dim
        assert net.head.queries.shape == net.head.group_weight.shape == (18, cfg.head_dim)
    else:
        pooled = 21 if cfg.head == "pyramid" else 1
        assert linears[0].in_features == net.backbone.num_features * pooled
        assert widths == ([*cfg.head_hidden, 18] if cfg.head == "mlp" else [18])
    assert type(net.backbone) is type(timm.create_model(cfg.backbone, pretrained=False, num_classes=0))
    assert len(mean) == len(std) == 3


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2",
                                      "mobilenetv2_100"])
def test_offline_weights_load_and_verify(backbone):
    model = timm.create_model(backbone, num_classes=0)
    before = model.conv_stem.weight.clone()
    assert load_pretrained(model, backbone, "offline", None).startswith("offline")
    assert not torch.equal(before, model.conv_stem.weight)


def test_unavailable_pretrained_weights_fail_loudly(tmp_path):
    model = timm.create_model("resnet18", num_classes=0)
    with pytest.raises(WeightsError, match="could not be had"):
        load_pretrained(model, "resnet18", "hub", None)  # no hub here (HF_HUB_OFFLINE)
    with pytest.raises(WeightsError, match="no offline weights for 'resnet18'"):
        load_pretrained(model, "resnet18", "offline", None)
    with pytest.raises(WeightsError, match="not found"):
        load_pretrained(model, "resnet18", "file", str(tmp_path / "missing.pth"))
    torch.save({"a.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match="backbone tensors"):
        load_pretrained(model, "resnet18", "file", str(tmp_path / "wrong.pth"))


def test_pretrained_file_in_timm_names_roundtrips(tmp_path):
    src = timm.create_model("test_efficientnet", num_classes=0)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    dst = timm.create_model("test_efficientnet", num_classes=0)
    load_pretrained(dst, "test_efficientnet", "file", str(tmp_path / "w.pth"))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])


def test_cache_lists_undecodable_images(demo_copy, tmp_path):
    bad = demo_copy / "data" / "5.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # header intact, pixels truncated
    ds = load_dataset(load_spec("demo"), demo_copy)  # the header check passes
    with pytest.raises(UserError, match="1 images that cannot be decoded:\n  5.jpg"):
        build_cache(ds, RunLayout(tmp_path), 24, workers=1, quiet=True)
    assert not list((tmp_path / "cache").glob("*.npy"))  # nothing half-written is left


def test_train_writes_consistent_artifacts(demo_data, tmp_path):
    folds_for(demo_data, tmp_path)
    r = train(demo_data, tmp_path, "tiny", "epochs=2")
    assert r.returncode == 0, r.stderr
    d = tmp_path / "demo" / "models" / "tiny"
    ds = load_dataset(load_spec("demo"), demo_data)
    oof = pd.read_csv(d / "oof.csv", dtype={"ImageID": str})
    tokens = load_spec("demo").tokens
    assert list(oof.columns) == ["ImageID", "fold", *tokens]
    assert oof.ImageID.tolist() == ds.train.id.tolist()  # every train row exactly once
    folds = pd.read_csv(tmp_path / "demo" / "folds.csv", dtype={"ImageID": str})
    assert (oof.fold.to_numpy() == folds.fold.to_numpy()).all()
    assert oof[tokens].to_numpy().min() >= 0 and oof[tokens].to_numpy().max() <= 1
    for f in range(3):
        test = pd.read_csv(d / f"test_fold{f}.csv", dtype={"ImageID": str})
        assert test.ImageID.tolist() == ds.test.id.tolist()
        hist = pd.read_csv(d / f"fold{f}" / "history.csv")
        assert {"train_loss", "val_loss", "micro_f1", "macro_f1", "mAP", "lr", "seconds", "rows_per_s"} <= set(hist)
        assert (d / f"fold{f}" / "best.safetensors").exists()
    meta = json.loads((d / "meta.json").read_text())
    assert meta["labels"] == tokens and meta["folds_done"] == [0, 1, 2]
    assert set(meta["oof"]) == {"micro_f1_at_0.5", "mAP"} and meta["config"]["epochs"] == 2
    assert (d / "learning_curves.png").exists() and (d / "config.yaml").exists()
    # Re-running skips finished folds.
    r = train(demo_data, tmp_path, "tiny", "epochs=2")
    assert r.stdout.count("done, skipped") == 3
    # Another folds file is refused until FORCE.
    cli("-m", "folds", "--comp", "demo", "--data", str(demo_data), "--runs", str(tmp_path), "--k", "3",
        "--seed", "7", "--force")
    r = train(demo_data, tmp_path, "tiny", "epochs=2")
    assert r.returncode != 0 and "folds file changed" in r.stderr and "FORCE=1" in r.stderr


def test_single_fold_jobs_merge(demo_data, tmp_path):
    """Folds trained as separate jobs, in any order, give the single job's files bit for bit (CPU), and a job
    with other settings is refused."""
    from folds.split import write_folds
    from pipelines.run import train_model
    spec = load_spec("demo")
    ds = load_dataset(spec, demo_data)
    runs = {name: RunLayout.of(tmp_path / name, spec.name) for name in ("jobs", "one")}
    for run in runs.values():
        write_folds(run, ds, spec, 3, 0)
    for f in (2, 0, 1):  # separate jobs, any order
        train_model(spec, ds, runs["jobs"], resolve("tiny", ["epochs=1", f"folds={f}"]), log=lambda *_: None)
    train_model(spec, ds, runs["one"], resolve("tiny", ["epochs=1"]), log=lambda *_: None)
    jobs, one = runs["jobs"].model("tiny"), runs["one"].model("tiny")
    for name in ["oof.csv", *(f"test_fold{f}.csv" for f in range(3))]:
        assert (jobs.dir / name).read_bytes() == (one.dir / name).read_bytes(), name
    r = train(demo_data, tmp_path / "jobs", "tiny", "epochs=2", "folds=0")
    assert r.returncode != 0 and "epochs 1 -> 2" in r.stderr


def checkpoint_epoch(state) -> int:
    """The epochs a fold's checkpoint holds (0: none yet); it is renamed into place whole, so a read sees one."""
    try:
        return torch.load(state, weights_only=True)["epoch"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def kill_and_resume(demo_data, tmp_path, *overrides, epochs=30):
    """Train, SIGKILL mid-fold once the checkpoint holds 2 epochs (not after a fixed sleep: a fast GPU would finish
    the fold first), re-run: the fold resumes and completes with no epoch lost or repeated."""
    folds_for(demo_data, tmp_path, k=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "pipelines", "train", "--comp", "demo", "--data", str(demo_data), "--runs",
            str(tmp_path), "--model", "tiny", f"epochs={epochs}", "patience=1000", *overrides]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = tmp_path / "demo" / "models" / "tiny" / "fold0" / "state.pt"
    deadline = time.time() + 120
    while checkpoint_epoch(state) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "demo" / "models" / "tiny" / "fold0" / "done.json").exists(), \
        f"fold 0 finished before it could be killed: raise epochs (now {epochs})"
    epoch = checkpoint_epoch(state)
    assert 2 <= epoch < epochs
    # What a kill during an atomic write leaves; planted so the clean-up is checked on every run, not by chance.
    (state.parent / ".state.pt.killed.tmp").write_bytes(b"half a checkpoint")
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "fold 0: resuming after epoch" in r.stdout
    d = tmp_path / "demo" / "models" / "tiny"
    hist = pd.read_csv(d / "fold0" / "history.csv")
    assert hist.epoch.tolist() == list(range(1, epochs + 1))  # no epoch lost or repeated
    assert (d / "oof.csv").exists() and (d / "test_fold1.csv").exists() and (d / "meta.json").exists()
    assert not list(d.rglob("*.tmp"))
    return args, env, d


def uninterrupted(demo_data, tmp_path, args, env):
    """The same training command, run once without a kill, in another run folder: its model folder."""
    other = tmp_path / "uninterrupted"
    folds_for(demo_data, other, k=2)
    runs = args.index("--runs")
    r = subprocess.run([*args[:runs + 1], str(other), *args[runs + 2:]], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    return other / "demo" / "models" / "tiny"


def test_killed_training_resumes(demo_data, tmp_path):
    args, env, d = kill_and_resume(demo_data, tmp_path, "device=cpu")
    # The resumed run computed exactly what an uninterrupted one computes (CPU: bit for bit).
    other = uninterrupted(demo_data, tmp_path, args, env)
    assert (other / "oof.csv").read_text() == (d / "oof.csv").read_text()
    assert (other / "test_fold0.csv").read_text() == (d / "test_fold0.csv").read_text()


def oof_of(demo_data, runs, *overrides):
    from pipelines.run import train_model
    spec = load_spec("demo")
    folds_for(demo_data, runs, k=2)
    cfg = resolve("tiny", ["epochs=2", "device=cpu", *overrides])
    train_model(spec, load_dataset(spec, demo_data), RunLayout.of(runs, spec.name), cfg, log=lambda *_: None)
    return pd.read_csv(runs / "demo" / "models" / "tiny" / "oof.csv")


@pytest.mark.parametrize("path", ["loader", "device"])
def test_image_training_is_reproducible(demo_data, tmp_path, path):
    """Same command and seed twice (and, on the loader path, another worker count): the same OOF."""
    first = oof_of(demo_data, tmp_path / "a", f"data_path={path}", "augment=strong")
    again = oof_of(demo_data, tmp_path / "b", f"data_path={path}", "augment=strong",
                   f"workers={2 if path == 'loader' else 0}")
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    other_seed = oof_of(demo_data, tmp_path / "c", f"data_path={path}", "augment=strong", "seed=7")
    assert not first.equals(other_seed)


def test_fullfit_refit(demo_data, tmp_path):
    folds_for(demo_data, tmp_path, k=2)
    r = train(demo_data, tmp_path, "tiny", "epochs=2", "fullfit=true")
    assert r.returncode == 0, r.stderr
    d = tmp_path / "demo" / "models" / "tiny"
    meta = json.loads((d / "meta.json").read_text())
    assert meta["full"]["epochs"] >= 1 and (d / meta["full"]["weights"]).exists()
    assert len(pd.read_csv(d / "test_full.csv")) == 24


def test_captions_member_same_contract_no_pickle(demo_data, tmp_path):
    folds_for(demo_data, tmp_path)
    r = train(demo_data, tmp_path, "captions", "min_df=1")
    assert r.returncode == 0, r.stderr
    d = tmp_path / "demo" / "models" / "captions"
    assert (d / "oof.csv").exists() and (d / "test_fold0.csv").exists()
    weights = np.load(d / "fold0" / "model.npz", allow_pickle=False)  # plain arrays, no code
    assert weights["coef"].shape[0] == 18
    from pipelines.captions import CaptionModel
    model = CaptionModel.load(d / "fold0" / "model.npz")
    ds = load_dataset(load_spec("demo"), demo_data)
    test = pd.read_csv(d / "test_fold0.csv")[load_spec("demo").tokens].to_numpy()
    assert np.allclose(model.predict(ds.test.caption.to_numpy()), test, atol=1e-6)


def test_sentence_encoder_captions_member_saves_and_counts_its_encoder(demo_data, tmp_path):
    """The frozen encoder is saved once beside the folds (fp16), every embedding comes from that copy, inference
    from the saved files reproduces the fold's test predictions, and the encoder counts toward the size once."""
    from folds.split import write_folds
    from pipelines.captions import CaptionModel
    from pipelines.run import train_model
    from submissions.members import load_members
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path, "demo")
    write_folds(run, ds, spec, 3, 0, False)
    train_model(spec, ds, run, resolve("captions_minilm", ["fullfit=true"]), log=lambda *_: None)
    d = run.model("captions_minilm")
    meta = json.loads(d.meta.read_text())
    assert meta["shared_weights"] == ["encoder"] and 40 < meta["shared_mb"] < 50  # 22.7M parameters in fp16
    from safetensors import safe_open
    with safe_open(str(d.encoder / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    model = CaptionModel.load(d.fold(1).captions_model)
    test = pd.read_csv(d.test_fold(1))[spec.tokens].to_numpy()
    assert np.allclose(model.predict(ds.test.caption.to_numpy()), test, atol=1e-5)
    member, = load_members(spec, ds, run, ["captions_minilm"])
    fold_files = sum((d.dir / meta["folds"][str(f)]["weights"]).stat().st_size for f in range(3)) / 2**20
    assert member.folds_mb == pytest.approx(fold_files + meta["shared_mb"], abs=1e-3)
    assert member.full_mb == pytest.approx((d.dir / meta["full"]["weights"]).stat().st_size / 2**20
                                           + meta["shared_mb"], abs=1e-3)
    assert not list(d.dir.glob(".encoder.*.tmp"))


def test_a_caption_input_makes_the_captions_part_of_the_data(demo_copy):
    """An image member with a caption input learns from the captions too: a changed caption changes its data
    fingerprint (a resume or a blend refuses it), not a plain image member's."""
    spec = load_spec("demo")
    kinds = ("image", "captions", "image+captions")
    before = {k: load_dataset(spec, demo_copy).fingerprint(k) for k in kinds}
    train_csv = demo_copy / "train.csv"
    lines = train_csv.read_text().splitlines()
    lines[1] = ",".join(lines[1].split(",", 2)[:2] + ["a caption nobody wrote"])
    train_csv.write_text("\n".join(lines) + "\n")
    after = {k: load_dataset(spec, demo_copy).fingerprint(k) for k in kinds}
    assert len(set(before.values())) == 3 and after["image"] == before["image"]
    assert after["captions"] != before["captions"] and after["image+captions"] != before["image+captions"]
    assert resolve("tiny", ["train_from=2", "head=attention", "caption_input=minilm"]).data_kind == "image+captions"
    assert resolve("tiny").data_kind == "image" and resolve("captions").data_kind == "captions"


def test_captions_refused_without_caption_column(tmp_path):
    spec = tmp_path / "nocap.yaml"
    spec.write_text("name: nocap\ndata: d\nlabels: {a: A}\n")
    r = cli("-m", "pipelines", "train", "--comp", str(spec), "--model", "captions")
    assert r.returncode != 0 and "no caption column" in r.stderr


def torchrun_trains(demo_data, tmp_path, nproc: int) -> None:
    """`torchrun --nproc_per_node=N -m pipelines train` trains both folds and writes oof.csv."""
    folds_for(demo_data, tmp_path, k=2)
    r = cli("-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "pipelines", "train", "--comp", "demo",
            "--data", str(demo_data), "--runs", str(tmp_path), "--model", "tiny", "epochs=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "demo" / "models" / "tiny" / "oof.csv").exists()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(demo_data, tmp_path):
    torchrun_trains(demo_data, tmp_path, 2)
    done = json.loads((tmp_path / "demo" / "models" / "tiny" / "fold0" / "done.json").read_text())
    assert done["backend"] == "gloo" and done["device"] == "cpu"


@pytest.mark.slow
def test_torchrun_two_nodes_on_localhost(demo_data, tmp_path):
    """`torchrun --nnodes=2`, one process per node, both nodes on this machine (gloo over localhost): one fold
    trained across them, as two machines sharing the run folder would (docs/training.md)."""
    import socket
    folds_for(demo_data, tmp_path, k=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            "--master_addr=127.0.0.1", f"--master_port={port}"]
    train = ["-m", "pipelines", "train", "--comp", "demo", "--data", str(demo_data), "--runs", str(tmp_path),
             "--model", "tiny", "epochs=1", "folds=0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*node, f"--node_rank={r}", *train], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    done = json.loads((tmp_path / "demo" / "models" / "tiny" / "fold0" / "done.json").read_text())
    assert done["backend"] == "gloo" and done["device"] == "cpu"


def test_frozen_trunk_mode_trains_top_and_saves_full_net(demo_data, tmp_path):
    """train_from=2: the saved network is whole (inference runs from images), its trunk (stem and blocks 0-1) is
    the starting network's to the bit (fp16), and every tensor of the trained top moved."""
    from safetensors.torch import load_file

    from folds.split import write_folds
    from pipelines.model import build_model
    from pipelines.run import train_model
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name)
    write_folds(run, ds, spec, 2, 0)
    cfg = resolve("tiny", ["epochs=2", "train_from=2"])
    train_model(spec, ds, run, cfg, log=lambda *_: None)
    saved = load_file(str(run.model("tiny").fold(0).best_weights))
    torch.manual_seed(cfg.seed)  # what training starts from (setup seeds, then builds)
    start = {k: v.half() if v.is_floating_point() else v for k, v in build_model(cfg, 18)[0].state_dict().items()}
    assert set(saved) == set(start)  # the whole network: what inference from images needs
    trunk = [k for k in saved if k.startswith(("backbone.conv_stem", "backbone.bn1", "backbone.blocks.0.",
                                                "backbone.blocks.1."))]
    top = [k for k in saved if (k.startswith(("head.", "backbone.conv_head", "backbone.bn2"))
                                or k.startswith("backbone.blocks.") and int(k.split(".")[2]) >= 2)
           and saved[k].is_floating_point() and "running_var" not in k]
    assert trunk and top and set(trunk).isdisjoint(top)
    assert all(torch.equal(saved[k], start[k]) for k in trunk)
    moved = [k for k in top if not torch.equal(saved[k], start[k])]
    assert len(moved) == len(top), sorted(set(top) - set(moved))
    assert len(list(run.cache.glob("trunk_*.npy"))) == 1 and run.model("tiny").oof.exists()
    # The saved network alone, from images, reproduces the fold's validation predictions (EMA weights, flip TTA;
    # the training run fed the top fp16 trunk features, hence the tolerance).
    from competition.formats import FitRecord
    from pipelines.inference import fit_record, load_network
    record = fit_record(FitRecord.read(run.model("tiny").fold(0).done), "fold 0")
    net = load_network(record, run.model("tiny").fold(0).best_weights, torch.device("cpu")).net
    mean, std = record.mean, record.std
    images = np.load(build_cache(ds, run, 32))
    oof = pd.read_csv(run.model("tiny").oof, dtype={"ImageID": str})
    rows = np.nonzero(oof["fold"].to_numpy() == 0)[0]
    x = (torch.from_numpy(images[rows]).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        prob = ((torch.sigmoid(net(x)) + torch.sigmoid(net(torch.flip(x, dims=[3])))) / 2).numpy()
    assert np.abs(prob - oof[spec.tokens].to_numpy()[rows]).max() < 5e-3


def test_bad_input_is_one_clear_line(tmp_path):
    r = cli("-m", "pipelines", "train", "--comp", "demo", "--data", str(tmp_path), "--model", "tiny")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


VARIANTS = {  # overrides: (loss class, its settings, optimizer class, schedule)
    "focal_sgd_onecycle_mlp": (["loss=focal", "optimizer=sgd", "schedule=onecycle", "warmup_epochs=1", "head=mlp",
                                "head_hidden=[16]",
                                "dropout=0.5"], "MeanASL", {"gamma_neg": 2, "gamma_pos": 2}, "SGD", "onecycle"),
    "asl_rmsprop_no_ema": (["loss=asl", "optimizer=rmsprop", "lr=1e-3", "ema=false"], "MeanASL",
                           {"gamma_neg": 4, "gamma_pos": 1}, "RMSprop", "cosine"),
    "pos_weight_adadelta_constant": (["loss=bce_pos_weight", "optimizer=adadelta", "lr=1.0", "schedule=none",
                                      "augment=strong"], "BCEWithLogitsLoss", {}, "Adadelta", "none"),
    "frozen_map_no_tta": (["mode=frozen", "select_metric=mAP", "tta=false"], "BCEWithLogitsLoss", {}, "AdamW",
                          "cosine"),
    "layer_decay": (["layer_decay=0.8", "warmup_epochs=0"], "BCEWithLogitsLoss", {}, "AdamW", "cosine"),
}


def lr_curve(s, steps: int) -> list[float]:
    """The head's learning rate before the first update and at each one, as the training loop steps the schedule."""
    curve = [s.optimizer.param_groups[-1]["lr"]]
    for step in range(steps):
        s.step_schedule(step)
        curve.append(s.optimizer.param_groups[-1]["lr"])
        s.optimizer.step()
    return curve


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_training_variants(fold_data, variant):
    """What each setting builds is what was configured: the loss and its parameters, the optimizer, the learning
    rate schedule, what trains (frozen: the head only), layer-decay's learning rate per parameter group; and one
    epoch trains with it."""
    from pipelines.distributed import Dist
    from pipelines.train import setup, train_one_epoch
    overrides, loss, loss_args, optimizer, schedule = VARIANTS[variant]
    cfg = resolve("tiny", ["epochs=3", *overrides])
    s = setup(cfg, fold_data, Dist())
    asl = getattr(s.loss_fn, "asl", None)
    assert type(s.loss_fn).__name__ == loss and all(getattr(asl, k) == v for k, v in loss_args.items())
    if cfg.loss == "bce_pos_weight":  # label j: (rows without j) / (rows with j), by hand on the train rows
        pos = fold_data.train_y.sum(0)
        np.testing.assert_allclose(s.loss_fn.pos_weight.numpy(), (60 - pos) / np.maximum(pos, 1), rtol=1e-6)
    assert type(s.optimizer).__name__ == optimizer and (s.ema is None) == (not cfg.ema)
    trained = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in (s.net.head if cfg.mode == "frozen" else s.net).parameters()}
    curve = lr_curve(s, 3 * s.updates)
    if schedule == "none":
        assert curve == [cfg.lr] * len(curve)
    elif schedule == "onecycle":
        assert max(curve) == pytest.approx(cfg.lr, rel=0.1) and curve[0] < cfg.lr / 10 > curve[-1]  # up, down
    else:  # cosine after warm-up: never rising, down to about min_lr
        peak = int(np.argmax(curve))
        assert all(a >= b - 1e-12 for a, b in zip(curve[peak:], curve[peak + 1:])) and curve[-1] < curve[peak] / 5
    if cfg.layer_decay:
        scales = sorted({g["lr_scale"] for g in s.optimizer.param_groups})
        assert scales[-1] == 1.0 and len(scales) > 2
        np.testing.assert_allclose(scales, [0.8 ** k for k in range(len(scales) - 1, -1, -1)], rtol=1e-6)
        assert all(g["lr"] == pytest.approx(curve[-1] * g["lr_scale"]) for g in s.optimizer.param_groups)
    s = setup(cfg, fold_data, Dist())
    row, step = train_one_epoch(s, 0, 0)
    assert step == s.updates and np.isfinite(row["train_loss"])


def test_changed_labels_make_trained_models_stale(demo_copy, tmp_path):
    from pipelines.run import train_model
    from submissions.submit import run_submit

    from helpers import settings
    spec = load_spec("demo")
    folds_for(demo_copy, tmp_path, k=2)
    run = RunLayout.of(tmp_path, spec.name)
    train_model(spec, load_dataset(spec, demo_copy), run, resolve("tiny", ["epochs=1"]), log=lambda *_: None)
    train_csv = demo_copy / "train.csv"
    lines = train_csv.read_text().splitlines()
    first = lines[1].split(",", 2)
    lines[1] = ",".join([first[0], "18" if first[1] != "18" else "17", first[2]])  # relabel one row
    train_csv.write_text("\n".join(lines) + "\n")
    ds, said = load_dataset(spec, demo_copy), []
    with pytest.raises(UserError, match="training data changed.*FORCE=1"):
        train_model(spec, ds, run, resolve("tiny", ["epochs=1"]), log=said.append)
    assert not any("done, skipped" in line for line in said)
    with pytest.raises(UserError, match="tiny: trained on other data"):
        run_submit(spec, ds, run, settings(spec, method="fixed"), "test", log=lambda *_: None)
    train_model(spec, ds, run, resolve("tiny", ["epochs=1"]), force=True, log=lambda *_: None)
    run_submit(spec, ds, run, settings(spec, method="fixed"), "test", log=lambda *_: None)


def test_replaced_image_rebuilds_the_cache(demo_copy, tmp_path):
    from PIL import Image
    spec = load_spec("demo")
    first = build_cache(load_dataset(spec, demo_copy), RunLayout(tmp_path), 24, workers=1, quiet=True)
    Image.new("RGB", (40, 40), (255, 0, 0)).save(demo_copy / "data" / "3.jpg")
    ds = load_dataset(spec, demo_copy)
    second = build_cache(ds, RunLayout(tmp_path), 24, workers=1, quiet=True)
    assert second != first
    row = ds.train.id.tolist().index("3.jpg")
    assert np.load(second)[row, ..., 0].mean() > 200 and np.load(first)[row, ..., 0].mean() < 200


def test_touched_images_keep_the_cache(demo_copy, tmp_path):
    """A re-download or plain `cp` gives the same bytes new modification times: nothing turns stale."""
    import os
    spec = load_spec("demo")
    first = build_cache(load_dataset(spec, demo_copy), RunLayout(tmp_path), 24, workers=1, quiet=True)
    for path in (demo_copy / "data").iterdir():
        os.utime(path, (1e9, 1e9))
    assert build_cache(load_dataset(spec, demo_copy), RunLayout(tmp_path), 24, workers=1, quiet=True) == first


def test_killed_cache_build_leaves_nothing_behind(demo_copy, tmp_path):
    from pipelines.cache import cache_file
    ds = load_dataset(load_spec("demo"), demo_copy)
    target = cache_file(ds, RunLayout(tmp_path), 24)
    target.parent.mkdir(parents=True)
    stale = target.parent / f".{target.name}.x1y2.tmp"  # what a kill -9 mid-build leaves
    stale.write_bytes(b"\0" * 4096)
    assert build_cache(ds, RunLayout(tmp_path), 24, workers=1, quiet=True) == target
    assert not stale.exists() and not list(target.parent.glob("*.tmp"))


def test_a_fold_held_by_another_process_is_skipped(demo_data, tmp_path):
    from competition.artifacts import exclusive_lock
    folds_for(demo_data, tmp_path, k=2)
    with exclusive_lock(tmp_path / "demo" / "models" / "tiny" / "fold0" / ".lock"):
        r = train(demo_data, tmp_path, "tiny", "epochs=1")
    assert r.returncode == 0, r.stderr
    assert "fold 0: another process is training it, skipped" in r.stdout
    d = tmp_path / "demo" / "models" / "tiny"
    assert (d / "fold1" / "done.json").exists() and not (d / "fold0" / "done.json").exists()
    assert not (d / "oof.csv").exists()


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
    from competition.cli import run
    from competition.errors import UserError

    def bad_input():
        raise UserError("train.csv: line 3 is wrong")
    with pytest.raises(SystemExit) as e:
        run(bad_input)
    assert e.value.code == 2 and capsys.readouterr().err == "error: train.csv: line 3 is wrong\n"

    def bug():
        return {}["missing"]
    with pytest.raises(KeyError):  # not swallowed into one line
        run(bug)


def test_plan_from_bench_records_and_the_train_warning(demo_data, tmp_path, capsys):
    import dataclasses

    from competition.artifacts import write_json
    from folds.split import write_folds
    from pipelines.bench import SPEED_KEYS, device_slug, run_bench, this_device
    from pipelines.plan import make_plan, warn_if_over
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name)
    write_folds(run, ds, spec, 3, 0, False)
    small = ["batch_size=2", "device=cpu"]  # a short bench: 50 steps of 2 images
    measured = run_bench(spec, ds, run, resolve("tiny", small), steps=50)  # the real bench records what plans read
    here, = make_plan(spec, ds, run, 3, ["tiny"], overrides=small)[0]
    assert here.images_per_s == measured["real_loop_images_per_s"] and here.hours > 0
    assert here.gpu_hours == 0  # a CPU spends no GPU-hours
    gpu, cfg = "NVIDIA H100 80GB HBM3", resolve("tiny", ["batch_size=8", "device=cpu"])
    write_json(run.bench_record("tiny", device_slug(gpu)),
               {"real_loop_images_per_s": 10.0, "config": {k: getattr(cfg, k) for k in SPEED_KEYS}})
    (tiny, captions, other), left, _ = make_plan(spec, ds, run, 3, ["tiny", "captions", "resnet50"], gpu,
                                                  ["batch_size=8", "device=cpu"])
    # By hand: 90 train and 24 test rows, 3 folds of 30, tiny's 2 epochs, flip TTA, no refit. Training sees
    # 3 folds x 2 epochs x 60 rows = 360 images. Evaluation, at a third of a training image's cost: every epoch
    # validates 30 rows (3 x 2 x 30 = 180), and each fold predicts its 30 validation + 24 test rows in 2 views
    # (3 x 2 x 54 = 324): 504 / 3 = 168. 528 images at 10 img/s: 52.8 s.
    assert (len(ds.train), len(ds.test), cfg.epochs, cfg.tta) == (90, 24, 2, True)
    assert tiny.gpu_hours == pytest.approx(52.8 / 3600) and tiny.folds_left == [0, 1, 2]
    assert captions.gpu_hours == 0 and "no bench record" in other.note
    stale, = make_plan(spec, ds, run, 3, ["tiny"], gpu, ["batch_size=8", "img_size=64"])[0]
    assert stale.images_per_s is None and "img_size" in stale.note
    tight = dataclasses.replace(spec, budget={**spec.budget, "gpu_hours": tiny.gpu_hours / 2})
    assert warn_if_over(tight, ds, run, cfg, 3, gpu).startswith("WARNING: the plan says tiny needs")
    roomy = dataclasses.replace(spec, budget={**spec.budget, "gpu_hours": 24})
    assert warn_if_over(roomy, ds, run, cfg, 3, gpu) is None
    assert this_device().startswith("cpu") or torch.cuda.is_available()


@pytest.mark.parametrize("override", ["train_from=3", "mode=frozen"])
def test_layer_decay_is_refused_without_full_fine_tuning(demo_data, tmp_path, override):
    from pipelines.run import train_model
    folds_for(demo_data, tmp_path, k=2)
    spec = load_spec("demo")
    with pytest.raises(UserError, match="layer_decay applies to full fine-tuning only"):
        train_model(spec, load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name),
                    resolve("tiny", ["epochs=1", "layer_decay=0.8", override]), log=lambda *_: None)


def test_a_captions_model_carries_a_typed_record(tmp_path):
    """A saved captions model holds what it predicts with (CaptionsRecord), not the training config; a file of
    the earlier form (the whole config) still loads to the same predictions; another format or a wrong field is
    one error naming the file."""
    import json

    import numpy as np

    from competition.errors import UserError
    from pipelines.captions import CaptionModel
    texts = np.array(["a cat on a mat", "a dog in a park", "a cat and a dog", "two dogs running"] * 5)
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 1]] * 5)
    cfg = resolve("captions", ["min_df=1"])
    path = CaptionModel.of(cfg).fit(texts, y).save(tmp_path / "m")
    with np.load(path) as arrays:
        saved = dict(arrays)
    assert "config" not in saved and json.loads(str(saved["record"]))["format"] == 1
    want = CaptionModel.load(path).predict(texts)

    def rewrite(**arrays):
        with open(path, "wb") as f:
            np.savez(f, **{k: v for k, v in saved.items() if k != "record"}, **arrays)
    rewrite(config=np.array(json.dumps(cfg.to_json())))  # saved before records: the whole training config
    assert np.array_equal(CaptionModel.load(path).predict(texts), want)
    record = json.loads(str(saved["record"]))
    for edit, problem in [({"format": 7}, "captions record of format 7, not 1"),
                          ({"ngram_max": "two"}, r"malformed captions record \(ngram_max='two' \(expected an integer")]:
        rewrite(record=np.array(json.dumps(record | edit)))
        with pytest.raises(UserError, match=rf"m.npz: {problem}"):
            CaptionModel.load(path)
