"""The built wheel is a working package: configs inside, extras optional, every tool runs.

The fast test builds the wheel (``pip wheel --no-deps --no-build-isolation``, a few seconds) from
a copy of the files a build reads, and checks what it holds. The slow test installs it into a
fresh venv, non-editable, and runs the tools from a directory outside the checkout. That venv
sees the dependencies of the venv running the tests through a ``.pth`` line (no network); a
path line's own ``.pth`` files are not run, so the checkout's editable install stays invisible
and ``embedft`` is the wheel's.
"""

from __future__ import annotations

import csv
import email
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from embedft.extras import EXTRAS
from embedft.paths import repo_root

BUILD_INPUTS = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "LICENSE",
    "embedft",
    "conf",
)
TOOLS = ("run", "evaluate", "export", "encode", "report", "prepare_nli")
NOT_CORE = (
    "wandb",
    "gguf",
    "matplotlib",
    "hydra-submitit-launcher",
    "mteb",
    "pandas",
    "accelerate",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from this checkout (from a copy: the build writes build/ and egg-info)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        path = repo_root() / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    # No build warnings (the licence table, data-only packages ...): pip -q shows only those
    assert "Warning" not in built.stderr, built.stderr
    (path,) = out.glob("embedft-*.whl")
    return path


def test_the_wheel_carries_every_config_and_only_the_package(wheel):
    # Given the built wheel
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        # Then every yaml under conf/ is inside as embedft/conf/..., byte for byte
        configs = sorted((repo_root() / "conf").rglob("*.yaml"))
        assert len(configs) > 30
        for path in configs:
            inside = "embedft/conf/" + path.relative_to(repo_root() / "conf").as_posix()
            assert z.read(inside) == path.read_bytes(), inside
        assert {n for n in names if n.startswith("embedft/conf/")} == {
            "embedft/conf/" + p.relative_to(repo_root() / "conf").as_posix() for p in configs
        }
        meta = email.message_from_bytes(z.read("embedft-0.1.0.dist-info/METADATA"))
        scripts = z.read("embedft-0.1.0.dist-info/entry_points.txt").decode()
    # And only the package (no tests, experiments or data) plus the licence
    assert {n.split("/")[0] for n in names} == {"embedft", "embedft-0.1.0.dist-info"}
    assert "embedft-0.1.0.dist-info/licenses/LICENSE" in names
    assert meta["License-Expression"] == "Apache-2.0"
    # And optional features are extras, not core requirements
    core = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert not [r for r in core if r.split("<")[0].split(">")[0].strip() in NOT_CORE]
    assert set(EXTRAS) | {"all", "offline", "dev"} == set(meta.get_all("Provides-Extra"))
    every = ",".join(sorted(EXTRAS))
    assert f'embedft[{every}]; extra == "all"' in meta.get_all("Requires-Dist")
    # And each tool has a console script
    for tool in TOOLS:
        assert f"embedft-{tool.replace('_', '-')} = embedft.{tool}:" in scripts


def _venv_with_wheel(wheel: Path, root: Path) -> Path:
    """A fresh venv holding the wheel (non-editable); dependencies from this venv via .pth."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "embedft_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_the_installed_wheel_trains_and_every_tool_runs_outside_the_checkout(wheel, tmp_path):
    # Given the wheel in a fresh venv and a working directory outside the checkout
    venv = _venv_with_wheel(wheel, tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    with open(work / "triplets.csv", "w", newline="") as f:
        rows = [("a man plays guitar", "a man makes music", "nobody plays")] * 4
        rows += [("a dog runs outside", "a dog is in the park", "a cat sleeps inside")] * 4
        csv.writer(f).writerows([("sent0", "sent1", "hard_neg"), *rows])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    env.pop("PYTHONPATH", None)
    env["EMBEDFT_CACHE_DIR"] = str(tmp_path / "cache")

    def call(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{argv}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done

    python = str(venv / "bin" / "python")
    # Then embedft is the wheel's, with its configs inside the installed package
    where = call(python, "-c", "import embedft.paths as p; print(p.conf_dir(), p.installed())")
    conf, installed = where.stdout.split()
    assert installed == "True" and Path(conf).is_relative_to(venv)
    # And a tiny training job runs (data.path relative to the current directory)
    call(
        python, "-m", "embedft.run", "model=tiny_llama", "debug=fdr", "data=local",
        "data.path=triplets.csv", "data.batch_size=4", "hydra.run.dir=run",
    )  # fmt: skip
    results = json.loads((work / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["train"]["global_step"] == 2
    # And every other tool composes its own config (--help lists that tool's keys)
    for tool, key in [
        ("evaluate", "ckpt="),
        ("export", "ckpt="),
        ("encode", "input="),
        ("report", "dirs="),
        ("prepare_nli", "inputs="),
    ]:
        assert key in call(python, "-m", f"embedft.{tool}", "--help").stdout, tool
    # And the console scripts work as the modules do
    exported = call(
        str(venv / "bin" / "embedft-export"), "ckpt=run/checkpoints/last.ckpt", "out=exported"
    )
    assert (work / "exported" / "config.json").is_file(), exported.stderr[-2000:]
    assert "plots=" in call(str(venv / "bin" / "embedft-report"), "--help").stdout
