"""Publish an export on the Hugging Face hub: ``python -m embedft.export ... push_to_hub=<repo>``.

``check_can_push`` runs before the export loads anything and refuses, in one line, what cannot
work: a malformed repo id, offline mode (``HF_HUB_OFFLINE=1``), no token (``$HF_TOKEN`` or
``hf auth login``). ``push_export`` then creates the repo if needed and uploads the export
directory in a single commit (``HfApi.upload_folder``): the hub gets every file or none, and
files of an earlier upload that the export no longer has are removed in the same commit. Any
failure (no network, refused token, quota) is a ``HubError`` naming the repo and the cause; the
local export is left as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

log = logging.getLogger(__name__)


class HubError(RuntimeError):
    """Pushing to the hub cannot work or failed; the message names the repo and the cause."""


def check_repo_id(repo_id: str) -> None:
    """``repo_id`` must be ``<user or org>/<name>`` in the hub's characters."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"push_to_hub={repo_id!r} is not a hub repo id ({err})") from None
    if "/" not in repo_id:
        raise ValueError(f"push_to_hub={repo_id!r} must be <user or org>/<name>")


def check_can_push(repo_id: str) -> None:
    """Refuse a push that cannot work, before any expensive work."""
    check_repo_id(repo_id)
    if constants.is_offline_mode():
        raise HubError(
            f"push_to_hub={repo_id}: the hub is in offline mode (HF_HUB_OFFLINE=1); unset it to "
            "push, or leave push_to_hub out to export locally only"
        )
    if not get_token():
        raise HubError(
            f"push_to_hub={repo_id}: no Hugging Face token; set HF_TOKEN or run `hf auth login`"
        )


def push_export(
    directory: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str | None = None,
) -> str:
    """Upload the export ``directory`` to the model repo ``repo_id``; returns the commit URL."""
    check_can_push(repo_id)
    directory = Path(directory)
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(directory),
            repo_type="model",
            commit_message=commit_message or f"embedft export {directory.name}",
            delete_patterns="*",  # the repo holds this export only (.gitattributes is kept)
        )
    except Exception as err:  # network, HTTP and hub errors alike: one line, the cause kept
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(
            f"push_to_hub={repo_id} failed ({type(err).__name__}: {reason}); nothing was "
            f"committed and the local export {directory} is kept"
        ) from err
    url = getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    log.info("pushed %s to %s", directory, url)
    return url
