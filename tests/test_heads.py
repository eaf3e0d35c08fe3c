"""Issue 21's levers: the attention and pyramid heads, hypercolumns (extra_stages), multi-label mixup/cutmix."""
import numpy as np
import pytest
import torch

from pipelines.augment import mix_batch
from pipelines.config import resolve
from pipelines.model import NetSpec, PyramidHead, QueryHead, TopOfNet, build_model, trunk_forward

CFG = NetSpec(backbone="resnet18", mode="finetune", head="attention", head_hidden=(), head_dim=16, head_heads=4,
              head_groups=0, extra_stages=0, dropout=0.0, drop_path=0.0, img_size=32, caption_input="none")


def test_attention_head_reads_every_position_without_order():
    """One logit per label from label queries over all positions: the order of positions does not matter (no
    positional term, as ML-Decoder), a single position's content does; tokens (ViT) and maps give the same."""
    torch.manual_seed(0)
    head = QueryHead(8, 5, CFG).eval()
    x = torch.randn(3, 8, 4, 4)
    out = head(x)
    assert out.shape == (3, 5)
    shuffled = x.flatten(2)[:, :, torch.randperm(16)].view_as(x)
    torch.testing.assert_close(head(shuffled), out, rtol=1e-5, atol=1e-5)
    poked = x.clone()
    poked[:, :, 3, 1] += 5.0
    assert (head(poked) - out).abs().max() > 1e-3
    torch.testing.assert_close(head(x.flatten(2).transpose(1, 2)), out)


def test_grouped_queries_decode_every_label():
    """ML-Decoder's groups: 3 queries for 7 labels, each query's own linear map to 3 logits (the last group's
    extra logit dropped); each label's logit is its group's query's map, and trains like the ungrouped head."""
    import dataclasses
    torch.manual_seed(0)
    head = QueryHead(8, 7, dataclasses.replace(CFG, head_groups=3))
    assert head.queries.shape == (3, 16) and head.group_weight.shape == (3, 16, 3)
    x = torch.randn(4, 8, 2, 2)
    out = head(x)
    assert out.shape == (4, 7)
    head.group_weight.data[2, :, 0] += torch.randn(16)  # group 2's first logit is label 6's; no other moves
    moved = (head(x) - out).abs().amax(0)
    assert moved[6] > 1e-3 and moved[:6].max() == 0
    assert QueryHead(8, 7, dataclasses.replace(CFG, head_groups=7)).group_weight.shape == (7, 16)  # one per label
    y = (torch.rand(64, 7) < 0.3).float()
    x = torch.randn(64, 8, 2, 2) + y[:, :, None, None].repeat(1, 2, 1, 1)[:, :8]
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_pyramid_head_keeps_where_things_are():
    """Max-pooled over 1x1, 2x2, 4x4 grids: the linear layer sees 21 cells per channel, so moving one strong
    activation to another quadrant changes the logits (a global pool alone could not tell)."""
    torch.manual_seed(0)
    head = PyramidHead(4, 3, CFG).eval()
    assert head.fc[1].in_features == 4 * 21
    x = torch.zeros(2, 4, 8, 8)
    a, b = x.clone(), x.clone()
    a[:, 0, 0, 0], b[:, 0, 7, 7] = 1.0, 1.0
    assert torch.equal(torch.amax(a, (2, 3)), torch.amax(b, (2, 3)))  # one global max pool: the same
    assert (head(a) - head(b)).abs().max() > 1e-4
    with pytest.raises(Exception, match="pyramid needs a convolutional feature map"):
        head(torch.zeros(2, 5, 4))


@pytest.mark.parametrize("overrides", [["head=attention", "head_dim=32", "head_heads=4"],
                                       ["head=attention", "head_dim=32", "head_heads=4", "head_groups=2"],
                                       ["head=pyramid"],
                                       ["extra_stages=2"], ["extra_stages=3", "train_from=3"]])
def test_heads_and_hypercolumns_build_and_split_at_the_trunk(overrides):
    """Each builds on a real backbone (EfficientNet-Lite0), and its top on trunk features computes what the
    whole network does: training on cached trunks and predicting from images agree."""
    cfg = resolve("tf_efficientnet_lite0", ["pretrained=none", "train_from=5", *overrides])
    net, *_ = build_model(cfg, 18)
    net.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        full = net(x)
        top = TopOfNet(net, cfg.train_from)(trunk_forward(net, cfg.train_from, x))
    assert full.shape == (2, 18)
    torch.testing.assert_close(top, full, rtol=1e-4, atol=1e-4)
    if cfg.extra_stages:  # the head reads the final 1280 features and the last blocks' pooled outputs
        widths = [16, 24, 40, 80, 112, 192, 320][-cfg.extra_stages:]  # EfficientNet-B0/Lite0's stage widths
        assert net.head[1].in_features == 1280 + sum(widths)


