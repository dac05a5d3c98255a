"""``eval.backend=mteb``: score with the mteb package's own STS tasks and evaluator.

Needs ``pip install 'embedft[mteb]'`` (mteb 2.x); ``embedft.evaluate`` checks that before any
data or model loads (``require_mteb``). ``evaluate_with_mteb`` then runs ``mteb.evaluate`` on

* the tasks: ``mteb.get_task(<row name>, hf_subsets=[<row's mteb_subset>])`` (STS17: en-en),
  each handed embedft's pairs of that task as its ``dataset`` (``{hf_subset: {"test":
  Dataset(sentence1, sentence2, score)}}``, ``data_loaded``), so mteb downloads nothing: the
  offline copies under ``paths.data_dir``, or with ``eval.source=hub`` the hub dataset at the
  revision MTEB pins. The 9 tasks load that hub dataset as it is (no ``dataset_transform``), so
  this is the data mteb would load itself (``tests/test_mteb_backend.py`` checks the revisions and
  that no task transforms its data);
* the model: an embedft ``Embedder`` wrapped as an mteb encoder (``EmbedftEncoder``: texts ->
  ``embedft.eval.encoder.encode_texts``, cosine similarity), a sentence-transformers model in
  mteb's own ``SentenceTransformerEncoderWrapper``; both named as ``embedft.eval.mteb_results``
  names them, so both backends write into the same folder.

mteb writes its result files itself (a ``ResultCache`` at ``<out>/mteb``). Its scores come back
as fractions; ``embedft.evaluate`` turns them into embedft's table (x 100). Both backends agree
(``tests/test_mteb_backend.py``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedft.config import ConfigError
from embedft.eval.encoder import encode_texts
from embedft.eval.mteb_results import MTEB_DIR, MtebModel, model_meta
from embedft.eval.sts import STS_METRICS, StsPairs, paired_cosine_similarity
from embedft.eval.tasks import get_task

INSTALL = "pip install 'embedft[mteb]' (or pip install 'mteb>=2,<3')"


def require_mteb() -> None:
    """Fail at once, naming the extra, when mteb is not installed."""
    if importlib.util.find_spec("mteb") is None:
        raise ConfigError(f"eval.backend=mteb needs the mteb package: {INSTALL}")


class EmbedftEncoder:
    """An embedft ``Embedder`` as mteb's ``EncoderProtocol``: mteb's batches -> embedft's encoder.

    mteb hands over a DataLoader of ``{"text": [...]}`` batches; they are flattened and encoded
    by ``encode_texts`` (deduplicated, longest first, ``batch_size`` from mteb's encode kwargs,
    which ``evaluate_with_mteb`` sets to ``eval.batch_size``). Similarity is cosine.
    """

    def __init__(self, embedder: Any, described: MtebModel) -> None:
        from mteb.models import ModelMeta

        self.embedder = embedder
        self.mteb_model_meta = ModelMeta.model_validate(model_meta(described))

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        batch_size = kwargs.get("batch_size", 64)
        progress = bool(kwargs.get("show_progress_bar", False))
        return encode_texts(self.embedder, texts, batch_size, progress).numpy()  # (N, H)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        a, b = _unit(embeddings1), _unit(embeddings2)
        return a @ b.T  # (N1, N2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        # embedft's arithmetic (sklearn's), so that near-ties rank as embedft ranks them
        cosine = paired_cosine_similarity(np.asarray(embeddings1), np.asarray(embeddings2))
        return torch.from_numpy(cosine)  # (N,)


def evaluate_with_mteb(
    model: Any,
    pairs: dict[str, StsPairs],
    described: MtebModel,
    out_dir: str | Path,
    batch_size: int = 64,
    show_progress: bool = False,
) -> dict[str, dict[str, float]]:
    """mteb's scores (fractions) of each task in ``pairs`` (test split), in ``pairs``' order;
    mteb writes its result files under ``<out_dir>/mteb``."""
    import mteb

    tasks = [_task_with_data(p) for p in pairs.values()]
    result = mteb.evaluate(
        _as_encoder(model, described),
        tasks,
        cache=mteb.ResultCache(cache_path=Path(out_dir) / MTEB_DIR),
        overwrite_strategy="always",  # the run directory is this evaluation's own
        co2_tracker=False,  # codecarbon, where installed, would look up the machine online
        encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress},
        show_progress_bar=show_progress,
    )
    by_task = {r.task_name: r for r in result.task_results}
    metrics: dict[str, dict[str, float]] = {}
    for name in pairs:
        subset = get_task(name).mteb_subset
        (scores,) = [s for s in by_task[name].scores["test"] if s["hf_subset"] == subset]
        metrics[name] = {metric: float(scores[metric]) for metric in STS_METRICS}
    return metrics


def _task_with_data(pairs: StsPairs) -> Any:
    """mteb's task of ``pairs.task``, holding those pairs as its loaded dataset."""
    import mteb
    from datasets import Dataset, DatasetDict

    subset = get_task(pairs.task).mteb_subset
    task = mteb.get_task(pairs.task, hf_subsets=[subset])
    columns = {"sentence1": pairs.sentences1, "sentence2": pairs.sentences2, "score": pairs.scores}
    task.dataset = {subset: DatasetDict({"test": Dataset.from_dict(columns)})}
    task.data_loaded = True
    return task


def _as_encoder(model: Any, described: MtebModel) -> Any:
    if hasattr(model, "embed"):  # an embedft Embedder
        return EmbedftEncoder(model, described)
    from mteb.models import SentenceTransformerEncoderWrapper

    wrapper = SentenceTransformerEncoderWrapper(model)
    naming = {"name": described.name, "revision": described.revision}
    wrapper.mteb_model_meta = wrapper.mteb_model_meta.model_copy(update=naming)
    return wrapper


def _unit(x: Any) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.as_tensor(np.asarray(x), dtype=torch.float32), dim=-1
    )
