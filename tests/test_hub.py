"""``embedft.hub``: pushing an export, with ``huggingface_hub.HfApi`` replaced by a recorder (no
network here); an export pushed end to end: tests/test_export.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import constants

import embedft.hub as hub
from embedft.hub import HubError, check_can_push, push_export


class RecordingApi:
    """Stands in for ``HfApi``: records each call and the files of the folder being uploaded."""

    calls: list[tuple[str, dict]] = []
    fail_with: Exception | None = None

    def create_repo(self, repo_id, **kwargs):
        RecordingApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        if RecordingApi.fail_with is not None:
            raise RecordingApi.fail_with
        folder = Path(kwargs["folder_path"])
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        RecordingApi.calls.append(("upload_folder", {**kwargs, "files": files}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/1")


@pytest.fixture
def online(monkeypatch):
    """The hub reachable with a token, its API recorded instead of called."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "get_token", lambda: "hf_test_token")
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    RecordingApi.calls, RecordingApi.fail_with = [], None
    return RecordingApi


@pytest.fixture
def export_dir(tmp_path):
    out = tmp_path / "my-model"
    (out / "adapter").mkdir(parents=True)
    (out / "README.md").write_text("card")
    (out / "adapter" / "adapter_config.json").write_text("{}")
    return out


def test_push_creates_the_repo_and_uploads_the_folder_in_one_commit(online, export_dir):
    url = push_export(export_dir, "me/my-model", private=True, commit_message="first")
    assert url == "https://huggingface.co/me/my-model/commit/1"
    (create, args), (upload, kwargs) = online.calls
    assert (create, args["repo_id"], args["private"], args["exist_ok"]) == (
        "create_repo",
        "me/my-model",
        True,
        True,
    )
    assert upload == "upload_folder" and kwargs["repo_id"] == "me/my-model"
    assert Path(kwargs["folder_path"]) == export_dir
    assert kwargs["files"] == ["README.md", "adapter/adapter_config.json"]
    assert kwargs["commit_message"] == "first" and kwargs["delete_patterns"] == "*"


def test_a_failed_upload_is_one_error_naming_the_repo_and_keeps_the_export(online, export_dir):
    online.fail_with = ConnectionError("Failed to resolve 'huggingface.co'\nmore detail")
    with pytest.raises(HubError) as err:
        push_export(export_dir, "me/my-model")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("push_to_hub=me/my-model failed (ConnectionError: Failed to resolve")
    assert "nothing was committed" in message and str(export_dir) in message
    assert (export_dir / "README.md").read_text() == "card"


def test_offline_mode_is_refused_before_anything_else(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"^push_to_hub=me/x: the hub is in offline mode"):
        check_can_push("me/x")


def test_no_token_is_refused(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(HubError, match="no Hugging Face token; set HF_TOKEN"):
        check_can_push("me/x")


@pytest.mark.parametrize("repo_id", ["no-owner", "me/bad name", "me/x/y", ""])
def test_a_malformed_repo_id_is_refused(repo_id):
    with pytest.raises(ValueError, match="push_to_hub="):
        check_can_push(repo_id)
