"""Issue 19's quality study: every run behind docs/BENCHMARKS.md's summary table, and the table itself.

Configurations (x4, B100 -> Set5/Set14 for selection, Urban100 as the held-out judge set):

  standard   standard profile (2000 steps), standard recipe, seed 0 (+ the head-start control peers)
  seed1      the same with seed 1
  plain      standard profile, plain recipe (Adam, cosine from step 0, no warm-up, no clipping), seed 0
  long       long profile (10,000 steps), standard recipe, seed 0
  ablation   the long profile for hyresr_tiny with one component taken out (ABLATION), against long hyresr_tiny

    python benchmarks/study.py list                 # every job in the order they are taken, its state
    python benchmarks/study.py run --jobs 2         # run them, two at a time (one per core)
    python benchmarks/study.py stop                 # stop the running jobs, each saving the step it is on
    python benchmarks/study.py report               # the summary table + long-profile plot into docs/

Each job is one ``quality.py`` process at 1 thread: it reads the stored row when there is one (peer
rows in benchmarks/peer_cache/, HyReSR rows in benchmarks/hyresr_rows/, both committed), resumes from
its checkpoint every 250 steps when interrupted, and stores its row when it finishes. ``run`` takes
jobs from one queue as cores free up (started jobs first, then the 2,000-step ones shortest first,
then the long ones longest first), so the cores stay busy to the end whatever the estimates say. A
job is locked while it runs (``<out>/locks/``, the pid of its process), so a second ``run`` never
doubles a job; ``run`` can be stopped and started again at any time (a session's end stops it) and
finished jobs are not repeated. ``stop`` (or SIGTERM to ``run`` or to a job) loses nothing: each job
saves its resume checkpoint at the step it is on before it exits; a job killed outright loses the
steps since its last 250-step checkpoint.

Resume checkpoints (one per unfinished job, 3-27 MB; a finished job deletes its own) stay out of git,
in ``--resume`` (default benchmarks/results/study_resume/, ignored): every clone would download them
for ever. A job continues on the machine that started it; on a fresh machine it starts again. Weights,
logs and locks stay under ``--out`` (default benchmarks/results/study/, ignored by git).

``report`` writes the summary into docs/BENCHMARKS.md and the README (between their study markers):
the table, the goal margins and verdicts, the head-start control, every run's wall/CPU time, and
the long profile's learning curves.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import quality  # noqa: E402
import zoo  # noqa: E402

CONFIGS: dict[str, dict] = {
    "standard": {"profile": "standard", "recipe": "standard", "seed": 0},
    "seed1": {"profile": "standard", "recipe": "standard", "seed": 1},
    "plain": {"profile": "standard", "recipe": "plain", "seed": 0},
    "long": {"profile": "long", "recipe": "standard", "seed": 0},
    # the ablation table: hyresr_tiny with one component taken out (or its levels changed at about equal
    # params), the long profile; Set5/Set14 select, Urban100 is only reported
    "ablation": {"profile": "long", "recipe": "standard", "seed": 0},
}
# ablation jobs by label (the baseline, today's hyresr_tiny, is the long configuration's row): (variant, builder overrides, ablations from benchmarks/ablations.py, what it tests)
ABLATION: dict[str, tuple[str, dict, tuple[str, ...], str]] = {
    "tiny-dense-ffn": ("hyresr_tiny", {"experts": 1}, (), "MoE -> one dense FFN of the same active width"),
    "tiny-no-attention": ("hyresr_tiny", {}, ("no_attention",), "no window attention"),
    "tiny-one-path": ("hyresr_tiny", {}, ("one_path",), "no frequency split: one path"),
    "tiny-no-msg": ("hyresr_tiny", {}, ("no_msg",), "plain skips instead of MSG"),
    "tiny-2-levels": ("hyresr_tiny", {"dims": [32, 48], "depths": [2, 2]}, (), "2 U-Net levels, about equal params"),
    "tiny-1-level": ("hyresr_tiny", {"dims": [48], "depths": [4]}, (), "1 level (no U-Net), about equal params"),
}
STUDY = ("standard", "seed1", "plain", "long")  # the summary table's columns (the ablations have their own)
FOUR = ["hyresr_tiny", "hyresr_light", "SAFMN", "SPAN"]
MODELS: dict[str, list[str]] = {
    "standard": FOUR + ["SwinIR-light", "SAFMN+bilinear", "SPAN+bilinear"],
    "seed1": FOUR,
    "plain": FOUR,
    "long": FOUR + ["SwinIR-light"],
    "ablation": list(ABLATION),
}
# issue 19's goals: (HyReSR, peer, minimum PSNR-Y lead in dB or None = margin reported without a goal,
# configurations it is judged in). The long profile's goals are judged on the judge set only
# (goal_sets); tiny vs SPAN and light vs tiny are only reported there.
GOALS = [
    ("hyresr_light", "SwinIR-light", 0.1, ("standard", "long")),
    ("hyresr_light", "SPAN", 0.1, ("standard", "seed1", "plain", "long")),
    ("hyresr_tiny", "SAFMN", 0.2, ("standard", "seed1", "plain", "long")),
    ("hyresr_tiny", "SPAN", 0.2, ("standard", "seed1", "plain")),
    ("hyresr_light", "hyresr_tiny", 0.2, ("standard", "seed1", "plain")),
    ("hyresr_tiny", "SAFMN+bilinear", 0.2, ("standard",)),
    ("hyresr_tiny", "SPAN+bilinear", 0.2, ("standard",)),
    ("hyresr_tiny", "SPAN", None, ("long",)),
    ("hyresr_light", "hyresr_tiny", None, ("long",)),
]
SETS = ("Set5", "Set14", quality.JUDGE)
# wall seconds per step at 1 thread, two jobs on the 2 cores, evaluations included, for the queue's order
# and `list`: measured in the study's own 2,000-step runs (2026-12-03; the +bilinear peers as their peer)
SEC_PER_STEP = {"hyresr_tiny": 0.9, "hyresr_light": 1.8, "SAFMN": 0.6, "SPAN": 1.6, "SwinIR-light": 5.8,
                "SAFMN+bilinear": 0.6, "SPAN+bilinear": 1.6, "tiny-2-levels": 1.6, "tiny-1-level": 1.8}
# resume checkpoints of unfinished jobs: kept out of git (ignored), so on the machine that ran them
RESUME = BENCH / "results" / "study_resume"
DOC = zoo.REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- study:begin (generated by benchmarks/study.py report) -->", "<!-- study:end -->"
ABLATION_BEGIN, ABLATION_END = "<!-- ablation:begin (generated by benchmarks/study.py report) -->", "<!-- ablation:end -->"
README = zoo.REPO / "README.md"
README_BEGIN, README_END = "<!-- study-summary:begin (generated by benchmarks/study.py report) -->", "<!-- study-summary:end -->"


def goal_sets(config: str) -> tuple[str, ...]:
    """The sets a goal is judged on in a configuration: all three, except the long profile's judge set only."""
    return (quality.JUDGE,) if config == "long" else SETS



