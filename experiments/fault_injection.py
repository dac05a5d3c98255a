"""Kill, signal and feed bad input to real ``embedft.run`` processes; check what held.

    python experiments/fault_injection.py [--out DIR] [--only NAME ...]    (make faults)

Every scenario runs the real entry point in a subprocess on a tiny random model and a small
triplet file (CPU, fp32, a few seconds each). Kills are injected from inside the child at an
exact point (``child`` mode below patches ``embedft.resume`` / the STSB-dev callback; embedft's
own code has no test hooks): ``kill -9`` before a checkpoint, right after one, and during an
STSB-dev evaluation; SIGTERM and SIGUSR1 mid-step; an epoch-based run killed mid-epoch. Each
killed run is resumed with ``resume=auto`` and compared with an uninterrupted reference run:
same LoRA weights (max abs diff <= 1e-6), same per-step losses, CSV rows kept, step count equal.
Bad inputs (NaN training, degenerate or unknown config keys, bad data cells, an empty file,
a crafted pickle, text/truncated checkpoints, directory collisions, a sweep re-run) must fail
or behave as documented, loudly, and lose nothing already written.

Prints one line per scenario and a summary line; writes ``DIR/fault_injection.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOL = 1e-6
ENV = dict(
    os.environ,
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    WANDB_MODE="disabled",
    TOKENIZERS_PARALLELISM="false",
    PYTHONWARNINGS="ignore",
)


# ---------------------------------------------------------------------------------------------
# child mode: run embedft.run with a fault injected at an exact point
# ---------------------------------------------------------------------------------------------
def child(fault: str, at_step: int, overrides: list[str]) -> None:
    """``fault``: kill_before_save | kill_after_save | kill_in_eval | sigterm | sigusr1."""
    import lightning as L

    from embedft import resume
    from embedft.eval import callback

    def die(sig: int = signal.SIGKILL) -> None:
        os.kill(os.getpid(), sig)
        time.sleep(5)  # a signal that is only noted returns here: training goes on

    if fault == "kill_before_save":
        original = resume.ResumeCheckpoint.on_train_batch_end

        def patched(self, trainer, *args):
            if trainer.global_step == at_step:
                die()
            return original(self, trainer, *args)

        resume.ResumeCheckpoint.on_train_batch_end = patched
    elif fault == "kill_after_save":
        original_save = resume.ResumeCheckpoint.save

        def patched_save(self, trainer):
            original_save(self, trainer)
            if trainer.global_step == at_step:
                die()

        resume.ResumeCheckpoint.save = patched_save
    elif fault == "kill_in_eval":
        original_eval = callback.StsDevCallback.evaluate

        def patched_eval(self, trainer, pl_module):
            if trainer.global_step == at_step:
                die()
            return original_eval(self, trainer, pl_module)

        callback.StsDevCallback.evaluate = patched_eval
    elif fault in ("sigterm", "sigusr1"):
        sig = signal.SIGTERM if fault == "sigterm" else signal.SIGUSR1

        class SignalMidStep(L.Callback):
            def on_train_batch_start(self, trainer, *args):
                if trainer.global_step == at_step - 1:  # during step `at_step`
                    os.kill(os.getpid(), sig)

        original_init = resume.ResumeCheckpoint.__init__

        def init_with_signal(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            self._fault_injector = SignalMidStep()

        resume.ResumeCheckpoint.__init__ = init_with_signal
        original_setup = resume.ResumeCheckpoint.setup

        def setup(self, trainer, pl_module, stage):
            original_setup(self, trainer, pl_module, stage)
            if self._fault_injector not in trainer.callbacks:  # hooks iterate this list now
                trainer.callbacks.append(self._fault_injector)

        resume.ResumeCheckpoint.setup = setup
    elif fault != "none":
        raise SystemExit(f"unknown fault {fault!r}")
    sys.argv = ["embedft.run", *overrides]
    runpy.run_module("embedft.run", run_name="__main__", alter_sys=True)


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def write_triplets(path: Path, n: int = 48) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sent0", "sent1", "hard_neg"])
        for i in range(n):
            w.writerow(
                [f"a sentence {i} about topic {i % 7}", f"text {i} on {i % 7}", f"other {i}"]
            )
    return path


class Suite:
    def __init__(self, root: Path, data_dir: str | None) -> None:
        self.root = root
        self.data = write_triplets(root / "triplets.csv")
        self.data_dir = data_dir
        self.outcomes: list[dict] = []
        self._refs: dict[str, Path] = {}

    def common(self, out: Path, *extra: str) -> list[str]:
        return [
            "model=tiny_llama",
            "data=local",
            f"data.path={self.data}",
            "data.batch_size=4",
            "data.shuffle_buffer=16",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1",
            "trainer.save_every_n_steps=3",
            "logger=csv",
            "eval.every_n_steps=0",
            "eval.after_fit=false",
            "optim.warmup_steps=2",
            "optim.lr=1e-3",
            f"hydra.run.dir={out}",
            *extra,
        ]

    def run(
        self, overrides: list[str], fault: str = "none", at: int = 0, timeout: int = 300, **env
    ):
        cmd = [sys.executable, __file__, "child", fault, str(at), "--", *overrides]
        if fault == "none":
            cmd = [sys.executable, "-m", "embedft.run", *overrides]
        return subprocess.run(
            cmd, cwd=REPO, env={**ENV, **env}, capture_output=True, text=True, timeout=timeout
        )

    def record(self, name: str, check: Callable[[], str | None]) -> None:
        started = time.perf_counter()
        try:
            problem = check()
        except Exception as err:  # a scenario that crashes counts as not held
            problem = f"{type(err).__name__}: {err}"
        held = problem is None
        self.outcomes.append(
            {
                "scenario": name,
                "held": held,
                "problem": problem,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(f"{'held  ' if held else 'BROKEN'} {name}" + ("" if held else f": {problem}"))

    # -- helpers ---------------------------------------------------------------------------
    def reference(self, name: str, *extra: str) -> Path:
        if name not in self._refs:
            out = self.root / f"ref-{name}"
            result = self.run(self.common(out, *extra))
            if result.returncode != 0:
                raise RuntimeError(f"reference run failed: {result.stderr[-800:]}")
            self._refs[name] = out
        return self._refs[name]

    def compare(self, ref: Path, run: Path) -> str | None:
        import torch

        a = json.loads((ref / "results.json").read_text())
        b = json.loads((run / "results.json").read_text())
        if b["status"] != "completed":
            return f"resumed run ended {b['status']}: {b['error']}"
        if a["train"]["global_step"] != b["train"]["global_step"]:
            return f"steps {b['train']['global_step']} != {a['train']['global_step']}"
        la, lb = a["train"]["losses"], b["train"]["losses"]
        if len(la) != len(lb) or max(abs(x - y) for x, y in zip(la, lb, strict=True)) > TOL:
            return f"per-step losses differ: {la} vs {lb}"
        wa = torch.load(ref / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
        wb = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
        diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
        if diff > TOL:
            return f"LoRA weights differ by {diff:.2e}"
        rows = list(csv.DictReader(open(run / "csv/metrics.csv")))
        steps = [int(r["step"]) for r in rows if r.get("train/loss")]
        if steps != list(range(len(la))):
            return f"metrics.csv train/loss rows at steps {steps}, expected 0..{len(la) - 1}"
        return None

    def killed_then_resumed(self, name, fault, at, *extra, ref_name="steps", expect_rc=None):
        def check() -> str | None:
            ref = self.reference(ref_name, *extra)
            out = self.root / name
            first = self.run(self.common(out, *extra), fault=fault, at=at)
            if expect_rc is not None and first.returncode != expect_rc:
                return f"interrupted run exited {first.returncode}, expected {expect_rc}"
            if expect_rc is None and first.returncode != -signal.SIGKILL:
                return f"the child was not killed (rc {first.returncode}): {first.stderr[-400:]}"
            status = json.loads((out / "results.json").read_text())["status"]
            want = "preempted" if expect_rc is not None else "running"
            if status != want:
                return f"results.json says {status!r} after the interruption, expected {want!r}"
            second = self.run(self.common(out, *extra, "resume=auto"))
            if second.returncode != 0:
                return f"resume failed: {second.stderr[-600:]}"
            return self.compare(ref, out)

        self.record(name, check)

    def fails_clearly(self, name, overrides, *, expect: str, before_model: bool = True):
        def check() -> str | None:
            result = self.run(overrides)
            if result.returncode == 0:
                return "exited 0"
            if expect not in result.stderr:
                return f"error does not say {expect!r}: {result.stderr[-500:]}"
            if before_model and "Traceback" in result.stderr.split(expect)[0][-3000:]:
                pass  # Hydra prints the exception; a traceback is acceptable, a silent run is not
            return None

        self.record(name, check)


def scenarios(s: Suite) -> dict[str, Callable[[], None]]:
    steps = ("trainer.max_steps=8",)
    epochs = ("trainer.max_epochs=2",)
    dev = ("trainer.max_steps=8", "eval.every_n_steps=2", "model.max_length=32")
    if s.data_dir:
        dev = (*dev, f"paths.data_dir={s.data_dir}")
    root = s.root

    def dir_collision():
        def check():
            out = root / "collide"
            first = s.run(s.common(out, *steps))
            if first.returncode != 0:
                return f"first run failed: {first.stderr[-300:]}"
            before = (out / "results.json").read_text()
            second = s.run(s.common(out, *steps))
            if second.returncode == 0 or "already holds a run" not in second.stderr:
                return f"second run into the same dir was not refused: rc {second.returncode}"
            if (out / "results.json").read_text() != before:
                return "the refused run changed the first run's results.json"
            return None

        s.record("same output dir refused, first run's files intact", check)

    def sweep_rerun():
        def check():
            sweep = root / "sweep"
            args = [a for a in s.common(root / "unused", *steps) if not a.startswith("hydra.run")]
            cmd = [
                "-m",
                *args,
                "seed=1,2",
                f"hydra.sweep.dir={sweep}",
                "hydra.sweep.subdir=${hydra.job.num}",
            ]
            first = s.run(cmd)
            if first.returncode != 0:
                return f"sweep failed: {first.stderr[-300:]}"
            jobs = sorted(p for p in sweep.iterdir() if (p / "results.json").exists())
            before = [json.loads((j / "results.json").read_text()) for j in jobs]
            again = s.run(cmd)
            if again.returncode != 0:
                return f"re-run failed: {again.stderr[-300:]}"
            after = [json.loads((j / "results.json").read_text()) for j in jobs]
            for b, a in zip(before, after, strict=True):
                if a["status"] != "completed" or a["train"] != b["train"]:
                    return "a completed job was retrained or lost its results"
                if a["attempts"][-1]["status"] != "kept":
                    return "the re-run did not record that it kept the job"
            return None

        s.record("sweep re-run keeps completed jobs", check)

    def time_checkpoint():
        def check():
            out = root / "by-time"
            overrides = s.common(out, "trainer.max_steps=6", "trainer.save_every_n_steps=1000")
            result = s.run(
                [*overrides, "trainer.save_every_n_minutes=0.0001"], "kill_before_save", 5
            )
            if result.returncode != -signal.SIGKILL:
                return f"not killed: rc {result.returncode}"
            import torch

            ckpt = out / "checkpoints/last.ckpt"
            if not ckpt.exists():
                return "no last.ckpt written by wall time"
            step = torch.load(ckpt, weights_only=True)["global_step"]
            return None if step == 4 else f"last.ckpt at step {step}, expected 4"

        s.record("checkpoint by wall time (save_every_n_minutes)", check)

    def wandb_same_run():
        def check():
            out = root / "wandb"
            args = [*s.common(out, "trainer.max_steps=6"), "logger=wandb"]
            first = s.run(args, "sigterm", 3, WANDB_MODE="offline")
            if first.returncode != 143:
                return f"interrupted run exited {first.returncode}: {first.stderr[-300:]}"
            second = s.run([*args, "resume=auto"], WANDB_MODE="offline")
            if second.returncode != 0:
                return f"resume failed: {second.stderr[-300:]}"
            ids = {p.name.rsplit("-", 1)[-1] for p in (out / "wandb").glob("offline-run-*")}
            runs = len(list((out / "wandb").glob("offline-run-*")))
            return None if runs == 2 and len(ids) == 1 else f"{runs} W&B runs with ids {ids}"

        s.record("W&B run resumes under the same id (offline)", check)

    def nan_training():
        def check():
            out = root / "nan"
            result = s.run(s.common(out, *steps, "optim.lr=1e30", "eval.every_n_steps=1", *dev[3:]))
            if result.returncode == 0:
                return "NaN training exited 0"
            res = json.loads((out / "results.json").read_text())
            error = res["error"] or ""
            if (
                res["status"] != "failed"
                or "NonFiniteError" not in error
                or " at step " not in error
            ):
                return f"results.json: {res['status']} {res['error']}"
            if (out / "checkpoints/best.ckpt").exists():
                return "a best.ckpt was written from NaN weights"
            return None

        s.record("NaN/inf training fails with step and reason, no NaN best.ckpt", check)

    def bad_data():
        def check():
            path = root / "bad.jsonl"
            rows = [{"sent0": f"a {i}", "sent1": f"p {i}", "hard_neg": f"n {i}"} for i in range(20)]
            rows[3]["sent1"], rows[7]["hard_neg"], rows[9]["sent0"] = None, "  ", ["d"]
            path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
            out = root / "bad-cells"
            result = s.run(
                [
                    *s.common(out, "trainer.max_steps=2"),
                    f"data.path={path}",
                    "data.max_bad_fraction=0.5",
                ]
            )
            if result.returncode != 0:
                return f"failed: {result.stderr[-300:]}"
            data = json.loads((out / "results.json").read_text())["data"]
            want = {"sent1:null": 1, "hard_neg:empty": 1, "sent0:not_text": 1}
            if data["dropped"] != want or data["rows_used"] != 17:
                return f"dropped {data['dropped']}, used {data['rows_used']}"
            strict = s.run(
                [*s.common(root / "bad-strict", "trainer.max_steps=2"), f"data.path={path}"]
            )
            if strict.returncode == 0 or "line 4, column 'sent1': null" not in strict.stderr:
                return f"over the threshold: no file/line/column error: {strict.stderr[-300:]}"
            return None

        s.record("null/empty/non-text cells dropped and counted; error names line+column", check)

    def hostile_pickle():
        def check():
            marker = root / "pwned"

            class Evil:
                def __reduce__(self):
                    return (os.system, (f"touch {marker}",))

            ckpt = root / "evil.ckpt"
            with open(ckpt, "wb") as f:
                pickle.dump({"embedft_config": {}, "x": Evil()}, f)
            for args in (
                [
                    "-m",
                    "embedft.encode",
                    f"ckpt={ckpt}",
                    f"input={s.data}",
                    f"output={root / 'e.npy'}",
                ],
                ["-m", "embedft.run", *s.common(root / "evil-resume", *steps), f"resume={ckpt}"],
            ):
                subprocess.run(
                    [sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, timeout=120
                )
            return "the pickle ran code" if marker.exists() else None

        s.record("crafted pickle checkpoint does not execute (encode, resume)", check)

    def bad_checkpoints():
        def check():
            text = root / "notes.ckpt"
            text.write_text("hello\n")
            good = s.reference("steps", *steps) / "checkpoints/last.ckpt"
            cut = root / "cut.ckpt"
            cut.write_bytes(good.read_bytes()[:2000])
            for path in (text, cut, root / "absent.ckpt"):
                result = s.run(s.common(root / f"resume-{path.stem}", *steps, f"resume={path}"))
                if result.returncode == 0 or f"resume={path}" not in result.stderr:
                    return f"resume={path.name}: no one-line error naming it"
            return None

        s.record("text/truncated/missing resume checkpoints: one clear error", check)

    runs = {
        "kill9_mid_run": lambda: s.killed_then_resumed(
            "kill9-step5", "kill_before_save", 5, *steps
        ),
        "kill9_early": lambda: s.killed_then_resumed("kill9-step2", "kill_before_save", 2, *steps),
        "kill9_after_checkpoint": lambda: s.killed_then_resumed(
            "kill9-after-ckpt", "kill_after_save", 6, *steps
        ),
        "kill9_epoch_run": lambda: s.killed_then_resumed(
            "kill9-epochs", "kill_before_save", 17, *epochs, ref_name="epochs"
        ),
        "sigterm": lambda: s.killed_then_resumed("sigterm", "sigterm", 4, *steps, expect_rc=143),
        "sigusr1": lambda: s.killed_then_resumed("sigusr1", "sigusr1", 7, *steps, expect_rc=143),
        "time_checkpoint": time_checkpoint,
        "wandb_resume": wandb_same_run,
        "dir_collision": dir_collision,
        "sweep_rerun": sweep_rerun,
        "nan": nan_training,
        "bad_data": bad_data,
        "hostile_pickle": hostile_pickle,
        "bad_checkpoints": bad_checkpoints,
        "bad_config": lambda: [
            s.fails_clearly(
                f"config rejected: {o}", s.common(root / f"cfg{i}", *o.split()), expect=e
            )
            for i, (o, e) in enumerate(
                [
                    ("loss.temperature=inf", "loss.temperature must be a finite number"),
                    ("optim.lr=nan", "optim.lr must be a finite number"),
                    (
                        "data.batch_size=1 loss.hard_neg=false",
                        "data.batch_size=1 with loss.hard_neg=false",
                    ),
                    ("+unknown.key=1", "unknown config key(s) ['unknown']"),
                ]
            )
        ],
    }
    if s.data_dir:
        runs["kill9_in_eval"] = lambda: s.killed_then_resumed(
            "kill9-in-eval", "kill_in_eval", 4, *dev, ref_name="dev"
        )
    return runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "child":
        child(argv[1], int(argv[2]), argv[4:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "experiments/results/fault_injection")
    parser.add_argument("--only", nargs="*", help="scenario names (default: all)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from embedft.paths import data_dir

    sts = data_dir()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="embedft-faults-") as tmp:
        suite = Suite(Path(tmp), str(sts) if (sts / "sts").is_dir() else None)
        if suite.data_dir is None:
            print(f"no STS data under {sts}: the kill-during-evaluation scenario is skipped")
        for name, run in scenarios(suite).items():
            if not args.only or name in args.only:
                run()
    held = sum(o["held"] for o in suite.outcomes)
    total = len(suite.outcomes)
    wall = time.perf_counter() - started
    summary = f"fault injection: {held} of {total} scenarios held ({wall:.0f} s)"
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fault_injection.json").write_text(
        json.dumps(
            {"summary": summary, "held": held, "total": total, "scenarios": suite.outcomes},
            indent=2,
        )
        + "\n"
    )
    return 0 if held == total else 1


if __name__ == "__main__":
    sys.exit(main())
