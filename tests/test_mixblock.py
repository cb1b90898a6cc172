"""mixer=mixblock, AutoMix's Mix Block (Liu et al., ECCV 2022), against float64 references written from the paper's
definitions as mixlab states them in the ``MixBlock`` docstring:

* the mask: λ appended as a channel (λ_i to z_i, 1 − λ_i to z_j), q = W_q z_i^λ, k = W_q z_j^λ,
  P = softmax_j(qᵀk/√r), v = W_v z_j^λ, M_i = 1 − σ(nearest-upsampled P v), on the momentum copy's features;
* the blend is M⊙x_i + (1 − M)⊙x_partner and λ_applied = mean(M_i); extreme λ rows are input mixup;
* the block's own loss (soft cross-entropy of the momentum copy on the blend against λ̂-weighted targets plus the
  λ loss) and its first SGD step, from autograd on that float64 loss;
* the momentum copy: θ_k ← m·θ_k + (1 − m)·θ_q after each step, never trained by gradient; the classifier's
  parameters untouched by the block's update;
* through ``Mix`` with three λ policies, the targets use the applied λ; a tiny training run, its checkpoint and an
  exact resume; one-line errors.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from mixlab import MIXERS, Mix
from mixlab.engine.mixblock import MixBlock
from mixlab.models import build_model
from mixlab.run.config import ConfigError
from mixlab.run.records import load_checkpoint
from mixlab.run.train import build

from .test_config import TINY, compose_cfg, text_base
from .test_mixing import find_syncs
from .test_train import run, without_timing

C = 5


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and steady when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cnn(seed: int = 0, size: int = 12, channels: int = 1):
    torch.manual_seed(seed)
    return build_model("cnn", in_shape=(channels, size, size), num_classes=C, width=4)


def attached(seed: int = 0, size: int = 12, **options) -> tuple[MixBlock, torch.nn.Module]:
    model = cnn(seed, size)
    mixer = MIXERS.build("mixblock", **options)
    mixer.attach(model)
    return mixer, model


def images(b: int, size: int = 12, *, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Images that differ from one another at every pixel (image i in [i, i + 1))."""
    x = torch.rand(b, 1, size, size, generator=gen(seed), dtype=torch.float64)
    return (x + torch.arange(b, dtype=torch.float64).view(b, 1, 1, 1)).to(dtype)


def onehot(y: torch.Tensor) -> torch.Tensor:
    return torch.eye(C, dtype=torch.float64)[y]


