"""Train the function-call test model: a tiny Llama that calls add/mul through the kit's template.

    python -m tests.gpu.train_fc --out DIR [--steps 1500] [--seconds 110] [--seed 0]

This is a TEST MODEL trained for one job, the `make fc-check` round trip: a user asks for integer
arithmetic with + and *, the model answers with InternLM2.5 action blocks
(`<|action_start|><|plugin|>\\n{"name": "add", "parameters": {"a": 3, "b": 5}}<|action_end|>`),
reads each tool result from the `environment` turn, and ends with "The answer is N.". It knows
nothing else and is not a general assistant.

Every training dialogue is rendered the way the server renders the check's requests: the kit's
tools-aware template (kit/chat_template.py, installed by kit.chat_template.install), the tools as
lmdeploy's request model dumps them, the client's message shapes (clients/funcall.py), and the
ids lmdeploy's tokenizer feeds the engine; `check_against_lmdeploy` asserts that on a sample.
Only the assistant's tokens are trained on. HELD_OUT questions (the check's own "(3+5)*2" among
them) never occur in the data, asserted by their tool-call signature (operands in any order).

Writes a Hugging Face Llama directory (fp16 safetensors, byte-level tokenizer with InternLM2's
special tokens, generation_config stopping at `<|im_end|>`) that transformers and lmdeploy load,
plus `train-fc.json` (seed, steps, losses, held-out results of a greedy transformers run).

Modules: fc_problems (questions and HELD_OUT), fc_dialogues (rendering, encoding, the lmdeploy
check), fc_training (tokenizer, model, training loop, greedy check, save). Names are importable here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from tests.gpu.fc_dialogues import (
    ANSWER,
    IM_END,
    Renderer,
    build_data,
    check_against_lmdeploy,
    dialogue,
    encode,
    lmdeploy_tools,
    render_text,
)
from tests.gpu.fc_problems import HELD_OUT, STRUCTURES, WORDINGS, Problem, held_out_signatures, make_problems, signature, solve
from tests.gpu.fc_training import (
    SHAPE,
    VOCAB,
    batches,
    build_dirs,
    common_prefix,
    greedy_round_trip,
    log,
    new_config,
    new_model,
    pick_prefix,
    save,
    shared_prefix_loss,
    train,
)

__all__ = [
    "ANSWER",
    "HELD_OUT",
    "IM_END",
    "SHAPE",
    "STRUCTURES",
    "VOCAB",
    "WORDINGS",
    "Problem",
    "Renderer",
    "batches",
    "build_data",
    "build_dirs",
    "check_against_lmdeploy",
    "common_prefix",
    "dialogue",
    "encode",
    "greedy_round_trip",
    "held_out_signatures",
    "lmdeploy_tools",
    "main",
    "make_problems",
    "new_config",
    "new_model",
    "pick_prefix",
    "render_text",
    "save",
    "shared_prefix_loss",
    "signature",
    "solve",
    "train",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.gpu.train_fc", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--seed", type=int, default=0, help="seed of data, weights and batches (default %(default)s)")
    p.add_argument("--dialogues", type=int, default=40000, help="distinct training dialogues (default %(default)s)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default %(default)s)")
    p.add_argument("--seconds", type=float, default=0, help="stop training after this many seconds (0: no limit)")
    p.add_argument("--target-loss", type=float, default=0.003, help="stop once three logged losses are below this (0: never)")
    p.add_argument("--no-share-prefix", dest="share_prefix", action="store_false", help="run every dialogue's common prefix per sequence")
    p.add_argument("--batch", type=int, default=64, help="dialogues per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate (default %(default)s)")
    p.add_argument("--check", type=int, default=50, help="dialogues checked against lmdeploy's template + tokenizer (default %(default)s)")
    p.add_argument("--shape", type=json.loads, default=SHAPE, help="Llama shape as JSON (default %(default)s)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="processes that render the data (default %(default)s)")
    p.add_argument("--device", default="cuda", help="torch device (default %(default)s)")
    args = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)  # our own: lmdeploy raises the root handlers' level
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    if args.steps < 1 or args.batch < 1 or args.dialogues < args.batch:
        log.error("--steps and --batch must be >= 1 and --dialogues >= --batch")
        return 2

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the data workers fork
    import torch

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tokenizer = build_dirs(args.out)
    cfg = new_config(tokenizer, args.shape)
    cfg.save_pretrained(args.out)  # lmdeploy reads the architecture when it picks the chat template
    problems = make_problems(args.dialogues, args.seed)
    banned = held_out_signatures()
    assert not any(signature(pr.calls) in banned for pr in problems), "a held-out computation is in the training data"
    assert not {q for q, _ in HELD_OUT} & {pr.question for pr in problems}, "a held-out question is in the training data"
    data = build_data(args.out, problems, lmdeploy_tools(), args.workers)
    check_against_lmdeploy(args.out, problems[: args.check], data[: args.check])
    lengths = sorted(len(ids) for ids, _ in data)
    log.info(
        "%d dialogues, %d-%d tokens (median %d), built and checked in %.1f s",
        len(data),
        lengths[0],
        lengths[-1],
        lengths[len(lengths) // 2],
        time.perf_counter() - t0,
    )

    model = new_model(cfg, args.seed)
    params = sum(x.numel() for x in model.parameters())
    log.info("Llama %s, %.1f M parameters, device %s", args.shape, params / 1e6, args.device)
    info: dict[str, Any] = {
        "seed": args.seed,
        "dialogues": len(data),
        "shape": args.shape,
        "vocab": VOCAB,
        "params": params,
        "batch": args.batch,
        "lr": args.lr,
    }
    info.update(train(model, data, args, tokenizer.pad_token_id))
    model.eval()
    info["held_out"] = []
    for question, expected in HELD_OUT:
        try:
            r = {**greedy_round_trip(model, tokenizer, question, args.device), "expected": expected}
        except Exception as exc:  # a diagnostic only: the served check is the verdict
            r = {"question": question, "expected": expected, "error": f"{type(exc).__name__}: {exc}"}
        info["held_out"].append(r)
        log.info("held out (transformers, greedy): %s", json.dumps(r))
    save(model, tokenizer, args.out)
    info["device_name"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    info["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
    info["total_seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "train-fc.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: info[k] for k in ("params", "steps", "train_seconds", "total_seconds")} | {"last_loss": info["losses"][-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
