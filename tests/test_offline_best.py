"""experiments/offline_best.py's bookkeeping: which jobs it skips, what it records, the effect it reports.

No training runs here: job results are written by hand into a temporary results tree, and the
figures the script derives from them are checked against values computed by hand.
"""

import importlib.util
import json
import subprocess
import sys

import pytest

from embedft.paths import repo_root


@pytest.fixture
def ob(tmp_path, monkeypatch):
    """The script as a module, its run and result dirs moved under tmp_path."""
    path = repo_root() / "experiments" / "offline_best.py"
    spec = importlib.util.spec_from_file_location("offline_best", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RUNS", tmp_path / "multirun")
    monkeypatch.setattr(module, "OUT", tmp_path / "results")
    return module


def _write_job(root, stage, name, average, status="completed"):
    job = root / "jobs" / stage / name
    job.mkdir(parents=True)
    sts = {"STS12": average + 1.0, "SICK-R": average - 1.0, "average": average}
    (job / "results.json").write_text(json.dumps({"status": status, "sts": sts}))


def test_final_job_names_are_unique_and_carry_the_overrides_they_differ_by(ob):
    # When the final stage is listed
    jobs = ob.final_jobs()
    names = [n for n, _ in jobs]
    # Then every name is one job, and each names its model, hard-negative switch and seed
    assert len(names) == len(set(names))
    for name, overrides in jobs:
        assert overrides[0] == "experiment=offline_best"
        model = next(o.split("=")[1] for o in overrides if o.startswith("model="))
        seed = next(o.split("=")[1] for o in overrides if o.startswith("seed="))
        hard_neg = next(o.split("=")[1] for o in overrides if o.startswith("loss.hard_neg="))
        assert name.startswith(model) and name.endswith(f"hardneg_{hard_neg}-seed{seed}")
        # a check's overrides are the only ones beyond model, switch and seed; its name says which
        extra = [
            o for o in overrides[1:] if o.split("=")[0] not in ("model", "seed", "loss.hard_neg")
        ]
        check = [c for c, o in ob.CHECKS.items() if name == f"{model}-{c}-hardneg_true-seed{seed}"]
        assert extra == (ob.CHECKS[check[0]] if check else [])
    # every check runs with 3 seeds, the recipe's lr check keeps the name its finished runs have
    assert len(jobs) == 4 * len(ob.SEEDS) + len(ob.CHECKS) * len(ob.SEEDS)
    assert "gemma3_270m-lr_5e-4-hardneg_true-seed7" in names


def test_a_completed_copy_is_kept_and_not_rerun(ob, monkeypatch):
    # Given a completed job known only from its copy next to the report (a later sitting)
    _write_job(ob.OUT, "final", "gemma3_270m-hardneg_true-seed7", 78.0)
    monkeypatch.setattr(ob.subprocess, "run", lambda *a, **k: pytest.fail("job was rerun"))
    # When the runner reaches it, Then it returns the kept results without starting a process
    res = ob.run_job("final", "gemma3_270m-hardneg_true-seed7", [], sys.executable)
    assert res["sts"]["average"] == 78.0


def test_a_failed_copy_is_run_again(ob, monkeypatch):
    # Given a job whose copy says it failed
    _write_job(ob.OUT, "final", "smollm2-hardneg_true-seed7", 10.0, status="failed")
    calls = []

    def fake_run(cmd, **kwargs):
        if cmd[0] == "git":
            return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(ob.subprocess, "run", fake_run)
    monkeypatch.setattr(ob, "machine", lambda: {"cpu": "test"})
    # When the runner reaches it
    ob.run_job("final", "smollm2-hardneg_true-seed7", ["experiment=offline_best"], "py")
    # Then embedft.run is started in the job's own dir with resume=auto, and the attempt recorded
    assert len(calls) == 1
    assert f"hydra.run.dir={ob.RUNS / 'final' / 'smollm2-hardneg_true-seed7'}" in calls[0]
    assert "resume=auto" in calls[0]
    info = json.loads((ob.OUT / "run_info.json").read_text())
    (entry,) = info["jobs"]["smollm2-hardneg_true-seed7"]
    assert entry["exit_code"] == 0 and entry["stage"] == "final"


def test_hard_negative_effect_and_welch_test_by_hand(ob):
    # Given 3 seeds with hard negatives (78, 79, 80) and 3 without (76, 77, 78)
    for seed, (on, off) in zip(ob.SEEDS, [(78.0, 76.0), (79.0, 77.0), (80.0, 78.0)], strict=True):
        _write_job(ob.OUT, "final", f"gemma3_270m-hardneg_true-seed{seed}", on)
        _write_job(ob.OUT, "final", f"gemma3_270m-hardneg_false-seed{seed}", off)
    # When the effect is computed
    e = ob.hardneg_effect()["gemma3_270m"]
    # Then effect = 79 - 77 = 2, std 1 on each side; Welch's t = 2 / sqrt(1/3 + 1/3) = 2.449 on
    # 4 degrees of freedom: two-sided p = 0.0704 (t table)
    assert e["effect"] == pytest.approx(2.0)
    assert e["sd_on"] == pytest.approx(1.0) and e["sd_off"] == pytest.approx(1.0)
    assert e["p_welch"] == pytest.approx(0.0704, abs=5e-4)
    assert e["per_task_effect"] == {"STS12": pytest.approx(2.0), "SICK-R": pytest.approx(2.0)}
    # and with p > 0.05 the page says the effect does not exceed seed noise
    md = ob.hardneg_markdown(ob.hardneg_effect())
    assert "does not exceed seed noise" in md
    # A model without seeds on both sides gets counts only
    assert ob.hardneg_effect()["smollm2"] == {"seeds_on": 0, "seeds_off": 0}


def test_dirty_flag_ignores_the_result_files_the_runner_rewrites(ob, tmp_path, monkeypatch):
    # Given a repository whose only change is a rewritten file under experiments/results
    repo = tmp_path / "repo"
    (repo / "experiments" / "results").mkdir(parents=True)
    (repo / "embedft.py").write_text("x = 1\n")
    (repo / "experiments" / "results" / "run_info.json").write_text("{}\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    monkeypatch.setattr(ob, "REPO", repo)
    (repo / "experiments" / "results" / "run_info.json").write_text('{"jobs": {}}\n')
    # Then the tree is not dirty
    state = ob.git_state()
    assert state["dirty"] is False and len(state["commit"]) == 40
    # And a changed source file makes it dirty
    (repo / "embedft.py").write_text("x = 2\n")
    assert ob.git_state()["dirty"] is True


def test_the_mnli_trial_file_is_built_only_for_a_job_that_reads_it(ob, tmp_path, monkeypatch):
    # Given a checkout whose gold triplets exist but not the gold + noisy-MNLI file
    monkeypatch.setattr(ob, "REPO", tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "nli_triplets.csv").write_text("sent0,sent1,hard_neg\n")
    monkeypatch.setenv("EMBEDFT_DATA_DIR", str(tmp_path / "shared"))
    calls = []
    monkeypatch.setattr(ob.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    # When only jobs on the gold file are about to run, Then nothing is built
    ob.ensure_data("py", [ob.search_overrides(ob.SEARCH["base"]), *[o for _, o in ob.final_jobs()]])
    assert calls == []
    # When the MNLI trial is about to run, Then one prepare_nli call builds its file from every
    # default gold source plus the noisy MNLI file, written where the trial's data.path points
    ob.ensure_data("py", [ob.search_overrides(ob.SEARCH["data_plus_mnli_noisy"])])
    (cmd,) = calls
    assert cmd[:3] == ["py", "-m", "embedft.prepare_nli"] and cmd[-1] == f"out={ob.PLUS_MNLI}"
    inputs = cmd[3].removeprefix("inputs=[").removesuffix("]").split(",")
    from embedft.data.prepare_nli import DEFAULT_SOURCES

    shared = tmp_path / "shared"
    expected = [f"{fmt}:{shared / rel}" for _, fmt, rel in DEFAULT_SOURCES]
    assert inputs == [*expected, f"generic:{shared / ob.MNLI_NOISY}"]
