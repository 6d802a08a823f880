"""Training of the GDR model, under Hugging Face Accelerate.

The loss of each example (a query and one relevant document) is

    cid_weight * CE(CID of the document's leaf | query)
  + contrastive_weight * InfoNCE(query vector; the document vector against
        up to ``cluster_negatives`` documents of the same leaf and the other
        positives of the batch), at ``temperature``
  + rdrop_weight * symmetric KL between two dropout passes of the CID decoder (R-Drop, as in NCI)

Document vectors stay frozen (they are the index's vectors). Training examples are the
training questions with their relevant documents plus pseudo-queries from every passage.
The same code runs on one CPU, one GPU, or across processes under ``accelerate launch`` or
``torchrun``. It writes a checkpoint every ``checkpoint_every`` steps and resumes from the last one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, Iterable, List, Literal, Optional, Tuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pyterrier_gdr._util import atomic_write_json, resolve_encoder
from pyterrier_gdr.negatives import ClusterNegativeSampler
from pyterrier_gdr.pseudo_queries import span_queries

__all__ = ["TrainingConfig", "train_gdr", "training_examples"]

logger = logging.getLogger(__name__)

MixedPrecision = Literal["no", "bf16", "fp16"]


@dataclass
class TrainingConfig:
    """Hyperparameters of GDR training; saved with the model."""

    epochs: float = field(default=3.0, metadata={"help": "passes over the training examples (fractions allowed)"})
    batch_size: int = field(default=64, metadata={"help": "examples per step and process; also the in-batch negatives"})
    learning_rate: float = field(default=5e-5, metadata={"help": "learning rate of the pretrained encoder and the query head"})
    decoder_learning_rate: float = field(default=1e-3, metadata={"help": "learning rate of the freshly initialised CID decoder"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps with linear warm-up"})
    cid_weight: float = field(default=1.0, metadata={"help": "weight of the CID cross-entropy"})
    contrastive_weight: float = field(default=1.0, metadata={"help": "weight of the InfoNCE loss of the query vector"})
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature (0.05 in the GDR paper)"})
    cluster_negatives: int = field(default=10, metadata={"help": "hard negatives per example, drawn from the positive's own leaf"})
    in_batch_negatives: bool = field(default=True, metadata={"help": "use the batch's other positives as negatives"})
    rdrop_weight: float = field(default=0.0, metadata={"help": "R-Drop consistency weight (0.15 in NCI/GDR); doubles decoder passes"})
    pseudo_queries_per_doc: int = field(default=2, metadata={"help": "word-span pseudo-queries per passage (0 for none)"})
    pseudo_query_words: int = field(default=12, metadata={"help": "words per pseudo-query span"})
    query_word_dropout: float = field(default=0.0, metadata={"help": "chance of dropping each word of a training query (corrupted-query augmentation)"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "stop after this many steps, whatever the epochs"})
    decoder_layers: int = field(default=2, metadata={"help": "transformer layers of the new CID decoder"})
    model_encoder: Optional[str] = field(default=None, metadata={"help": "encoder of the GDR model; the index's document encoder when unset (e.g. 't5-base')"})
    query_pooling: Literal["mean", "first"] = field(default="mean", metadata={"help": "query vector pooling: 'mean' or 'first' (first token)"})
    mixed_precision: MixedPrecision = field(default="no", metadata={"help": "'no', 'bf16' or 'fp16' (GPUs)"})
    checkpoint_every: int = field(default=200, metadata={"help": "steps between checkpoints (0 disables them)"})
    seed: int = field(default=0, metadata={"help": "seed of shuffling, sampling and initialisation"})

    def __post_init__(self):
        positive = ("epochs", "batch_size", "learning_rate", "decoder_learning_rate", "temperature", "pseudo_query_words", "decoder_layers")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} is invalid; it must be positive")
        for name in ("cid_weight", "contrastive_weight", "rdrop_weight", "weight_decay", "cluster_negatives", "pseudo_queries_per_doc", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} is invalid; it must be non-negative")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} is invalid; it must be in [0, 1)")
        if not 0 <= self.query_word_dropout < 1:
            raise ValueError(f"query_word_dropout={self.query_word_dropout} is invalid; it must be in [0, 1)")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is invalid; valid: 'no', 'bf16', 'fp16'")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} is invalid; it must be positive or unset")

    @classmethod
    def from_dict(cls, values: Dict) -> "TrainingConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**values)

    def fingerprint(self) -> str:
        """Return a short hash of the settings, which names checkpoints and caches."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def training_examples(index, topics: pd.DataFrame, qrels: pd.DataFrame, corpus: Optional[Iterable[dict]], config: TrainingConfig) -> Tuple[List[str], np.ndarray, Dict[str, List[int]]]:
    """Return ``(queries, positive_doc_ids, relevant_ids_by_query)`` for training.

    Every relevant (label > 0) pair of ``qrels`` whose query is in ``topics`` and whose
    document is in the index gives one example; every passage of ``corpus`` gives
    ``pseudo_queries_per_doc`` more.

    Raises:
        ValueError: when no training example results.
    """
    queries: List[str] = []
    positives: List[int] = []
    relevant: Dict[str, List[int]] = {}
    if len(topics):
        if "query" not in topics.columns:
            raise ValueError(f"training topics need a 'query' column; found {list(topics.columns)}")
        text_of = dict(zip(topics["qid"].astype(str), topics["query"]))
        judged = qrels[(qrels["label"] > 0) & qrels["qid"].astype(str).isin(text_of)]
        doc_ids = index.doc_ids(judged["docno"].astype(str).tolist())
        missing = int((doc_ids < 0).sum())
        if missing:
            logger.warning("%d relevant documents of the training qrels are not in the index and were skipped", missing)
        for qid, doc_id in zip(judged["qid"].astype(str), doc_ids):
            if doc_id < 0:
                continue
            queries.append(text_of[qid])
            positives.append(int(doc_id))
            relevant.setdefault(text_of[qid], []).append(int(doc_id))
    if config.pseudo_queries_per_doc > 0:
        if corpus is None:
            raise ValueError("pseudo_queries_per_doc > 0 needs the corpus; pass corpus= (documents with docno, text, title)")
        pairs = list(span_queries(corpus, per_doc=config.pseudo_queries_per_doc, span_words=config.pseudo_query_words, seed=config.seed))
        doc_ids = index.doc_ids([docno for _, docno in pairs])
        for (query, _), doc_id in zip(pairs, doc_ids):
            if doc_id >= 0:
                queries.append(query)
                positives.append(int(doc_id))
    if not queries:
        raise ValueError(
            "no training examples: the topics have no relevant documents in the index and pseudo-queries are off; "
            "give training questions with qrels, or set pseudo_queries_per_doc > 0 with the corpus"
        )
    return queries, np.asarray(positives, dtype=np.int64), relevant


