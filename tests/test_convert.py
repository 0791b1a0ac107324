"""Tests for the torch-free checkpoint reader and the state-dict <-> parameter-tree mapping."""
import collections
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vdvae_jax import convert
from vdvae_jax.convert import CheckpointFormatError

SHARED = Path(os.environ.get("VDVAE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
REF = SHARED / "reference"
CKPT = REF / "checkpoints"
needs_shared = pytest.mark.skipif(not CKPT.is_dir(), reason="shared reference data not available")

SE_TAGS = [f"{d}_{m}" for d in ("vb", "wsj") for m in ("vae", "dkf", "rvae", "srnn")]
MIX_TAGS = ["mot", "scass_wsj", "scass_cbf"]


def _published(tag):
    if tag in MIX_TAGS:
        return CKPT / "mixdvae" / f"model_{tag}.pt", REF / "mixdvae" / tag / "weights.npz"
    (pt,) = sorted((CKPT / "dvae_se" / tag).glob("*.pt"))
    return pt, REF / "dvae_se" / tag / "weights.npz"


def _assert_bitwise(a, b, key):
    assert a.dtype == b.dtype and a.shape == b.shape, key
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), key


@needs_shared
@pytest.mark.parametrize("tag", SE_TAGS + MIX_TAGS)
def test_published_checkpoints_match_reference(tag):
    pt, npz = _published(tag)
    sd = convert.read_torch_checkpoint(pt)
    ref = np.load(npz)
    assert list(sd) == list(ref.files)
    for key in ref.files:
        _assert_bitwise(sd[key], ref[key], key)
    params = convert.state_dict_to_params(sd)
    back = convert.params_to_state_dict(params)
    assert list(back) == list(sd)
    for key, value in sd.items():
        if "bias_" in key:  # the ih/hh split is not recoverable, the sum is
            continue
        _assert_bitwise(back[key], value, key)
    for key in (k for k in sd if "bias_ih" in k):
        hh = key.replace("bias_ih", "bias_hh")
        _assert_bitwise(back[key] + back[hh], sd[key] + sd[hh], key)
        assert not back[hh].any()


@needs_shared
def test_rvae_flip_mapping_and_shapes():
    sd, config = convert.load_published(CKPT / "dvae_se" / "vb_rvae")
    assert config["Network"]["dim_RNN_g_x"] == "128" and config["Network"]["bidir_g_x"] == "True"
    p = convert.state_dict_to_params(sd, flipped={"rnn_g_x"})
    g = p["rnn_g_x"]
    assert g["backward"]["kernel_ih"].shape == (513, 512)
    np.testing.assert_array_equal(g["backward"]["kernel_ih"], sd["rnn_g_x.weight_ih_l0"].T)
    np.testing.assert_array_equal(g["forward"]["kernel_hh"], sd["rnn_g_x.weight_hh_l0_reverse"].T)
    np.testing.assert_array_equal(
        g["backward"]["bias"], sd["rnn_g_x.bias_ih_l0"] + sd["rnn_g_x.bias_hh_l0"])
    assert g["forward"]["kernel_hh"].shape == (128, 512) and g["forward"]["bias"].shape == (512,)
    np.testing.assert_array_equal(p["rnn_h"]["forward"]["kernel_ih"], sd["rnn_h.weight_ih_l0"].T)
    assert p["gen_logvar"]["kernel"].shape == (256, 513)
    back = convert.params_to_state_dict(p, flipped={"rnn_g_x"}, split_bias="hh")
    np.testing.assert_array_equal(back["rnn_g_x.weight_ih_l0"], sd["rnn_g_x.weight_ih_l0"])
    assert not back["rnn_g_x.bias_ih_l0"].any()


@needs_shared
def test_sequential_index_and_load_published_variants(tmp_path):
    sd, _ = convert.load_published(next((CKPT / "dvae_se" / "vb_dkf").glob("*.pt")))
    p = convert.state_dict_to_params(sd)
    assert p["prior_logvar"]["1"]["kernel"].shape == (16, 16)
    assert p["mlp_z_x"]["linear3"]["kernel"].shape == (128, 256)
    assert p["rnn_gx"]["forward"]["kernel_hh"].shape == (128, 512)
    with pytest.raises(CheckpointFormatError, match="expected one"):
        convert.load_published(CKPT / "mixdvae")
    sd_mot, cfg = convert.load_published(CKPT / "mixdvae" / "model_mot.pt")
    assert cfg == {} and sd_mot["rnn_h.weight_hh_l0"].shape == (32, 8)
    for obj in (sd, p):
        convert.export_npz(obj, tmp_path / "w.npz")
        with np.load(tmp_path / "w.npz") as z:
            np.testing.assert_array_equal(z["prior_logvar.1.weight"], sd["prior_logvar.1.weight"])
            assert set(z.files) == set(sd)


@needs_shared
def test_truncated_and_garbage_files(tmp_path):
    legacy, _ = _published("vb_rvae")
    zipped, _ = _published("scass_wsj")
    data = legacy.read_bytes()
    for n, cut in enumerate((100, len(data) // 2, len(data) - 10)):
        bad = tmp_path / f"legacy_{n}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointFormatError, match=str(bad)):
            convert.read_torch_checkpoint(bad)
    bad = tmp_path / "zip.pt"
    bad.write_bytes(zipped.read_bytes()[:-5000])
    with pytest.raises(CheckpointFormatError, match="zip.pt"):
        convert.read_torch_checkpoint(bad)


def test_not_a_checkpoint(tmp_path):
    cases = {
        "garbage.pt": np.random.default_rng(0).bytes(4096),
        "plain.pt": pickle.dumps({"a": 1}),
        "empty.pt": b"",
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    np.savez(tmp_path / "arrays.npz", a=np.ones(3))
    for name in [*cases, "arrays.npz", "missing.pt"]:
        with pytest.raises(CheckpointFormatError, match=name):
            convert.read_torch_checkpoint(tmp_path / name)


# --- synthetic checkpoints written with a stand-in "torch" module ---------------------------------

_DTYPES = {np.dtype(v): k for k, v in convert._STORAGE_DTYPES.items()}


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


@pytest.fixture
def fake_torch(monkeypatch):
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for name in convert._STORAGE_DTYPES:
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _pickler(f, torch):
    p = pickle.Pickler(f, protocol=2)
    p.persistent_id = lambda o: (
        ("storage", getattr(torch, _DTYPES[o.array.dtype]), o.key, "cpu", o.array.size)
        if isinstance(o, _Storage) else None)
    return p


def _save(path, obj, storages, torch, fmt, byteorder="little"):
    end = "<" if byteorder == "little" else ">"
    raw = {s.key: s.array.astype(s.array.dtype.newbyteorder(end)).tobytes() for s in storages}
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            with zf.open("any_name/data.pkl", "w") as f:
                _pickler(f, torch).dump(obj)
            zf.writestr("any_name/byteorder", byteorder)
            for key, blob in raw.items():
                zf.writestr(f"any_name/data/{key}", blob)
        return
    with open(path, "wb") as f:
        for head in (convert._LEGACY_MAGIC, convert._LEGACY_PROTOCOL,
                     {"protocol_version": 1001, "little_endian": byteorder == "little"}):
            pickle.dump(head, f, protocol=2)
        _pickler(f, torch).dump(obj)
        keys = sorted(raw)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            numel = next(s.array.size for s in storages if s.key == key)
            f.write(np.array([numel], end + "i8").tobytes() + raw[key])


@pytest.mark.parametrize("fmt,byteorder", [("legacy", "little"), ("zip", "little"), ("zip", "big")])
def test_synthetic_dtypes_views_and_wrappers(tmp_path, fake_torch, fmt, byteorder):
    rng = np.random.default_rng(1)
    flat = rng.standard_normal(40).astype(np.float32)
    stores = [_Storage("0", flat)]
    expected = {"lstm.w": flat[4:16].reshape(3, 4), "lstm.wt": flat[4:16].reshape(3, 4).T,
                "lstm.b": flat[30:35]}
    sd = {"lstm.w": _Tensor(stores[0], 4, (3, 4), (4, 1)),
          "lstm.wt": _Tensor(stores[0], 4, (4, 3), (1, 4)),
          "lstm.b": _Tensor(stores[0], 30, (5,), (1,))}
    for i, dt in enumerate((np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_)):
        a = (rng.standard_normal(6) * 50).astype(dt)
        stores.append(_Storage(str(i + 1), a))
        sd[f"x{i}"] = _Tensor(stores[-1], 0, (2, 3), (3, 1))
        expected[f"x{i}"] = a.reshape(2, 3)
    sd["empty"] = _Tensor(stores[0], 0, (0, 4), (4, 1))
    expected["empty"] = np.zeros((0, 4), np.float32)
    path = tmp_path / "c.pt"
    _save(path, {"net_state": collections.OrderedDict(sd), "epoch": 7}, stores, fake_torch, fmt,
          byteorder)
    got = convert.read_torch_checkpoint(path)
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].flags.c_contiguous and got[key].dtype.isnative
        _assert_bitwise(got[key], value, key)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


def test_no_foreign_code_runs_even_in_legacy_headers(tmp_path):
    path = tmp_path / "evil_header.pt"
    path.write_bytes(pickle.dumps(_Evil(str(tmp_path / "pwned")), protocol=2))
    with pytest.raises(CheckpointFormatError, match="not a torch checkpoint"):
        convert.read_torch_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_params_accept_jax_arrays():
    jax = pytest.importorskip("jax")
    sd = {"a.0.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
          "a.0.bias": np.ones(2, np.float32)}
    p = jax.tree.map(jax.numpy.asarray, convert.state_dict_to_params(sd))
    assert p["a"]["0"]["kernel"].shape == (3, 2)
    back = convert.params_to_state_dict(p)
    for key, value in sd.items():
        _assert_bitwise(back[key], value, key)


def test_unsupported_global_and_wrappers(tmp_path, fake_torch):
    path = tmp_path / "evil.pt"
    _save(path, {"a": collections.Counter()}, [], fake_torch, "zip")
    with pytest.raises(CheckpointFormatError, match="unsupported global collections.Counter"):
        convert.read_torch_checkpoint(path)
    sd = {"a.weight": np.ones((2, 3), np.float32)}
    assert convert.extract_state_dict({"model_state_dict": sd, "optimizer": {}}) == sd
    assert convert.extract_state_dict({"whatever": sd, "epoch": 3}) == sd
    with pytest.raises(CheckpointFormatError):
        convert.extract_state_dict({"epoch": 3})


def test_vanilla_rnn_mapping_and_errors():
    rng = np.random.default_rng(2)
    sd = {"rnn.weight_ih_l0": rng.standard_normal((8, 5)),
          "rnn.weight_hh_l0": rng.standard_normal((8, 8)),
          "rnn.bias_ih_l0": rng.standard_normal(8), "rnn.bias_hh_l0": rng.standard_normal(8),
          "rnn.weight_ih_l0_reverse": rng.standard_normal((8, 5)),
          "rnn.weight_hh_l0_reverse": rng.standard_normal((8, 8)), "scale": rng.standard_normal(3)}
    p = convert.state_dict_to_params(sd)
    assert p["rnn"]["forward"]["kernel_hh"].shape == (8, 8)
    assert "bias" not in p["rnn"]["backward"] and p["scale"].shape == (3,)
    back = convert.params_to_state_dict(p)
    assert list(back) == list(sd)
    np.testing.assert_array_equal(back["rnn.weight_hh_l0_reverse"], sd["rnn.weight_hh_l0_reverse"])
    gru = {"g.weight_ih_l0": np.zeros((24, 5)), "g.weight_hh_l0": np.zeros((24, 8))}
    with pytest.raises(ValueError, match="GRU"):
        convert.state_dict_to_params(gru)
    with pytest.raises(ValueError, match="single-layer"):
        convert.state_dict_to_params({"r.weight_ih_l1": np.zeros((4, 1))})
