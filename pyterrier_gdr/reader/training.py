"""Training the QST side network on questions, their answers and retrieved passages."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta
import torch

from .._util import atomic_directory, atomic_write_json
from .artifact import CHECKPOINT_DIR, META_FILE, READER_FILE, write_reader_files
from .config import ReaderTrainingConfig
from .model import IGNORE_INDEX, SIDE_WEIGHTS_FILE, QSTModel
from .prompts import encode_answer, encode_prompt, pad_token_id, stop_token_ids
from .transformer import QSTReader

__all__ = ["train_reader", "TrainingStep", "build_examples"]

logger = logging.getLogger(__name__)

_STATE_FILE = "state.json"
_OPTIMIZER_FILE = "optimizer.pt"

Example = Tuple[List[int], List[int]]


@dataclasses.dataclass(frozen=True)
class TrainingStep:
    """Progress report that :func:`train_reader` passes to its ``callback`` after each optimizer step.

    Attributes:
        step: optimizer steps done so far (1 after the first).
        total_steps: optimizer steps the run will do.
        loss: mean answer-token cross-entropy of this step's batches.
        checkpointed: whether a resumable checkpoint was written after this step.
    """

    step: int
    total_steps: int
    loss: float
    checkpointed: bool


def _answers_list(value: Any) -> List[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [str(answer) for answer in value if str(answer).strip()]
    return []


def build_examples(
    questions: pd.DataFrame,
    run: pd.DataFrame,
    *,
    tokenizer: Any,
    num_passages: int,
    max_prompt_tokens: int,
    max_answer_tokens: int,
    eos_token_id: int,
) -> List[Example]:
    """Return ``(prompt ids, answer ids)`` per question, the prompt built from its top retrieved passages.

    The target is each question's first gold answer. A question with no retrieved passage gets
    a prompt without passages.
    """
    if "rank" in run.columns:
        run = run.sort_values("rank", kind="stable")
    elif "score" in run.columns:
        run = run.sort_values("score", ascending=False, kind="stable")
    has_title = "title" in run.columns
    passages_by_qid: Dict[str, List[Tuple[Optional[str], str]]] = {}
    for qid, group in run.groupby("qid", sort=False):
        top = group.head(num_passages)
        titles = top["title"].tolist() if has_title else [None] * len(top)
        passages_by_qid[str(qid)] = [(t if isinstance(t, str) else None, str(text))
                                     for t, text in zip(titles, top["text"].tolist())]
    examples = []
    for qid, query, answers in zip(questions["qid"], questions["query"], questions["answers"]):
        prompt = encode_prompt(tokenizer, query, passages_by_qid.get(str(qid), []), max_prompt_tokens=max_prompt_tokens)
        answer = encode_answer(tokenizer, _answers_list(answers)[0], max_answer_tokens=max_answer_tokens,
                               eos_token_id=eos_token_id)
        examples.append((prompt, answer))
    return examples


def _collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> Dict[str, torch.Tensor]:
    """Right-pad prompt + answer sequences; labels are the answer tokens, IGNORE_INDEX elsewhere."""
    length = max(len(prompt) + len(answer) for prompt, answer in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, answer) in enumerate(examples):
        sequence = torch.tensor(prompt + answer, dtype=torch.long)
        input_ids[row, :len(sequence)] = sequence
        attention_mask[row, :len(sequence)] = 1
        labels[row, len(prompt):len(sequence)] = torch.tensor(answer, dtype=torch.long)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "labels": labels.to(device)}


class _Schedule:
    """Deterministic micro-batch order: a seeded permutation per epoch, so a resumed run gets the same batches."""

    def __init__(self, num_examples: int, config: ReaderTrainingConfig):
        self.num_examples = num_examples
        self.config = config
        self.batches_per_epoch = math.ceil(num_examples / config.batch_size)
        steps_per_epoch = math.ceil(self.batches_per_epoch / config.gradient_accumulation_steps)
        self.total_steps = config.max_steps or config.num_epochs * steps_per_epoch
        self._epoch, self._order = -1, None

    def batch(self, micro_batch: int) -> List[int]:
        epoch, index = divmod(micro_batch, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.config.seed + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_examples, generator=generator).tolist()
        size = self.config.batch_size
        return self._order[index * size:(index + 1) * size]

    def lr_factor(self, step: int) -> float:
        if step < self.config.warmup_steps:
            return (step + 1) / (self.config.warmup_steps + 1)
        if self.config.lr_schedule == "linear":
            return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.config.warmup_steps))
        return 1.0


def _fingerprint_examples(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for prompt, answer in examples:
        digest.update(np.asarray(prompt + [-1] + answer + [-2], dtype=np.int64).tobytes())
    return digest.hexdigest()


def _save_checkpoint(path: Path, model: QSTModel, optimizer, scheduler, state: Dict[str, Any]) -> None:
    with atomic_directory(path, overwrite=True) as tmp:
        model.save_side(tmp / SIDE_WEIGHTS_FILE)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
                   tmp / _OPTIMIZER_FILE)
        atomic_write_json(tmp / _STATE_FILE, state)


def _load_checkpoint(path: Path, model: QSTModel, optimizer, scheduler, expected: Dict[str, Any]) -> Dict[str, Any]:
    with open(path / _STATE_FILE, encoding="utf-8") as fin:
        state = json.load(fin)
    differing = [key for key in expected if state.get(key) != expected[key]]
    if differing:
        raise ValueError(
            f"the checkpoint in {path} was written with other {', '.join(differing)} than this call's; "
            "pass the same model, questions, retriever and config to resume, or overwrite=True to start again"
        )
    model.load_side(path / SIDE_WEIGHTS_FILE)
    bundle = torch.load(path / _OPTIMIZER_FILE, map_location=model.device, weights_only=True)
    optimizer.load_state_dict(bundle["optimizer"])
    scheduler.load_state_dict(bundle["scheduler"])
    torch.set_rng_state(bundle["rng"]["cpu"].cpu())
    if "cuda" in bundle["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in bundle["rng"]["cuda"]])
    return state


def _prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    if (output_dir / META_FILE).exists():
        if not overwrite:
            raise FileExistsError(f"{output_dir} already contains a trained reader; pass overwrite=True to train a new one")
        for name in (META_FILE, READER_FILE, SIDE_WEIGHTS_FILE):
            (output_dir / name).unlink(missing_ok=True)
    if overwrite and (output_dir / CHECKPOINT_DIR).exists():
        shutil.rmtree(output_dir / CHECKPOINT_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)


def train_reader(
    reader: QSTReader,
    *,
    questions: pd.DataFrame,
    retriever: pt.Transformer,
    output_dir: Union[str, Path],
    config: Optional[ReaderTrainingConfig] = None,
    overwrite: bool = False,
    callback: Optional[Callable[[TrainingStep], None]] = None,
    verbose: bool = False,
) -> QSTReader:
    """Train the reader's side network to generate each question's answer from its retrieved passages.

    Only the side network trains; the loss is the cross-entropy of the answer tokens (prompt
    tokens are labelled -100). A checkpoint (side weights, optimizer, scheduler, RNG state) is
    written to ``output_dir/checkpoint`` every ``config.save_every`` steps, replacing the previous
    one atomically. Calling again with the same arguments after an interruption resumes from it.
    When training ends, the reader is saved in ``output_dir`` (load it with
    :meth:`QSTReader.from_pretrained`) and the checkpoint is removed.

    Args:
        reader: a reader with a side network, e.g. ``QSTReader.from_base(base, qst=QSTConfig())``;
            its ``num_passages`` and ``max_prompt_tokens`` shape the training prompts.
        questions: ``qid, query, answers`` (a list of gold answers per question; the first is the target).
        retriever: a transformer from ``qid, query`` to ``qid, docno, text`` (``score``/``rank`` order them).
        output_dir: directory of the checkpoint and of the trained reader.
        config: hyperparameters; defaults to ``ReaderTrainingConfig()``.
        overwrite: discard a trained reader or checkpoint already in ``output_dir`` and start again.
        callback: called with a :class:`TrainingStep` after each optimizer step.
        verbose: show a progress bar.

    Returns:
        ``reader``, trained, in eval mode.

    Raises:
        ValueError: if the reader has no side network, or the inputs lack columns or answers, or the
            checkpoint in ``output_dir`` came from other settings.
        FileExistsError: if ``output_dir`` already contains a trained reader and ``overwrite`` is false.

    Example::

        reader = QSTReader.from_base("gemma3-270m", qst=QSTConfig())
        retriever = bm25 >> pt.text.get_text(dataset, "text")
        train_reader(reader, questions=train_questions, retriever=retriever, output_dir="runs/qst",
                     config=ReaderTrainingConfig(max_steps=500), verbose=True)
    """
    config = config if config is not None else ReaderTrainingConfig()
    model = reader.model
    if model.side is None:
        raise ValueError("this reader has no side network to train; build one with QSTReader.from_base(base, qst=QSTConfig())")
    pta.validate.columns(questions, includes=["qid", "query", "answers"])
    has_answer = questions["answers"].map(lambda value: bool(_answers_list(value)))
    if not has_answer.all():
        logger.warning("skipping %d questions without an answer", int((~has_answer).sum()))
        questions = questions[has_answer]
    if len(questions) == 0:
        raise ValueError("no training question has an answer; the 'answers' column must hold non-empty lists of strings")
    output_dir = Path(output_dir)
    _prepare_output_dir(output_dir, overwrite)

    # Retrieve passages and build the token sequences.
    started = time.perf_counter()
    run = retriever(questions[["qid", "query"]].reset_index(drop=True))
    if "text" not in run.columns:
        raise ValueError(
            "the retriever's output has no 'text' column; add passage text, e.g. "
            "retriever >> pt.text.get_text(dataset, 'text')"
        )
    tokenizer = reader.tokenizer
    eos_id = int(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else stop_token_ids(tokenizer, model.base)[0]
    examples = build_examples(
        questions, run, tokenizer=tokenizer, num_passages=reader.num_passages,
        max_prompt_tokens=reader.max_prompt_tokens, max_answer_tokens=config.max_answer_tokens, eos_token_id=eos_id,
    )
    logger.info("built %d training examples in %.1f s", len(examples), time.perf_counter() - started)

    schedule = _Schedule(len(examples), config)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor)
    identity = {
        "training_config": config.to_dict(),
        "model": model.describe(),
        "reader_settings": reader.settings(),
        "examples_sha256": _fingerprint_examples(examples),
    }
    state = {**identity, "step": 0, "losses": []}
    checkpoint = output_dir / CHECKPOINT_DIR
    if checkpoint.exists():
        state = _load_checkpoint(checkpoint, model, optimizer, scheduler, identity)
        logger.info("resuming from %s at step %d of %d", checkpoint, state["step"], schedule.total_steps)
    else:
        torch.manual_seed(config.seed)

    pad_id = pad_token_id(tokenizer)
    progress = None
    if verbose:
        progress = pt.tqdm(total=schedule.total_steps, initial=state["step"], desc="train_reader", unit="step")
    model.train()
    started = time.perf_counter()
    try:
        for step in range(state["step"], schedule.total_steps):
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(config.gradient_accumulation_steps):
                indices = schedule.batch(step * config.gradient_accumulation_steps + micro)
                batch = _collate([examples[i] for i in indices], pad_id, model.device)
                loss = model.loss(**batch) / config.gradient_accumulation_steps
                loss.backward()
                step_loss += float(loss.detach())
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()

            state["step"] = step + 1
            state["losses"].append(step_loss)
            checkpointed = state["step"] % config.save_every == 0 and state["step"] < schedule.total_steps
            if checkpointed:
                _save_checkpoint(checkpoint, model, optimizer, scheduler, state)
                logger.info("step %d/%d: loss %.4f, checkpoint written", state["step"], schedule.total_steps, step_loss)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{step_loss:.4f}")
            if callback is not None:
                callback(TrainingStep(step=state["step"], total_steps=schedule.total_steps, loss=step_loss,
                                      checkpointed=checkpointed))
    finally:
        if progress is not None:
            progress.close()
        model.eval()

    summary = {
        "steps": state["step"],
        "examples": len(examples),
        "final_loss": state["losses"][-1] if state["losses"] else None,
        "config": config.to_dict(),
    }
    write_reader_files(output_dir, model, reader.settings(), training=summary)
    if checkpoint.exists():
        shutil.rmtree(checkpoint)
    logger.info("trained %d steps in %.1f s; reader saved to %s", state["step"], time.perf_counter() - started, output_dir)
    return reader
