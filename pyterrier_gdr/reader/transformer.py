"""``QSTReader``: a PyTerrier transformer that answers each query from its retrieved passages."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta
import torch
from torch import nn

from .._util import atomic_directory
from .artifact import check_base_matches, read_reader_files, write_reader_files
from .config import QSTConfig
from .generation import greedy_generate
from .model import SIDE_WEIGHTS_FILE, QSTModel
from .prompts import decode_answer, encode_prompt, pad_token_id, stop_token_ids
from .quantized_base import DTypeLike, base_name, load_base

__all__ = ["QSTReader"]

logger = logging.getLogger(__name__)

_SETTINGS = ("num_passages", "max_new_tokens", "max_prompt_tokens", "batch_size")


class QSTReader(pt.Transformer):
    """Generate an answer per query from its top retrieved passages with a QST model or its base alone.

    Input: retrieved passages ``qid, query, docno, text`` (plus ``title``, ``score``, ``rank``
    where present; passages are ordered by ``rank``, else by descending ``score``, else as given).
    Output: one row per query, ``qid, query, qanswer``. Decoding is greedy.

    Args:
        model: the QST model, or a :class:`QSTModel` without side network for the base reader.
        tokenizer: the base model's tokenizer.
        num_passages: top passages per query placed in the prompt.
        max_new_tokens: answer length limit in tokens.
        max_prompt_tokens: prompt length limit in tokens; passages are cut to fit.
        batch_size: queries decoded together.
        verbose: show a progress bar over batches.

    Example::

        reader = QSTReader.from_pretrained("runs/qst-reader")
        pipeline = bm25 >> pt.text.get_text(dataset, "text") >> reader
    """

    def __init__(
        self,
        model: QSTModel,
        *,
        tokenizer: Any,
        num_passages: int = 3,
        max_new_tokens: int = 32,
        max_prompt_tokens: int = 512,
        batch_size: int = 8,
        verbose: bool = False,
    ):
        for name, value in (("num_passages", num_passages), ("max_new_tokens", max_new_tokens),
                            ("max_prompt_tokens", max_prompt_tokens), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"QSTReader {name} must be a positive integer, got {value!r}")
        if not isinstance(model, QSTModel):
            raise TypeError(f"model must be a QSTModel, got {type(model).__name__}; use QSTReader.from_base to wrap a causal LM")
        self.model = model
        self.tokenizer = tokenizer
        self.num_passages = num_passages
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.batch_size = batch_size
        self.verbose = verbose

    @classmethod
    def from_base(
        cls,
        base: Union[str, nn.Module],
        *,
        tokenizer: Any = None,
        qst: Optional[QSTConfig] = None,
        quantize: bool = True,
        compute_dtype: DTypeLike = None,
        device: Optional[Union[str, torch.device]] = None,
        **settings: Any,
    ) -> "QSTReader":
        """Build a reader on a base model, with a fresh (untrained) side network when ``qst`` is given.

        Args:
            base: a name or path for :func:`load_base` (e.g. ``"gemma3-270m"``), or a loaded causal LM.
            tokenizer: the tokenizer of a loaded ``base`` (loaded with the model when ``base`` is a name).
            qst: side network shape; ``None`` gives the base reader with no side network.
            quantize, compute_dtype, device: passed to :func:`load_base` when ``base`` is a name.
            **settings: reader settings (``num_passages``, ``max_new_tokens``, ``max_prompt_tokens``,
                ``batch_size``, ``verbose``).

        Raises:
            ValueError: if ``base`` is a loaded model and ``tokenizer`` is missing.
        """
        if isinstance(base, str):
            base, loaded_tokenizer = load_base(base, quantize=quantize, compute_dtype=compute_dtype, device=device)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        elif tokenizer is None:
            raise ValueError("QSTReader.from_base needs tokenizer= when base is a loaded model")
        return cls(QSTModel(base, qst=qst), tokenizer=tokenizer, **settings)

    @classmethod
    def from_pretrained(
        cls,
        path: Union[str, Path],
        *,
        base: Optional[nn.Module] = None,
        tokenizer: Any = None,
        quantize: Optional[bool] = None,
        compute_dtype: DTypeLike = None,
        device: Optional[Union[str, torch.device]] = None,
        **settings: Any,
    ) -> "QSTReader":
        """Load a reader saved by :meth:`save` or by :func:`train_reader`.

        Args:
            path: the saved reader's directory.
            base: the loaded base model to attach the side network to; ``None`` loads the base
                that the reader names with :func:`load_base`. Pass the same object to several
                readers to share one copy of the base.
            tokenizer: the tokenizer of a given ``base``.
            quantize: load the named base in 4 bits; ``None`` repeats what was saved.
            compute_dtype: dtype of the named base; ``None`` repeats what was saved, so that
                reloaded answers match the saved reader's.
            device: passed to :func:`load_base`.
            **settings: reader settings that override the saved ones.

        Raises:
            FileNotFoundError: if ``path`` contains no complete saved reader.
            ValueError: if ``base`` is not the model the reader was trained on.
        """
        saved = read_reader_files(path)
        if base is None:
            name = saved["base"]["name_or_path"]
            if not name:
                raise ValueError(f"the reader at {path} names no base model; pass base= and tokenizer=")
            quantize = saved["base"]["quantized"] if quantize is None else quantize
            compute_dtype = compute_dtype or saved["base"].get("compute_dtype")
            base, loaded_tokenizer = load_base(name, quantize=quantize, compute_dtype=compute_dtype, device=device)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        elif tokenizer is None:
            raise ValueError("QSTReader.from_pretrained needs tokenizer= when base= is given")
        check_base_matches(saved, base, source=str(path))

        qst = QSTConfig.from_dict(saved["qst"]) if saved["qst"] is not None else None
        model = QSTModel(base, qst=qst)
        if qst is not None:
            model.load_side(Path(path) / SIDE_WEIGHTS_FILE)
        return cls(model, tokenizer=tokenizer, **{**saved["reader"], **settings})

    def settings(self) -> Dict[str, int]:
        """Return the reader settings that :meth:`save` stores."""
        return {name: getattr(self, name) for name in _SETTINGS}

    def save(self, path: Union[str, Path], *, overwrite: bool = False) -> None:
        """Save the side weights and settings (never the base's weights) to the directory ``path``.

        The directory is built beside ``path`` and moved into place when complete.

        Raises:
            FileExistsError: if ``path`` exists and ``overwrite`` is false.
        """
        with atomic_directory(path, overwrite=overwrite) as tmp:
            write_reader_files(tmp, self.model, self.settings())

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Answer each query of ``inp`` from its top ``num_passages`` passages."""
        _validate_input(inp)
        if len(inp) == 0:
            return pd.DataFrame({"qid": pd.Series(dtype=object), "query": pd.Series(dtype=object),
                                 "qanswer": pd.Series(dtype=object)})

        queries = self._queries(inp)
        prompts = [
            encode_prompt(self.tokenizer, query, passages, max_prompt_tokens=self.max_prompt_tokens)
            for _, query, passages in queries
        ]
        stops = stop_token_ids(self.tokenizer, self.model.base)
        pad = pad_token_id(self.tokenizer)

        started = time.perf_counter()
        answers: List[str] = []
        batches = range(0, len(prompts), self.batch_size)
        if self.verbose:
            batches = pt.tqdm(batches, desc="QSTReader", unit="batch")
        for start in batches:
            generated = greedy_generate(
                self.model,
                prompts[start:start + self.batch_size],
                max_new_tokens=self.max_new_tokens,
                pad_token_id=pad,
                stop_token_ids=stops,
            )
            answers += [decode_answer(self.tokenizer, tokens) for tokens in generated]
        logger.info("answered %d queries in %.1f s", len(answers), time.perf_counter() - started)

        return pd.DataFrame({
            "qid": [qid for qid, _, _ in queries],
            "query": [query for _, query, _ in queries],
            "qanswer": answers,
        })

    def _queries(self, inp: pd.DataFrame) -> List[Tuple[Any, str, List[Tuple[Optional[str], str]]]]:
        """Return ``(qid, query, [(title, text), ...])`` per query in order of first appearance, best passage first."""
        if "rank" in inp.columns:
            ordered = inp.sort_values("rank", kind="stable")
        elif "score" in inp.columns:
            ordered = inp.sort_values("score", ascending=False, kind="stable")
        else:
            ordered = inp
        has_title = "title" in inp.columns
        grouped = {qid: group for qid, group in ordered.groupby("qid", sort=False)}
        queries = []
        for qid in pd.unique(inp["qid"]):
            top = grouped[qid].head(self.num_passages)
            titles = top["title"].tolist() if has_title else [None] * len(top)
            passages = [(title if isinstance(title, str) else None, str(text))
                        for title, text in zip(titles, top["text"].tolist())]
            queries.append((qid, str(top["query"].iloc[0]), passages))
        return queries

    def __repr__(self) -> str:
        side = self.model.qst_config
        kind = f"qst r={side.r} {side.downsample}" if side is not None else "base"
        return (f"QSTReader({base_name(self.model.base)!r}, {kind}, num_passages={self.num_passages}, "
                f"max_new_tokens={self.max_new_tokens})")


def _validate_input(inp: pd.DataFrame) -> None:
    try:
        pta.validate.columns(inp, includes=["qid", "query", "text"])
    except pta.validate.InputValidationError as e:
        if "text" in inp.columns:
            raise
        raise pta.validate.InputValidationError(
            "QSTReader needs the passage text in a 'text' column, which the input lacks; add it after "
            "retrieval, e.g. retriever >> pt.text.get_text(dataset, 'text') >> reader",
            e.modes,
        ) from e
