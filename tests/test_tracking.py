"""Tracking: IoU, motmetrics summaries, nearest neighbour, Kalman smoother, windows, bad input, CLI."""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdvae_jax.tracking import baselines, evaluate, io, synthetic, tracker, windows


def test_iou_hand_computed():
    a = np.array([[0.0, 0.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 2.0, 2.0], [5.0, 5.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    iou = evaluate.iou_xywh(a, b)
    np.testing.assert_allclose(iou, [[1 / 7, 0.0, 1.0]])
    d = evaluate.iou_distance(a, b, max_iou=0.5)
    assert np.isnan(d[0, 0]) and np.isnan(d[0, 1]) and d[0, 2] == 0.0
    assert np.isnan(evaluate.iou_xywh(a, [[np.nan, 0, 1, 1]])).all()
    # normalised x1x2 boxes (y2 = y1 - h) give the same IoU
    np.testing.assert_allclose(evaluate.iou_x1x2(io.xywh_to_x1x2(a), io.xywh_to_x1x2(b)), iou)


def _toy_gt(T=30):
    t = np.arange(T)[:, None]
    a = np.concatenate([0.2 + 0.01 * t, 0.50 + 0 * t, 0.23 + 0.01 * t, 0.40 + 0 * t], 1)
    b = np.concatenate([0.5 - 0.01 * t, 0.53 + 0 * t, 0.53 - 0.01 * t, 0.43 + 0 * t], 1)
    return np.stack([a, b], 1)                                    # (T, 2, 4): the two cross at t = 15


def test_perfect_tracker_summary():
    gt = _toy_gt()
    res = evaluate.evaluate_windows([gt, gt[:, ::-1]], [gt, gt])
    overall = res["OVERALL"]
    assert overall["mota"] == 1.0 and overall["ids"] == 0 and overall["idf1"] == 1.0
    assert overall["fp"] == 0 and overall["fn"] == 0 and overall["mt"] == 4
    assert abs(overall["motp"]) < 1e-9 and abs(overall["motp_iou"] - 1.0) < 1e-9


def test_swap_counts_an_id_switch():
    gt = _toy_gt()
    hyp = gt.copy()
    hyp[20:] = hyp[20:, ::-1]
    assert evaluate.evaluate_windows([gt], [hyp])["OVERALL"]["ids"] == 2


def test_nearest_neighbour_crossing():
    gt = _toy_gt()
    rng = np.random.default_rng(0)
    obs = np.take_along_axis(gt, np.argsort(rng.random(gt.shape[:2]), 1)[..., None], 1)
    obs[0] = gt[0]
    tracks = baselines.nearest_neighbour_track(obs)
    np.testing.assert_allclose(tracks, gt)
    res = evaluate.evaluate_windows([gt], [tracks])["OVERALL"]
    assert res["ids"] == 0 and res["mota"] == 1.0
    # a missed detection keeps the last box
    obs[10, :] = np.nan
    np.testing.assert_allclose(baselines.nearest_neighbour_track(obs)[10], gt[9])


def _dense_posterior(lam, info, frame0, kp, t0_var):
    """Exact Gaussian posterior of the 1-D constant-velocity chain by a dense solve (2T x 2T)."""
    T = len(lam)
    A = np.array([[1.0, 1.0], [0.0, 1.0]])
    Qi = np.linalg.inv(np.diag([kp[0], kp[1]]))
    J = np.zeros((2 * T, 2 * T))
    h = np.zeros(2 * T)
    P0i = np.linalg.inv(np.diag([t0_var, kp[2]]))
    J[:2, :2] += P0i
    h[:2] += P0i @ np.array([frame0, 0.0])
    for t in range(1, T):
        M = np.zeros((2, 2 * T))
        M[:, 2 * t:2 * t + 2] = np.eye(2)
        M[:, 2 * t - 2:2 * t] = -A
        J += M.T @ Qi @ M
    for t in range(T):
        J[2 * t, 2 * t] += lam[t]
        h[2 * t] += info[t]
    cov = np.linalg.inv(J)
    return (cov @ h).reshape(T, 2), np.diag(cov).reshape(T, 2)


def test_kalman_smoother_matches_dense_solution():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        T = 12
        lam = rng.uniform(0.5, 3.0, (T, 4)) * (rng.random((T, 4)) > 0.3)        # some frames missing
        info = lam * (np.linspace(0, 1, T)[:, None] + 0.1 * rng.standard_normal((T, 4)))
        kp = baselines.KalmanParams(jnp.array([0.01, 0.02, 0.03, 0.04]), jnp.array([0.05, 0.02, 0.1, 0.01]),
                                    jnp.array([0.5, 0.4, 0.3, 0.2]))
        frame0 = jnp.array([0.1, 0.2, 0.3, 0.4])
        mu, P, _ = baselines.kalman_smoother(jnp.asarray(lam), jnp.asarray(info), frame0, kp, t0_var=0.05)
        for d in range(4):
            m_ref, v_ref = _dense_posterior(lam[:, d], info[:, d], float(frame0[d]),
                                            (float(kp.q_pos[d]), float(kp.q_vel[d]), float(kp.v0_var[d])), 0.05)
            np.testing.assert_allclose(np.asarray(mu[:, d]), m_ref, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(np.asarray(P[:, d, [0, 1], [0, 1]]), v_ref, rtol=1e-8, atol=1e-12)


def test_kalman_source_update_is_mot_compatible():
    T, K = 10, 3
    obs = jnp.tile(jnp.array([0.1, 0.5, 0.13, 0.4]), (T, K, 1)) + 0.001 * jnp.arange(K)[None, :, None]
    eta = jnp.full((T, K), 1.0 / 3).at[4].set(jnp.nan)                       # NaN row = missing
    upd = baselines.kalman_source_update(baselines.DEFAULT_KALMAN, baselines.KalmanConfig(), obs[:, 0], eta,
                                         jnp.full((T, K, 4), 1e4), obs, obs[0, 0])
    assert upd.mean.shape == (T, 4) and upd.var.shape == (T, 4)
    assert bool(jnp.all(jnp.isfinite(upd.mean))) and bool(jnp.all(upd.var > 0))


def test_exclusive_assignment_rows_and_equivariance():
    rng = np.random.default_rng(0)
    S, T, K = 3, 5, 3
    lb = jnp.asarray(rng.standard_normal((S, T, K)) * 3)
    mask = jnp.asarray(rng.random((T, K)) > 0.3)
    eta = tracker.exclusive_assignment(lb, mask)
    sums = np.asarray(eta.sum(0))
    np.testing.assert_allclose(sums[np.asarray(mask)], 1.0, rtol=1e-5)
    assert np.all(sums[~np.asarray(mask)] == 0) and bool(jnp.all(jnp.isfinite(eta)))
    # column sums (expected detections per source) never exceed 1: one detection per source
    assert float(eta.sum(-1).max()) <= 1.0 + 1e-5
    perm = np.array([2, 0, 1])
    eta_p = tracker.exclusive_assignment(lb[..., perm], mask[:, perm])
    np.testing.assert_allclose(np.asarray(eta_p), np.asarray(eta[..., perm]), rtol=1e-5, atol=1e-6)


def test_synthetic_generator_respects_rejection_rules():
    tr = synthetic.generate_trajectories(300, seed=3)
    assert tr.ndim == 3 and tr.shape[1:] == (60, 4) and len(tr) > 50
    x1, y1, x2, y2 = np.moveaxis(tr, -1, 0)
    assert (x1 >= -0.5).all() and (x2 >= 0).all() and (x1 <= 1).all() and (x2 <= 0.8).all()
    assert (y1 >= 0).all() and (y2 <= 1).all() and (x2 > x1).all() and (y2 < y1).all()


def test_tud_windows_shapes():
    ws = windows.tud_windows(60, subsets_per_window=2)
    assert len(ws) > 10
    for w in ws[:5]:
        assert w.obs.shape == (60, 3, 4) and w.gt.shape == (60, 3, 4) and len(w.frames) == 60
        assert np.isfinite(w.gt).all() and np.isfinite(w.obs[0]).all()
    missing = np.mean([np.isnan(w.obs[..., 0]).mean() for w in ws])
    assert 0.1 < missing < 0.4
    assert windows.tud_windows(300) == []
    rows = windows.load_tud_gt("TUD-Campus")
    assert len(rows) == 359 and rows.frame.max() == 71


def test_window_detections_are_a_shuffle_of_ground_truth():
    gt = windows.load_tud_gt("TUD-Stadtmitte")
    clean = windows.DetectionNoise(box_noise=0.0, miss_rate=0.0, burst_prob=0.0, shuffle=True)
    ws = windows.windows_from_gt(gt, 60, noise=clean, subsets_per_window=1)
    w = ws[0]
    assert not np.allclose(w.obs, w.gt)                  # order changed somewhere
    np.testing.assert_allclose(np.sort(w.obs, axis=1), np.sort(w.gt, axis=1))
    # the tracking floor is invariant to the slot order after frame 0
    rng = np.random.default_rng(0)
    shuffled = w.obs.copy()
    shuffled[1:] = np.take_along_axis(w.obs[1:], np.argsort(rng.random((59, 3)), 1)[..., None], 1)
    np.testing.assert_allclose(baselines.nearest_neighbour_track(shuffled), baselines.nearest_neighbour_track(w.obs))


def test_bad_input_errors(tmp_path):
    with pytest.raises(io.MOTFormatError, match="malformed"):
        io.parse_mot("1,1,10,20,30\n", "x.txt")
    with pytest.raises(io.MOTFormatError, match="non-numeric"):
        io.parse_mot("1,1,a,20,30,40\n", "x.txt")
    with pytest.raises(io.MOTFormatError, match="NaN"):
        io.parse_mot("1,1,10,nan,30,40\n", "x.txt")
    with pytest.raises(io.MOTFormatError, match="width and height"):
        io.parse_mot("1,1,10,20,0,40\n", "x.txt")
    with pytest.raises(io.MOTFormatError, match="no rows"):
        io.parse_mot("\n", "x.txt")
    rows = io.parse_mot("1,-1,10,20,30,60,0.9\n1,-1,100,20,30,60,0.8\n2,-1,12,20,30,60,1\n")
    with pytest.raises(io.MOTFormatError, match="first frame"):
        io.detections_to_array(rows, 3)
    with pytest.raises(io.MOTFormatError, match="frame range mismatch"):
        io.detections_to_array(rows, 2, frames=(2, 5))
    obs, frames = io.detections_to_array(rows, 2, frames=(1, 4))
    assert obs.shape == (4, 2, 4) and np.isnan(obs[2:]).all() and frames.tolist() == [1, 2, 3, 4]
    with pytest.raises(FileNotFoundError):
        io.read_mot(tmp_path / "absent.txt")
    with pytest.raises(ValueError, match="frame 0"):
        tracker.track(None, None, np.full((5, 2, 4), np.nan), options=tracker.TrackOptions.vkf())


def test_reference_hyp_ids():
    eta = np.array([[[0.1, 0.9], [0.8, 0.2], [np.nan, np.nan]]])
    assert evaluate.reference_hyp_ids(eta).tolist() == [[1, 0, 0]]


def test_cli_round_trip(tmp_path):
    from vdvae_jax import models
    from vdvae_jax.models.io import save_model
    from vdvae_jax.tracking import cli

    (w,) = windows.synthetic_windows(30, 1, num_targets=2, seed=0)
    size = (1920.0, 1080.0)
    det_rows = []
    for t, f in enumerate(w.frames):
        for k in range(w.obs.shape[1]):
            if np.isfinite(w.obs[t, k]).all():
                det_rows.append((f, -1, *io.x1x2_to_xywh(w.obs[t, k], size), 1.0))
    det_rows = np.array(det_rows)
    io.write_mot(tmp_path / "det.txt", det_rows[:, 0], det_rows[:, 1], det_rows[:, 2:6], det_rows[:, 6])
    gt = io.tracks_to_rows(w.gt, w.frames, size, ids=w.gt_ids)
    io.write_mot(tmp_path / "gt.txt", gt.frame, gt.ids, gt.boxes)
    model = models.build("srnn_mot")
    save_model(tmp_path / "prior.npz", model, model.init(jax.random.key(0), jnp.zeros((30, 4))))

    ap = argparse.ArgumentParser()
    cli.add_subcommands(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["track", "--det", str(tmp_path / "det.txt"), "--num-targets", "2", "--out",
                          str(tmp_path / "tracks.txt"), "--prior", str(tmp_path / "prior.npz"),
                          "--iterations", "1"])
    assert args.func(args) == 0
    out = io.read_mot(tmp_path / "tracks.txt")
    assert len(out) == 30 * 2 and sorted(set(out.ids.tolist())) == [1, 2]
    args = ap.parse_args(["evaluate-mot", "--gt", str(tmp_path / "gt.txt"), "--tracks",
                          str(tmp_path / "tracks.txt"), "--out", str(tmp_path / "m.json")])
    assert args.func(args) == 0
    m = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert set(m) >= {"mota", "motp", "motp_iou", "idf1", "ids", "fp", "fn", "mt", "ml"}
    assert np.isfinite(m["mota"])
    # tracks outside the ground-truth frame range are rejected
    io.write_mot(tmp_path / "late.txt", out.frame + 100, out.ids, out.boxes)
    args = ap.parse_args(["evaluate-mot", "--gt", str(tmp_path / "gt.txt"), "--tracks",
                          str(tmp_path / "late.txt"), "--out", str(tmp_path / "m2.json")])
    with pytest.raises(io.MOTFormatError, match="frame range mismatch"):
        args.func(args)