def scramble(block: torch.nn.Module, seed: int = 1, std: float = 0.5) -> None:
    """Weights large enough that the mask is far from its initial ≈ ½ everywhere."""
    g = gen(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


# ----------------------------------------------------------------------------- float64 references


def ref_mask(z: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, wq, bq, wv, bv, size: int) -> torch.Tensor:
    """The Mix Block's own-share mask, pair by pair, in float64, from its definition."""
    b, c, h, w = z.shape
    out = torch.empty(b, 1, size, size, dtype=torch.float64)
    rows = [math.floor(r * h / size) for r in range(size)]  # nearest neighbour: source index ⌊r·h/H⌋
    cols = [math.floor(s * w / size) for s in range(size)]
    r = wq.shape[0]
    for i in range(b):
        j = int(partner[i])
        zi = torch.cat([z[i].reshape(c, h * w), torch.full((1, h * w), float(lam[i]), dtype=torch.float64)])
        zj = torch.cat([z[j].reshape(c, h * w), torch.full((1, h * w), 1.0 - float(lam[i]), dtype=torch.float64)])
        q = wq @ zi + bq[:, None]  # (r, hw)
        k = wq @ zj + bq[:, None]
        scores = q.T @ k / math.sqrt(r)  # (hw_i, hw_j)
        attention = torch.exp(scores - scores.max(1, keepdim=True).values)
        attention = attention / attention.sum(1, keepdim=True)
        v = (wv @ zj + bv[:, None])[0]  # (hw_j,)
        logit = (attention @ v).reshape(h, w)
        up = logit[rows][:, cols]
        out[i, 0] = 1.0 - 1.0 / (1.0 + torch.exp(-up))
    return out


def block_weights(mixer: MixBlock, requires_grad: bool = False) -> list[torch.Tensor]:
    blk = mixer.block
    ws = [blk.query.weight[:, :, 0, 0], blk.query.bias, blk.value.weight[:, :, 0, 0], blk.value.bias]
    return [w.detach().double().clone().requires_grad_(requires_grad) for w in ws]


def copy_features(mixer: MixBlock, x: torch.Tensor) -> torch.Tensor:
    """The momentum copy's hidden state at the block's mix point, in float64 (a float64 twin of the copy, in
    training mode as the block reads it), without the code under test."""
    twin = copy.deepcopy(mixer.momentum_model).double().train()
    held = {}

    def keep(h):
        held["h"] = h
        return h

    with torch.no_grad():
        twin.embed(x.double(), mix_at=mixer.stage_used, mix=keep)
    return held["h"], twin


def ref_loss(mixer: MixBlock, x, partner, lam, targets, weights) -> torch.Tensor:
    """The block's loss in float64: CE(copy(M⊙x + (1 − M)⊙x_p), λ̂ t + (1 − λ̂) t_p) + w·max(|λ̂ − λ| − ε, 0)."""
    z, twin = copy_features(mixer, x)
    m = ref_mask(z, partner, lam.double(), *weights, size=x.shape[-1])
    xd = x.double()
    blend = m * xd + (1 - m) * xd[partner]
    logits = twin(blend)
    share = m.mean((1, 2, 3))
    t = targets.double()
    soft = share.detach()[:, None] * t + (1 - share.detach())[:, None] * t[partner]
    ce = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    lam_term = torch.clamp((share - lam.double()).abs() - mixer.lam_loss_margin, min=0).mean()
    return ce + mixer.lam_loss * lam_term


# ----------------------------------------------------------------------------- the mask and the blend


def test_the_mask_is_the_papers_cross_attention_on_the_momentum_copys_features():
    mixer, model = attached()
    scramble(mixer.block)
    with torch.no_grad():  # the classifier moves away from its copy: the block must read the copy
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen(9)))
    b = 6
    x, partner = images(b), torch.tensor([3, 2, 0, 5, 1, 4])
    lam = torch.tensor([0.3, 0.6, 0.45, 0.2, 0.75, 0.5])  # no extreme λ: every row is the block's mask
    weights = block_weights(mixer)
    z, _ = copy_features(mixer, x)
    expected = ref_mask(z, partner, lam.double(), *weights, size=12)
    out, applied = mixer(x, partner, lam, targets=onehot(partner % C).float())
    torch.testing.assert_close(mixer.last_mask.double(), expected, rtol=0, atol=2e-6)
    assert float(expected.std()) > 0.05  # a mask that varies: the comparison is not of two constants
    assert torch.equal(mixer.last_mask, mixer.last_mask.expand(b, 1, 12, 12))  # one mask for every channel


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_blend_is_m_x_plus_one_minus_m_partner_and_lambda_its_mean(dtype):
    mixer, _ = attached()
    scramble(mixer.block)
    b = 8
    x, partner = images(b, dtype=dtype), torch.arange(b).roll(1)
    lam = torch.tensor([0.0, 1.0, 0.05, 0.95, 0.3, 0.5, 0.7, 0.62])
    out, applied = mixer(x, partner, lam, targets=onehot(torch.arange(b) % C).float())
    m = mixer.last_mask.double()
    assert m.shape == (b, 1, 12, 12) and out.dtype == dtype and applied.dtype == torch.float32
    xd = x.double()
    expected = m * xd + (1 - m) * xd[partner]
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)
    torch.testing.assert_close(applied.double(), m.mean((1, 2, 3)), rtol=0, atol=1e-7)
    assert bool(((m[4:] > 0) & (m[4:] < 1)).all())  # the block's masks: a sigmoid's values
    # λ = 1 is x_i and λ = 0 is x_partner, bit for bit; min(λ, 1 − λ) <= 0.08 is input mixup at exactly λ
    assert torch.equal(out[1], x[1]) and torch.equal(out[0], x[partner[0]])
    for i in range(4):
        assert torch.equal(mixer.last_mask[i], torch.full_like(mixer.last_mask[i], float(lam[i])))
        assert applied[i] == lam[i]
    assert float(m[4:].std()) > 0.05 and not torch.allclose(applied[4:], lam[4:], atol=1e-3)  # the block's masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_lambda_one_returns_x_unchanged_and_zero_the_partner(dtype):
    mixer, _ = attached()
    x, partner = images(5, dtype=dtype), torch.tensor([1, 2, 3, 4, 0])
    targets = onehot(torch.arange(5)).float()
    out, applied = mixer(x, partner, torch.ones(5), targets=targets)
    assert out.dtype == dtype and torch.equal(out, x) and torch.equal(applied, torch.ones(5))
    out, applied = mixer(x, partner, torch.zeros(5), targets=targets)
    assert torch.equal(out, x[partner]) and torch.equal(applied, torch.zeros(5))


