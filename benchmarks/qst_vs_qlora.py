"""Benchmark QST against QLoRA and LoRA on one base, batch and sequence length.

Each variant trains in a fresh subprocess on the same batches: a seeded sample of SQuAD
training questions from the bundled squad-dev data, each with its gold passage plus the
passages after it, cut to exactly ``--seq-len`` tokens. The loss covers the answer tokens
only. Each variant reports:

- trainable parameters;
- peak training memory: the peak over the timed steps minus the memory in use after loading
  the model, so it counts activations, gradients, optimizer state and workspace. On CUDA the
  figures are ``torch.cuda`` allocator statistics (``max_memory_allocated`` reset after the
  warmup steps); on CPU they are the resident set size, with its peak (VmHWM) reset through
  /proc/self/clear_refs after the warmup steps. The total peak (model included) is reported
  beside it;
- seconds per optimizer step, averaged after ``--warmup-steps`` untimed steps;
- the loss of one held-out batch (questions not trained on) before and after training, and
  the loss of the last training step.

Variants: ``qst`` (QST side network, r=16, adapter downsample, on the NF4 base), ``qlora``
(peft LoRA r=16 on every linear layer of the same NF4 base), ``qlora-gc`` (the same with
gradient checkpointing, as the QLoRA paper trains), ``lora`` (peft LoRA on the base in
``--compute-dtype`` without quantization). Every variant computes the LM head on the answer
positions only, so the 262k-entry Gemma vocabulary does not dominate any of them.

Usage::

    python benchmarks/qst_vs_qlora.py --base gemma3-270m --batch-size 4 --seq-len 512 --steps 5
"""
from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "pyterrier_gdr" / "data" / "squad-dev"
VARIANTS = ("qst", "qlora", "qlora-gc", "lora")
RESULT_PREFIX = "RESULT "


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="gemma3-270m", help="'gemma3-270m' or a local causal LM directory (default: gemma3-270m)")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step (default: 4)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence, answer included (default: 512)")
    parser.add_argument("--answer-tokens", type=int, default=16, help="answer token limit, EOS included (default: 16)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (default: 5)")
    parser.add_argument("--warmup-steps", type=int, default=1,
                        help="untimed steps before timing and before the memory peak is reset, at least 1 (default: 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--device", default=None, help="'cpu' or 'cuda' (default: CUDA when present)")
    parser.add_argument("--compute-dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="dtype of the base's products (default: bfloat16 on GPUs and bf16-capable CPUs)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU (default: torch's)")
    parser.add_argument("--qst-lr", type=float, default=1e-2, help="QST learning rate (default: 1e-2, as ReaderTrainingConfig)")
    parser.add_argument("--lora-lr", type=float, default=2e-4, help="LoRA and QLoRA learning rate (default: 2e-4)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", default=None, choices=VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- data


def _read_jsonl_gz(path: Path) -> List[Dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fin:
        return [json.loads(line) for line in fin]


def build_batches(tokenizer, args) -> List[Dict[str, Any]]:
    """Return ``warmup + steps + 1`` batches of exactly ``seq_len`` tokens; the last one is held out."""
    import torch

    from pyterrier_gdr.reader.model import IGNORE_INDEX
    from pyterrier_gdr.reader.prompts import encode_answer, encode_prompt

    passages = _read_jsonl_gz(DATA / "passages.jsonl.gz")
    position = {row["docno"]: index for index, row in enumerate(passages)}
    questions = [row for row in _read_jsonl_gz(DATA / "questions.jsonl.gz") if row["split"] == "train"]
    # SQuAD lists the questions of one passage together, so a seeded sample spreads each batch over passages.
    questions = random.Random(0).sample(questions, (args.warmup_steps + args.steps + 1) * args.batch_size)

    sequences = []
    for question in questions:
        start = position[question["relevant"][0]]
        # The gold passage first, then enough following passages to fill the prompt.
        context = [(row["title"], row["text"]) for row in passages[start:start + 10]]
        answer = encode_answer(tokenizer, question["answers"][0], max_answer_tokens=args.answer_tokens,
                               eos_token_id=tokenizer.eos_token_id)
        prompt = encode_prompt(tokenizer, question["question"], context, max_prompt_tokens=args.seq_len - len(answer))
        if len(prompt) + len(answer) != args.seq_len:
            raise RuntimeError(f"question {question['qid']} gave {len(prompt) + len(answer)} tokens, not {args.seq_len}")
        sequences.append((prompt, answer))

    batches = []
    for start in range(0, len(sequences), args.batch_size):
        chunk = sequences[start:start + args.batch_size]
        input_ids = torch.tensor([prompt + answer for prompt, answer in chunk])
        labels = torch.tensor([[IGNORE_INDEX] * len(prompt) + answer for prompt, answer in chunk])
        batches.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels})
    return batches