def test_bad_head_settings_are_refused():
    from competition.errors import UserError
    with pytest.raises(UserError, match="extra_stages joins pooled features"):
        build_model(resolve("tiny", ["head=attention", "extra_stages=1"]), 3)
    with pytest.raises(UserError, match="extra_stages must be at most"):
        build_model(resolve("tiny", ["extra_stages=9"]), 3)
    with pytest.raises(UserError, match="reaches into the cached trunk"):
        net, *_ = build_model(resolve("tf_efficientnet_lite0", ["extra_stages=4", "train_from=5"]), 3)
        TopOfNet(net, 5)
    with pytest.raises(UserError, match="head="):
        resolve("tiny", ["head=transformer"])
    fused = ["train_from=2", "head=attention", "caption_input=minilm"]
    resolve("tiny", fused)
    for other, needs in (("head=linear", "head=attention"), ("train_from=None", "train_from"),
                         ("mixup=0.2", "mixup=0 and cutmix=0")):
        with pytest.raises(UserError, match=f"caption_input=minilm needs {needs}"):
            resolve("tiny", [*fused, other])
    with pytest.raises(UserError, match="caption_input='bert'; valid: none, minilm"):
        resolve("tiny", [*fused[:2], "caption_input=bert"])


def test_a_caption_input_starts_as_a_memory_token_and_shifts_nothing():
    """The caption joins the attention head as one more memory token, and its query shift starts at zero: the
    head's logits change with the caption (through the token) and need it; a head without the input refuses one."""
    from pipelines.model import NetSpec, QueryHead
    cfg = resolve("tiny", ["train_from=2", "head=attention", "caption_input=minilm", "head_dim=32", "head_heads=4"])
    torch.manual_seed(0)
    head = QueryHead(16, 5, NetSpec.of(cfg)).eval()
    assert not head.caption_shift[1].weight.any() and head.caption_memory[1].in_features == 384
    x, captions = torch.randn(2, 16, 3, 3), torch.randn(2, 384)
    out = head(x, captions)
    assert out.shape == (2, 5) and not torch.allclose(out, head(x, captions.flip(0)))
    with pytest.raises(TypeError, match="reads the captions"):
        head(x)
    plain = QueryHead(16, 5, NetSpec.of(cfg.replace(caption_input="none")))
    assert plain.caption_memory is None and plain(x).shape == (2, 5)
    with pytest.raises(TypeError, match="no caption input"):
        plain(x, captions)


def test_mixup_mixes_targets_by_the_inputs_share():
    """x' = lam x + (1 - lam) x[perm] and y' = lam y + (1 - lam) y[perm] with the same lam and perm: recovered
    here from the inputs, then checked on the targets."""
    torch.manual_seed(1)
    x, y = torch.randn(6, 3, 4, 4), (torch.rand(6, 5) > 0.5).float()
    mx, my = mix_batch(x, y, mixup=0.4, cutmix=0.0, prob=1.0)
    solved = 0
    for i in range(6):
        for j in range(6):
            lam = float(((mx[i] - x[j]) / (x[i] - x[j] + 1e-12)).flatten().median()) if i != j else None
            if lam is not None and torch.allclose(mx[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5):
                torch.testing.assert_close(my[i], lam * y[i] + (1 - lam) * y[j], atol=1e-5, rtol=0)
                solved += 1
    assert solved >= 5  # rows paired with themselves stay as they were
    assert torch.equal(mix_batch(x, y, 0.4, 0.0, prob=0.0)[0], x)


def test_cutmix_targets_follow_the_pasted_area():
    """Each image keeps a share of its own pixels; its targets are that share of its labels plus the rest of
    the pasted image's, whatever the box (clipped at the borders)."""
    for seed in range(5):
        torch.manual_seed(seed)
        x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 2, 10, 10).contiguous()
        y = torch.eye(4)
        mx, my = mix_batch(x, y, mixup=0.0, cutmix=1.0, prob=1.0)
        for i in range(4):
            own = float((mx[i, 0] == i).float().mean())
            assert my[i, i] == pytest.approx(own if my[i].max() < 1 else 1.0, abs=1e-6)
            assert float(my[i].sum()) == pytest.approx(1.0, abs=1e-6)


def test_mixup_is_used_by_training_and_repeats_on_resume(fold_data):
    """Training with feature mixup on cached trunk features differs from training without, and two runs with the
    same seed are identical (the draws come from the per-epoch seeded generator)."""
    from pipelines.distributed import Dist
    from pipelines.train import setup, train_one_epoch

    def trained(*overrides):
        s = setup(resolve("tiny", ["epochs=1", "train_from=2", "ema=false", *overrides]), fold_data, Dist())
        train_one_epoch(s, 0, 0)
        return torch.cat([p.detach().flatten() for p in s.trained.parameters()])
    plain, mixed, again = trained(), trained("mixup=0.4", "cutmix=1.0"), trained("mixup=0.4", "cutmix=1.0")
    assert not torch.equal(plain, mixed) and torch.equal(mixed, again)


