"""``IntraClusterRanker``: GDR's intra-cluster matching as a PyTerrier transformer.

Candidates (from a :class:`~pyterrier_gdr.generator.ClusterGenerator`, a
:class:`~pyterrier_gdr.router.CentroidRouter`, or any first stage such as BM25) are
scored by the inner product of the query vector and the document vector, fused with
the cluster's prior when the input carries ``cluster_score``.

Fusion puts both terms on one scale. With ``fusion="log_prob"`` (the default)::

    score = (q . d) / temperature + alpha * log P(cluster | q)

where ``(q . d) / temperature`` is the logit the query encoder was trained with
(InfoNCE at that temperature) and ``P(cluster | q)`` is the softmax of the cluster scores
over the clusters retrieved for the query. ``fusion="paper"`` is the GDR paper's
``tanh(q . d) + alpha * P(cluster | q)``, which adds a probability to an unscaled
similarity and weighs the two inconsistently.
"""
from __future__ import annotations

import logging
import warnings
from typing import Literal

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta
import torch

from pyterrier_gdr.generator import WorkCounter

__all__ = ["IntraClusterRanker", "Fusion", "fuse_scores"]

logger = logging.getLogger(__name__)

Fusion = Literal["log_prob", "paper"]
_FUSIONS = ("log_prob", "paper")
_SCORE_CHUNK = 65536  # candidate rows scored per step


def cluster_log_prior(frame: pd.DataFrame) -> np.ndarray:
    """Return, per row, log of the softmax of ``cluster_score`` over the query's distinct clusters."""
    clusters = frame[["qid", "cluster_id", "cluster_score"]].drop_duplicates(["qid", "cluster_id"])
    shifted = clusters["cluster_score"] - clusters.groupby("qid", sort=False)["cluster_score"].transform("max")
    log_norm = np.log(np.exp(shifted).groupby(clusters["qid"], sort=False).transform("sum"))
    log_prior = pd.Series((shifted - log_norm).to_numpy(), index=pd.MultiIndex.from_frame(clusters[["qid", "cluster_id"]]))
    keys = pd.MultiIndex.from_frame(frame[["qid", "cluster_id"]])
    return log_prior.reindex(keys).to_numpy(dtype=np.float64)


def fuse_scores(dense: np.ndarray, log_prior: np.ndarray, *, alpha: float, fusion: Fusion, temperature: float) -> np.ndarray:
    """Combine dense similarities with cluster log-priors (see the module docstring)."""
    if fusion == "log_prob":
        return dense / temperature + alpha * log_prior
    return np.tanh(dense) + alpha * np.exp(log_prior)