def test_no_host_sync_in_a_call(monkeypatch):
    mixer, _ = attached()
    x, partner, lam = images(6), torch.tensor([1, 2, 3, 4, 5, 0]), torch.rand(6, generator=gen(2))
    targets = onehot(torch.arange(6) % C).float()
    assert find_syncs(lambda: mixer(x, partner, lam, targets=targets), monkeypatch) == []


# ----------------------------------------------------------------------------- the block's update


def test_the_blocks_loss_and_first_step_are_autograd_of_the_papers_loss():
    mixer, _ = attached(lr=0.5, weight_decay=0.01, lam_loss=1.0)
    scramble(mixer.block, std=0.3)
    b = 6
    x, partner = images(b), torch.tensor([2, 0, 1, 5, 3, 4])
    lam = torch.tensor([0.3, 0.85, 0.45, 0.6, 0.15, 0.5])
    targets = (0.9 * onehot(torch.tensor([0, 1, 2, 3, 4, 0])) + 0.02).float()  # smoothed targets, as the loop's
    weights = block_weights(mixer, requires_grad=True)
    loss = ref_loss(mixer, x, partner, lam, targets, weights)
    grads = torch.autograd.grad(loss, weights)
    mixer(x, partner, lam, targets=targets)
    assert float(mixer.last_loss) == pytest.approx(float(loss.detach()), rel=1e-5)
    # the first SGD step (momentum buffer = the gradient): θ ← θ − lr·(∇ + wd·θ)
    after = block_weights(mixer)
    for w0, g, w1 in zip(weights, grads, after, strict=True):
        assert float(g.abs().max()) > 1e-4
        torch.testing.assert_close(w1, w0.detach() - 0.5 * (g + 0.01 * w0.detach()), rtol=0, atol=2e-6)


def test_the_blocks_steps_lower_its_loss_on_a_fixed_batch():
    mixer, _ = attached(lr=0.5, lam_loss=1.0, lam_loss_margin=0.0)
    b = 16
    x, partner = images(b, seed=3), torch.arange(b).roll(3)
    lam = torch.tensor([0.15, 0.85] * 8)
    targets = onehot(torch.arange(b) % C).float()
    losses = []
    for _ in range(6):
        mixer(x, partner, lam, targets=targets)
        losses.append(float(mixer.last_loss))
    assert losses[-1] < losses[0] - 0.03, losses
    assert all(later < earlier for earlier, later in zip(losses[1:], losses[2:])), losses
    assert mixer.updates == 6 and mixer.ema_steps == 0