GPU_CONFIGS = ["convnext_small_384", "eva02_small_336", "vit_base_clip_224", "tresnet_m_ml_decoder"]


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_hub_configs_train_on_tiny_data(name, demo_data, tmp_path):
    """Each config for GPU users as shipped (input size, head, layer decay, schedule, drop path, mixup), with
    pretrained=none: one step on 4 images through `fit` (the loop `make train` runs), predictions for 2 + 2,
    and the saved weights load strictly into the network the one builder makes for prediction."""
    from safetensors.torch import load_file

    from competition import load_dataset, load_spec
    from competition.layout import FitLayout, RunLayout
    from pipelines.cache import build_cache
    from pipelines.inference import InferenceRecord, load_network
    from pipelines.train import FoldData, fit
    spec = load_spec("demo")
    ds = load_dataset(spec, demo_data)
    cfg = resolve(name, ["pretrained=none", "epochs=1", "batch_size=2", "max_train_batches=1", "workers=0"])
    cache = build_cache(ds, RunLayout.of(tmp_path, spec.name), cfg.img_size, workers=1)
    y, test = ds.targets().astype(np.float32), len(ds.train) + np.arange(2)
    data = FoldData(cache, np.arange(4), y[:4], np.arange(4, 6), y[4:6], test, min_labels=1)
    result = fit(cfg, data, FitLayout(tmp_path / "fit"), name, log=lambda *_: None)
    for prob in (result.val_prob, result.test_prob):
        assert prob.shape == (2, len(spec.tokens)) and np.isfinite(prob).all() and (0 <= prob).all() <= 1
    net = load_network(InferenceRecord.from_json(result.inference, name), result.weights, torch.device("cpu")).net
    saved = load_file(str(result.weights))
    assert all(torch.equal(v.half(), saved[k]) for k, v in net.state_dict().items() if v.is_floating_point())


def test_onnx_runtime_trunk_matches_eager_and_keys_its_cache(demo_data, tmp_path):
    """ONNX Runtime's trunk computes eager fp32's features (to float rounding), on images the trunk cache holds;
    a cache made by one runtime is never read as the other's (a fit records which made its: test_bundle)."""
    pytest.importorskip("onnxruntime")
    from competition import load_dataset, load_spec
    from competition.layout import RunLayout
    from pipelines.cache import build_cache
    from pipelines.inference import InferenceRecord
    from pipelines.runtime import resolve_runtime, trunk_runner
    from pipelines.trunk import trunk_cache
    cpu = torch.device("cpu")
    assert resolve_runtime("auto", cpu) == "onnx" and resolve_runtime("eager", cpu) == "eager"
    assert resolve_runtime("onnx", torch.device("cuda")) == "eager"  # no CUDA build of ONNX Runtime here
    cfg = resolve("tf_efficientnet_lite0", ["pretrained=none", "img_size=32", "train_from=4", "amp=false"])  # fp32 both
    net, _, mean, std = build_model(cfg, 3)
    x = torch.randn(3, 3, 64, 64)
    eager = trunk_runner(net.eval(), 4, 64, cpu, None, "eager")(x)
    onnx = trunk_runner(net, 4, 64, cpu, None, "onnx")(x)
    torch.testing.assert_close(onnx, eager, rtol=1e-3, atol=1e-4)
    spec = load_spec("demo")
    ds = load_dataset(spec, demo_data)
    images = build_cache(ds, RunLayout.of(tmp_path, spec.name), 32, workers=1)
    records = {r: InferenceRecord.of(cfg.replace(trunk_runtime=r), 3, mean, std, cpu) for r in ("eager", "onnx")}
    paths = {r: trunk_cache(net, record, images, cpu, quiet=True) for r, record in records.items()}
    assert paths["eager"] != paths["onnx"]
    a, b = (np.load(p).astype(np.float32) for p in paths.values())
    assert np.abs(a - b).max() < 1e-2 * max(np.abs(a).max(), 1.0)


def test_a_fixed_size_model_trains_and_predicts_at_another_size(demo_data, tmp_path):
    """A ViT is built for its input size (patch grid, position embeddings): at 64 px instead of 224 timm must be
    told, or its forward refuses the input. Trained one step, predicted, and rebuilt for prediction at 64 px."""
    from competition import load_dataset, load_spec
    from competition.layout import FitLayout, RunLayout
    from pipelines.cache import build_cache
    from pipelines.inference import InferenceRecord, load_network
    from pipelines.train import FoldData, fit
    spec = load_spec("demo")
    ds = load_dataset(spec, demo_data)
    cfg = resolve("vit_base_clip_224", ["backbone=vit_tiny_patch16_224", "img_size=64", "pretrained=none",
                                        "epochs=1", "batch_size=2", "max_train_batches=1", "workers=0"])
    cache = build_cache(ds, RunLayout.of(tmp_path, spec.name), 64, workers=1)
    y, test = ds.targets().astype(np.float32), len(ds.train) + np.arange(2)
    data = FoldData(cache, np.arange(4), y[:4], np.arange(4, 6), y[4:6], test, min_labels=1)
    result = fit(cfg, data, FitLayout(tmp_path / "fit"), "vit", log=lambda *_: None)
    assert result.test_prob.shape == (2, len(spec.tokens)) and np.isfinite(result.test_prob).all()
    record = InferenceRecord.from_json(result.inference, "vit")
    assert record.net.img_size == 64
    net = load_network(record, result.weights, torch.device("cpu")).net
    assert net.backbone.patch_embed.img_size == (64, 64)
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, len(spec.tokens))