def _corrupt(query: str, dropout: float, rng: random.Random) -> str:
    if dropout <= 0:
        return query
    words = query.split()
    kept = [w for w in words if rng.random() >= dropout]
    return " ".join(kept) if kept else query


def _contrastive_loss(query_vectors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, negative_mask: torch.Tensor, in_batch: bool, temperature: float, positive_ids: torch.Tensor) -> torch.Tensor:
    """InfoNCE with the positive first, then cluster negatives, then (optionally) the batch's other positives.

    Shapes: query_vectors, positives ``(B, d)``; negatives ``(B, n, d)``; negative_mask ``(B, n)``.
    """
    positive_scores = (query_vectors * positives).sum(-1, keepdim=True)  # (B, 1)
    cluster_scores = torch.einsum("bd,bnd->bn", query_vectors, negatives).masked_fill(~negative_mask, float("-inf"))  # (B, n)
    parts = [positive_scores, cluster_scores]
    if in_batch:
        batch_scores = query_vectors @ positives.T  # (B, B)
        same_doc = positive_ids[:, None] == positive_ids[None, :]  # the own positive and duplicates are not negatives
        parts.append(batch_scores.masked_fill(same_doc, float("-inf")))
    logits = torch.cat(parts, dim=1) / temperature
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def _batch_rows(num_examples: int, step: int, steps_per_epoch: int, config: TrainingConfig, rank: int, world: int) -> np.ndarray:
    """Return this process's example rows for ``step``: its share of the step's global batch in the epoch's permutation."""
    epoch, position = divmod(step, steps_per_epoch)
    permutation = np.random.default_rng([config.seed, epoch]).permutation(num_examples)
    global_batch = permutation[position * config.batch_size * world:(position + 1) * config.batch_size * world]
    rows = global_batch[rank * config.batch_size:(rank + 1) * config.batch_size]
    if len(rows) == 0:  # the epoch's last global batch may not reach every process
        rows = permutation[:config.batch_size]
    return rows