@dataclass(frozen=True)
class Job:
    config: str
    model: str

    @property
    def steps(self) -> int:
        return quality.PROFILES[CONFIGS[self.config]["profile"]]["iters"]["x4"]

    @property
    def estimate_s(self) -> float:
        return self.steps * SEC_PER_STEP.get(self.model, SEC_PER_STEP.get(self.variant, 1.0))

    @property
    def variant(self) -> str:
        """The zoo model this job trains (an ablation job's label names a HyReSR variant plus changes)."""
        return ABLATION[self.model][0] if self.model in ABLATION else self.model

    @property
    def options(self) -> tuple[dict, list[str]]:
        """Builder overrides and ablations (none outside the ablation table)."""
        _, arch, ablate, _ = ABLATION.get(self.model, ("", {}, (), ""))
        return arch, list(ablate)

    def argv(self, out: Path, resume: Path) -> list[str]:
        c = CONFIGS[self.config]
        arch, ablate = self.options
        return ["--profile", c["profile"], "--recipe", c["recipe"], "--seed", str(c["seed"]), "--tasks", "x4",
                "--models", self.variant, "--threads", "1", "--device", "cpu", "--out", str(out / self.config),
                "--resume-dir", str(resume / self.config),
                *(["--arch-options", json.dumps(arch)] if arch else []), *(["--ablate", ",".join(ablate)] if ablate else [])]

    def build(self, scale: int = 4) -> torch.nn.Module:
        arch, ablate = self.options
        return quality.build_model(self.variant, scale, argparse.Namespace(arch_options=arch, ablate=ablate))


def jobs() -> list[Job]:
    return [Job(c, m) for c in CONFIGS for m in MODELS[c]]


def _args_for(job: Job, out: Path) -> argparse.Namespace:
    """quality.py's parsed settings for a job, to compute its row file without running it."""
    c = CONFIGS[job.config]
    prof = quality.PROFILES[c["profile"]]
    val_dirs = [zoo.DATA / "val_Set5", zoo.DATA / "val_Set14"]
    return argparse.Namespace(
        iters_for={"x4": prof["iters"]["x4"]}, patch=prof["patch"], batch=prof["batch"], lr=prof["lr"],
        recipe=c["recipe"], evals=prof["evals"], seed=c["seed"], curve_sets=[d.name.replace("val_", "") for d in val_dirs],
        amp=False, max_train_images=0, device="cpu", arch_options=job.options[0] or None,
        ablate=job.options[1] or None, peer_cache=quality.PEER_CACHE,
        hyresr_rows=quality.HYRESR_ROWS, out=out / job.config,
        data_listing={d.name: quality._listing(d) for d in [zoo.DATA / "train_B100", *val_dirs]})