# ----------------------------------------------------------------------------- memory


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as fin:
        for line in fin:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


class MemoryMeter:
    """Peak memory relative to a baseline: CUDA allocator statistics, or the process's resident set size on CPU."""

    def __init__(self, device):
        self.device = device

    def set_baseline(self) -> None:
        """Record the memory in use now as the baseline."""
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.baseline = torch.cuda.memory_allocated()
        else:
            self.baseline = _proc_status_kib("VmRSS") * 1024

    def reset_peak(self) -> None:
        """Start a new peak from the memory in use now."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            # Writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0).
            with open("/proc/self/clear_refs", "w", encoding="utf-8") as fout:
                fout.write("5")

    def stop(self) -> Dict[str, float]:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _proc_status_kib("VmHWM") * 1024
        mib = 1024 * 1024
        return {"baseline_mib": self.baseline / mib, "peak_mib": peak / mib, "peak_delta_mib": (peak - self.baseline) / mib}


# ----------------------------------------------------------------------------- variants


def answer_loss(causal_lm, batch):
    """Cross-entropy of the answer tokens, with the LM head applied at answer positions only (as QSTModel.loss does)."""
    import torch.nn.functional as F

    from pyterrier_gdr.reader.model import IGNORE_INDEX

    hidden = causal_lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep])
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:
        logits = (logits / cap).tanh() * cap
    return F.cross_entropy(logits.float(), targets[keep])


def _logical_numel(parameter) -> int:
    """Return the parameter count of a weight, also for bitsandbytes 4-bit weights (stored two per byte)."""
    quant_state = getattr(parameter, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None else parameter.numel()


def run_worker(args) -> Dict[str, Any]:
    """Train one variant and return its measurements."""
    import torch

    from pyterrier_gdr._util import resolve_device
    from pyterrier_gdr.reader import QSTConfig, QSTModel, load_base

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    variant = args.worker
    started = time.perf_counter()
    base, tokenizer = load_base(args.base, quantize=variant != "lora", compute_dtype=args.compute_dtype, device=device)
    load_seconds = time.perf_counter() - started
    batches = [{key: value.to(device) for key, value in batch.items()} for batch in build_batches(tokenizer, args)]

    if variant == "qst":
        model = QSTModel(base, qst=QSTConfig())
        parameters = model.trainable_parameters()
        learning_rate = args.qst_lr

        def compute_loss(batch):
            return model.loss(**batch)
    else:
        from peft import LoraConfig, get_peft_model

        if variant == "qlora-gc":
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        learning_rate = args.lora_lr
        causal_lm = model.get_base_model()

        def compute_loss(batch):
            return answer_loss(causal_lm, batch)

    model.train()
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    trainable = sum(parameter.numel() for parameter in parameters)
    total = sum(_logical_numel(parameter) for parameter in base.parameters())

    held_out = batches.pop()

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(compute_loss(held_out))

    loss_before = held_out_loss()
    meter = MemoryMeter(device)
    meter.set_baseline()
    losses, seconds = [], []
    for index, batch in enumerate(batches):
        if index == args.warmup_steps:
            # The warmup steps allocate the optimizer state, which counts as training memory
            # because the baseline precedes it, and run one-time work such as bitsandbytes'
            # CPU weight repacking, which the reset leaves out of the peak.
            meter.reset_peak()
        step_started = time.perf_counter()
        loss = compute_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - step_started
        losses.append(float(loss.detach()))
        if index >= args.warmup_steps:
            seconds.append(elapsed)
    memory = meter.stop()
    loss_after = held_out_loss()

    return {
        "variant": variant,
        "device": str(device),
        "compute_dtype": str(next(p for p in base.parameters() if p.is_floating_point()).dtype).replace("torch.", ""),
        "trainable_params": trainable,
        "base_params": total,
        "learning_rate": learning_rate,
        "load_seconds": load_seconds,
        "seconds_per_step": sum(seconds) / len(seconds),
        "step_seconds": seconds,
        "losses": losses,
        "held_out_loss_before": loss_before,
        "held_out_loss_after": loss_after,
        **memory,
    }


# ----------------------------------------------------------------------------- report


def _machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fin:
            cpu = next(line.split(":", 1)[1].strip() for line in fin if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [f"{cpu}, {os.cpu_count()} cores, {memory_gib:.0f} GiB RAM"]
    if device.startswith("cuda"):
        parts.append(torch.cuda.get_device_name())
    versions = {}
    for name in ("torch", "transformers", "bitsandbytes", "peft"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "absent"
    parts.append(", ".join(f"{name} {version}" for name, version in versions.items()))
    return "; ".join(parts)


def format_table(results: List[Dict[str, Any]], args, command: str) -> str:
    """Return the Markdown report: machine, command, one row per variant, QST-to-QLoRA ratios."""
    rows = [
        "| variant | trainable params | peak training memory (MiB) | peak total (MiB) | s/step "
        "| held-out loss before -> after | last step loss | lr |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for result in results:
        rows.append(
            f"| {result['variant']} | {result['trainable_params']:,} | {result['peak_delta_mib']:,.0f} | "
            f"{result['peak_mib']:,.0f} | {result['seconds_per_step']:.2f} | "
            f"{result['held_out_loss_before']:.3f} -> {result['held_out_loss_after']:.3f} | "
            f"{result['losses'][-1]:.3f} | {result['learning_rate']:g} |"
        )
    by_variant = {result["variant"]: result for result in results}
    lines = [
        f"Machine: {_machine(results[0]['device'])}",
        f"Base: {args.base} ({results[0]['base_params']:,} parameters, {results[0]['compute_dtype']} compute), "
        f"device {results[0]['device']}, batch {args.batch_size} x {args.seq_len} tokens, "
        f"{args.steps} timed steps after {args.warmup_steps} warmup",
        f"Command: `{command}`",
        "",
        *rows,
    ]
    if "qst" in by_variant:
        qst = by_variant["qst"]
        lines.append("")
        for other in ("qlora", "qlora-gc", "lora"):
            if other in by_variant:
                reference = by_variant[other]
                lines.append(
                    f"- QST / {other}: peak training memory {qst['peak_delta_mib'] / reference['peak_delta_mib']:.2f}x "
                    f"(total {qst['peak_mib'] / reference['peak_mib']:.2f}x), "
                    f"time per step {qst['seconds_per_step'] / reference['seconds_per_step']:.2f}x"
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.worker:
        result = run_worker(args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    if args.warmup_steps < 1 or args.steps < 1:
        raise SystemExit("--warmup-steps and --steps must be at least 1")
    variants = [variant.strip() for variant in args.variants.split(",") if variant.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    forwarded = [argument for argument in (argv if argv is not None else sys.argv[1:])]
    results = []
    for variant in variants:
        command = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--worker", variant]
        print(f"running {variant} ...", file=sys.stderr, flush=True)
        completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
        if completed.returncode != 0:
            raise SystemExit(f"variant {variant} failed with exit status {completed.returncode}")
        line = next(line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX))
        results.append(json.loads(line[len(RESULT_PREFIX):]))

    command = "python benchmarks/qst_vs_qlora.py " + " ".join(shlex.quote(argument) for argument in forwarded)
    print(format_table(results, args, command.strip()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fout:
            json.dump({"command": command, "results": results}, fout, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
