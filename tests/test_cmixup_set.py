"""C-Mixup's official form in training: ``pairing=label_kernel pairing.partners=set``.

The official code (github.com/huaxiuyao/C-Mixup, ``src/algorithm.py``) draws each training row's partner
from the whole training set with P(j | i) from a Gaussian ``KernelDensity`` of bandwidth σ on the targets
(``get_mixup_sample_rate``) and fetches the partner's input by index. The references here are written from
that (sklearn's ``KernelDensity``, float64 arithmetic), never from mixlab's output; the one exception is the
``batch`` test, whose expected partners were recorded from mixlab before the option existed. Names newer than
the option's first commit are imported inside the tests, so on an older mixlab each test fails on its own line.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from mixlab.engine.lam import LAMBDAS
from mixlab.engine.mixing import Mix
from mixlab.run.config import ConfigError, fingerprint

from .test_config import compose_cfg


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def kde_rates(y_set: np.ndarray, anchors: list[int], sigma: float) -> np.ndarray:
    """C-Mixup's ``get_mixup_sample_rate`` for the rows ``anchors``: (len(anchors), N) probabilities."""
    from sklearn.neighbors import KernelDensity

    flat = y_set.reshape(len(y_set), -1)
    rates = []
    for i in anchors:
        r = np.exp(KernelDensity(kernel="gaussian", bandwidth=sigma).fit(flat[i:i + 1]).score_samples(flat))
        rates.append(r / r.sum())
    return np.array(rates)


def set_mix(lam: str = "beta", *, sigma: float = 0.5, seed: int = 0, **kw) -> Mix:
    return Mix(lam=lam, pairing="label_kernel", pairing_kwargs={"sigma": sigma, "partners": "set"},
               generator=gen(seed), **kw)


@pytest.mark.parametrize("targets", ["regression", "classes"])
def test_each_row_is_mixed_with_the_training_row_it_drew_exactly(targets):
    n, b = 40, 12
    x_train = torch.randn(n, 5, dtype=torch.float64, generator=gen(1))
    if targets == "regression":
        y_train, num_classes = torch.randn(n, dtype=torch.float64, generator=gen(2)), None
    else:
        y_train, num_classes = torch.randint(0, 4, (n,), generator=gen(2)), 4
    mix = set_mix(num_classes=num_classes, lam_kwargs={"alpha": 1.0})
    mix.setup(num_samples=n, train_set=(x_train, y_train))
    index = torch.randperm(n, generator=gen(3))[:b]
    x, y = x_train[index], y_train[index]
    x_mix, y_mix = mix(x, y, index=index)
    j, lam = mix.last.partner, mix.last.lam.double()
    assert j.dtype == torch.long and j.shape == (b,) and 0 <= int(j.min()) and int(j.max()) < n
    assert bool((j >= b).any())  # dataset indices, not positions in the batch
    expected_x = lam[:, None] * x + (1 - lam[:, None]) * x_train[j]
    assert x_mix.dtype == torch.float64
    torch.testing.assert_close(x_mix, expected_x, rtol=0, atol=1e-12)
    if targets == "regression":
        expected_y = lam * y + (1 - lam) * y_train[j]
    else:
        eye = torch.eye(4, dtype=torch.float64)
        expected_y = lam[:, None] * eye[y] + (1 - lam[:, None]) * eye[y_train[j]]
    torch.testing.assert_close(y_mix.double(), expected_y, rtol=0, atol=1e-6 if targets == "classes" else 1e-12)
    # the record: partners index the training set, a row's own index is its dataset index
    assert mix.last.from_set and mix.last.pool[0] is x_train and mix.last.pool[1] is y_train
    assert torch.equal(mix.last.own, index)


def test_cutmix_pastes_from_the_drawn_training_row():
    n, b = 20, 6
    x_train = torch.randn(n, 1, 8, 8, dtype=torch.float64, generator=gen(4))
    y_train = torch.randn(n, dtype=torch.float64, generator=gen(5))
    mix = Mix(lam="constant", pairing="label_kernel", mixer="cutmix", lam_kwargs={"value": 0.5},
              pairing_kwargs={"sigma": 2.0, "partners": "set"}, generator=gen(6))
    mix.setup(num_samples=n, train_set=(x_train, y_train))
    index = torch.arange(b)
    x_mix, _ = mix(x_train[:b], y_train[:b], index=index)
    j, lam = mix.last.partner, mix.last.lam.double()
    from_partner = (x_mix == x_train[j]) & (x_mix != x_train[:b])
    assert bool(((x_mix == x_train[:b]) | (x_mix == x_train[j])).all())
    kept = 1 - from_partner.flatten(1).double().mean(1)
    assert torch.allclose(kept[j != index], lam[j != index])  # the applied λ is the share kept