def test_a_call_trains_the_block_only():
    mixer, model = attached()
    block_before = [p.detach().clone() for p in mixer.block.parameters()]
    copy_before = [p.detach().clone() for p in mixer.momentum_model.parameters()]
    model_before = [p.detach().clone() for p in model.parameters()]
    x = images(8).requires_grad_(False)
    mixer(x, torch.arange(8).roll(1), torch.full((8,), 0.4), targets=onehot(torch.arange(8) % C).float())
    assert all(not torch.equal(a, p) for a, p in zip(block_before, mixer.block.parameters(), strict=True))
    for a, p in zip(copy_before, mixer.momentum_model.parameters(), strict=True):
        assert torch.equal(a, p) and p.grad is None and not p.requires_grad
    for a, p in zip(model_before, model.parameters(), strict=True):
        assert torch.equal(a, p) and p.grad is None  # the classifier: untouched, no gradient


# ----------------------------------------------------------------------------- the momentum copy


@pytest.mark.parametrize("m", [0.999, 0.9, 0.0])
def test_after_step_is_the_ema_of_the_model(m):
    mixer, model = attached(momentum=m)
    for p, q in zip(mixer.momentum_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q) and p is not q  # attach: a copy of the model
    for step in range(3):
        with torch.no_grad():  # what an optimiser step does: the model moves
            for q in model.parameters():
                q.add_(torch.randn(q.shape, generator=gen(step)))
        k0 = [p.detach().double().clone() for p in mixer.momentum_model.parameters()]
        q0 = [q.detach().double().clone() for q in model.parameters()]
        mixer.after_step(model)
        for p, k, q in zip(mixer.momentum_model.parameters(), k0, q0, strict=True):
            torch.testing.assert_close(p.double(), m * k + (1 - m) * q, rtol=0, atol=1e-6)
    assert mixer.ema_steps == 3
    assert all(p.grad is None and not p.requires_grad for p in mixer.momentum_model.parameters())


PAIR, LAM6 = torch.tensor([1, 2, 0, 4, 5, 3]), torch.tensor([0.3, 0.6, 0.45, 0.2, 0.75, 0.5])


def _two_blocks(rank: int, tmp: str) -> None:
    """One of two gloo processes: each starts from its own random block and takes one step on its own batch."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)
    try:
        model = cnn(0)  # the same model everywhere
        torch.manual_seed(rank)  # as under the loop: each process its own seed after the model is built
        mixer = MIXERS.build("mixblock", weight_decay=0.0)
        mixer.attach(model)
        mixer(images(6, seed=10 + rank), PAIR, LAM6, targets=onehot(torch.arange(6) % C).float())
        torch.save(mixer.block.state_dict(), f"{tmp}/block{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_process_keeps_the_same_block_stepped_by_the_mean_gradient(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_two_blocks, args=(str(tmp_path),), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"block{r}.pt") for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = cnn(0)
    torch.manual_seed(0)
    start = MIXERS.build("mixblock", weight_decay=0.0)
    start.attach(model)  # rank 0's block, which every process starts from
    weights = block_weights(start, requires_grad=True)
    targets = onehot(torch.arange(6) % C).float()
    grads = [torch.autograd.grad(ref_loss(start, images(6, seed=10 + r), PAIR, LAM6, targets, weights), weights)
             for r in (0, 1)]
    after = [a["query.weight"][:, :, 0, 0], a["query.bias"], a["value.weight"][:, :, 0, 0], a["value.bias"]]
    for w0, g0, g1, w1 in zip(weights, *grads, after, strict=True):  # θ ← θ − lr·(g₀ + g₁)/2
        torch.testing.assert_close(w1.double(), w0.detach() - 0.1 * (g0 + g1) / 2, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- the official schedules


def official_lr(t: float) -> float:
    """mmcv's CosineAnnealing lr policy of the official CIFAR-100 ResNet-18 config: 0.1 -> min_lr 0.05."""
    return 0.05 + (0.1 - 0.05) * (1 + math.cos(math.pi * t)) / 2


