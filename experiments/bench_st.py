"""The sentence-transformers side of ``bench_train.py``: the same LoRA step with its own trainer.

``worker_st`` trains ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss`` on the
same triplets, batch size, max length, optimizer and dtype as embedft's worker (the settings and
why they match: ``bench_train.py``'s docstring), and prints the result line ``bench_common.finish``
writes.
"""

from __future__ import annotations

import tempfile
import time

import flops  # experiments/flops.py
from bench_common import embedft_config, finish, read_triplets


def worker_st(args) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer import losses, modules
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    from embedft.model.sources import resolve_model_dir

    cfg = embedft_config(args, args.override)  # the same model/LoRA/optimizer settings
    started_load = time.perf_counter()
    torch.manual_seed(cfg.seed)
    transformer = modules.Transformer(
        resolve_model_dir(cfg.model),
        max_seq_length=cfg.model.max_length,
        # Text only: without a "message" modality ST does not wrap text in the chat template.
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
        model_kwargs={
            "dtype": torch.bfloat16 if args.dtype == "bfloat16" else torch.float32,
            "attn_implementation": cfg.model.attn_implementation,
        },
    )
    tok = transformer.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    pooling = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    model = SentenceTransformer(modules=[transformer, pooling], device=args.device)
    peft_cfg = PeftLoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules or cfg.model.lora_target_modules),
        init_lora_weights=cfg.lora.init,
        bias="none",
    )
    try:
        model.add_adapter(peft_cfg)
        lora_path = "SentenceTransformer.add_adapter"
    except (ImportError, ValueError) as err:
        model[0].model = get_peft_model(model[0].auto_model, peft_cfg)
        lora_path = f"peft.get_peft_model on model[0].auto_model (add_adapter refused: {err})"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    rows = read_triplets(args.steps * args.batch_size)
    eos = tok.eos_token
    columns = {
        "anchor": [r["sent0"] + eos for r in rows],
        "positive": [r["sent1"] + eos for r in rows],
        "negative": [r["hard_neg"] + eos for r in rows],
    }
    # A text cut at max_length loses its EOS here (embedft keeps it): count them; the
    # comparison is exact only when none is.
    tokens, padded, counted, at_limit = [], [], [], 0
    targets = list(cfg.lora.target_modules or cfg.model.lora_target_modules)
    for s in range(0, len(rows), args.batch_size):
        masks = [
            model.preprocess(c[s : s + args.batch_size])["attention_mask"] for c in columns.values()
        ]
        tokens.append(int(sum(m.sum() for m in masks)))
        lengths = torch.cat([m.sum(dim=1) for m in masks]).tolist()
        counted.append(
            flops.step_flops(transformer.auto_model.config, lengths, cfg.lora.r, targets)
        )
        at_limit += sum(int((m.sum(dim=1) >= args.max_length).sum()) for m in masks)
        # ST embeds the anchors alone and the positives + negatives in one merged forward.
        widths = [masks[0].shape[1], max(m.shape[1] for m in masks[1:])]
        padded.append(masks[0].shape[0] * widths[0] + 2 * masks[1].shape[0] * widths[1])

    # The first batch's loss before training, dropout off: the check that both compute Eq. 1 on
    # the same embeddings (LoRA B starts at zero, so both are the base model here).
    loss = losses.MultipleNegativesRankingLoss(model, scale=1.0 / cfg.loss.temperature)
    model.eval()
    with torch.no_grad():
        first = [
            model.encode(c[: args.batch_size], batch_size=args.batch_size, convert_to_tensor=True)
            for c in columns.values()
        ]
        loss_at_init = round(float(loss.compute_loss_from_embeddings(first, None)), 5)
    model.train()

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.started, self.ends = 0.0, []

        def on_train_begin(self, *a, **k) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k) -> None:
            self.ends.append(time.perf_counter())

    timer = Timer()
    out_dir = tempfile.mkdtemp(prefix="bench-st-")
    training_args = SentenceTransformerTrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup_steps=cfg.optim.warmup_steps,
        lr_scheduler_type="cosine",
        optim="adamw_torch",
        max_grad_norm=0.0,  # embedft clips nothing by default either
        seed=cfg.seed,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_drop_last=True,
        dataloader_num_workers=0,
        use_cpu=args.device == "cpu",
        bf16=args.dtype == "bfloat16",  # bf16 autocast, as embedft's bf16 step
        batch_sampler=lambda dataset, batch_size, drop_last, **_: DefaultBatchSampler(
            SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last
        ),
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_dict(columns),
        loss=loss,
        callbacks=[timer],
    )
    load_s = time.perf_counter() - started_load
    trainer.train()
    result = {
        "framework": "st",
        "dtype": args.dtype,
        "variant": "MNRL",
        "lora": lora_path,
        "trainable_params": trainable,
        "load_s": round(load_s, 1),
        "loss_at_init": loss_at_init,
        "texts_at_max_length": at_limit,
        "tokens_per_step": tokens,
        "padded_per_step": padded,
        "flops_per_step": counted,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": args.loadavg_start,
    }
    finish(result, timer.ends, timer.started, args)