def load_entry(job: Job, out: Path) -> tuple[dict | None, str]:
    """The job's stored row entry and its state: 'done', 'no judge' (no judge row, or one without
    per-image values: ``run`` adds it from the run's weights), 'stale', 'network v2' (no row of
    today's network, but one of network v2 with the same settings: the study of the v2 network,
    reported as such) or 'missing'."""
    path, _, settings = quality.row_file(job.variant, "x4", _args_for(job, out))
    if not path.exists():
        earlier = None if job.model in zoo.PEERS else network_v2_entry(path, settings)
        return (earlier, "network v2") if earlier else (None, "missing")
    entry = json.loads(path.read_text())
    if job.model not in zoo.PEERS:
        fp = quality.network_fingerprint(job.build)
        if not quality.same_network(entry.get("fingerprint", {"init_sha256": ""}), fp):
            return entry, "stale"
    return entry, "done" if quality.judge_complete(entry, [quality.JUDGE]) else "no judge"


# the network v2 rows (issue 19's study) were stored before balance_steps (one parameter) existed
V2_EXTRA_PARAMS = 1


def network_v2_entry(path: Path, settings: dict) -> dict | None:
    """The stored row of network v2 for these settings: same key but for the parameter count (network
    v2 had no balance_steps), and its configuration unchanged since."""
    v2 = {**settings, "params": settings["params"] - V2_EXTRA_PARAMS}
    key = quality.hashlib.sha256(json.dumps(v2, sort_keys=True, default=list).encode()).hexdigest()[:16]
    old = path.with_name(f"{path.name.rsplit('_', 1)[0]}_{key}.json")
    return {**json.loads(old.read_text()), "network": "v2"} if old.exists() else None


def resume_file(job: Job, resume: Path) -> Path | None:
    """The job's resume checkpoint when it has one (quality.py's ``<resume>/<config>/x4_<model>_<key>.pt``)."""
    if job.model in ABLATION:  # the ablation jobs all train one variant: only the key tells them apart
        _, key, _ = quality.row_file(job.variant, "x4", _args_for(job, resume))
        path = resume / job.config / f"x4_{job.variant}_{key}.pt"
        return path if path.exists() else None
    return next(iter(sorted((resume / job.config).glob(f"x4_{job.model}_*.pt"))), None)


def resume_step(job: Job, resume: Path) -> int:
    """The step a started job has reached (its resume checkpoint's); 0 when it has none or it is unreadable."""
    f = resume_file(job, resume)
    if f is None:
        return 0
    try:
        return int(torch.load(f, map_location="cpu", weights_only=False)["it"])  # quality.py's own file
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError):
        return 0


def queue(all_jobs: list[Job], resume: Path) -> list[Job]:
    """The order jobs are taken in: started ones first (their steps are paid for), then the 2,000-step
    ones shortest first (results early), then the long ones longest first (the cores end together)."""
    def rank(j: Job):
        short = j.steps <= 2000
        return (resume_file(j, resume) is None, not short, j.estimate_s if short else -j.estimate_s)
    return sorted(all_jobs, key=rank)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return pid > 0