def official_momentum(t: float) -> float:
    """OpenMixup's CosineScheduleHook(end_momentum=0.999999, adjust_scope=[0.1, 1.0], warming_up='constant') on a
    base momentum of 0.999, at step k of K (t = k/K): constant before 0.1·K, then the cosine of the whole run."""
    return 0.999 if t < 0.1 else 0.999999 - (0.999999 - 0.999) * (math.cos(math.pi * t) + 1) / 2


@pytest.mark.parametrize("t", [0.0, 0.05, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_through_mix_the_block_follows_the_official_lr_and_momentum_at_the_training_clock(t):
    """Mix hands the Mix Block the training clock; its SGD step uses the cosine lr there and the momentum
    copy's next EMA the official momentum (float64 reference of both formulas)."""
    b = 8
    x, y = images(b, seed=3), torch.arange(b) % C
    mix = Mix(lam="beta", mixer="mixblock", num_classes=C, generator=gen(1))
    model = cnn()
    mix.attach(model)
    block = mix.mixer
    mix(x, y, targets=mix.clean_targets(y), progress=t)
    assert block.optimizer.param_groups[0]["lr"] == pytest.approx(official_lr(t), rel=0, abs=1e-15)
    with torch.no_grad():
        for q in model.parameters():
            q.add_(torch.randn(q.shape, generator=gen(7)))
    k0 = [p.detach().double().clone() for p in block.momentum_model.parameters()]
    q0 = [q.detach().double().clone() for q in model.parameters()]
    mix.after_step(model)
    m = official_momentum(t)
    for p, k, q in zip(block.momentum_model.parameters(), k0, q0, strict=True):
        torch.testing.assert_close(p.double(), m * k + (1 - m) * q, rtol=0, atol=1e-6)


def test_the_block_reads_the_real_clock_not_the_one_the_clock_switches_give_the_policy():
    """reverse_time hands the λ policy 1 − progress; the Mix Block's own schedules still run forward."""
    b = 8
    x, y = images(b, seed=3), torch.arange(b) % C
    mix = Mix(lam="schedule", mixer="mixblock", num_classes=C, generator=gen(1), reverse_time=True)
    mix.attach(cnn())
    mix(x, y, targets=mix.clean_targets(y), progress=0.8)
    assert mix.mixer.progress == 0.8
    assert mix.mixer.optimizer.param_groups[0]["lr"] == pytest.approx(official_lr(0.8), rel=0, abs=1e-15)


def test_null_ends_hold_lr_and_momentum_constant_and_no_clock_means_the_start_values():
    mixer, _ = attached(lr_min=None, momentum_end=None)
    mixer.progress = 0.7
    assert (mixer.lr_now(), mixer.momentum_now()) == (0.1, 0.999)
    mixer, _ = attached()  # the official ends, but called without a clock (outside a training loop)
    assert mixer.progress is None and (mixer.lr_now(), mixer.momentum_now()) == (0.1, 0.999)
    with pytest.raises(ValueError, match=r"^progress=1\.5: mixer 'mixblock' expected the fraction of training done"):
        mixer(images(4), torch.arange(4).roll(1), torch.full((4,), 0.4), targets=onehot(torch.arange(4) % C).float(),
              progress=1.5)


# ----------------------------------------------------------------------------- through Mix and the loop


@pytest.mark.parametrize("pairing", ["random", "same_class", "nearest"])
@pytest.mark.parametrize("lam", ["beta", "distance", "schedule"])
def test_mix_targets_weigh_the_labels_by_the_applied_lambda(lam, pairing):
    b = 10
    x, y = images(b, seed=5), torch.arange(b) % C
    mix = Mix(lam=lam, pairing=pairing, mixer="mixblock", num_classes=C, generator=gen(1))
    mix.attach(cnn())
    call = dict(features=torch.randn(b, 6, generator=gen(4)), index=torch.arange(b), progress=0.3)
    x_mix, y_mix = mix(x, y, targets=mix.clean_targets(y), **call)
    partner, applied = mix.last.partner, mix.last.lam
    same_partner, requested = Mix(lam=lam, pairing=pairing, num_classes=C, generator=gen(1)).sample(x, y, **call)
    assert torch.equal(same_partner, partner)  # the mixer draws nothing: the pairs and λ are the policy's
    ref = applied.double()[:, None] * onehot(y) + (1 - applied.double())[:, None] * onehot(y[partner])
    torch.testing.assert_close(y_mix.double(), ref, rtol=0, atol=1e-7)
    m = mix.mixer.last_mask.double()
    torch.testing.assert_close(applied.double(), m.mean((1, 2, 3)), rtol=0, atol=1e-7)
    edge = torch.minimum(requested, 1 - requested) <= 0.08
    assert torch.equal(applied[edge], requested[edge])


def test_mix_with_label_smoothing_mixes_the_smoothed_targets_by_the_applied_lambda():
    from mixlab import mix_targets

    b = 12
    x, y = images(b, seed=6), torch.arange(b) % C
    mix = Mix(lam="beta", mixer="mixblock", num_classes=C, smoothing=0.1, generator=gen(2))
    mix.attach(cnn())
    x_mix, y_mix = mix(x, y, targets=mix.clean_targets(y))
    applied = mix.last.lam
    assert applied.dtype == torch.float32 and bool(((applied >= 0) & (applied <= 1)).all())
    assert torch.equal(y_mix, mix_targets(y, mix.last.partner, applied, C, 0.1))
    smooth = 0.9 * onehot(y) + 0.1 / C
    ref = applied.double()[:, None] * smooth + (1 - applied.double())[:, None] * smooth[mix.last.partner]
    torch.testing.assert_close(y_mix.double(), ref, rtol=0, atol=1e-7)


def test_a_tiny_fashion_mnist_run_and_its_checkpoint(tmp_path):
    acc, rows, summary = run(tmp_path, "data=fashion_mnist", "model=cnn", "model.width=8", "mixer=mixblock",
                             "trainer.epochs=1", "data.val_size=256", "eval.test=false")
    (row,) = rows
    assert summary["status"] == "completed" and summary["config"]["mixer"]["name"] == "mixblock"
    assert math.isfinite(row["train_loss"]) and 0 <= acc <= 1
    assert 0 < row["lam_mean"] < 1 and 0 <= row["lam_min"] < row["lam_max"] <= 1
    state = load_checkpoint(tmp_path / "run" / "last.pt")["mix"]["mixer"]
    steps = 256 // 32
    assert state["updates"] == steps and state["ema_steps"] == steps and state["stage"] == 2
    assert {"query.weight", "query.bias", "value.weight", "value.bias"} <= set(state["block"])
    assert state["optimizer"]["state"]  # SGD's momentum buffers
    model = build_model("cnn", in_shape=(1, 28, 28), num_classes=10, width=8)
    fresh = Mix(lam="beta", num_classes=10, mixer="mixblock")
    fresh.attach(model)
    fresh.load_state_dict({"lam": fresh.lam_policy.state_dict(), "mixer": state})
    for key, value in fresh.mixer.block.state_dict().items():
        assert torch.equal(value, state["block"][key])
    for key, value in fresh.mixer.momentum_model.state_dict().items():
        assert torch.equal(value, state["momentum_model"][key])
    assert fresh.mixer.updates == steps
    assert fresh.mixer.optimizer.state_dict()["state"].keys() == state["optimizer"]["state"].keys()
    unattached = Mix(lam="beta", num_classes=10, mixer="mixblock")
    with pytest.raises(ValueError, match=r"^mixer 'mixblock': load_state_dict needs Mix\.attach\(model\) first"):
        unattached.load_state_dict({"lam": unattached.lam_policy.state_dict(), "mixer": state})


def test_a_resumed_run_continues_the_block_exactly(tmp_path, monkeypatch):
    import mixlab.run.train as train_module

    overrides = ("model=cnn", "model.width=4", "mixer=mixblock", "data.train_subset=96", "trainer.epochs=2")
    _, uninterrupted, _ = run(tmp_path, *overrides, name="full")
    real_evaluate, calls = train_module.evaluate, []

    def dies_in_epoch_2(p, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # after epoch 2's training, before its checkpoint
        return real_evaluate(p, *args, **kw)

    monkeypatch.setattr(train_module, "evaluate", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, *overrides, name="resumed")
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    _, resumed, summary = run(tmp_path, *overrides, name="resumed")
    assert summary["status"] == "completed" and without_timing(resumed) == without_timing(uninterrupted)
    full = load_checkpoint(tmp_path / "full" / "last.pt")["mix"]["mixer"]
    again = load_checkpoint(tmp_path / "resumed" / "last.pt")["mix"]["mixer"]
    assert full["updates"] == again["updates"] == 6
    for key in full["block"]:
        assert torch.equal(full["block"][key], again["block"][key])


# ----------------------------------------------------------------------------- refusals and errors


def test_text_models_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        build(compose_cfg(*text_base(tmp_path), "model=textcnn", "mixer=mixblock"))
    assert str(e.value).startswith("mixer=mixblock: needs images, but model=textcnn embeds token ids; expected")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("data", ["moons", "diabetes"])
def test_flat_inputs_are_refused_in_one_line(data):
    with pytest.raises(ConfigError) as e:
        build(compose_cfg(f"data={data}", "model=mlp", "device=cpu", "lambda=beta", "mixer=mixblock"))
    shape = "(2,)" if data == "moons" else "(10,)"
    assert str(e.value) == (f"mixer=mixblock: needs images (C, H, W), but data={data} has inputs of shape {shape}; "
                            "expected mixer=input or manifold")
    with pytest.raises(ValueError) as e:
        attached()[0](torch.randn(4, 5), torch.arange(4), torch.ones(4), targets=torch.eye(4))
    assert str(e.value) == "mixer 'mixblock' needs images (B, C, H, W), but got shape (4, 5)"


def test_a_flat_model_refuses_a_call_in_one_line():
    mixer = MIXERS.build("mixblock")
    mixer.attach(build_model("mlp", in_shape=(6,), num_classes=C, hidden=[4]))
    with pytest.raises(ValueError, match=r"^mixer 'mixblock' needs an image model .*in_shape=\(6,\)") as e:
        mixer(images(2), torch.arange(2), torch.ones(2), targets=torch.eye(2))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("stage,message", [
    (3, r"^stage=3: out of range for SimpleCNN, whose mix points are 0\.\.2; expected null or one of \[0, 1, 2\]"),
    (7, r"^stage=7: out of range for SimpleCNN"),
])
def test_a_stage_out_of_range_is_one_line(stage, message):
    mix = Mix(lam="beta", num_classes=C, mixer="mixblock", mixer_kwargs={"stage": stage})
    with pytest.raises(ValueError, match=message) as e:
        mix.attach(cnn())
    assert "\n" not in str(e.value)


def test_a_stage_that_is_not_a_feature_map_is_one_line():
    mixer = MIXERS.build("mixblock", stage=1)
    with pytest.raises(ValueError) as e:
        mixer.attach(build_model("mlp", in_shape=(1, 8, 8), num_classes=C, hidden=[16, 8]))
    assert str(e.value) == ("stage=1: MLP's mix point 1 has shape (16,), not a feature map (C, h, w); expected null "
                            "or one of [0]")
    mixer = MIXERS.build("mixblock")  # null: the deepest feature map, here the input itself
    mixer.attach(build_model("mlp", in_shape=(1, 8, 8), num_classes=C, hidden=[16, 8]))
    assert mixer.stage_used == 0 and mixer.block.channels == 1


def test_a_stage_out_of_range_stops_the_loop_before_training_in_one_line():
    with pytest.raises(ValueError, match=r"^(mixer\.)?stage=2: out of range for MLP, whose mix points are 0\.\.1") as e:
        build(compose_cfg(*TINY, "mixer=mixblock", "mixer.stage=2"))
    assert "\n" not in str(e.value)


def test_a_call_before_attach_is_one_line():
    mix = Mix(lam="beta", num_classes=C, mixer="mixblock")
    y = torch.arange(4) % C
    with pytest.raises(ValueError) as e:
        mix(images(4), y, targets=mix.clean_targets(y))
    assert str(e.value).startswith("mixer 'mixblock' has no model: it needs Mix.attach(model) before its first call")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^mixer 'mixblock' has no model: it needs Mix\.attach\(model\)"):
        mix.after_step(cnn())


def test_mix_refuses_a_call_without_the_targets():
    mix = Mix(lam="beta", num_classes=C, mixer="mixblock")
    mix.attach(cnn())
    with pytest.raises(ValueError, match=r"needs \['targets'\]"):
        mix(images(4), torch.arange(4))
    with pytest.raises(ValueError, match=r"^targets=torch\.int64 \(4,\): mixer 'mixblock' needs each sample's own "
                                         r"target, expected a floating tensor of shape \(4, C\)$"):
        mix.mixer(images(4), torch.arange(4), torch.ones(4), targets=torch.arange(4))


@pytest.mark.parametrize("options,message", [
    ({"stage": -1}, "stage=-1: expected null (the deepest mix point with a feature map) or an integer >= 0"),
    ({"stage": 1.5}, "stage=1.5: expected an integer or null"),
    ({"lr": 0}, "lr=0: expected a number > 0"),
    ({"weight_decay": -1e-4}, "weight_decay=-0.0001: expected a number >= 0"),
    ({"momentum": 1.5}, "momentum=1.5: expected a number in [0, 1]"),
    ({"lam_loss": float("nan")}, "lam_loss=nan: expected a number"),
    ({"lam_loss_margin": 1}, "lam_loss_margin=1: expected a number in [0, 1)"),
    ({"mixup_margin": 0.6}, "mixup_margin=0.6: expected a number in [0, 0.5]"),
    ({"lr_min": 0.2}, "lr_min=0.2: expected a number in [0, lr=0.1]"),
    ({"momentum_end": 0.99}, "momentum_end=0.99: expected a number in [momentum=0.999, 1]"),
    ({"momentum_from": 1.5}, "momentum_from=1.5: expected a fraction of training in [0, 1]"),
])
def test_bad_options_are_one_line_naming_the_key(options, message):
    with pytest.raises(ValueError) as e:
        MIXERS.build("mixblock", **options)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:  # through the config: the key with its group
        key, value = next(iter(options.items()))
        build(compose_cfg(*TINY, "mixer=mixblock", f"mixer.{key}={value}"))
    assert str(e.value).startswith(f"mixer.{message}") and "\n" not in str(e.value)


def test_mixblock_declares_what_it_reads_and_is_not_lambda_automix():
    from mixlab.run.config import CONF_DIR

    assert MixBlock.needs == ("targets",) and MixBlock.needs_images is True
    assert isinstance(MIXERS.build("mixblock"), torch.nn.Module)
    assert "Not ``lambda=automix``" in MixBlock.__doc__
    assert "Not lambda=automix" in (CONF_DIR / "mixer" / "mixblock.yaml").read_text().splitlines()[0]
