"""Tests for vdvae_jax.metrics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdvae_jax import metrics as M

SR = 16000


def _textbook_si_sdr(ref, est, eps=np.finfo(np.float64).eps):
    """DVAE compute_sisdr in float64 numpy, one pair at a time."""
    ref = np.asarray(ref, np.float64)
    est = np.asarray(est, np.float64)
    a = (eps + ref @ est) / (ref @ ref + eps)
    e_t = a * ref
    e_r = est - e_t
    return 10 * np.log10((eps + e_t @ e_t) / (eps + e_r @ e_r))


def _noise_at_snr(ref, snr_db, rng):
    noise = rng.standard_normal(ref.shape)
    noise -= noise.mean()
    # Make the noise orthogonal to ref so that SI-SDR == SNR exactly (up to eps).
    noise -= (noise @ ref) / (ref @ ref) * ref
    noise *= np.sqrt((ref @ ref) / (noise @ noise)) * 10 ** (-snr_db / 20)
    return noise


@pytest.fixture(scope="module")
def speech_like():
    """3 s harmonic signal with a gliding f0 and syllable-rate amplitude modulation."""
    t = np.arange(3 * SR) / SR
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 15))
    x *= (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    return 0.5 * x / np.abs(x).max()


# ----------------------------------------------------------------------------- SI-SDR
def test_si_sdr_matches_textbook_and_fast_bss_eval():
    from fast_bss_eval.numpy import si_sdr as fbe_si_sdr

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 2000))
    est = 0.7 * ref + 0.3 * rng.standard_normal((4, 2000))
    expected = np.array([_textbook_si_sdr(r, e) for r, e in zip(ref, est)])
    with jax.enable_x64(True):
        got64 = np.asarray(M.si_sdr(jnp.asarray(ref), jnp.asarray(est)))
    np.testing.assert_allclose(got64, expected, rtol=1e-10, atol=1e-10)
    got32 = np.asarray(M.si_sdr(ref.astype(np.float32), est.astype(np.float32)))
    np.testing.assert_allclose(got32, expected, atol=1e-3)
    fbe = fbe_si_sdr(ref[:, None, :], est[:, None, :])[:, 0]
    np.testing.assert_allclose(expected, fbe, atol=1e-6)


def test_si_sdr_jit_batched_and_grad():
    rng = np.random.default_rng(1)
    ref = jnp.asarray(rng.standard_normal((2, 3, 500)), jnp.float32)
    est = ref + 0.1 * jnp.asarray(rng.standard_normal((2, 3, 500)), jnp.float32)
    out = M.si_sdr(ref, est)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(jax.jit(M.si_sdr)(ref, est), out, rtol=1e-6)
    # broadcasting of leading dims: one reference against a batch of estimates
    one_ref = M.si_sdr(ref[0, 0], est[:, 0])
    assert one_ref.shape == (2,)
    np.testing.assert_allclose(one_ref[0], out[0, 0], rtol=1e-5)
    loss = M.neg_si_sdr_loss(ref, est)
    np.testing.assert_allclose(loss, -jnp.mean(out), rtol=1e-6)
    grad = jax.grad(lambda e: M.neg_si_sdr_loss(ref, e))(est)
    assert grad.shape == est.shape and bool(jnp.all(jnp.isfinite(grad)))


def test_si_sdr_known_values():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal(8000)
    with jax.enable_x64(True):
        assert float(M.si_sdr(ref, 3.0 * ref)) > 150.0  # scaled copy: limited only by eps
        for snr in (0.0, 10.0, 25.0):
            est = ref + _noise_at_snr(ref, snr, rng)
            assert float(M.si_sdr(ref, est)) == pytest.approx(snr, abs=1e-6)
    assert float(M.si_sdr(ref.astype(np.float32), 2 * ref.astype(np.float32))) > 40.0
    # silent reference stays finite thanks to eps (DVAE behaviour)
    assert np.isfinite(float(M.si_sdr(np.zeros(100, np.float32), np.ones(100, np.float32))))


# ----------------------------------------------------------------------------- RMSE
def test_rmse_scaled():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((3, 1000)).astype(np.float32)
    est = ref + 0.2 * rng.standard_normal((3, 1000)).astype(np.float32)
    base = np.asarray(M.rmse_scaled(ref, est))
    assert base.shape == (3,)
    for scale in (0.01, -5.0, 100.0):
        np.testing.assert_allclose(M.rmse_scaled(ref, scale * est), base, rtol=1e-4)
    np.testing.assert_allclose(jax.jit(M.rmse_scaled)(ref, est), base, rtol=1e-6)
    r, e = ref[0].astype(np.float64), est[0].astype(np.float64)
    alpha = (e @ r) / (e @ e)
    np.testing.assert_allclose(base[0], np.sqrt(np.mean((alpha * e - r) ** 2)), rtol=1e-4)
    assert float(M.rmse_scaled(ref[0], 7 * ref[0])) < 1e-6


def test_align():
    ref, est = M.align(np.arange(10.0), np.arange(7.0))
    assert ref.shape == est.shape == (7,)
    ref, est = M.align(np.zeros((2, 5)), np.zeros((2, 9)))
    assert ref.shape == est.shape == (2, 5)


# ----------------------------------------------------------------------------- PESQ mapping
def test_p862_1_inverse_round_trip():
    raw = np.linspace(-0.4, 4.5, 50)
    lqo = M.p862_1_mapping(raw)
    np.testing.assert_allclose(lqo, 0.999 + 4 / (1 + np.exp(-1.4945 * raw + 4.6607)))
    np.testing.assert_allclose(M.p862_1_inverse(lqo), raw, atol=1e-9)
    # vBaiCai/python-pesq#8 example: pesq 'nb' 1.607 <-> pypesq 1.969
    assert M.p862_1_inverse(1.607) == pytest.approx(1.9686, abs=1e-3)
    assert math.isnan(M.p862_1_inverse(0.5)) and math.isnan(M.p862_1_inverse(5.0))


# ----------------------------------------------------------------------------- host metrics
def test_pesq_stoi_on_speech_like(speech_like):
    x = speech_like
    rng = np.random.default_rng(4)
    y = x + _noise_at_snr(x, 20.0, rng)
    clean = M.evaluate_pair(x, x, SR)
    noisy = M.evaluate_pair(x, y, SR)
    assert clean.failures == [] and noisy.failures == []
    c, n = clean.values, noisy.values
    assert set(c) == set(M.DEFAULT_METRICS)
    assert c["pesq_wb"] > 4.5 and c["pesq_nb"] > 4.4 and c["pesq_nb_raw"] > 4.4
    assert c["stoi"] > 0.99 and c["estoi"] > 0.99
    for k in ("pesq_wb", "pesq_nb", "pesq_nb_raw", "stoi", "estoi", "si_sdr"):
        assert n[k] < c[k], k
    assert n["si_sdr"] == pytest.approx(20.0, abs=0.05)
    # wide-band MOS-LQO is the harshest, raw NB MOS the most lenient here
    assert n["pesq_wb"] < n["pesq_nb"] < n["pesq_nb_raw"]
    # direct wrappers agree with evaluate_pair
    assert M.pesq_wb(x, y, SR) == pytest.approx(n["pesq_wb"])
    assert M.pesq_nb_raw(x, y, SR) == pytest.approx(M.p862_1_inverse(M.pesq_nb(x, y, SR)))
    assert M.stoi(x, y, SR) == pytest.approx(n["stoi"])
    assert M.estoi(x, y, SR) == pytest.approx(n["estoi"])
    assert n["rmse"] > c["rmse"]


def test_evaluate_pair_failures_are_counted(speech_like):
    x = speech_like[: SR]  # 1 s keeps it fast
    res = M.evaluate_pair(np.zeros_like(x), x, SR)
    for k in ("pesq_wb", "pesq_nb", "pesq_nb_raw", "stoi", "estoi"):
        assert math.isnan(res.values[k]), k
    assert any(f.startswith("pesq_wb:") for f in res.failures)
    assert len(res.failures) == 5
    bad = x.copy()
    bad[10] = np.nan
    res = M.evaluate_pair(x, bad, SR, metrics=("si_sdr", "stoi"))
    assert all(math.isnan(v) for v in res.values.values()) and len(res.failures) == 2
    # lengths differing by a few samples are aligned
    res = M.evaluate_pair(x, x[:-7], SR, metrics=("si_sdr",))
    assert res.failures == [] and res.values["si_sdr"] > 100
    with pytest.raises(ValueError, match="unknown metric"):
        M.evaluate_pair(x, x, SR, metrics=("pesq",))
    with pytest.raises(ValueError, match="length mismatch"):
        M.stoi(x, x[:-1], SR)


# ----------------------------------------------------------------------------- aggregation
def test_aggregate_known_numbers():
    vals = [1.0, 2.0, 3.0, 4.0, float("nan"), 5.0]
    agg = M.aggregate(vals)
    assert agg["n"] == 6 and agg["n_failed"] == 1
    assert agg["mean"] == pytest.approx(3.0)
    assert agg["median"] == pytest.approx(3.0)
    # quartiles of 1..5 (linear): 2 and 4 -> IQR 2
    assert agg["ci"] == pytest.approx(1.57 * 2 / np.sqrt(5))
    empty = M.aggregate([float("nan")])
    assert empty["n_failed"] == 1 and math.isnan(empty["median"])

    table = M.aggregate_table([{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"a": float("nan"), "b": 4.0}])
    assert list(table) == ["a", "b"]
    assert table["a"]["n"] == 3 and table["a"]["n_failed"] == 1 and table["a"]["mean"] == 2.0
    assert table["b"]["n_failed"] == 1 and table["b"]["median"] == 3.0


def test_rtf():
    assert M.rtf(2.0, 4.0) == 0.5
    with pytest.raises(ValueError):
        M.rtf(1.0, 0.0)