def take_lock(path: Path) -> bool:
    """Create ``path`` unless a live process holds it (a lock left by a dead one is taken over)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if _held(path):
            return False
        path.unlink(missing_ok=True)
        return take_lock(path)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def lock_path(job: Job, out: Path) -> Path:
    return out / "locks" / f"{job.config}_{job.model}.lock"


def held_elsewhere(out: Path, running) -> list[Path]:
    """Locks of jobs that another process runs now (a second ``run``, or a job whose ``run`` was stopped)."""
    mine = {lock_path(j, out) for j in running}
    return sorted(p for p in (out / "locks").glob("*.lock") if p not in mine and _held(p))


def _held(lock: Path) -> bool:
    text = lock.read_text().strip() if lock.exists() else ""
    return text.isdigit() and _alive(int(text))


def run_queue(out: Path, resume: Path, n: int, models: set[str] | None = None, poll_s: float = 10.0) -> int:
    """Run the unfinished jobs, ``n`` at a time, each in its own quality.py process."""
    todo = [j for j in jobs() if not models or j.model in models]
    tried: set[Job] = set()  # run at most once per call (a failed or judge-less job is not retried in a loop)
    running: dict[Job, tuple[subprocess.Popen, float]] = {}
    states: dict[Job, str] = {}  # row states, read again only when some job has ended (reading builds networks)
    stopping = threading.Event()  # a job stopped by SIGTERM (``stop``), or this process got one: start nothing new
    failed = 0
    elsewhere: list[Path] = []

    def done(job: Job) -> bool:
        if job not in states:
            states[job] = load_entry(job, out)[1]
        return states[job] == "done"

    def on_sigterm(signum, frame) -> None:
        stopping.set()
        for proc, _ in list(running.values()):
            proc.send_signal(signal.SIGTERM)  # each saves its resume checkpoint at the step it is on

    with quality.sigterm_calls(on_sigterm):
        while True:
            for job, (proc, t0) in list(running.items()):
                if proc.poll() is not None:
                    del running[job]
                    lock_path(job, out).unlink(missing_ok=True)
                    states.clear()
                    if proc.returncode == quality.STOPPED:
                        stopping.set()
                    failed += proc.returncode not in (0, quality.STOPPED)
                    print(f"[{time.strftime('%H:%M')}] {job.config} {job.model}: rc {proc.returncode}, "
                          f"{time.time() - t0:.0f} s", flush=True)
            if (now := held_elsewhere(out, running)) != elsewhere:
                elsewhere = now
                states.clear()
            while not stopping.is_set() and len(running) + len(elsewhere) < n:  # n jobs on the machine, whoever started them
                # rows that only need their judge set from saved weights first: seconds, not hours
                order = sorted(queue(todo, resume), key=lambda j: done(j) or states[j] != "no judge")
                job = next((j for j in order if j not in tried and j not in running and not done(j)
                            and take_lock(lock_path(j, out))), None)
                if job is None:
                    break
                tried.add(job)
                print(f"[{time.strftime('%H:%M')}] {job.config} {job.model} (~{job.estimate_s / 60:.0f} min"
                      f"{', resuming' if resume_file(job, resume) else ''})", flush=True)
                (out / job.config).mkdir(parents=True, exist_ok=True)
                with (out / job.config / f"{job.model}.log").open("a") as log:  # the job's own progress log
                    proc = subprocess.Popen([sys.executable, str(BENCH / "quality.py"), *job.argv(out, resume)], stdout=log,
                                            stderr=subprocess.STDOUT)
                lock_path(job, out).write_text(str(proc.pid))  # the lock outlives this process while its job runs
                running[job] = (proc, time.time())
            waiting = [j for j in todo if j not in tried and not _held(lock_path(j, out)) and not done(j)]
            if not running and (not waiting or stopping.is_set()):  # (locked jobs are their own process's to finish)
                if stopping.is_set():
                    print(f"[{time.strftime('%H:%M')}] stopped: `study.py run` continues from the resume checkpoints", flush=True)
                return 1 if failed else 0
            time.sleep(poll_s)


def stop(out: Path, resume: Path, wait_s: float = 120.0) -> int:
    """Stop every running job of the study without losing a step: each gets SIGTERM, saves its resume
    checkpoint at the step it is on and exits; the ``run`` that started it then starts nothing new."""
    pids = {lock: int(lock.read_text().strip()) for lock in sorted((out / "locks").glob("*.lock")) if _held(lock)}
    if not pids:
        print("no study job is running")
        return 0
    for lock, pid in pids.items():
        print(f"stopping {lock.stem} (pid {pid})", flush=True)
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + wait_s
    while time.time() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.2)
    left = [lock.stem for lock, pid in pids.items() if _alive(pid)]
    print(f"still running after {wait_s:.0f} s: {', '.join(left)}" if left else
          f"stopped; `python benchmarks/study.py run` continues from the saved steps (in {resume}, on this machine)")
    return 1 if left else 0


# --------------------------------------------------------------------------------------------------
def _psnr(entries: dict[Job, dict]) -> dict[tuple[str, str, str], float]:
    return {(j.config, j.model, r["set"]): r["psnr_y"] for j, e in entries.items() for r in e["rows"]}


def _v2(entries: dict[Job, dict], config: str, model: str) -> bool:
    """Whether the row of (config, model) is network v2's (see ``network_v2_entry``)."""
    return entries.get(Job(config, model), {}).get("network") == "v2"


def table(entries: dict[Job, dict]) -> tuple[list[str], list[dict]]:
    """Markdown summary (model x configuration x set) and the goal margins, from stored rows only."""
    psnr = _psnr(entries)
    models = list(dict.fromkeys(m for c in STUDY for m in MODELS[c]))
    head = "| model | " + " | ".join(f"{c} {s}" for c in STUDY for s in SETS) + " |"
    md = [head, "|---|" + "---:|" * (len(STUDY) * len(SETS))]
    for m in models:
        ran = [c for c in STUDY if Job(c, m) in entries]
        all_v2 = bool(ran) and all(_v2(entries, c, m) for c in ran)  # then the name says it, not every cell
        cells = [f"{psnr[(c, m, s)]:.3f}{' v2' if _v2(entries, c, m) and not all_v2 else ''}" if (c, m, s) in psnr
                 else ("" if m not in MODELS[c] else "...") for c in STUDY for s in SETS]
        md.append(f"| {m}{' (v2)' if all_v2 else ''} | " + " | ".join(cells) + " |")
    margins = []
    for ours, peer, goal, configs in GOALS:
        for c in configs:
            for s in SETS:
                if (c, ours, s) in psnr and (c, peer, s) in psnr:
                    d = round(psnr[(c, ours, s)] - psnr[(c, peer, s)], 3)  # judged as displayed
                    judged = goal is not None and s in goal_sets(c)
                    margins.append({"ours": ours, "peer": peer, "config": c, "set": s, "delta_db": d,
                                    "goal_db": goal if judged else None, "met": d >= goal if judged else None,
                                    "v2": _v2(entries, c, ours) or _v2(entries, c, peer)})
    return md, margins