def _checkpoint_dir(index, config: TrainingConfig) -> Path:
    return index.path / "training" / f"checkpoint-{config.fingerprint()}"


def train_gdr(index, topics: pd.DataFrame, qrels: pd.DataFrame, *, corpus: Optional[Iterable[dict]] = None, config: Optional[TrainingConfig] = None, verbose: bool = True):
    """Train a GDR model for ``index`` and install it as ``index/model`` (see :meth:`GDRIndex.train`)."""
    import pyterrier as pt
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from transformers import get_linear_schedule_with_warmup

    from pyterrier_gdr.model import GDRModel

    config = config or TrainingConfig()
    tree = index.tree
    codec = tree.codec()
    # Some encoder parameters (e.g. BERT's pooler) take no part in the loss, so DDP must expect unused parameters.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available() or index.device == "cpu",
        mixed_precision=config.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(config.seed)

    # Examples and the frozen document vectors they are scored against.
    queries, positives, relevant = training_examples(index, topics, qrels, corpus, config)
    labels = tree.leaf_tokens(tree.doc_leaf[positives])  # (N, max_depth + 1)
    logger.info("training on %d examples (%d from questions)", len(queries), sum(len(v) for v in relevant.values()))

    model = GDRModel.from_encoder(
        resolve_encoder(config.model_encoder) if config.model_encoder else index.encoder_path,
        vocab_size=codec.vocab_size,
        max_cid_length=tree.max_depth + 1,
        query_dim=index.meta["vec_size"],
        decoder_layers=config.decoder_layers,
        query_pooling=config.query_pooling,
    )
    decoder_params = list(model.seq2seq.decoder.parameters())
    decoder_ids = {id(p) for p in decoder_params}
    other_params = [p for p in model.parameters() if id(p) not in decoder_ids]
    optimizer = torch.optim.AdamW(
        [
            {"params": other_params, "lr": config.learning_rate},
            {"params": decoder_params, "lr": config.decoder_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(queries) / (config.batch_size * accelerator.num_processes))
    total_steps = max(1, int(round(steps_per_epoch * config.epochs)))
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.register_for_checkpointing(_StepCounter())
    counter = accelerator._custom_objects[-1]

    # Resume from the last checkpoint of the same settings, if any.
    checkpoint = _checkpoint_dir(index, config)
    if (checkpoint / "state").exists():
        accelerator.load_state(str(checkpoint / "state"))
        logger.info("resumed training from %s at step %d", checkpoint, counter.step)

    vectors = index.vectors
    unwrapped = accelerator.unwrap_model(model)
    model.train()
    started = time.perf_counter()
    progress = pt.tqdm(total=total_steps, initial=counter.step, desc="training GDR", unit="step", disable=not (verbose and accelerator.is_main_process))
    last_loss = {}
    while counter.step < total_steps:
        # The examples of a step depend on the seed, the epoch and the step alone, so a resumed
        # run trains on exactly the batches, negatives and corruptions of an uninterrupted one.
        rows = _batch_rows(len(queries), counter.step, steps_per_epoch, config, accelerator.process_index, accelerator.num_processes)
        step_seed = [config.seed, counter.step, accelerator.process_index]
        sampler = ClusterNegativeSampler(tree, num_negatives=config.cluster_negatives, seed=step_seed)
        rng = random.Random("-".join(map(str, step_seed)))
        batch_queries = [_corrupt(queries[i], config.query_word_dropout, rng) for i in rows]
        tokens = unwrapped.tokenize(batch_queries)
        batch_labels = torch.as_tensor(labels[rows], device=accelerator.device)
        positive_ids = positives[rows]
        with accelerator.autocast():
            exclude = [relevant.get(queries[i], ()) for i in rows]
            negative_ids = sampler.sample(positive_ids, exclude) if config.contrastive_weight > 0 else None  # (B, n), -1 where missing
            loss, parts = _batch_loss(model, tokens, batch_labels, positive_ids, negative_ids, vectors, config, accelerator.device)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        counter.step += 1
        last_loss = parts
        progress.update(1)
        progress.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        if config.checkpoint_every and counter.step % config.checkpoint_every == 0 and counter.step < total_steps:
            _save_checkpoint(accelerator, checkpoint)
    progress.close()
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - started

    # Every process should end with the same weights (data parallelism averages gradients); record each one's digest.
    digest = _weights_digest(accelerator.unwrap_model(model))
    digests = accelerator.gather(torch.tensor([digest], dtype=torch.int64, device=accelerator.device)).cpu().tolist()

    if accelerator.is_main_process:
        record = {
            "config": asdict(config),
            "examples": len(queries),
            "question_examples": int(sum(len(v) for v in relevant.values())),
            "steps": total_steps,
            "processes": accelerator.num_processes,
            "process_weight_digests": [f"{d & (2**63 - 1):016x}" for d in digests],
            "seconds": seconds,
            "final_loss": last_loss,
        }
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        index._install_model(unwrapped, record)
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(model)


def _weights_digest(model) -> int:
    """Return a 63-bit digest of all parameters' bytes (equal only for identical weights)."""
    hasher = hashlib.sha1()
    for name, parameter in sorted(model.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return int.from_bytes(hasher.digest()[:8], "little") & (2**63 - 1)


def _batch_loss(model, tokens, labels: torch.Tensor, positive_ids: np.ndarray, negative_ids: Optional[np.ndarray], vectors, config: TrainingConfig, device) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Return the loss of one batch (see the module docstring) and its parts, for the progress bar."""
    logits, query_vectors = model(tokens["input_ids"], tokens["attention_mask"], labels)  # (B, L, vocab), (B, d)
    cid_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=0)
    loss = config.cid_weight * cid_loss
    parts = {"cid": cid_loss.item()}
    if negative_ids is not None:
        present = negative_ids >= 0
        negative_vectors = np.asarray(vectors[np.where(present, negative_ids, 0).reshape(-1)]).reshape(*negative_ids.shape, -1)  # (B, n, d)
        contrastive = _contrastive_loss(
            query_vectors.float(),
            torch.as_tensor(np.asarray(vectors[positive_ids]), device=device),
            torch.as_tensor(negative_vectors, device=device),
            torch.as_tensor(present, device=device),
            config.in_batch_negatives,
            config.temperature,
            torch.as_tensor(positive_ids, device=device),
        )
        loss = loss + config.contrastive_weight * contrastive
        parts["nce"] = contrastive.item()
    if config.rdrop_weight > 0:
        # R-Drop: a second pass with other dropout masks; penalise the divergence of the two CID distributions.
        second_logits, _ = model(tokens["input_ids"], tokens["attention_mask"], labels)
        mask = (labels != 0).float()
        p, q = F.log_softmax(logits.float(), -1), F.log_softmax(second_logits.float(), -1)
        kl = 0.5 * ((p.exp() * (p - q)).sum(-1) + (q.exp() * (q - p)).sum(-1))
        rdrop = (kl * mask).sum() / mask.sum()
        loss = loss + config.rdrop_weight * rdrop
        parts["rdrop"] = rdrop.item()
    return loss, parts


class _StepCounter:
    """The optimisation step, saved and restored with Accelerate's checkpoints."""

    def __init__(self):
        self.step = 0

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = int(state["step"])


def _save_checkpoint(accelerator, checkpoint: Path) -> None:
    """Write the training state to ``checkpoint/state`` through a temporary directory."""
    if accelerator.is_main_process:
        checkpoint.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    tmp = checkpoint / "state.tmp"
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = checkpoint / "state.old"
        if (checkpoint / "state").exists():
            (checkpoint / "state").rename(old)
        tmp.rename(checkpoint / "state")
        shutil.rmtree(old, ignore_errors=True)
        atomic_write_json(checkpoint / "progress.json", {"step": accelerator._custom_objects[-1].step})
    accelerator.wait_for_everyone()
