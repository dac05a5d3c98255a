"""Where embedft finds its configs and data: in a checkout, and installed from its wheel."""

from __future__ import annotations

from pathlib import Path

from embedft import paths


def test_in_a_checkout_the_configs_are_the_top_level_conf():
    # Given the tests run from a checkout (editable install or PYTHONPATH)
    checkout = Path(__file__).resolve().parent.parent
    # Then conf/ beside the package is the config dir and the checkout is the project root
    assert not paths.installed()
    assert paths.conf_dir() == checkout / "conf"
    assert paths.repo_root() == checkout
    assert (paths.conf_dir() / "run.yaml").is_file()


def test_installed_the_configs_are_inside_the_package_and_paths_start_at_the_cwd(
    tmp_path, monkeypatch
):
    # Given a package laid out as the wheel installs it: site-packages/embedft/conf/*.yaml
    package = tmp_path / "site-packages" / "embedft"
    (package / "conf").mkdir(parents=True)
    (package / "conf" / "run.yaml").write_text("defaults: []\n")
    monkeypatch.setattr(paths, "_PACKAGE", package)
    work = tmp_path / "work" / "project"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("EMBEDFT_DATA_DIR", raising=False)
    # Then the package's own conf/ is used, relative paths start at the current directory and
    # the data dir defaults to ../shared/data from there
    assert paths.installed()
    assert paths.conf_dir() == package / "conf"
    assert paths.repo_root() == work
    assert paths.data_dir() == tmp_path / "work" / "shared" / "data"


def test_embedft_data_dir_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDFT_DATA_DIR", str(tmp_path / "data"))
    assert paths.data_dir() == tmp_path / "data"
