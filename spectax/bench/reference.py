"""The Hugging Face transformers reference for `spectax bench --reference` (torch and transformers: the `[bench]`
extra: torch, transformers, accelerate; never needed otherwise). On the same prompts, batch 1, greedy, fp32 on the CPU, with the weights read from the
same GGUF file: plain `generate`, assisted generation with the draft-chain method's draft (the target's first layers)
and k (a constant schedule, confidence threshold 0, so its tau is comparable with spectax's for the same chain), and
prompt lookup. tau counts the target model's forward calls."""

from __future__ import annotations

import time

import numpy as np

from spectax.bench.harness import Prompt
from spectax.bench.methods import NGRAM_CHAIN


def available() -> bool:
    """Whether torch, transformers and accelerate (transformers needs it to read a GGUF file) can be imported."""
    try:
        import accelerate  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _counting(model):
    """Wraps model.forward to count its calls; returns the counter list ([calls])."""
    calls = [0]
    forward = model.forward

    def counted(*a, **k):
        calls[0] += 1
        return forward(*a, **k)

    model.forward = counted
    return calls


def measure(gguf_path, prompts: list[Prompt], new_tokens: int, prompt_bucket: int, draft_layers: int, chain: int,
            spectax_plain: dict[int, list[int]] | None = None, progress=None) -> dict:
    """{"versions", "methods": {name: {"tau", "tokens_per_s", "speedup", "same_tokens_as_spectax_plain"}}} for
    transformers' greedy, assisted (draft: the target's first `draft_layers` layers, `chain` tokens per step) and
    prompt-lookup (NGRAM_CHAIN tokens, as the `ngram` method) generation; speedup against transformers' greedy, ratio of summed seconds. `spectax_plain`:
    {prompt index: spectax's plain greedy tokens} to compare with (the fraction of prompts whose tokens agree)."""
    import copy

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_grad_enabled(False)
    target = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32).eval()
    draft = copy.deepcopy(target)
    draft.model.layers = draft.model.layers[:draft_layers]
    draft.config.num_hidden_layers = draft_layers
    calls = _counting(target)
    settings = {
        "hf-greedy": {},
        "hf-assisted": {"assistant_model": draft},
        "hf-prompt-lookup": {"prompt_lookup_num_tokens": NGRAM_CHAIN},
    }
    target.generation_config.num_assistant_tokens = chain
    target.generation_config.num_assistant_tokens_schedule = "constant"
    target.generation_config.assistant_confidence_threshold = 0.0
    totals = {name: {"seconds": 0.0, "tokens": 0, "calls": 0, "same": 0} for name in settings}
    for i, p in enumerate(prompts):
        ids = torch.tensor([list(p.ids[-prompt_bucket:])])
        for name, extra in settings.items():
            kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **extra)
            target.generate(ids, **{**kwargs, "max_new_tokens": 2})          # warm-up (first-call costs)
            calls[0] = 0
            t = time.perf_counter()
            out = target.generate(ids, **kwargs)[0, ids.shape[1]:].tolist()
            seconds = time.perf_counter() - t
            r = totals[name]
            r["seconds"] += seconds
            r["tokens"] += len(out)
            r["calls"] += calls[0]
            if spectax_plain is not None:
                mine = spectax_plain.get(i, [])
                r["same"] += int(mine[:len(out)] == out[:len(mine)])
        if progress is not None:
            progress(1)
    base = totals["hf-greedy"]["seconds"]
    methods = {}
    for name, r in totals.items():
        # the prefill is one forward and makes the first token; tau counts the later tokens per later call, as
        # spectax's DecodeStats do
        tau = (r["tokens"] - len(prompts)) / max(r["calls"] - len(prompts), 1)
        methods[name] = {"tau": tau, "tokens_per_s": r["tokens"] / r["seconds"], "speedup": base / r["seconds"],
                         "same_tokens_as_spectax_plain": (r["same"] / len(prompts)) if spectax_plain else None}
    return {"versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "prompts": len(prompts), "batch": 1, "new_tokens": new_tokens, "draft_layers": draft_layers,
            "chain": chain, "methods": methods, "threads": torch.get_num_threads(), "seconds": float(np.sum(
                [r["seconds"] for r in totals.values()]))}
