"""The quality study: the long profile and plain recipe as specified, the head-start control,
the stored row files (format, reuse, staleness, the judge set) and the summary table's verdicts.

Trainings here are 2-4 steps on a synthetic folder of small images (seconds); the real study runs
for hours through benchmarks/study.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

import imgops  # noqa: E402
import quality  # noqa: E402
import study  # noqa: E402
import zoo  # noqa: E402


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # quality.main(--threads) sets them for the whole process


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(3)
    for sub, n in (("train", 3), ("val", 1), ("judge", 1)):
        (tmp_path / sub).mkdir()
        for i in range(n):
            imgops.imwrite_rgb(tmp_path / sub / f"img_{i}.png", (rng.random((40, 48, 3)) * 255).astype(np.uint8))
    return tmp_path


def _argv(root: Path, model: str, *extra: str) -> list[str]:
    return ["--iters", "2", "--tasks", "x4", "--models", model, "--patch", "8", "--batch", "2", "--evals", "1",
            "--train", str(root / "train"), "--val", str(root / "val"), "--no-default-val", "--device", "cpu",
            "--threads", "1", "--peer-cache", str(root / "peer_rows"), "--hyresr-rows", str(root / "hyresr_rows"),
            "--cache", str(root / "lr"), "--resume-every", "0", *extra]


def test_long_profile_and_plain_recipe_are_the_issue_settings():
    long = quality.PROFILES["long"]
    assert (long["iters"], long["patch"], long["batch"], long["lr"]) == ({"x4": 10000}, 32, 8, 5e-4)
    eval_at = sorted({max(1, round(10000 * k / long["evals"])) for k in range(1, long["evals"] + 1)})
    assert eval_at == list(range(1000, 10001, 1000))  # Set5/Set14 every 1,000 steps
    with pytest.raises(SystemExit, match="no task x2"):
        quality.main(["--profile", "long", "--tasks", "x2"])

    w = [nn.Parameter(torch.zeros(2))]
    plain, standard = quality.make_optimizer("plain", w, 5e-4), quality.make_optimizer("standard", w, 5e-4)
    assert type(plain) is torch.optim.Adam and plain.defaults["weight_decay"] == 0
    assert plain.defaults["betas"] == (0.9, 0.99)
    assert type(standard) is torch.optim.AdamW and standard.defaults["weight_decay"] == 1e-4
    # plain: cosine from step 0 (full lr at once, 1% at the end); standard: 5% linear warm-up
    assert quality.warmup_steps("plain", 2000) == 0 and quality.warmup_steps("standard", 2000) == 100
    assert quality.lr_at(0, 2000, 5e-4, 0) == pytest.approx(5e-4)
    assert quality.lr_at(1999, 2000, 5e-4, 0) == pytest.approx(5e-6, rel=1e-3)
    assert quality.lr_at(0, 2000, 5e-4, 100) == pytest.approx(5e-6)


def test_plain_recipe_does_not_clip_gradients_and_the_standard_one_does(folders, monkeypatch, keep_threads):
    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(1) or real(*a, **k))
    quality.main(_argv(folders, "SAFMN", "--recipe", "plain", "--no-judge", "--out", str(folders / "a")))
    assert calls == []
    quality.main(_argv(folders, "SAFMN", "--no-judge", "--out", str(folders / "b")))
    assert len(calls) == 2
    keys = {json.loads(p.read_text())["settings"]["recipe"] for p in (folders / "peer_rows").glob("*.json")}
    assert keys == {"plain", "standard"}  # two recipes, two row files


def test_head_start_control_adds_the_bilinear_upscale_to_the_peer():
    class Zero(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 3, x.shape[2] * 4, x.shape[3] * 4)

    x = torch.rand(2, 3, 16, 24)
    up = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.equal(zoo.BilinearHeadStart(Zero(), 4)(x), up)
    torch.manual_seed(0)
    control = zoo.build("SAFMN+bilinear", 4).eval()
    torch.manual_seed(0)
    plain = zoo.build("SAFMN", 4).eval()
    with torch.no_grad():
        assert torch.allclose(control(x), plain(x) + up, atol=1e-6)
    assert zoo.count_params(control) == zoo.count_params(plain)
    assert "SAFMN+bilinear" not in zoo.all_model_names(4)  # a control, not an architecture to benchmark


def test_hyresr_rows_are_stored_reused_checked_for_staleness_and_judged(folders, monkeypatch, keep_threads):
    judge = ["--judge", str(folders / "judge")]
    quality.main(_argv(folders, "hyresr_tiny", *judge, "--out", str(folders / "run")))
    (path,) = (folders / "hyresr_rows").glob("x4_hyresr_tiny_*.json")
    entry = json.loads(path.read_text())
    assert {"key", "settings", "machine", "date", "revision", "judge", "rows", "curve", "fingerprint",
            "arch_sha256"} <= set(entry)
    assert entry["settings"]["recipe"] == "standard" and entry["settings"]["seed"] == 0
    assert [r["set"] for r in entry["rows"]] == ["val", "judge"]  # selection sets, then the judge set
    assert {c["set"] for c in entry["curve"]} == {"val"}  # the judge set never enters a curve
    assert [c["iter"] for c in entry["curve"]] == [0, 2]  # from the starting point
    assert all(np.isfinite(r["psnr_y"]) and r["wall_s"] > 0 for r in entry["rows"])

    def no_training(*args, **kwargs):
        raise AssertionError("a stored row was retrained")

    real_train = quality.train_one
    monkeypatch.setattr(quality, "train_one", no_training)
    quality.main(_argv(folders, "hyresr_tiny", *judge, "--out", str(folders / "run")))
    assert "stored result" in (folders / "run" / "quality.log").read_text()

    # a stored row without the judge set gets it from the saved final weights, not by training
    judged = entry["rows"][1]
    entry["rows"] = entry["rows"][:1]
    path.write_text(json.dumps(entry))
    quality.main(_argv(folders, "hyresr_tiny", *judge, "--out", str(folders / "run")))
    assert json.loads(path.read_text())["rows"][1] == judged
    # every judge image's PSNR is stored, and they average to the row's mean (an independent recomputation)
    per = judged["per_image_psnr_y"]
    assert sorted(per) == sorted(p.stem for p in (folders / "judge").iterdir())
    assert abs(np.mean(list(per.values())) - judged["psnr_y"]) < 1e-3
    # a judge row from before per-image values were stored is redone from the weights, and must agree
    older = {k: v for k, v in judged.items() if k != "per_image_psnr_y"}
    path.write_text(json.dumps({**entry, "rows": entry["rows"] + [older]}))
    assert not quality.judge_complete(json.loads(path.read_text()), ["judge"])
    quality.main(_argv(folders, "hyresr_tiny", *judge, "--out", str(folders / "run")))
    assert json.loads(path.read_text())["rows"][1] == judged
    path.write_text(json.dumps({**entry, "rows": entry["rows"] + [{**older, "psnr_y": older["psnr_y"] + 0.5}]}))
    before = path.read_text()
    assert quality.main(_argv(folders, "hyresr_tiny", *judge, "--out", str(folders / "run"))) == 1  # fails
    assert "not the weights of that row" in (folders / "run" / "quality.log").read_text()
    assert path.read_text() == before  # and loses nothing
    path.write_text(json.dumps({**entry, "rows": entry["rows"] + [judged]}))

    # a network that computes differently makes the row stale: it is retrained
    fp = quality.network_fingerprint(lambda: zoo.build("hyresr_tiny", 4))
    assert quality.same_network(fp, entry["fingerprint"])
    moved = {**fp, "probe": [v + 1e-2 for v in fp["probe"]]}
    assert not quality.same_network(moved, fp)
    assert quality.same_network({**fp, "probe": [v * (1 + 1e-6) for v in fp["probe"]]}, fp)  # rounding only
    monkeypatch.setattr(quality, "network_fingerprint", lambda fn: moved)
    monkeypatch.setattr(quality, "train_one", real_train)
    quality.main(_argv(folders, "hyresr_tiny", *judge, "--out", str(folders / "run2")))
    assert "computes differently; retraining" in (folders / "run2" / "quality.log").read_text()


def test_fingerprint_sees_a_change_in_the_body_behind_the_zero_initialised_head():
    torch.manual_seed(0)
    a = quality.network_fingerprint(lambda: zoo.build("hyresr_tiny", 4))
    b = quality.network_fingerprint(lambda: zoo.build("hyresr_tiny", 4))
    assert a == b  # deterministic
    mod = zoo.hyresr_module()
    c = quality.network_fingerprint(lambda: mod.hyresr_tiny(scale=4, kernel_size=7))
    assert not quality.same_network(a, c)


def _entry(rows: dict[tuple[str, str], float]) -> dict:
    return {"rows": [{"set": s, "psnr_y": p} for (m, s), p in rows.items()], "curve": []}


def test_summary_counts_a_goal_met_only_where_every_configuration_and_set_meets_it():
    entries = {}
    for config in study.STUDY:
        for model in study.MODELS[config]:
            base = {"hyresr_tiny": 30.0, "SAFMN": 29.5, "SPAN": 29.9, "hyresr_light": 30.3, "SwinIR-light": 30.1,
                    "SAFMN+bilinear": 29.6, "SPAN+bilinear": 29.95}[model]
            if config == "plain" and model == "SAFMN":
                base = 29.85  # tiny leads SAFMN by only 0.15 dB under the plain recipe
            entries[study.Job(config, model)] = _entry({(model, s): base for s in study.SETS})
    md, margins = study.table(entries)
    assert md[0].count("|") == 1 + len(study.STUDY) * len(study.SETS) + 1
    row = next(line for line in md if line.startswith("| SAFMN |"))
    assert "29.850" in row and "29.500" in row
    v = "\n".join(study.verdicts(margins))
    assert "hyresr_tiny vs SAFMN (>= +0.2 dB in standard, seed1, plain, long (Urban100)): **MISSED**" in v
    assert "worst +0.150 dB (plain" in v
    assert "hyresr_light vs hyresr_tiny (>= +0.2 dB in standard, seed1, plain): **met**" in v
    assert "hyresr_tiny vs SPAN (>= +0.2 dB in standard, seed1, plain): **MISSED**" in v
    # tiny vs SPAN and light vs tiny are only reported in the long profile: margins without a goal
    long_tiny_span = [m for m in margins if (m["ours"], m["peer"], m["config"]) == ("hyresr_tiny", "SPAN", "long")]
    assert len(long_tiny_span) == 3 and all(m["met"] is None and m["goal_db"] is None for m in long_tiny_span)
    # the long profile's goals count on the judge set only: a Set5/Set14 shortfall there is reported, not judged
    entries[study.Job("long", "hyresr_light")] = _entry({("hyresr_light", "Set5"): 30.15, ("hyresr_light", "Set14"): 30.15,
                                                        ("hyresr_light", "Urban100"): 30.3})
    _, margins = study.table(entries)
    v = "\n".join(study.verdicts(margins))
    assert "hyresr_light vs SwinIR-light (>= +0.1 dB in standard, long (Urban100)): **met**; worst +0.200 dB" in v
    long_set5 = next(m for m in margins if (m["ours"], m["peer"], m["config"], m["set"]) ==
                     ("hyresr_light", "SwinIR-light", "long", "Set5"))
    assert long_set5["delta_db"] == 0.05 and long_set5["met"] is None
    # one margin short settles a goal even before every run is in; without a shortfall it waits
    del entries[study.Job("standard", "SPAN")]
    del entries[study.Job("seed1", "hyresr_tiny")]
    _, margins = study.table(entries)
    v = "\n".join(study.verdicts(margins))
    assert "hyresr_tiny vs SPAN (>= +0.2 dB in standard, seed1, plain): **MISSED (3 of the 3 margins so far short, " \
           "6 not run yet)**" in v
    assert "hyresr_light vs hyresr_tiny (>= +0.2 dB in standard, seed1, plain): **not yet judged (6/9 margins, " \
           "all met so far)**" in v


def test_study_jobs_cover_the_issue_and_the_queue_takes_started_then_short_then_long_jobs(tmp_path):
    names = {(j.config, j.model) for j in study.jobs()}
    for config in ("standard", "seed1", "plain", "long"):
        assert {(config, m) for m in ("hyresr_tiny", "hyresr_light", "SAFMN", "SPAN")} <= names
    assert {("long", "SwinIR-light"), ("standard", "SAFMN+bilinear"), ("standard", "SPAN+bilinear")} <= names
    argv = study.Job("long", "SAFMN").argv(Path("o"), Path("r"))
    assert argv[:6] == ["--profile", "long", "--recipe", "standard", "--seed", "0"]
    assert argv[argv.index("--out") + 1] == str(Path("o") / "long")
    assert argv[argv.index("--resume-dir") + 1] == str(Path("r") / "long")  # tracked, apart from --out
    (tmp_path / "long").mkdir(parents=True)
    (tmp_path / "long" / "x4_SAFMN_0123456789abcdef.pt").write_bytes(b"")
    order = study.queue(study.jobs(), tmp_path)
    assert sorted(order, key=str) == sorted(study.jobs(), key=str)  # every job once
    assert order[0] == study.Job("long", "SAFMN")  # started: its steps are paid for
    steps = [j.steps for j in order[1:]]
    assert steps == sorted(steps)  # then every 2,000-step job before any long one
    short = [j.estimate_s for j in order[1:] if j.steps == 2000]
    long_ = [j.estimate_s for j in order[1:] if j.steps > 2000]
    assert short == sorted(short) and long_ == sorted(long_, reverse=True)



def test_list_shows_the_step_a_started_job_reached_and_counts_only_its_steps_left(tmp_path, monkeypatch, capsys):
    resume = tmp_path / "long"
    resume.mkdir(parents=True)
    torch.save({"it": 2500, "model": {}}, resume / "x4_SAFMN_0123456789abcdef.pt")
    (resume / "x4_SPAN_0123456789abcdef.pt").write_bytes(b"cut short")  # unreadable: counted as step 0
    assert study.resume_step(study.Job("long", "SAFMN"), tmp_path) == 2500
    assert study.resume_step(study.Job("long", "SPAN"), tmp_path) == 0
    assert study.resume_step(study.Job("long", "hyresr_tiny"), tmp_path) == 0  # no checkpoint
    unfinished = {study.Job("long", "SAFMN"), study.Job("long", "SPAN"), study.Job("plain", "SPAN")}
    monkeypatch.setattr(study, "load_entry", lambda job, out: (None, "missing" if job in unfinished else "done"))
    assert study.show_list(tmp_path / "out", tmp_path, 2) == 0
    out = capsys.readouterr().out
    assert "SAFMN" in out and "started at step 2500/10000" in out
    left_h = float(out.split("left: ~")[1].split(" core-hours")[0])
    expected = sum(j.estimate_s for j in unfinished) - 0.25 * study.Job("long", "SAFMN").estimate_s
    assert left_h == pytest.approx(expected / 3600, abs=0.05)

FAKE_QUALITY = """
import os, sys, time
from pathlib import Path
a = sys.argv
out, model = Path(a[a.index("--out") + 1]), a[a.index("--models") + 1]
live = out.parent / "live"
live.mkdir(exist_ok=True)
me = live / f"{out.name}_{model}"
me.touch()
deadline = time.time() + 5  # a busy machine starts processes slowly: wait (a while) for a second job
while len(list(live.iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.02)
(out.parent / "seen").mkdir(exist_ok=True)
(out.parent / "seen" / me.name).write_text(str(len(list(live.iterdir()))))  # jobs running beside this one
time.sleep(0.3)
(out.parent / "ran").mkdir(exist_ok=True)
(out.parent / "ran" / f"{out.name}_{model}").touch()
me.unlink()
"""


def test_run_queue_runs_each_unfinished_job_once_n_at_a_time_and_respects_live_locks(tmp_path, monkeypatch, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "quality.py").write_text(FAKE_QUALITY)
    out = tmp_path / "out"
    monkeypatch.setattr(study, "BENCH", bench)
    ran = out / "ran"
    def fake_state(job, o):
        if (ran / f"{job.config}_{job.model}").exists():
            return None, "done"
        if job == study.Job("long", "SAFMN"):
            return None, "no judge"  # a row that needs only its judge set: taken first
        return None, "done" if job.config in ("long", "ablation") else "missing"

    monkeypatch.setattr(study, "load_entry", fake_state)
    held, stale = study.Job("plain", "SPAN"), study.Job("seed1", "SPAN")
    study.lock_path(held, out).parent.mkdir(parents=True)
    study.lock_path(held, out).write_text(str(os.getpid()))  # a live process runs it elsewhere
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study.lock_path(stale, out).write_text(str(dead.pid))  # left by a process that died
    study.lock_path(study.Job("seed1", "SAFMN"), out).write_text(str(os.getpid()))
    study.lock_path(study.Job("plain", "SAFMN"), out).write_text(str(os.getpid()))
    late = threading.Timer(1.0, lambda: [study.lock_path(study.Job(c, "SAFMN"), out).unlink() for c in ("seed1", "plain")])
    late.start()  # all 3 slots held elsewhere at first: run waits for them instead of returning
    before = signal.getsignal(signal.SIGTERM)
    assert study.run_queue(out, tmp_path / "resume", 3, poll_s=0.05) == 0  # 3 on the machine, one of them the held job
    assert signal.getsignal(signal.SIGTERM) is before  # run's own SIGTERM handler is gone with it
    started = [line.split("] ")[1].split(" (")[0] for line in capsys.readouterr().out.splitlines() if "(~" in line]
    assert started[0] == "long SAFMN"
    expected = {f"{j.config}_{j.model}" for j in study.jobs() if j.config not in ("long", "ablation") and j != held}
    expected |= {"long_SAFMN"}
    assert {p.name for p in ran.iterdir()} == expected
    assert max(int(p.read_text()) for p in (out / "seen").iterdir()) == 2  # 3 minus the held one
    assert not study.lock_path(stale, out).exists() and study.lock_path(held, out).exists()
    assert study.run_queue(out, tmp_path / "resume", 3, poll_s=0.05) == 0  # nothing left: returns at once, runs nothing again
    assert {p.name for p in ran.iterdir()} == expected




def test_plot_long_draws_one_panel_per_selection_set_from_the_long_rows_only(tmp_path):
    def curve(model, base):
        return [{"model": model, "set": s, "iter": it, "psnr_y": base + off + it / 10_000}
                for s, off in (("Set5", 2.5), ("Set14", 0.0)) for it in (0, 1000, 2000)]

    entries = {study.Job("long", "hyresr_light"): {"curve": curve("hyresr_light", 27.0)},
               study.Job("long", "SPAN"): {"curve": curve("SPAN", 26.9)},
               study.Job("standard", "SAFMN"): {"curve": curve("SAFMN", 26.0)}}
    png = study.plot_long(entries, tmp_path / "img" / "curves.png")
    assert png == tmp_path / "img" / "curves.png"
    h, w, _ = imgops.imread_rgb(png).shape
    assert (w, h) == (1100, 400)  # two panels (Set5, Set14), 5.5 x 4 inches each at 100 dpi
    assert study.plot_long({study.Job("standard", "SAFMN"): entries[study.Job("standard", "SAFMN")]},
                           tmp_path / "none.png") is None  # no long row yet: no plot
    assert not (tmp_path / "none.png").exists()

SLOW_QUALITY = """
import signal, sys, time
from pathlib import Path
a = sys.argv
out, model = Path(a[a.index("--out") + 1]), a[a.index("--models") + 1]
name = f"{out.name}_{model}"
def stopped(signum, frame):
    (out.parent / "stopped").mkdir(exist_ok=True)
    (out.parent / "stopped" / name).touch()
    sys.exit(75)  # quality.STOPPED
signal.signal(signal.SIGTERM, stopped)
(out.parent / "started").mkdir(exist_ok=True)
(out.parent / "started" / name).touch()
time.sleep(60)
(out.parent / "finished").mkdir(exist_ok=True)
(out.parent / "finished" / name).touch()
"""


def test_stop_ends_the_running_jobs_through_their_sigterm_path_and_run_starts_nothing_after(tmp_path, monkeypatch):
    assert quality.STOPPED == 75  # the fake job above exits with it
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "quality.py").write_text(SLOW_QUALITY)
    out = tmp_path / "out"
    monkeypatch.setattr(study, "BENCH", bench)
    monkeypatch.setattr(study, "load_entry", lambda job, o: (None, "missing"))
    result = []
    runner = threading.Thread(target=lambda: result.append(study.run_queue(out, tmp_path / "resume", 2, poll_s=0.05)))
    runner.start()
    for _ in range(400):  # both jobs up (each writes its marker once its SIGTERM handler is in place)
        if (out / "started").is_dir() and len(list((out / "started").iterdir())) == 2:
            break
        time.sleep(0.05)
    assert study.stop(out, tmp_path / "resume", wait_s=20) == 0
    runner.join(timeout=20)
    assert not runner.is_alive() and result == [0]  # returned, and a stopped job is not a failure
    started = {p.name for p in (out / "started").iterdir()}
    assert len(started) == 2 and {p.name for p in (out / "stopped").iterdir()} == started
    assert not (out / "finished").exists()
    assert study.stop(out, tmp_path / "resume") == 0  # nothing left to stop

def test_report_writes_the_head_start_control_the_run_times_and_the_readme_summary(tmp_path, monkeypatch):
    base = {"hyresr_tiny": 30.0, "SAFMN": 29.5, "SPAN": 29.9, "hyresr_light": 30.3, "SwinIR-light": 30.1,
            "SAFMN+bilinear": 29.8, "SPAN+bilinear": 30.1}

    def fake_entry(job, out):
        if job.config == "long" and job.model == "SPAN":
            return None, "missing"
        shift = {("seed1", "hyresr_tiny"): 0.125, ("ablation", "tiny-no-msg"): -0.1, ("ablation", "tiny-dense-ffn"): 0.1,
                 ("ablation", "tiny-one-path"): -0.02}.get((job.config, job.model), 0.0)
        rows = [{"set": s, "psnr_y": base[job.variant] + shift, "wall_s": 600.0, "cpu_s": 540.0} for s in study.SETS]
        if job.config == "standard" and job.model in ("hyresr_tiny", "SAFMN"):
            # tiny ahead by 0.7 dB on 3 of 4 images and behind by 0.1 on one: mean +0.5
            gap = [0.7, 0.7, 0.7, -0.1] if job.model == "hyresr_tiny" else [0.0] * 4
            rows[-1]["per_image_psnr_y"] = {f"img_{i}": 29.5 + g for i, g in enumerate(gap)}
        curve = []
        if (job.config, job.model) == ("long", "hyresr_tiny"):  # the balancing probe at two evaluations
            curve = [{"iter": it, "set": s, "psnr_y": p, **({"d_out_balance": b, "d_out_optimizer": o} if s == "Set14"
                                                            else {})}
                     for it, p, b, o in ((1000, 29.5, 4e-4, 2e-3), (10000, 30.6, 2e-6, 4e-6)) for s in ("Set5", "Set14")]
        return {"rows": rows, "curve": curve, "date": "2026-12-03 07:00", "revision": "abc1234",
                "machine": "CPU x, 1 threads, loadavg 2.05"}, "done"

    monkeypatch.setattr(study, "load_entry", fake_entry)
    monkeypatch.setattr(study, "plot_long", lambda entries, png: None)
    import gpu_model

    v2_curve = [{"iter": 1000, "set": "Set5", "psnr_y": 29.45}, {"iter": 10000, "set": "Set5", "psnr_y": 30.55}]
    monkeypatch.setattr(study, "network_v2_entry", lambda path, settings: {"curve": v2_curve, "network": "v2"})
    monkeypatch.setattr(gpu_model, "predict_fps", lambda model, theta: 1000.0 / (sum(p.numel() for p in model.parameters()) / 1e4))
    doc, readme = tmp_path / "BENCHMARKS.md", tmp_path / "README.md"
    doc.write_text(f"# B\n\nbefore\n{study.BEGIN}\nold table\n{study.END}\nafter\n{study.ABLATION_BEGIN}\nold\n"
                   f"{study.ABLATION_END}\n")
    readme.write_text(f"# R\n{study.README_BEGIN}\nold\n{study.README_END}\n## Next\n")
    study.report(tmp_path, doc, readme)
    d, r = doc.read_text(), readme.read_text()
    assert "old table" not in d and d.startswith("# B\n\nbefore\n") and "\nafter\n" in d
    assert "\nold\n" not in d and d.endswith(study.ABLATION_END + "\n")
    # the ablation table: each row against the long hyresr_tiny row, a verdict on each component
    assert "| tiny-no-msg | plain skips instead of MSG | 273,417 | 80K | 36.6 | 29.900 | 29.900 | 29.900 | -0.100 / -0.100 | " \
           "pays (worse without it) | 10 min (9) |" in d
    assert "| -> one dense FFN of the same active width | 271,165 |" in d.replace("| tiny-dense-ffn | MoE ", "| ")
    assert "+0.100 / +0.100 | costs (better without it) |" in d and "-0.020 / -0.020 | neutral |" in d
    # the balancing step along the long run, beside the optimizer's, and network v2's Set5 at the same step
    assert "| 1,000 | 0.0083 | 4.00e-04 | 2.00e-03 | 0.20 | 29.500 | 29.450 |" in d
    assert "| 10,000 | 0.0010 | 2.00e-06 | 4.00e-06 | 0.50 | 30.600 | 30.550 |" in d
    assert "| tiny-1-level | 1 level (no U-Net), about equal params | 266,681 | 190K | 37.5 | 30.000 | 30.000 | 30.000 | " \
           "+0.000 / +0.000 |  |" in d  # a level count is not a component: no verdict
    # tiny leads SAFMN by 0.5 dB, SAFMN+bilinear by 0.2: 40 % of the lead survives the head start
    assert "| hyresr_tiny | SAFMN | Urban100 | +0.500 | +0.200 | 40% |" in d
    assert "| hyresr_tiny | SPAN | Set5 | +0.100 | -0.100 | none |" in d  # a lead that is gone, not a share of it
    assert "| long | SPAN | 10,000 | missing | | | | | |" in d
    assert "| hyresr_tiny | +0.125 | +0.125 | +0.125 |" in d and "| SAFMN | +0.000 | +0.000 | +0.000 |" in d
    paired = next(line for line in d.splitlines() if line.startswith("| hyresr_tiny | SAFMN | standard | +0.500 |"))
    lo, hi = (float(v) for v in paired.split("|")[5].split(".."))
    assert -0.1 <= lo < 0.5 < hi <= 0.7 and paired.endswith("| 3/4 |")  # bootstrap means lie within the images' range
    assert "| standard | SAFMN | 2,000 | done | 10 min | 9 min | 0.90 | 2026-12-03 07:00 | abc1234 |" in d
    # the README quotes the same table and verdicts, nothing else from the study
    assert "old" not in r.split(study.README_BEGIN)[1] and r.endswith("## Next\n")
    table_line = next(line for line in d.splitlines() if line.startswith("| SPAN |") and "..." in line)
    assert table_line in r and "hyresr_tiny vs SAFMN (>= +0.2 dB" in r and "share that survives" not in r
    with pytest.raises(SystemExit, match="no .* block"):
        study.report(tmp_path, doc, tmp_path / "missing.md")


def test_a_pairs_bootstrap_interval_stays_put_when_other_pairs_rows_arrive():
    gaps = np.random.default_rng(3).normal(0.3, 0.2, 12)  # 12 images: intervals vary with the draws

    def entry(values):
        return {"rows": [{"set": quality.JUDGE, "psnr_y": 0.0,
                          "per_image_psnr_y": {f"img_{i}": 28.0 + v for i, v in enumerate(values)}}]}

    tiny, safmn, light, span = (study.Job("standard", m) for m in ("hyresr_tiny", "SAFMN", "hyresr_light", "SPAN"))
    entries = {tiny: entry(gaps), safmn: entry(0 * gaps)}
    (alone,) = study.paired_judge(entries)[2:]
    entries[light], entries[span] = entry(gaps[::-1]), entry(0 * gaps)  # light vs SPAN is drawn before tiny vs SAFMN
    both = study.paired_judge(entries)
    assert both[2].startswith("| hyresr_light | SPAN | standard |")
    assert alone.startswith("| hyresr_tiny | SAFMN | standard |") and alone in both


def test_the_committed_docs_are_the_report_of_the_committed_rows(tmp_path, monkeypatch):
    """Auditability: README.md and docs/BENCHMARKS.md quote exactly what `study.py report`
    makes from the row files in the repo, so a reader can regenerate every number they print."""
    if not (zoo.DATA / "train_B100").is_dir():
        pytest.skip(f"{zoo.DATA} is absent: the row files are named after the data they were trained on")
    committed_doc, committed_readme = study.DOC.read_text(), study.README.read_text()
    doc, readme = tmp_path / "docs" / "BENCHMARKS.md", tmp_path / "README.md"
    doc.parent.mkdir()
    doc.write_text(committed_doc)
    readme.write_text(committed_readme)
    # the plot is an image: only its link is compared here (test_plot_long_* covers the drawing)
    monkeypatch.setattr(study, "plot_long", lambda entries, png: png)
    study.report(tmp_path / "out", doc, readme)
    assert doc.read_text() == committed_doc, "docs/BENCHMARKS.md differs from `study.py report`"
    assert readme.read_text() == committed_readme, "README.md differs from `study.py report`"


def test_a_row_of_network_v2_is_found_by_its_settings_less_one_parameter_and_labelled(tmp_path):
    """Network v2 had no balance_steps: its rows carry a parameter count one lower, so their key differs.
    The report still shows them, labelled v2; a row of any other parameter count is not taken for one."""
    import hashlib
    import json

    settings = {"model": "hyresr_tiny", "params": 298_185, "iters": 10_000, "data": {"train_B100": [["a.png", 1]]}}

    def key(s):
        return hashlib.sha256(json.dumps(s, sort_keys=True, default=list).encode()).hexdigest()[:16]

    today = tmp_path / f"x4_hyresr_tiny_{key(settings)}.json"
    assert study.network_v2_entry(today, settings) is None
    v2 = tmp_path / f"x4_hyresr_tiny_{key({**settings, 'params': 298_184})}.json"
    v2.write_text(json.dumps({"rows": [{"set": "Set5", "psnr_y": 30.5}], "curve": []}))
    entry = study.network_v2_entry(today, settings)
    assert entry["network"] == "v2" and entry["rows"][0]["psnr_y"] == 30.5
    assert study.network_v2_entry(today, {**settings, "params": 298_186}) is None
    md, _ = study.table({study.Job("long", "hyresr_tiny"): entry})
    assert any(line.startswith("| hyresr_tiny (v2) |") for line in md)


def test_each_ablation_job_finds_only_its_own_resume_checkpoint(tmp_path):
    """The ablation jobs all train hyresr_tiny (with other options): their checkpoints share a folder and
    a name prefix, and only the row key tells them apart."""
    if not (zoo.DATA / "train_B100").is_dir():
        pytest.skip(f"{zoo.DATA} is absent: the row keys are made of the data listing")
    dense, one_level = study.Job("ablation", "tiny-dense-ffn"), study.Job("ablation", "tiny-1-level")
    _, key, _ = quality.row_file("hyresr_tiny", "x4", study._args_for(dense, tmp_path))
    (tmp_path / "ablation").mkdir()
    torch.save({"it": 4321, "model": {}}, tmp_path / "ablation" / f"x4_hyresr_tiny_{key}.pt")
    assert study.resume_step(dense, tmp_path) == 4321
    assert study.resume_file(one_level, tmp_path) is None and study.resume_step(one_level, tmp_path) == 0
    assert "--arch-options" in dense.argv(tmp_path, tmp_path) and "--ablate" in study.Job("ablation", "tiny-no-msg").argv(
        tmp_path, tmp_path)
