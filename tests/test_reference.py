"""The conformance command against the shared PyTorch reference vectors, the published-config
mapping and the §7.5 golden values. Skips cleanly when the shared data are absent."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vdvae_jax import reference
from vdvae_jax.models.published import (PublishedModelError, load_published_model,
                                        model_from_reference_config)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VDVAE_SHARED", ROOT.parent / "shared"))
REF = SHARED / "reference"
SE = REF / "dvae_se"
CKPT = REF / "checkpoints" / "dvae_se"
needs_shared = pytest.mark.skipif(not SE.is_dir(), reason="shared reference data not available")
SE_TAGS = [f"{d}_{m}" for d in ("vb", "wsj") for m in ("vae", "dkf", "rvae", "srnn")]
EXPECTED_MODES = {"vae": {"train"}, "dkf": {"train"}, "rvae": {"train"}, "srnn": {"tf", "gen", "plain"}}


@needs_shared
def test_all_dvae_se_models_conform(capsys):
    results = reference.check_directory(REF, only=SE_TAGS, echo=print)
    with capsys.disabled():
        print("\n" + "\n".join(reference.format_line(r) for r in results))
    assert {(r.model, r.mode) for r in results} == {
        (t, m) for t in SE_TAGS for m in EXPECTED_MODES[t.split("_")[1]]}
    assert all(r.passed for r in results), [reference.format_line(r) for r in results if not r.passed]
    # every recorded array was compared (VAE: 9 outputs + 2 x 10 gradient entries ...)
    assert all(r.n_arrays >= 7 for r in results)


def _link_model(src: Path, dst: Path, vectors: dict | None = None):
    dst.mkdir(parents=True)
    for name in ("weights.npz", "model.json"):
        os.symlink(src / name, dst / name)
    if vectors is None:
        os.symlink(src / "vectors.npz", dst / "vectors.npz")
    else:
        np.savez(dst / "vectors.npz", **vectors)


def _vectors(tag):
    with np.load(SE / tag / "vectors.npz") as v:
        return {k: v[k] for k in v.files}


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    """A second export: tags that name other models, some modes and arrays dropped."""
    if not SE.is_dir():
        pytest.skip("shared reference data not available")
    root = tmp_path_factory.mktemp("ref2")
    _link_model(SE / "vb_vae", root / "dvae_se" / "some_srnn")           # a VAE under a misleading tag
    rvae = {k: v for k, v in _vectors("wsj_rvae").items() if "/grad/" not in k}
    _link_model(SE / "wsj_rvae", root / "dvae_se" / "model_b", rvae)     # no full gradients
    srnn = {k: v for k, v in _vectors("vb_srnn").items() if not k.startswith(("tf/", "gen/"))}
    _link_model(SE / "vb_srnn", root / "dvae_se" / "zz_plain_only", srnn)  # only the plain mode
    # Other shapes: the frame-wise VAE's per-frame arrays cut to an odd length T=7 and batch 1, and
    # the RVAE's per-sequence arrays cut to batch 1 (losses and gradients, which sum over the cut
    # axes, dropped): the checker must read every shape from the files.
    vae = {k: v[:7, 1:] for k, v in _vectors("wsj_vae").items() if k.split("/")[-1] in _PER_FRAME}
    _link_model(SE / "wsj_vae", root / "dvae_se" / "odd_t7_b1", vae)
    rvae_b1 = {k: v[:, :1] for k, v in _vectors("vb_rvae").items() if np.ndim(v) == 3}
    _link_model(SE / "vb_rvae", root / "dvae_se" / "rvae_b1", rvae_b1)
    return root


_PER_FRAME = {"x", "eps_z", "y_logvar", "z", "z_mean", "z_logvar", "z_mean_p", "z_logvar_p"}


@needs_shared
def test_other_directory_layout_passes(other_dir):
    results = reference.check_directory(other_dir)
    assert [(r.model, r.mode) for r in results] == [
        ("model_b", "train"), ("odd_t7_b1", "train"), ("rvae_b1", "train"), ("some_srnn", "train"),
        ("zz_plain_only", "plain")]
    assert all(r.passed for r in results), [reference.format_line(r) for r in results]
    assert reference.main(["check", str(other_dir)]) == 0


@needs_shared
def test_corrupted_vector_fails_with_exit_code_1(tmp_path):
    vec = _vectors("vb_vae")
    vec["train/y_logvar"] = vec["train/y_logvar"].copy()
    vec["train/y_logvar"][3, 1, 100] += 0.05  # 3e-3 of the array's scale
    _link_model(SE / "vb_vae", tmp_path / "dvae_se" / "bad", vec)
    (res,) = reference.check_directory(tmp_path)
    assert not res.passed and res.worst_key == "y_logvar" and any("y_logvar" in f for f in res.failures)
    # looser tolerance accepts it; the real command line (a fresh process) rejects it
    assert reference.check_directory(tmp_path, rtol=1e-2)[0].passed
    proc = subprocess.run([sys.executable, "-m", "vdvae_jax.reference", "check", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL  bad" in proc.stdout


@needs_shared
def test_missing_or_wrong_gradient_fails(tmp_path):
    vec = _vectors("vb_dkf")
    key = next(k for k in vec if k.startswith("train/grad/") and k.endswith("bias_hh_l0"))
    vec[key] = -vec[key]
    vec["train/rnn_out.not_a_thing"] = np.zeros(3, np.float32)
    _link_model(SE / "vb_dkf", tmp_path / "dvae_se" / "dkf", vec)
    (res,) = reference.check_directory(tmp_path)
    assert not res.passed
    assert any(key.split("/", 1)[1] in f for f in res.failures)
    assert any("not_a_thing" in f for f in res.failures)


def test_optional_checkers_skip_unless_strict(tmp_path, monkeypatch):
    (tmp_path / "mixdvae" / "foo").mkdir(parents=True)
    (tmp_path / "se_vem").mkdir()
    monkeypatch.setattr(reference, "_optional", lambda module, func: (None, f"{module} missing"))
    results = reference.check_directory(tmp_path)
    assert [r.model for r in results] == ["mixdvae/foo", "se_vem"]
    assert all(reference.is_skip(r) and r.passed for r in results)
    assert reference.format_line(results[0]).startswith("SKIP")
    assert reference.main(["check", str(tmp_path)]) == 0
    assert reference.main(["check", str(tmp_path), "--strict"]) == 1
    calls = []
    monkeypatch.setattr(reference, "_optional",
                        lambda module, func: (lambda p: calls.append(Path(p).name) or [], ""))
    reference.check_directory(tmp_path)
    assert calls == ["foo", "se_vem"]


def test_empty_directory_fails(tmp_path):
    assert reference.main(["check", str(tmp_path)]) == 1
    assert reference.main(["check", str(tmp_path / "nope")]) == 2


# ----------------------------------------------------------------------------------------------
# Published configs and checkpoints.


@needs_shared
@pytest.mark.parametrize("tag", SE_TAGS)
def test_model_json_config_maps_to_zoo_model(tag):
    meta = json.loads((SE / tag / "model.json").read_text())
    model = model_from_reference_config(meta["config"])
    assert model.name == {"vae": "vae", "dkf": "dkf", "rvae": "rvae", "srnn": "srnn_ss"}[tag.split("_")[1]]
    assert model.config.kl_mode == "reference" and model.config.x_dim == 513 and model.config.z_dim == 16


def test_config_mapping_of_other_models_and_errors():
    net = {"name": "DKF", "x_dim": "7", "z_dim": "3", "activation": "tanh", "dense_x_gx": "8",
           "dim_RNN_gx": "6", "num_RNN_gx": "1", "bidir_gx": "True", "dense_ztm1_g": "",
           "dense_g_z": "5,4", "dense_z_x": "4", "dropout_p": "0", "tag": "x"}
    m = model_from_reference_config({"Network": net})
    assert m.config.bidir_gx and m.config.dense_ztm1_g == () and m.config.dense_g_z == (5, 4)
    vrnn = model_from_reference_config({"Network": {"name": "VRNN", "x_dim": "7", "z_dim": "3",
                                                    "dense_x": "8", "dense_z": "4", "dim_RNN": "6"}})
    assert vrnn.name == "vrnn" and vrnn.config.dim_rnn == 6
    causal = model_from_reference_config({"Network": {"name": "RVAE", "x_dim": "7", "z_dim": "3",
                                                      "bidir_g_x": "False", "bidir_h": "False"}})
    assert causal.name == "rvae_causal"
    plain = model_from_reference_config({"Network": {"name": "SRNN", "x_dim": "7", "z_dim": "3"}},
                                        scheduled_sampling=False)
    assert plain.name == "srnn"
    for bad in ({**net, "num_RNN_gx": "2"}, {**net, "dense_foo": "3"}, {**net, "name": "KVAE"}):
        with pytest.raises(PublishedModelError):
            model_from_reference_config({"Network": bad})
    with pytest.raises(PublishedModelError):
        model_from_reference_config({"Network": {"name": "RVAE", "x_dim": "7", "z_dim": "3",
                                                 "bidir_g_x": "True", "bidir_h": "False"}})


@needs_shared
def test_load_published_models_and_shape_mismatch(tmp_path):
    model, params = load_published_model(CKPT / "vb_dkf")
    assert model.name == "dkf" and params["prior_logvar"]["1"]["kernel"].shape == (16, 16)
    assert set(params["rnn_gx"]) == {"backward"}
    # DKF config next to VAE weights, and a DKF config with another width
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(CKPT / "vb_dkf" / "config.ini", bad / "config.ini")
    os.symlink(next((CKPT / "vb_vae").glob("*.pt")), bad / "VAE.pt")
    with pytest.raises(PublishedModelError, match="missing"):
        load_published_model(bad)
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "config.ini").write_text((CKPT / "vb_dkf" / "config.ini").read_text()
                                     .replace("dense_g_z = 32", "dense_g_z = 64"))
    os.symlink(next((CKPT / "vb_dkf").glob("*.pt")), wide / "DKF.pt")
    with pytest.raises(PublishedModelError, match="shape of mlp_g_z/linear0/kernel"):
        load_published_model(wide)


# Spec §7.5 (posterior means fed back, T = 20, B = 1; SRNN in generation mode).
GOLDEN = {
    "vb_dkf": (24577.637, (3.8018, 3.8491, 3.3375), 0.2521, 1.4465, -3470.214, 1231.184),
    "wsj_dkf": (8921.897, (-0.1448, 0.6998, 0.2143), 0.2050, 20.6919, -3961.633, 1192.165),
    "vb_srnn": (12283.075, (3.8289, 3.7510, 3.2576), -1.2756, -108.3438, -3170.582, 1149.665),
}


@needs_shared
@pytest.mark.parametrize("tag", sorted(GOLDEN))
def test_golden_values(tag):
    model, params = load_published_model(CKPT / tag)
    g = reference.golden_values(model, params)
    sum_y, y000, y_last, sum_m, sum_lv, kl = GOLDEN[tag]
    assert g["sum_y"] == pytest.approx(sum_y, rel=1e-4)
    np.testing.assert_allclose(g["y000"], y000, atol=2e-4)
    assert g["y_last"] == pytest.approx(y_last, abs=2e-4)
    assert g["sum_z_mean"] == pytest.approx(sum_m, rel=1e-4, abs=2e-4)
    assert g["sum_z_logvar"] == pytest.approx(sum_lv, rel=1e-4)
    assert g["kl"] == pytest.approx(kl, rel=1e-4)