def verdicts(margins: list[dict]) -> list[str]:
    """A goal counts as met only where it is met on every set it names under both recipes and both
    seeds; one margin short settles it as missed, even before the other runs have finished."""
    out = []
    for ours, peer, goal, configs in GOALS:
        if goal is None:
            continue
        got = [m for m in margins if m["ours"] == ours and m["peer"] == peer and m["config"] in configs
               and m["met"] is not None]
        need = sum(len(goal_sets(c)) for c in configs)
        short = sum(not m["met"] for m in got)
        if short:
            state = "MISSED" + (f" ({short} of the {len(got)} margins so far short, {need - len(got)} not run yet)"
                                if len(got) < need else "")
        elif len(got) < need:
            state = f"not yet judged ({len(got)}/{need} margins{', all met so far' if got else ''})"
        else:
            state = "met"
        worst = min(got, key=lambda m: m["delta_db"] - m["goal_db"], default=None)
        tail = f"; worst {worst['delta_db']:+.3f} dB ({worst['config']}, {worst['set']})" if worst else ""
        scope = ", ".join(c if goal_sets(c) == SETS else f"{c} ({quality.JUDGE})" for c in configs)
        v2 = " (network v2 rows)" if any(m["v2"] for m in got) else ""
        out.append(f"- {ours} vs {peer}{v2} (>= {goal:+.1f} dB in {scope}): **{state}**{tail}")
    return out


def head_start(entries: dict[Job, dict]) -> list[str]:
    """Issue 19's control: HyReSR's lead over a plain peer beside its lead over the same peer given
    HyReSR's bilinear global residual (standard configuration); the share of the lead that survives."""
    psnr = _psnr(entries)
    md = ["| HyReSR | peer | set | lead over the peer | lead over peer+bilinear | share that survives |",
          "|---|---|---|---:|---:|---:|"]
    for ours in ("hyresr_tiny", "hyresr_light"):
        for peer in ("SAFMN", "SPAN"):
            for s in SETS:
                keys = [("standard", m, s) for m in (ours, peer, f"{peer}+bilinear")]
                if not all(k in psnr for k in keys):
                    continue
                a, b, c = (psnr[k] for k in keys)
                # a share is a fraction of a lead: none when there is no lead, none when no lead survives
                share = "no lead" if a - b <= 0 else "none" if a - c <= 0 else f"{(a - c) / (a - b):.0%}"
                md.append(f"| {ours} | {peer} | {s} | {a - b:+.3f} | {a - c:+.3f} | {share} |")
    return md if len(md) > 2 else []


def seed_spread(entries: dict[Job, dict]) -> list[str]:
    """How far one model moves between seeds (seed 1 minus seed 0, standard profile and recipe): a
    margin smaller than this is within what a reseed can change."""
    psnr = _psnr(entries)
    md = ["| model | " + " | ".join(SETS) + " |", "|---|" + "---:|" * len(SETS)]
    for m in MODELS["seed1"]:
        if all(("standard", m, s) in psnr and ("seed1", m, s) in psnr for s in SETS):
            md.append(f"| {m} | " + " | ".join(f"{psnr[('seed1', m, s)] - psnr[('standard', m, s)]:+.3f}" for s in SETS)
                      + " |")
    return md if len(md) > 2 else []