def test_partners_follow_the_set_level_kernel_probabilities():
    # Many draws through Mix for 4 anchors against sklearn's KernelDensity rates over all N training rows.
    n, sigma, per = 30, 0.4, 5000
    y_set = np.random.default_rng(7).normal(size=n)
    anchors = [0, 5, 11, 29]
    rate = kde_rates(y_set, anchors, sigma)
    y_train = torch.tensor(y_set, dtype=torch.float32)
    x_train = torch.arange(n, dtype=torch.float32)[:, None]
    mix = set_mix(sigma=sigma, seed=11)
    mix.setup(num_samples=n, train_set=(x_train, y_train))
    index = torch.tensor(anchors).repeat(per)
    mix(x_train[index], y_train[index], index=index)
    j = mix.last.partner.numpy()
    counts = np.zeros((4, n))
    np.add.at(counts, (np.tile(np.arange(4), per), j), 1)
    for a in range(4):  # chi-square per anchor, the cells expecting fewer than 5 draws pooled
        small = rate[a] * per < 5
        obs = np.append(counts[a, ~small], counts[a, small].sum())
        exp = np.append(rate[a, ~small], rate[a, small].sum()) * per
        assert stats.chisquare(obs[exp > 0], exp[exp > 0]).pvalue > 1e-3, a


def test_a_row_that_draws_its_own_dataset_index_counts_as_unmixed():
    # targets 10 apart and σ = 0.01: every row draws itself (a dataset index, not its batch position)
    from mixlab.engine.lam import unmixed_self_pairs

    n = 16
    y_train = torch.arange(n, dtype=torch.float32) * 10
    x_train = torch.randn(n, 3, generator=gen(8))
    mix = set_mix("constant", sigma=0.01)
    mix.setup(num_samples=n, train_set=(x_train, y_train))
    index = torch.tensor([9, 3, 14, 0])
    x_mix, _ = mix(x_train[index], y_train[index], index=index)
    assert torch.equal(mix.last.partner, index) and torch.equal(x_mix, x_train[index])
    assert torch.equal(unmixed_self_pairs(mix.last.lam, mix.last.partner, mix.last.own), torch.ones(4))


def test_the_training_set_and_index_are_required():
    mix = set_mix()
    with pytest.raises(ValueError, match="train_set"):
        mix.setup(num_samples=10)
    with pytest.raises(ValueError, match="num_samples=10"):
        mix.setup(num_samples=10, train_set=(torch.zeros(9, 2), torch.zeros(9)))
    mix.setup(num_samples=10, train_set=(torch.zeros(10, 2), torch.zeros(10)))
    with pytest.raises(ValueError, match="index="):
        mix(torch.zeros(4, 2), torch.zeros(4))


@pytest.mark.parametrize("lam", ["distance", "sk"])
def test_a_lambda_policy_that_reads_the_pair_is_refused_in_one_line(lam):
    with pytest.raises(ValueError, match=f"^lambda={lam}: reads the pair") as err:
        set_mix(lam)
    assert "\n" not in str(err.value) and "beta" in str(err.value) and "partners=batch" in str(err.value)
    cfg = compose_cfg("data=diabetes", "model=mlp", "device=cpu", f"lambda={lam}", "pairing=label_kernel",
                      "pairing.partners=set")
    from mixlab.run.train import build

    with pytest.raises(ConfigError, match=f"^lambda={lam}: reads the pair") as err:
        build(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override,starts", [("trainer.pairing_scope=global", "trainer.pairing_scope='global':"),
                                             ("mixer=manifold", "mixer=manifold:")])
