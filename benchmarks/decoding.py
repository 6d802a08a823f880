"""Constrained CID decoding: tensorised beam search vs transformers' generate(prefix_allowed_tokens_fn=...).

Both decode the same GDR model (the offline all-MiniLM-L6-v2 encoder with a fresh 2-layer
CID decoder) over the same cluster tree, for the same real questions. The reference's
callback answers from a dictionary of every valid prefix, built once, which is the
cheapest callback we know. The two methods alternate batch by batch. The table also counts
the queries whose top clusters differ, and the arithmetic of each method's matrix products
per query (counted by torch in a separate, untimed pass), so a speed-up can be read as less
work or faster work. A second table sets each method's best batch size
against the other's: the reference is fastest on small batches, the tensorised search on
larger ones. Our search also runs with a bfloat16 copy of the decoder (the generator's
``precision="bfloat16"``), an approximation: its rows count the queries whose clusters
differ from the float32 reference's, and the share of top clusters the two have in common.

    python benchmarks/decoding.py [--docs 100000] [--queries 128] [--beams 10 100] [--batch-sizes 4 8 16 32 64]
                                  [--precisions float32 bfloat16]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import command, machine, markdown_table


REFERENCE = "prefix_allowed_tokens_fn"


def prefix_table(tree) -> dict:
    """Map every valid token prefix (decoder start token first) to its allowed next tokens."""
    table = {}
    codec = tree.codec()
    for leaf in range(tree.num_leaves):
        tokens = [0] + codec.encode(tree.leaf_code(leaf))
        for cut in range(1, len(tokens)):
            table.setdefault(tuple(tokens[:cut]), set()).add(tokens[cut])
    return {prefix: sorted(allowed) for prefix, allowed in table.items()}


def ours_name(precision: str) -> str:
    return "tensorised (ours)" if precision == "float32" else f"tensorised, {precision} decoder (ours)"


def matrix_flops(decode, queries, beam: int, batch_size: int) -> float:
    """Return the floating-point operations of matrix products (2 per multiply-add) per query, counted by torch."""
    from torch.utils import flop_counter

    def product(bias, left, right, *args, out_shape=None, **kwargs):  # addmm_ and baddbmm_, given shapes
        return 2 * int(np.prod(left)) * right[-1]

    def attention(query, key, value, *args, out_shape=None, **kwargs):
        *batch, queries_len, head_dim = query
        return 4 * int(np.prod(batch)) * queries_len * key[-2] * head_dim  # scores and weighted values

    # Also count the in-place products and CPU attention kernels that the default registry leaves out.
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.addmm_: product, torch.ops.aten.baddbmm_: product,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention,
    })
    with counter:
        for start in range(0, len(queries), batch_size):
            decode(queries[start:start + batch_size], beam)
    return counter.get_total_flops() / len(queries)


def compare(methods, queries, beam: int, batch_size: int) -> list:
    """Decode ``queries`` with each method, alternating batch by batch; return one table row per method."""
    timings = {name: 0.0 for name, _ in methods}
    results = {name: [] for name, _ in methods}
    for _, decode in methods:
        decode(queries[:2], beam)  # warm-up
    # The methods alternate batch by batch, so a load change on a shared machine hits both alike.
    for start in range(0, len(queries), batch_size):
        for name, decode in methods:
            started = time.perf_counter()
            results[name].extend(decode(queries[start:start + batch_size], beam))
            timings[name] += time.perf_counter() - started
    reference = results[REFERENCE]
    rows = []
    for name, seconds in timings.items():
        flops = matrix_flops(dict(methods)[name], queries, beam, batch_size)
        row = {
            "beam": beam, "batch": batch_size, "method": name, "queries/s": len(queries) / seconds,
            "speed-up": timings[REFERENCE] / seconds,
            "GFLOP/query": flops / 1e9, "GFLOP/s": flops * len(queries) / seconds / 1e9,
            "queries with other top clusters": "", "queries with another order (beyond ties)": "", "top clusters shared": "",
        }
        if name != REFERENCE:
            ours = results[name]
            row["queries with other top clusters"] = sum(set(a[0]) != set(b[0]) for a, b in zip(ours, reference))
            # Equal scores may be listed in either order (topk breaks ties arbitrarily).
            row["queries with another order (beyond ties)"] = sum(
                a[0] != b[0] and set(a[0]) == set(b[0])
                and any(x != y and abs(sx - sy) > 1e-4 for x, y, sx, sy in zip(a[0], b[0], a[1], b[1]))
                for a, b in zip(ours, reference)
            )
            row["top clusters shared"] = f"{np.mean([len(set(a[0]) & set(b[0])) / len(set(b[0])) for a, b in zip(ours, reference)]):.1%}"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000, help="random document vectors clustered into the tree")
    parser.add_argument("--queries", type=int, default=128, help="real SQuAD questions decoded")
    parser.add_argument("--beams", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="queries per decoding call")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"],
                        help="arithmetic of our decoder (the reference runs the model in float32)")
    args = parser.parse_args()

    import pyterrier_gdr  # noqa: F401
    from pyterrier_gdr._util import default_encoder_path
    from pyterrier_gdr.clusters import ClusterTreeConfig, build_cluster_tree
    from pyterrier_gdr.datasets import load_questions
    from pyterrier_gdr.decoding import DECODER_DTYPES, TorchTrie, constrained_beam_search
    from pyterrier_gdr.model import GDRModel

    torch.manual_seed(0)
    vectors = np.random.default_rng(0).standard_normal((args.docs, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tree = build_cluster_tree(vectors, ClusterTreeConfig(branching_factor=30, leaf_size=30))
    stats = tree.stats()
    codec = tree.codec()
    model = GDRModel.from_encoder(default_encoder_path(), vocab_size=codec.vocab_size, max_cid_length=tree.max_depth + 1, query_dim=384).eval()
    trie = TorchTrie.from_trie(tree.trie(), max_depth=tree.max_depth)
    table = prefix_table(tree)
    leaf_of_code = {tree.leaf_code(leaf): leaf for leaf in range(tree.num_leaves)}
    queries = load_questions("irds:pyterrier-gdr/squad-dev/test").topics["query"].tolist()[: args.queries]

    def ours(precision):
        dtype = DECODER_DTYPES[precision]

        def decode(batch, beam):
            tokens = model.tokenize(batch)
            leaves, scores = constrained_beam_search(model, tokens["input_ids"], tokens["attention_mask"], trie, beam_size=beam, dtype=dtype)
            return list(zip(leaves.tolist(), scores.tolist()))

        return decode

    def reference(batch, beam):
        tokens = model.tokenize(batch)
        with torch.no_grad():
            output = model.seq2seq.generate(
                **tokens, num_beams=beam, num_return_sequences=beam, max_new_tokens=tree.max_depth + 1, do_sample=False,
                length_penalty=0.0, early_stopping=False, output_scores=True, return_dict_in_generate=True,
                prefix_allowed_tokens_fn=lambda batch_id, prefix: table.get(tuple(prefix.tolist()), [0]),
            )
        rows = output.sequences.view(len(batch), beam, -1).tolist()
        scores = output.sequences_scores.view(len(batch), beam).tolist()
        return [([leaf_of_code.get(codec.decode(seq[1:]), -1) for seq in row], row_scores) for row, row_scores in zip(rows, scores)]

    rows = []
    methods = tuple((ours_name(precision), ours(precision)) for precision in args.precisions) + ((REFERENCE, reference),)
    for beam in args.beams:
        for batch_size in args.batch_sizes:
            rows += compare(methods, queries, beam, batch_size)

    print(f"# Constrained decoding\n\nMachine: {machine()}\n\nCommand: `{command()}`\n")
    print(f"Tree: {args.docs:,} random unit vectors, 30/30 (paper), {stats['leaves']:,} leaves, depth {stats['depth_min']}-{stats['depth_max']}; "
          f"{len(queries)} SQuAD test questions; batch: questions per call.\n")
    print("GFLOP/query: floating-point operations in matrix products (encoder and decoder, 2 per multiply-add), counted by "
          "torch's FlopCounterMode in a separate pass; GFLOP/s: those over the timed seconds.\n")
    print(markdown_table(rows, ["beam", "batch", "method", "queries/s", "speed-up", "GFLOP/query", "GFLOP/s",
                                "queries with other top clusters", "queries with another order (beyond ties)", "top clusters shared"]))
    best = []
    for beam in args.beams:
        fastest = {}
        for method, _ in methods:
            fastest[method] = max((r for r in rows if r["beam"] == beam and r["method"] == method), key=lambda r: r["queries/s"])
        reference = fastest[REFERENCE]
        for method, _ in methods[:-1]:
            row = fastest[method]
            best.append({"beam": beam, "method": method, "queries/s (batch)": f"{row['queries/s']:.2f} ({row['batch']})",
                         "reference: queries/s (batch)": f"{reference['queries/s']:.2f} ({reference['batch']})",
                         "speed-up": row["queries/s"] / reference["queries/s"]})
    print("\nEach method at its fastest batch size of those above:\n")
    print(markdown_table(best, ["beam", "method", "queries/s (batch)", "reference: queries/s (batch)", "speed-up"]))


if __name__ == "__main__":
    main()
