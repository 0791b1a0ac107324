"""Every experiment script and benchmark runs end to end in smoke mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO


def run(args, tmp_path, timeout=420):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{args}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out.stdout


def test_train_then_eval_resynthesis_smoke(tmp_path):
    work = tmp_path / "run"
    run([str(REPO / "experiments/train_dvae.py"), "--model", "srnn", "--smoke", "--workdir", str(work)],
        tmp_path)
    assert (work / "model.npz").is_file() and (work / "training.png").is_file()
    assert len((work / "metrics.jsonl").read_text().splitlines()) == 2
    out = run([str(REPO / "experiments/eval_resynthesis.py"), "--workdir", str(work), "--smoke"], tmp_path)
    assert "si_sdr" in out
    res = json.loads((work / "resynthesis/metrics.json").read_text())
    assert res["n_utterances"] == 2 and (work / "resynthesis/spectrograms.png").is_file()


def test_quickstart_smoke(tmp_path):
    out = run([str(REPO / "experiments/quickstart.py"), "--smoke", "--workdir", str(tmp_path / "q")],
              tmp_path, timeout=600)
    assert "resynthesis of held-out speakers" in out
    res = json.loads((tmp_path / "q/results.json").read_text())
    assert set(res["results"]) == {"vae", "rvae", "srnn"}


def test_bench_train_step_smoke(tmp_path):
    out = run([str(REPO / "benchmarks/bench_train_step.py"), "--smoke", "--models", "vae", "srnn",
               "--out", str(tmp_path / "b.jsonl")], tmp_path)
    records = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert records[0]["bench"] == "matmul" and records[0]["flops_per_s"] > 0
    for rec in records[1:]:
        assert rec["compile_s"] > 0 and rec["step_s_min"] > 0 and rec["frames_per_s"] > 0
    assert out


def test_bench_vem_smoke(tmp_path):
    run([str(REPO / "benchmarks/bench_vem.py"), "--smoke", "--devices", "2", "--out", str(tmp_path / "v.jsonl")],
        tmp_path)
    records = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    batch = [r for r in records if r["bench"] == "se_vem_batch"]
    assert len(batch) == 1 and batch[0]["devices"] == 2 and batch[0]["steady_s"] > 0
    assert batch[0]["dot_flops"] > 0 and 0 < batch[0]["fraction_of_matmul"]
    rec = records[-1]
    assert rec["bench"] == "se_vem" and rec["steady_s"] > 0 and rec["rtf"] > 0
    assert np.isfinite(rec["si_sdr_out"])


@pytest.mark.parametrize("devices", [1, 2])
def test_bench_sources_smoke(tmp_path, devices):
    parts = ["--parts", "mot", "scass", "--devices", "2"] if devices == 2 else []
    run([str(REPO / "benchmarks/bench_sources.py"), "--smoke", "--modes", "vmap", *parts,
         "--out", str(tmp_path / "s.jsonl")], tmp_path)
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    kinds = {"environment", "mot_whole_run", "scass_iter"} | ({"sources"} if devices == 1 else set())
    assert {r["bench"] for r in records} == kinds
    assert records[0]["n_devices"] == devices
    for r in records[1:]:
        assert r["devices" if "devices" in r else "S"] == (devices if "devices" in r else 2)
        for name in ("step_s", "whole_run_wall_s", "init_wall_s", "iters_wall_s"):
            if name in r:
                assert np.isfinite(r[name]) and r[name] > 0, (name, r)
        if r["bench"] == "scass_iter":   # with devices: a difference of two timings, finite
            assert np.isfinite(r["per_iter_wall_s"])


def test_bench_scan_layout_smoke(tmp_path):
    """The layout probe runs, its three layouts agree numerically (checked inside), and it reports timings."""
    run([str(REPO / "benchmarks/bench_scan_layout.py"), "--smoke", "--out", str(tmp_path / "l.jsonl")], tmp_path)
    records = [json.loads(line) for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert [r["layout"] for r in records[1:]] == ["vmap", "time_major", "time_major+copies"]
    assert all(r["wall_s"] > 0 and r["gflops"] > 0 for r in records[1:])


def test_mixdvae_mot_smoke(tmp_path):
    run([str(REPO / "experiments/mixdvae_mot.py"), "--smoke", "--out", str(tmp_path / "mot")], tmp_path)
    assert (tmp_path / "mot" / "results.json").is_file()


def test_bench_lstm_grad_smoke(tmp_path):
    """The LSTM-gradient benchmark runs; its two implementations agree (checked inside) and are timed."""
    run([str(REPO / "benchmarks/bench_lstm_grad.py"), "--smoke", "--out", str(tmp_path / "g.jsonl")], tmp_path)
    records = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [(r["setting"], r["implementation"]) for r in records[1:]] == [
        ("shared", "lstm_scan"), ("shared", "autodiff"), ("per_sequence", "lstm_scan"), ("per_sequence", "autodiff")]
    assert all(r["step_s"] > 0 and r["max_grad_diff"] < 1e-3 for r in records[1:])


def test_bench_rng_cpu_kernels_and_scass_profile_smoke(tmp_path):
    """The probes run; bench_rng and bench_cpu_kernels check inside that their two variants agree."""
    run([str(REPO / "benchmarks/bench_rng.py"), "--shape", "300", "300", "--repeat", "1",
         "--out", str(tmp_path / "r.jsonl")], tmp_path)
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["law"] for r in records[1:]] == ["uniform", "uniform", "normal", "normal"]
    assert all(r["step_wall_s"] > 0 for r in records[1:])
    run([str(REPO / "benchmarks/bench_cpu_kernels.py"), "--repeat", "1", "--out", str(tmp_path / "k.jsonl")], tmp_path)
    records = [json.loads(line) for line in (tmp_path / "k.jsonl").read_text().splitlines()]
    assert [r["bench"] for r in records[1:]] == ["lstm_cell_frame", "lstm_backward_product", "output_columns"]
    assert all(r["plain_ms"] > 0 and r["as_in_library_ms"] > 0 for r in records[1:])
    run([str(REPO / "benchmarks/profile_scass.py"), "--smoke", "--top", "5", "--out", str(tmp_path / "p.jsonl")],
        tmp_path)
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert records[1]["bench"] == "scass_profile" and len(records) == 7
    assert all(r["ms_per_iteration"] >= 0 and r["calls_per_iteration"] > 0 for r in records[2:])