def test_global_scope_and_hidden_states_are_refused_with_set_partners(override, starts):
    from mixlab.run.train import build

    cfg = compose_cfg("data=diabetes", "model=mlp", "device=cpu", "lambda=beta", "pairing=label_kernel",
                      "pairing.partners=set", override)
    with pytest.raises(ConfigError) as err:
        build(cfg)
    assert str(err.value).startswith(starts) and "\n" not in str(err.value) and "partners" in str(err.value)
    with pytest.raises(ConfigError, match=r"^pairing\.partners='both': expected batch \| set$"):
        build(compose_cfg("data=diabetes", "model=mlp", "pairing=label_kernel", "pairing.partners=both"))


def test_batch_partners_are_the_partners_drawn_before_the_option():
    # recorded from mixlab before pairing.partners existed (Mix(lam='beta', pairing='label_kernel',
    # pairing_kwargs={'sigma': 0.5}, generator=seed 3), two calls on these 16 targets)
    before = [[9, 1, 4, 5, 4, 13, 1, 7, 8, 9, 6, 11, 7, 15, 7, 11],
              [6, 0, 14, 7, 1, 2, 10, 7, 11, 0, 9, 13, 15, 3, 2, 12]]
    y = torch.linspace(-1.5, 1.5, 16, dtype=torch.float64)[torch.randperm(16, generator=gen(0))]
    x = torch.arange(16 * 3, dtype=torch.float64).reshape(16, 3)
    default = Mix(lam="beta", pairing="label_kernel", pairing_kwargs={"sigma": 0.5}, generator=gen(3))
    batch = Mix(lam="beta", pairing="label_kernel", pairing_kwargs={"sigma": 0.5, "partners": "batch"},
                generator=gen(3))
    assert not batch.needs_train_set
    batch.setup(num_samples=16)  # nothing more is needed
    for expected in before:
        a, b = default(x, y, index=torch.arange(16)), batch(x, y, index=torch.arange(16))
        assert batch.last.partner.tolist() == expected and default.last.partner.tolist() == expected
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(default.last.lam, batch.last.lam)
        assert batch.last.pool is None and batch.last.own is None and not batch.last.from_set


def test_records_without_the_key_read_as_batch_and_other_pairings_get_none():
    old = {"seed": 0, "pairing": {"name": "label_kernel", "sigma": 0.7}}
    assert fingerprint(old) == fingerprint({**old, "pairing": {**old["pairing"], "partners": "batch"}})
    assert fingerprint(old) != fingerprint({**old, "pairing": {**old["pairing"], "partners": "set"}})
    assert "pairing.partners" not in fingerprint({"seed": 0, "pairing": {"name": "random"}})


def test_a_tabular_regression_run_with_set_partners_trains_and_records_its_strength(tmp_path):
    from mixlab.run.train import build, train

    overrides = ("data=diabetes", "model=mlp", "model.hidden=[8]", "device=cpu", "trainer.epochs=1",
                 "trainer.progress=false", "lambda=beta", "pairing=label_kernel", "pairing.partners=set")
    p = build(compose_cfg(*overrides))
    assert p.mix.needs_train_set and p.mix.train_set[0] is p.ds.x_train and p.mix.train_set[1] is p.ds.y_train
    train(compose_cfg(*overrides), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["pairing"]["partners"] == "set"
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < row["lam_strength"] <= 0.5 and np.isfinite(row["train_loss"]) and row["pair_distance"] > 0
    probe = json.loads((tmp_path / "run" / "last_epoch.json").read_text())["lam_vs_distance"]
    assert probe["batch"] == 32 and len(probe["distance"]) == 32 and all(np.isfinite(probe["distance"]))


def test_only_a_policy_that_says_so_itself_counts_as_not_reading_the_pair():
    """``reads_pair`` is read from the class's own body: a subclass of a pair-blind policy (which may read
    the pair) is taken to read it unless it says otherwise."""
    from mixlab.engine.lam import Beta
    from mixlab.engine.mixing import reads_pair

    class Mine(Beta):
        pass

    class Declared(Beta):
        reads_pair = False

    assert not reads_pair(Beta) and reads_pair(Mine) and not reads_pair(Declared)
    assert sorted(n for n in LAMBDAS.names() if not reads_pair(LAMBDAS.get(n))) == [
        "automix", "beta", "constant", "loss", "none", "schedule"]
