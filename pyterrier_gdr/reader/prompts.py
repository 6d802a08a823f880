"""Reader prompts: retrieved passages and a question in, token ids out, the same in training and reading."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

__all__ = ["INSTRUCTION", "encode_prompt", "encode_answer", "decode_answer", "stop_token_ids", "pad_token_id"]

INSTRUCTION = "Answer the question using the passages. Reply with a short answer only.\n\n"
_PASSAGE = "Passage {index}: {body}\n"
_QUESTION = "\nQuestion: {query}\nAnswer:"


def _tokens(tokenizer: Any, text: str) -> List[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(
    tokenizer: Any,
    query: str,
    passages: Sequence[Tuple[Optional[str], str]],
    *,
    max_prompt_tokens: int,
) -> List[int]:
    """Return the token ids of the reader prompt for ``query`` over ``passages``.

    The prompt is the tokenizer's BOS token (where it has one), :data:`INSTRUCTION`, one
    "Passage i: title. text" line per passage in the given order, then "Question: ...
    Answer:". When it is longer than ``max_prompt_tokens``, the passage tokens are cut from
    the end, so later passages go first; if the instruction and question alone do not fit,
    they lose tokens from the start and no passage is kept.

    Args:
        tokenizer: a transformers tokenizer.
        query: the question.
        passages: ``(title or None, text)`` pairs, best first.
        max_prompt_tokens: length limit, BOS included.
    """
    prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    instruction = _tokens(tokenizer, INSTRUCTION)
    question = _tokens(tokenizer, _QUESTION.format(query=" ".join(str(query).split())))
    budget = max_prompt_tokens - len(prefix) - len(instruction) - len(question)
    if budget < 0:
        body = (instruction + question)[-(max_prompt_tokens - len(prefix)):] if max_prompt_tokens > len(prefix) else []
        return prefix + body

    passage_tokens: List[int] = []
    for index, (title, text) in enumerate(passages, start=1):
        body = " ".join(str(text).split())
        if title:
            body = f"{' '.join(str(title).split())}. {body}"
        passage_tokens += _tokens(tokenizer, _PASSAGE.format(index=index, body=body))
        if len(passage_tokens) >= budget:
            break
    return prefix + instruction + passage_tokens[:budget] + question


def encode_answer(tokenizer: Any, answer: str, *, max_answer_tokens: int, eos_token_id: int) -> List[int]:
    """Return the target token ids of ``answer``: a space, the answer, then ``eos_token_id``.

    The answer is cut to ``max_answer_tokens - 1`` tokens so the EOS token always fits.
    """
    tokens = _tokens(tokenizer, " " + " ".join(str(answer).split()))
    return tokens[: max(0, max_answer_tokens - 1)] + [eos_token_id]


def decode_answer(tokenizer: Any, token_ids: Sequence[int]) -> str:
    """Return the answer text of generated ``token_ids``: special tokens dropped, cut at the first line break, stripped.

    The cut keeps a base model's habit of continuing after its answer out of the answer.
    """
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    return text.strip().split("\n", 1)[0].strip()


def stop_token_ids(tokenizer: Any, model: Any = None) -> List[int]:
    """Return the token ids that end generation: the tokenizer's EOS plus the model's generation-config EOS ids.

    Raises:
        ValueError: if neither defines an EOS token.
    """
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids += [int(i) for i in (configured if isinstance(configured, (list, tuple)) else [configured])]
    if not ids:
        raise ValueError("the tokenizer has no eos_token and the model's generation config names none; set tokenizer.eos_token")
    return sorted(set(ids))


def pad_token_id(tokenizer: Any) -> int:
    """Return the tokenizer's padding id, falling back to its EOS id."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise ValueError("the tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token")
