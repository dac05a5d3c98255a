"""experiments/quickstart.py writes its before/after numbers to a result file.

The real quickstart trains SmolLM2 for minutes; here model loading, scoring and training are
replaced by stand-ins so that only what the script records is checked.
"""

from __future__ import annotations

import importlib.util
import json

from embedft.paths import repo_root
from embedft.results import Results


def _load_quickstart():
    path = repo_root() / "experiments" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_writes_before_after_wall_time_machine_and_commit(tmp_path, monkeypatch):
    # Given the quickstart with its model, scoring and training replaced by stand-ins
    quickstart = _load_quickstart()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "nli_triplets.csv").write_text("sent0,sent1,hard_neg\n")
    result_file = tmp_path / "results" / "quickstart.json"
    monkeypatch.setattr(quickstart, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(quickstart, "RESULT_FILE", result_file)
    monkeypatch.setattr(quickstart, "build_embedder", lambda *a, **k: object())
    monkeypatch.setattr(quickstart, "evaluate_sts", lambda *a, **k: {"STSBenchmark": 17.8123})
    trained = Results(
        "train", sts={"STSBenchmark": 46.1519}, train={"global_step": 60, "wall_time_s": 9.5}
    )
    monkeypatch.setattr(quickstart, "train", lambda dcfg: trained)
    monkeypatch.setattr(quickstart, "git_state", lambda: {"git_commit": "abc", "git_dirty": False})

    # When it runs with one extra override
    quickstart.main(["trainer.max_steps=60"])

    # Then the result file holds both scores, the budget, the wall time, the machine, the commit
    result = json.loads(result_file.read_text())
    assert (result["model"], result["task"], result["split"]) == ("smollm2", "STSBenchmark", "test")
    assert (result["before"], result["after"], result["steps"]) == (17.8123, 46.1519, 60)
    assert (
        result["overrides"][-1] == "trainer.max_steps=60" and "model=smollm2" in result["overrides"]
    )
    assert result["wall_time_s"] >= 0 and result["train_wall_time_s"] == 9.5
    assert (result["git_commit"], result["git_dirty"]) == ("abc", False)
    assert result["machine"]["cores"] >= 1 and result["machine"]["torch"]
    assert len(result["loadavg_start"]) == len(result["loadavg_end"]) == 3
    assert result["run_dir"].startswith("outputs/quickstart/")
    assert [p.name for p in result_file.parent.iterdir()] == ["quickstart.json"]  # no temp left