class IntraClusterRanker(pt.Transformer):
    """Candidates -> top ``num_results`` documents by dense score fused with the cluster prior.

    Input: ``qid, query, docno`` (and optionally ``query_vec``, ``cluster_id``,
    ``cluster_score``). Without ``query_vec`` the index's model (or base encoder) encodes
    the queries; without ``cluster_score`` (e.g. after BM25) the score is the dense logit
    alone and ``alpha`` has no effect.

    Args:
        index: the :class:`~pyterrier_gdr.index.GDRIndex` whose vectors are scored.
        alpha: weight of the cluster prior.
        num_results: documents kept per query.
        fusion: ``"log_prob"`` or ``"paper"`` (see the module docstring).
        temperature: divides the inner product in ``"log_prob"`` fusion.
        batch_size: queries encoded together when ``query_vec`` is absent.
    """

    def __init__(self, index, *, alpha: float = 1.0, num_results: int = 100, fusion: Fusion = "log_prob", temperature: float = 0.05, batch_size: int = 64, verbose: bool = False):
        if fusion not in _FUSIONS:
            raise ValueError(f"fusion={fusion!r} is invalid; valid: {', '.join(map(repr, _FUSIONS))}")
        if num_results < 1:
            raise ValueError(f"num_results={num_results} is invalid; it must be at least 1")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} is invalid; it must be positive")
        if alpha < 0:
            raise ValueError(f"alpha={alpha} is invalid; it must be non-negative")
        self.index = index
        self.alpha = float(alpha)
        self.num_results = num_results
        self.fusion = fusion
        self.temperature = temperature
        self.batch_size = batch_size
        self.verbose = verbose
        self.work = WorkCounter()

    def __repr__(self) -> str:
        return f"IntraClusterRanker({self.index!r}, alpha={self.alpha}, num_results={self.num_results}, fusion={self.fusion!r})"

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pta.validate.result_frame(inp, extra_columns=["query"])
        drop = [c for c in ("query_vec", "score", "rank") if c in inp.columns]
        output_columns = [c for c in inp.columns if c not in drop] + ["score", "rank"]
        if len(inp) == 0:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in output_columns})

        # Candidate rows -> document ids; rows whose docno is not in the index are dropped.
        frame = inp.reset_index(drop=True)
        doc_ids = self.index.doc_ids(frame["docno"].astype(str).tolist())
        unknown = doc_ids < 0
        if unknown.any():
            warnings.warn(
                f"{int(unknown.sum())} candidate docnos are not in {self.index!r} (e.g. {frame['docno'][unknown].iloc[0]!r}) "
                "and were dropped; the first stage and the GDR index should cover the same corpus",
                stacklevel=2,
            )
            frame, doc_ids = frame[~unknown].reset_index(drop=True), doc_ids[~unknown]

        # One query vector per query, and the query of each row.
        qids, query_index = np.unique(frame["qid"].to_numpy(dtype=str), return_inverse=True)
        query_vectors = self._query_vectors(frame, qids)
        dense = self._dense_scores(query_vectors, query_index, doc_ids)

        if "cluster_score" in frame.columns and "cluster_id" in frame.columns:
            log_prior = cluster_log_prior(frame)
        else:
            log_prior = np.zeros(len(frame))
        frame["score"] = fuse_scores(dense, log_prior, alpha=self.alpha, fusion=self.fusion, temperature=self.temperature)

        self.work.queries += len(qids)
        self.work.documents += len(frame)
        frame = frame.drop(columns=[c for c in ("query_vec", "rank") if c in frame.columns])
        frame = frame.sort_values(["qid", "score"], ascending=[True, False], kind="stable")
        frame = frame.groupby("qid", sort=False).head(self.num_results).reset_index(drop=True)
        frame["rank"] = frame.groupby("qid", sort=False).cumcount().astype(np.int64)
        return frame[output_columns]

    def _query_vectors(self, frame: pd.DataFrame, qids: np.ndarray) -> torch.Tensor:
        first_rows = frame.drop_duplicates("qid").set_index("qid")
        if "query_vec" in frame.columns:
            vectors = np.stack(first_rows.loc[qids, "query_vec"].to_list()).astype(np.float32)
            return torch.as_tensor(vectors)
        return self.index.encode_queries(first_rows.loc[qids, "query"].tolist(), batch_size=self.batch_size).float().cpu()

    def _dense_scores(self, query_vectors: torch.Tensor, query_index: np.ndarray, doc_ids: np.ndarray) -> np.ndarray:
        """Return ``q . d`` for every candidate row, reading each needed document vector once."""
        device = self.index.resolved_device()
        unique_ids, row_to_unique = np.unique(doc_ids, return_inverse=True)  # sorted, so memory-map reads go forward
        doc_vectors = torch.as_tensor(np.asarray(self.index.vectors[unique_ids]), device=device)  # (U, dim)
        query_vectors = query_vectors.to(device)
        rows_to_unique = torch.as_tensor(row_to_unique, device=device)
        rows_to_query = torch.as_tensor(query_index, device=device)
        scores = torch.empty(len(doc_ids), dtype=torch.float32, device=device)
        with torch.no_grad():
            for start in range(0, len(doc_ids), _SCORE_CHUNK):
                stop = start + _SCORE_CHUNK
                docs = doc_vectors[rows_to_unique[start:stop]]  # (chunk, dim)
                queries = query_vectors[rows_to_query[start:stop]]  # (chunk, dim)
                scores[start:stop] = (docs * queries).sum(dim=1)
        return scores.cpu().numpy().astype(np.float64)