def paired_judge(entries: dict[Job, dict], draws: int = 10_000) -> list[str]:
    """Each goal's judge-set margin image by image: the mean of the per-image differences (the table's
    margin), a 95 % bootstrap interval over the 30 images (resampled in pairs; how much the margin
    could move on another sample of such images), and on how many images HyReSR is ahead. Each pair draws
    from its own seeded generator, so its interval stays put as other rows arrive."""
    import zlib

    import numpy as np

    per = {(j.config, j.model): r["per_image_psnr_y"] for j, e in entries.items() for r in e["rows"]
           if r["set"] == quality.JUDGE and "per_image_psnr_y" in r}
    md = ["| HyReSR | peer | configuration | margin | 95 % interval | images ahead |", "|---|---|---|---:|---|---:|"]
    for ours, peer, goal, configs in GOALS:
        for c in configs:
            a, b = per.get((c, ours)), per.get((c, peer))
            if not a or not b or set(a) != set(b):
                continue
            d = np.array([a[k] - b[k] for k in sorted(a)])
            rng = np.random.default_rng(zlib.crc32(f"{ours} {peer} {c}".encode()))
            boot = d[rng.integers(0, len(d), (draws, len(d)))].mean(axis=1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            md.append(f"| {ours} | {peer} | {c} | {d.mean():+.3f} | {lo:+.3f} .. {hi:+.3f} | {(d > 0).sum()}/{len(d)} |")
    return md if len(md) > 2 else []


def runs(entries: dict[Job, dict], states: dict[Job, str]) -> list[str]:
    """Every job: its wall and CPU time, when and at which revision it ran. CPU / wall is the share of
    a core the 1-thread process got: about 1 when it had its core to itself, less when it shared it
    (the wall time is then inflated; the PSNR is not affected)."""
    md = ["| configuration | model | steps | state | wall | CPU | CPU / wall | stored | revision |",
          "|---|---|---:|---|---:|---:|---:|---|---|"]
    for job, state in states.items():
        e = entries.get(job)
        if e is None:
            md.append(f"| {job.config} | {job.model} | {job.steps:,} | {state} | | | | | |")
            continue
        r0 = e["rows"][0]
        md.append(f"| {job.config} | {job.model} | {job.steps:,} | {state} | {r0['wall_s'] / 60:.0f} min | "
                  f"{r0['cpu_s'] / 60:.0f} min | {r0['cpu_s'] / r0['wall_s']:.2f} | {e['date']} | "
                  f"{e.get('revision', '?')} |")
    return md


# a difference smaller than this (dB, on Set5 and on Set14) is called neutral: one seed per row, and a
# reseed moved hyresr_tiny by up to 0.17 dB at 2,000 steps (the seed spread above)
NEUTRAL_DB = 0.05


def macs_per_pixel(model: torch.nn.Module, size: int = 64) -> float:
    """Multiply-accumulates per input pixel of an eval forward (FLOPs / 2, with the grouped MoE GEMMs
    and CPU attention kernels torch's counter misses: one expert per token, as computed)."""
    import gpu_model

    with torch.no_grad(), gpu_model.flop_counter() as counter:
        model.eval()(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / 2 / size**2


def _set_psnr(entry: dict) -> dict[str, float]:
    return {r["set"]: r["psnr_y"] for r in entry["rows"]}


def peer_fps() -> str:
    """The peers' FPS as the same cost model predicts them (leave-one-out) beside their published FPS."""
    import gpu_model

    _, peers = gpu_model.load_fit()
    return "; ".join(f"{peers[k]['label']} {peers[k]['loo_fps']:.1f} predicted ({peers[k]['published_fps']:.1f} "
                     "published)" for k in ("safmn", "span_s", "realplksr pixelshuffle layer_norm=True"))


def component_verdict(delta: dict[str, float]) -> str:
    """What taking a component out did, on the selection sets (ablated minus baseline)."""
    d = [delta[s] for s in ("Set5", "Set14")]
    if all(x < -NEUTRAL_DB for x in d):
        return "pays (worse without it)"
    if all(x > NEUTRAL_DB for x in d):
        return "costs (better without it)"
    return "neutral"


def ablation_table(entries: dict[Job, dict], out: Path) -> list[str]:
    """The ablation table: today's hyresr_tiny (the long configuration's row) and each ablation, with
    params, MACs per input pixel, PSNR-Y, the difference to the baseline on the selection sets, the
    verdict on the component (Set5/Set14 only; Urban100 reported) and the wall time."""
    base_job = Job("long", "hyresr_tiny")
    base = entries.get(base_job)
    base = None if base is None or base.get("network") == "v2" else base
    import gpu_model

    theta, _ = gpu_model.load_fit()
    md = ["| row | what it tests | params | MACs / LR px | predicted 4090 FPS | Set5 | Set14 | Urban100 | "
          "vs baseline (Set5 / Set14) | component | wall (CPU) |", "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|"]

    def line(label: str, what: str, model: torch.nn.Module, entry: dict | None, verdict: bool) -> str:
        params = sum(p.numel() for p in model.parameters())
        fps = gpu_model.predict_fps(model, theta)
        head = f"| {label} | {what} | {params:,} | {macs_per_pixel(model) / 1e3:.0f}K | {fps:.1f} |"
        if entry is None:
            return head + " ... | ... | ... | | | |"
        got = _set_psnr(entry)
        cells = " | ".join(f"{got[s]:.3f}" if s in got else "" for s in SETS)
        delta, judged = "", ""
        if base is not None and entry is not base:
            d = {s: got[s] - _set_psnr(base)[s] for s in ("Set5", "Set14")}
            delta = f"{d['Set5']:+.3f} / {d['Set14']:+.3f}"
            judged = component_verdict(d) if verdict else ""
        r0 = entry["rows"][0]
        return f"{head} {cells} | {delta} | {judged} | {r0['wall_s'] / 60:.0f} min ({r0['cpu_s'] / 60:.0f}) |"

    md.append(line("hyresr_tiny", "the baseline (today's network: settling balancing)", base_job.build(), base, False))
    for label, (_, _, _, what) in ABLATION.items():
        job = Job("ablation", label)
        md.append(line(label, what, job.build(), entries.get(job), not label.endswith(("levels", "level"))))
    return md


def balancing_table(entries: dict[Job, dict], out: Path) -> list[str]:
    """Along the long hyresr_tiny run: the balancing step size, how far one training step's balancing
    and its optimizer update each moved the output (mean |delta| on a fixed Set5 crop, eval mode),
    and Set5 beside network v2's run (fixed 0.05 step) at the same step."""
    job = Job("long", "hyresr_tiny")
    now = entries.get(job)
    if now is None or now.get("network") == "v2":
        return []
    path, _, settings = quality.row_file(job.variant, "x4", _args_for(job, out))
    v2 = network_v2_entry(path, settings)
    v2_set5 = {c["iter"]: c["psnr_y"] for c in (v2 or {}).get("curve", []) if c["set"] == "Set5"}
    md = ["| step | balancing step (logits) | output moved by balancing | by the optimizer | balancing / optimizer | "
          "Set5 | Set5, network v2 |", "|---:|---:|---:|---:|---:|---:|---:|"]
    settle = zoo.hyresr_module().TokenMoE.balance_settle
    for c in now["curve"]:
        if "d_out_balance" not in c:
            continue
        set5 = next(x["psnr_y"] for x in now["curve"] if x["iter"] == c["iter"] and x["set"] == "Set5")
        ratio = c["d_out_balance"] / c["d_out_optimizer"] if c["d_out_optimizer"] else float("inf")
        rate = 0.05 / (1 + (c["iter"] - 1) / settle)
        md.append(f"| {c['iter']:,} | {rate:.4f} | {c['d_out_balance']:.2e} | {c['d_out_optimizer']:.2e} | {ratio:.2f} | "
                  f"{set5:.3f} | {v2_set5.get(c['iter'], float('nan')):.3f} |")
    return md if len(md) > 2 else []


def _replace_block(path: Path, begin: str, end: str, lines: list[str], heading: str = "") -> None:
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + "\n".join(lines) + text[text.index(end) + len(end):]
    elif heading:
        text += f"\n{heading}\n\n" + "\n".join(lines) + "\n"
    else:
        raise SystemExit(f"{path}: no {begin!r} ... {end!r} block to write the summary into")
    path.write_text(text)


def report(out: Path, doc: Path = DOC, readme: Path = README) -> int:
    entries, states = {}, {}
    for job in jobs():
        entry, state = load_entry(job, out)
        states[job] = state
        if entry is not None and state in ("done", "no judge", "network v2"):
            entries[job] = entry
    md, margins = table(entries)
    caption = ("PSNR-Y (dB), x4, trained on B100; Set5/Set14 select, Urban100 (30 images, held out) judges. "
               "Generated from the row files in benchmarks/peer_cache/ and benchmarks/hyresr_rows/ by "
               "`python benchmarks/study.py report`; '...' = not run yet; 'v2' = a row of network v2 (fixed-rate "
               "MoE balancing, before balance_steps), not yet rerun on today's network.")
    verdict = ["Verdicts (a goal counts as met only where it is met in every configuration and set it names; "
               f"the long profile's goals count on {quality.JUDGE} only, its Set5/Set14 margins are reported):", "",
               *verdicts(margins)]
    lines = [BEGIN, "", caption, "", *md, "", "Margins (HyReSR minus peer, dB):", "",
             "| HyReSR | peer | configuration | set | delta | goal | |", "|---|---|---|---|---:|---:|---|"]
    lines += [f"| {m['ours']}{' (v2)' if m['v2'] else ''} | {m['peer']} | {m['config']} | {m['set']} | {m['delta_db']:+.3f} | "
              + ("reported | |" if m["met"] is None else f">= {m['goal_db']:+.1f} | {'met' if m['met'] else 'MISSED'} |")
              for m in margins]
    lines += ["", *verdict, ""]
    control = head_start(entries)
    if control:
        lines += ["Head-start control (standard configuration): HyReSR's lead over each plain peer and over the "
                  "same peer with HyReSR's bilinear global residual.", "", *control, ""]
    spread = seed_spread(entries)
    if spread:
        lines += ["Seed spread (seed 1 minus seed 0, standard profile and recipe, dB): a margin smaller than "
                  "this is within what a reseed changes.", "", *spread, ""]
    paired = paired_judge(entries)
    if paired:
        lines += [f"{quality.JUDGE} image by image: the margin, a 95 % bootstrap interval over its images "
                  "(resampled in pairs) and on how many images HyReSR is ahead.", "", *paired, ""]
    lines += ["Runs (one process at 1 thread each, two at a time on the 2-core machine):", "", *runs(entries, states), ""]
    png = plot_long(entries, doc.parent / "img" / "study_long_curves.png")
    if png:
        lines += [f"![long-profile learning curves]({png.relative_to(doc.parent).as_posix()})", ""]
    _replace_block(doc, BEGIN, END, [*lines, END], heading="## Quality study (issue 19)")
    ablations = ["", "PSNR-Y (dB), x4, long profile (10,000 steps, standard recipe, seed 0), trained on B100; "
                 "Set5/Set14 select, Urban100 is only reported. Predicted FPS: the GPU cost model (fitted to "
                 "traiNNer-redux's published RTX 4090 table, benchmarks/data/gpu_cost_fit.json) on the fused model, "
                 f"fp16, 1x3x480x640; {peer_fps()}. MACs per LR pixel of an eval forward at 64x64 (the "
                 f"experts as computed: one per token). A component pays when the row without it is more than {NEUTRAL_DB} dB "
                 f"lower on both Set5 and Set14, costs when more than {NEUTRAL_DB} dB higher on both, and is neutral "
                 "otherwise (one seed per row). '...' = not run yet.", "", *ablation_table(entries, out), ""]
    balancing = balancing_table(entries, out)
    if balancing:
        ablations += ["MoE balancing along the long hyresr_tiny run (the step decays as 0.05 / (1 + t / 200)): how far "
                      "one training step moved the output through its balancing and through its optimizer update "
                      "(mean |delta| on a fixed 48x48 Set5 crop, eval mode), and Set5 beside network v2's run with the "
                      "fixed 0.05 step.", "", *balancing, ""]
    _replace_block(doc, ABLATION_BEGIN, ABLATION_END, [ABLATION_BEGIN, *ablations, ABLATION_END],
                   heading="## Ablations of hyresr_tiny (network v3 work)")
    if readme is not None:
        _replace_block(readme, README_BEGIN, README_END, [README_BEGIN, "", caption, "", *md, "", *verdict, "",
                                                          "Margins, the head-start control, run times and the "
                                                          "learning curves: docs/BENCHMARKS.md.", "", README_END])
    print("\n".join(md + [""] + verdicts(margins)))
    return 0


def plot_long(entries: dict[Job, dict], png: Path) -> Path | None:
    curves = [{**c, "model": c["model"] + (" (v2)" if e.get("network") == "v2" else "")}
              for j, e in entries.items() if j.config == "long" for c in e["curve"]]
    if not curves:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sets = list(dict.fromkeys(c["set"] for c in curves))
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    for ax, s in zip(axes[0], sets):
        for m in dict.fromkeys(c["model"] for c in curves):
            pts = [c for c in curves if c["model"] == m and c["set"] == s and int(c["iter"]) > 0]
            ax.plot([int(c["iter"]) for c in pts], [float(c["psnr_y"]) for c in pts], marker="o", label=m,
                    lw=2.2 if m.startswith("hyresr") else 1.2, ls="-" if m.startswith("hyresr") else "--")
        ax.set_title(f"long profile, x4, {s} PSNR-Y", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("dB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["list", "run", "stop", "report"])
    p.add_argument("--jobs", type=int, default=2, help="jobs run at once, one per core (default 2)")
    p.add_argument("--models", default=None, help="run only these models (comma list)")
    p.add_argument("--out", type=Path, default=BENCH / "results" / "study", help="runs' outputs (weights, logs)")
    p.add_argument("--resume", type=Path, default=RESUME, help="resume checkpoints of unfinished jobs (ignored by git)")
    args = p.parse_args(argv)
    if not (zoo.DATA / "train_B100").is_dir():
        print(f"SKIP: {zoo.DATA} not found (see ../shared/data/README.md)")
        return 0
    if args.command == "run":
        return run_queue(args.out, args.resume, args.jobs, set(args.models.split(",")) if args.models else None)
    if args.command == "report":
        return report(args.out)
    if args.command == "stop":
        return stop(args.out, args.resume)
    return show_list(args.out, args.resume, args.jobs)


def show_list(out: Path, resume: Path, n_jobs: int) -> int:
    """Every job in queue order with its state (a started one with the step it reached) and the time left:
    the estimate of each unfinished job less the share of its steps already done."""
    left = 0.0
    for job in queue(jobs(), resume):
        state = load_entry(job, out)[1]
        todo = state in ("missing", "stale", "network v2")
        step = resume_step(job, resume) if todo else 0
        left += job.estimate_s * (1 - step / job.steps) if todo else 0.0
        if state != "done" and _held(lock_path(job, out)):
            state += ", running"
        elif state != "done" and resume_file(job, resume):
            state += ", started"
        if step:
            state += f" at step {step}/{job.steps}"
        print(f"{job.config:8s} {job.model:15s} ~{job.estimate_s / 60:4.0f} min  {state}")
    print(f"left: ~{left / 3600:.1f} core-hours (~{left / 3600 / n_jobs:.1f} h at --jobs {n_jobs})")
    return 0

if __name__ == "__main__":
    sys.exit(main())
