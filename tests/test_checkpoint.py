"""Tests for vdvae_jax.checkpoint."""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdvae_jax.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    Checkpointer,
    export_npz,
    load_npz,
)


def _state(seed=0, width=4):
    key = jax.random.key(seed)
    params = {
        "enc": {"kernel": jax.random.normal(key, (3, width)), "bias": jnp.zeros((width,))},
        "dec": {"kernel": jnp.arange(6, dtype=jnp.float32).reshape(2, 3)},
        "count": jnp.array(7, jnp.int32),
    }
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-trivial mu/nu/count
    host = {"data_pos": np.int64(11), "loss_hist": np.linspace(0, 1, 5)}  # numpy, float64
    return {"params": params, "opt_state": opt_state, "step": 3, "host": host}


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.shape(x) == np.shape(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_with_optax_state(tmp_path):
    state = _state()
    with Checkpointer(tmp_path / "ck") as ck:
        assert ck.latest_step() is None
        assert ck.save(3, state, metadata={"epoch": 1, "note": "hi", "lr": [1e-3]})
        assert ck.latest_step() == 3
    # fresh object, target = differently initialised state of the same structure
    with Checkpointer(tmp_path / "ck") as ck:
        restored, meta = ck.restore(_state(seed=1))
    _assert_trees_equal(restored, state)
    assert meta == {"epoch": 1, "note": "hi", "lr": [1e-3]}
    adam_state = restored["opt_state"][0]
    assert type(adam_state) is type(state["opt_state"][0])  # NamedTuple preserved
    assert isinstance(restored["step"], int) and restored["step"] == 3
    # an abstract target works too
    with Checkpointer(tmp_path / "ck") as ck:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype)
                                if hasattr(x, "dtype") else x, state)
        restored2, _ = ck.restore(abstract, step=3)
    _assert_trees_equal(restored2, state)


def test_max_to_keep_and_interval(tmp_path):
    state = {"w": jnp.ones(3)}
    with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2) as ck:
        saved = [ck.save(s, jax.tree.map(lambda x, s=s: x * s, state)) for s in range(1, 7)]
        # the very first save always happens (orbax), later ones on the interval grid
        assert saved == [True, True, False, True, False, True]
        assert ck.save(7, state, force=True)
        assert ck.all_steps() == [6, 7]
        restored, meta = ck.restore(state, step=6)
        np.testing.assert_array_equal(restored["w"], 6 * np.ones(3))
        assert meta == {}
        with pytest.raises(CheckpointError, match="no checkpoint for step 2"):
            ck.restore(state, step=2)
    assert sorted(os.listdir(tmp_path)) == ["6", "7"]


def test_restore_empty_directory(tmp_path):
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(CheckpointError, match="no checkpoint found"):
            ck.restore({"w": jnp.ones(3)})


def test_metadata_must_be_json(tmp_path):
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(TypeError, match="JSON"):
            ck.save(1, {"w": jnp.ones(3)}, metadata={"x": object()})


@pytest.mark.parametrize(
    "target_fn, match",
    [
        (lambda s: {**s, "params": {**s["params"], "enc": {"kernel": jnp.zeros((3, 5)),
                                                        "bias": jnp.zeros((4,))}}},
         r"enc'\]\['kernel'\]: checkpoint has shape \(3, 4\)"),
        (lambda s: {**s, "params": {**s["params"], "count": jnp.array(7, jnp.float32)}},
         "int32"),
        (lambda s: {k: v for k, v in s.items() if k != "opt_state"},
         "in the checkpoint but not in the target"),
        (lambda s: {**s, "extra": jnp.zeros(2)}, "in the target but not in the checkpoint"),
    ],
    ids=["shape", "dtype", "missing-subtree", "extra-leaf"],
)
def test_mismatched_target_raises(tmp_path, target_fn, match):
    state = _state()
    with Checkpointer(tmp_path) as ck:
        ck.save(1, state)
        with pytest.raises(CheckpointMismatchError, match=match):
            ck.restore(target_fn(state))


def _garble(path):
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(bytes(b ^ 0xA5 for b in data))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(max(os.path.getsize(path) // 3, 1))


def _files(root, sub):
    out = []
    for d, _, names in os.walk(os.path.join(root, sub)):
        out += [os.path.join(d, n) for n in names if n != "commit_success.txt"]
    return out


# Reading corrupt array data makes orbax abandon its concurrent tensorstore reads;
# their completions then hit a closed asyncio loop in background threads ("Event loop
# is closed", "Future exception was never retrieved") - noise only, the error is raised.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "damage",
    [
        "garble-state",
        "truncate-state",
        "delete-state",
        "truncate-arrays",
        "garble-spec",
        "delete-metadata",
    ],
)
def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path, damage):
    state = _state()
    with Checkpointer(tmp_path) as ck:
        ck.save(5, state, metadata={"a": 1})
    step_dir = os.path.join(tmp_path, "5")
    if damage == "garble-state":
        for p in _files(step_dir, "state"):
            _garble(p)
    elif damage == "truncate-state":
        for p in _files(step_dir, "state"):
            _truncate(p)
    elif damage == "truncate-arrays":  # tensorstore data + manifest only, JSON intact
        for p in _files(step_dir, "state"):
            if "/d/" in p or p.endswith("manifest.ocdbt"):
                _truncate(p)
    elif damage == "delete-state":
        for p in _files(step_dir, "state"):
            os.remove(p)
    elif damage == "garble-spec":
        for p in _files(step_dir, "spec"):
            _garble(p)
    elif damage == "delete-metadata":
        for p in _files(step_dir, "metadata"):
            os.remove(p)
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(CheckpointError) as info:
            ck.restore(state)
    assert not isinstance(info.value, CheckpointMismatchError)
    assert step_dir in str(info.value)
    time.sleep(0.3)  # let abandoned background reads finish inside this test


def test_npz_round_trip(tmp_path):
    params = {
        "enc": {"lstm": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4)},
                "bias": jnp.ones(4, jnp.float32)},
        "scale": np.float64(2.5),
        "ids": np.arange(3, dtype=np.int32),
    }
    config = {"model": "srnn", "z_dim": 16, "dims": [256, 128]}
    path = tmp_path / "prior.weights"  # exact path, no suffix appended
    export_npz(params, path, config)
    assert path.exists()
    loaded, cfg = load_npz(path)
    assert cfg == config
    _assert_trees_equal(loaded, jax.tree.map(np.asarray, params))
    export_npz({"w": np.ones(2)}, tmp_path / "noconf.npz")
    assert load_npz(tmp_path / "noconf.npz")[1] is None
    with pytest.raises(ValueError, match="'/'"):
        export_npz({"a/b": np.ones(1)}, tmp_path / "bad.npz")
    with pytest.raises(TypeError):
        export_npz({"a": [np.ones(1)]}, tmp_path / "bad.npz")
    with pytest.raises(TypeError, match="dtype"):
        export_npz({"a": jnp.ones(2, jnp.bfloat16)}, tmp_path / "bad.npz")
