"""Training in several processes (Lightning DDP, gloo on CPU) shards the cells and matches one."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import cellvi as cv
import cellvi.data.loader as loader_module
from cellvi.data.loader import MinibatchLoader, TensorData
from cellvi.lifecycle.runtime import load_model
from cellvi.train.trainer import resolve_devices


def _data(n=53):
    counts = sp.csr_matrix(np.random.default_rng(0).poisson(1.0, (n, 8)).astype(np.float32))
    return TensorData(
        n_cells=n,
        n_vars=8,
        batch=torch.arange(n),  # the cell's own index, to see which cells come
        labels=torch.zeros(n, dtype=torch.long),
        cat_covs=torch.zeros(n, 0, dtype=torch.long),
        cont_covs=torch.zeros(n, 0),
        size_factor=None,
        log_x_factorial=torch.zeros(n),
        indptr=torch.from_numpy(counts.indptr),
        indices=torch.from_numpy(counts.indices),
        values=torch.from_numpy(counts.data),
    )


def _rank_orders(monkeypatch, world, *, shuffle, passes=2):
    """The cells each simulated rank visits in each pass."""
    data, cells = _data(), np.arange(3, 53)
    orders = []
    for rank in range(world):
        monkeypatch.setattr(loader_module, "world_and_rank", lambda rank=rank: (world, rank))
        loader = MinibatchLoader(
            data,
            cells,
            batch_size=7,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(5),  # same state in every process
            shard=True,
        )
        per_pass = [torch.cat([mb["batch"] for mb in loader]) for _ in range(passes)]
        orders.append((per_pass, len(loader)))
    return orders


def test_training_shards_cover_all_cells_with_equal_steps(monkeypatch):
    orders = _rank_orders(monkeypatch, 3, shuffle=True)
    assert len({n_steps for _, n_steps in orders}) == 1  # same number of steps on every rank
    for p in range(2):
        shards = [per_pass[p] for per_pass, _ in orders]
        assert {len(s) for s in shards} == {17}  # ceil(50 / 3), padded by wrapping around
        together = torch.cat(shards)
        assert set(together.tolist()) == set(range(3, 53)) and len(together) == 51
    first, second = orders[0][0]
    assert not torch.equal(first, second)  # a new permutation every pass


def test_validation_shards_are_disjoint_without_padding(monkeypatch):
    orders = _rank_orders(monkeypatch, 2, shuffle=False, passes=1)
    together = torch.cat([per_pass[0] for per_pass, _ in orders])
    assert sorted(together.tolist()) == list(range(3, 53))


def test_single_process_order_unchanged_by_sharding():
    data, cells = _data(), np.arange(53)
    common = {"batch_size": 10, "shuffle": True}
    plain = MinibatchLoader(data, cells, generator=torch.Generator().manual_seed(1), **common)
    sharded = MinibatchLoader(
        data, cells, generator=torch.Generator().manual_seed(1), shard=True, **common
    )
    for a, b in zip(plain, sharded, strict=True):
        torch.testing.assert_close(a["batch"], b["batch"])


def test_strategies_resolved_and_non_ddp_refused():
    assert resolve_devices("auto", "auto") == (1, "auto")
    assert resolve_devices(2, "auto") == (2, "ddp_spawn")
    assert resolve_devices(1, "auto", num_nodes=2) == (1, "ddp_spawn")
    with pytest.raises(ValueError, match="DDP strategies only"):
        resolve_devices(2, "fsdp")


TRAIN = {"n_hidden": 32, "seed": 0, "precision": "32-true", "accelerator": "cpu"}


def _train(adata, **options):
    return cv.tl.scvi_train(adata, copy=True, **TRAIN | options)


@pytest.fixture
def registered(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    return adata


def test_two_processes_match_one(registered):
    # batch_size is per process: 2 x 64 cells per step is the same step size as 1 x 128
    single = _train(registered, max_epochs=15, batch_size=128)
    ddp = _train(registered, max_epochs=15, batch_size=64, devices=2, strategy="ddp_fork")
    elbo_single = single.uns["scvi"]["metrics"]["elbo_validation"]
    elbo_ddp = ddp.uns["scvi"]["metrics"]["elbo_validation"]
    assert elbo_ddp == pytest.approx(elbo_single, rel=0.015)
    history = ddp.uns["scvi"]["history"]
    assert len(history["elbo_train"]) == 15  # came back from the worker processes
    assert history["elbo_train"][-1] > history["elbo_train"][0] + 5
    assert np.isfinite(ddp.obsm["X_scvi"]).all() and ddp.obsm["X_scvi"].shape == (240, 10)


def test_ddp_spawn_brings_the_model_back(registered):
    forked = _train(registered, max_epochs=2, devices=2, strategy="ddp_fork")
    spawned = _train(registered, max_epochs=2, devices=2, strategy="ddp_spawn")
    a = load_model(forked, "scvi").module.state_dict()
    b = load_model(spawned, "scvi").module.state_dict()
    for key in a:  # same seed, same shards: the same model, whichever way processes start
        torch.testing.assert_close(a[key], b[key], msg=key)
    np.testing.assert_allclose(
        forked.uns["scvi"]["history"]["elbo_train"], spawned.uns["scvi"]["history"]["elbo_train"]
    )
    assert cv.utils.is_main_process()
