"""Per-token cost of constrained decoding (llguidance JSON-schema masks) on the real SmolLM2 vocabulary (49k).

    python bench/bench_constrained.py [--tokens 400]

Times `TokenSampler.choose` on next-token logits of the real model, unconstrained and constrained to a JSON
schema, in the same process, and prints the added time per token and its ratio to one decode step of the model
measured here too (so the figure carries over between machines; absolute times on a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import time

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "tags", "role"],
    "additionalProperties": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from tuneforge.models.loader import SMOLLM2_ID
    from tuneforge.serve.engine import InferenceEngine
    from tuneforge.serve.sampling import SamplingParams, TokenSampler

    engine = InferenceEngine(SMOLLM2_ID, fast_decode=False, dtype="float32")
    try:
        ids = torch.tensor([engine.encode("Write a JSON user record:")])
        with torch.no_grad():
            logits = engine.base(input_ids=ids).logits[0, -1]
            start = time.perf_counter()
            for _ in range(5):  # one token through the model: about a decode step's work at a short context
                engine.base(input_ids=ids[:, -1:])
            forward_s = (time.perf_counter() - start) / 5
        vocab = logits.shape[-1]
        start = time.perf_counter()
        grammar = engine.grammars.json_schema(SCHEMA, field="schema")
        engine.grammars.constraint(grammar)
        # the tokenizer's llguidance view (~1 s) is built in the background at engine start: usually done by now
        compile_s = time.perf_counter() - start

        def run(constrained: bool) -> float:
            done, total = 0, 0.0
            while done < args.tokens:
                sampler = TokenSampler(
                    SamplingParams(temperature=1.0, seed=done),
                    "cpu",
                    engine.grammars.constraint(grammar) if constrained else None,
                )
                for _ in range(64):
                    row = logits + torch.randn(vocab, generator=sampler.generator)  # a different position each time
                    start = time.perf_counter()
                    token = sampler.choose(row)
                    total += time.perf_counter() - start
                    done += 1
                    if token in engine.eos_ids or sampler.finished:
                        break
            return total / done

        run(True)  # warm up
        plain, constrained = run(False), run(True)
        print(f"vocabulary {vocab}, {args.tokens} tokens each way (shared machine: absolute times are noisy)")
        print(f"first schema compile: {compile_s * 1e3:.0f} ms")
        print(f"choose(): unconstrained {plain * 1e6:.0f} us/token, constrained {constrained * 1e6:.0f} us/token")
        print(
            f"added per token: {(constrained - plain) * 1e6:.0f} us = "
            f"{(constrained - plain) / forward_s:.3f}x of a one-token forward of the model here ({forward_s * 1e3:.1f} ms)"
        )
    finally:
        engine.close()


if __name__ == "__main__":
    main()
