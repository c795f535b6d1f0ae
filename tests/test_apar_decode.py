"""spectax.apar.decode: fork decoding in the jitted loop, checked stream by stream against plain decoding.

The model is the tiny random Llama with two control tokens appended, its LM head edited so that it forks: the [Fork]
column copies token 5's column (plus a hair), the end token's copies token 7's, so [Fork] is the greedy choice
wherever 5 would have been, and streams end wherever 7 would have been.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import spectax
from spectax import apar
from spectax.apar.decode import Rules
from spectax.drafters import NGram
from spectax.models import Model
from spectax.sharding import axes
from spectax.step_types import Draft
from spectax.tree import DraftTree

FORK, CHILD, END = 97, 98, 96
PROMPTS = [[3, 14, 15, 92, 65], [35, 89, 79], [1, 2, 3, 4], [50, 60]]


def forking(base_config, fork_like: int = 5, end_like: int = 7, seed: int = 0) -> Model:
    config = dataclasses.replace(base_config, vocab_size=99, apar_ids=(FORK, CHILD), eos_id=END)
    model = Model.random(config, seed=seed, scale=3.0)
    head = model.params["lm_head"]["kernel"]                                      # [E, V]
    head = head.at[:, FORK].set(head[:, fork_like] + 0.01).at[:, END].set(head[:, end_like] + 0.01)
    return model.replace(params={**model.params, "lm_head": {"kernel": head}})


@pytest.fixture(scope="module")
def model():
    from conftest import TINY_LLAMA

    return forking(TINY_LLAMA)


def alone(model, context: list[int], n: int) -> list[int]:
    """Greedy decoding of one stream by itself under APAR's rules (forks allowed), `n` tokens."""
    rules = Rules(model=model, fresh_B=jnp.zeros((1,), bool), fork_ok_B=jnp.ones((1,), bool), fork_id=FORK,
                  child_id=CHILD)
    out = spectax.decode(rules, [context], n, eos_id=END)
    return [int(t) for t in np.asarray(out.tokens[0, :int(out.lengths[0])])]


def contexts(prompt, streams) -> list[list[int]]:
    """Each stream's context: the prompt, then for a child its parent's context and tokens up to the fork."""
    out = []
    for s in streams:
        out.append(list(prompt) if s.parent < 0 else
                   out[s.parent] + list(streams[s.parent].tokens[:s.fork_at + 1]))
    return out


def test_forking_off_decodes_as_spectax_decode(model):
    plain = spectax.decode(model, PROMPTS, 24)
    off = apar.decode(model, PROMPTS, 24, max_streams=1)
    assert off.sequences == [[int(t) for t in np.asarray(plain.tokens[b, :int(plain.lengths[b])])] for b in range(4)]
    assert list(off.streams) == [1, 1, 1, 1] and off.stats.target_calls == int(plain.stats.target_calls)


def test_each_stream_is_what_it_would_decode_alone(model):
    """Batch 4, rows that fork differently; every stream's tokens are those of greedy decoding from its own context
    (the prompt, its ancestors up to their forks, [Fork]), the child's first token [Child]: the copied cache holds
    exactly the parent's prefix and nothing of its later tokens or its siblings."""
    out = apar.decode(model, PROMPTS, 40, max_streams=8)
    assert len(set(map(int, out.streams))) > 1 and max(out.streams) >= 3       # rows fork, and differently
    for prompt, streams in zip(PROMPTS, out.forks):
        for stream, context in zip(streams, contexts(prompt, streams)):
            tokens = list(stream.tokens)
            if stream.parent >= 0 and tokens:            # (a child opened as its row ran out of tokens is empty)
                assert tokens[0] == CHILD
                context, tokens = context + [CHILD], tokens[1:]
            if tokens:
                assert tokens == alone(model, context, len(tokens)), (prompt, stream)


def test_the_rules_and_the_cap(model):
    """[Child] only opens a child; no [Fork] after [Fork] or [Child]; with 2 slots every committed [Fork] still
    opened a stream (a row with no free slot may not fork), and fewer streams open than with room."""
    wide, narrow = (apar.decode(model, PROMPTS, 40, max_streams=s) for s in (8, 2))
    for result in (wide, narrow):
        for streams, opened in zip(result.forks, result.streams):
            assert len(streams) == opened
            forks = 0
            for stream in streams:
                toks = list(stream.tokens)
                assert CHILD not in toks[1:] and (stream.parent >= 0) == (toks[:1] == [CHILD] or not toks)
                assert not any(a in (FORK, CHILD) and b == FORK for a, b in zip(toks, toks[1:]))
                forks += toks.count(FORK)
            assert forks == opened - 1                                               # every fork opened a stream
    assert sum(narrow.streams) < sum(wide.streams)


def reassembled(streams) -> list[int]:
    """Document order: each child's tokens spliced in right after its fork; control tokens and the children's end
    tokens dropped."""
    def text(i):
        out = []
        for k, t in enumerate(streams[i].tokens):
            if t not in (FORK, CHILD) and not (streams[i].parent >= 0 and t == END):
                out.append(t)
            for j, s in enumerate(streams):
                if s.parent == i and s.fork_at == k:
                    out += text(j)
        return out
    return text(0)


def test_children_are_placed_after_their_forks(model):
    out = apar.decode(model, PROMPTS, 40, max_streams=8)
    for streams, seq in zip(out.forks, out.sequences):
        assert seq == reassembled(streams)[:40]
        assert FORK not in seq and CHILD not in seq
    assert any(len(s) > 1 for s in out.forks)


def test_a_row_decodes_the_same_in_any_batch(model):
    batch = apar.decode(model, PROMPTS, 32, max_streams=4)
    for b, prompt in enumerate(PROMPTS):
        single = apar.decode(model, [prompt], 32, max_streams=4)
        assert single.sequences[0] == batch.sequences[b] and single.forks[0] == batch.forks[b]


def by_path(streams) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Streams keyed by where they fork from (the fork positions from the main stream down): the order in which
    streams open, and so their ids, depends on timing; their place in the answer does not."""
    paths: list[tuple[int, ...]] = []
    for s in streams:
        paths.append(() if s.parent < 0 else paths[s.parent] + (s.fork_at,))
    return {p: s.tokens for p, s in zip(paths, streams)}


@struct.dataclass
class Oracle:
    """A stateless chain drafter that proposes each row's known continuation (row r's history is a prefix of
    reference_RW[r]): every draft of a main stream is right, [Fork]s and the tokens after them included, so steps
    commit forks mid-chain (they must be cut there)."""

    reference_RW: jax.Array = axes("batch", None)
    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree.chain(4))
    target_layers = ()
    follows_any_path = True

    def check(self, target, batch=None):
        pass

    def init(self, *_):
        return ()

    def propose(self, state, history, keys_B, spec, sampling):
        idx = jnp.minimum(history.length_B[:, None] + jnp.arange(self.tree.num_nodes)[None, :],
                          self.reference_RW.shape[1] - 1)
        return Draft(tokens_BN=jnp.take_along_axis(self.reference_RW, idx, axis=1)), state

    def update(self, state, *_):
        return state


def oracle(base, streams: int) -> Oracle:
    """The Oracle of `base`'s main streams (slot 0 of each request; the other slots propose token 0)."""
    rows = [list(p) + list(f[0].tokens) for p, f in zip(PROMPTS, base.forks)]
    ref = np.zeros((len(rows) * streams, max(map(len, rows)) + 8), np.int32)
    for b, row in enumerate(rows):
        ref[b * streams, :len(row)] = row
    return Oracle(reference_RW=jnp.asarray(ref))


@pytest.mark.parametrize("drafter", ["ngram", "oracle"])
def test_drafts_are_verified_per_stream_losslessly(model, drafter):
    base = apar.decode(model, PROMPTS, 40, max_streams=8)
    draft = NGram(tree=DraftTree.chain(3)) if drafter == "ngram" else oracle(base, 8)
    drafted = apar.decode(model, PROMPTS, 40, max_streams=8, drafter=draft)
    assert drafted.stats.target_calls < base.stats.target_calls              # the drafts were accepted
    for a, b, seq_a, seq_b in zip(base.forks, drafted.forks, base.sequences, drafted.sequences):
        pa, pb = by_path(a), by_path(b)
        for path in pa.keys() | pb.keys():
            if path in pa and path in pb:
                short, long = sorted((pa[path], pb[path]), key=len)
                assert long[:len(short)] == short, path
            else:                                 # opened in one run only: the other never reached its fork
                other = pb if path in pa else pa
                assert path[-1] >= len(other.get(path[:-1], ())), path
        if sum(map(len, pa.values())) < 40 and sum(map(len, pb.values())) < 40:
            assert seq_a == seq_b


def test_bad_input(model, tiny_llama):
    from spectax.drafters import DraftModel

    with pytest.raises(ValueError, match="no APAR control tokens"):
        apar.decode(tiny_llama, PROMPTS, 8)
    with pytest.raises(ValueError, match="max_streams"):
        apar.decode(model, PROMPTS, 8, max_streams=0)
    with pytest.raises(ValueError, match="keeps no state"):
        apar.decode(model, PROMPTS, 8, drafter=DraftModel(model, tree=DraftTree.chain(2)))


def test_cache_bytes_counts_the_rows_a_decode_holds(model):
    from spectax.apar.decode import cache_bytes

    cache = model.create_cache(2 * 3, 40)
    assert cache_bytes(model, 2, 3, 40) == sum(x.nbytes for x in cache.k + cache.v)


def test_the_benchmark_runs_and_judges_coverage(tmp_path):
    """benchmarks/apar.py --smoke (a tiny forking model) writes every method's figures; its quality rule counts the
    base answer's list titles the APAR answer mentions."""
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "apar.py"
    subprocess.run([sys.executable, str(script), "--smoke", "--out", str(tmp_path / "apar.json")], check=True,
                   capture_output=True, timeout=600)
    result = json.loads((tmp_path / "apar.json").read_text())
    assert [(r["workload"], r["batch"]) for r in result["runs"]] == [("structured", 1), ("structured", 2)]
    for r in result["runs"]:
        assert set(r["methods"]) == {"plain", "apar", "apar+ngram"}
        assert r["methods"]["apar"]["fork_rate"] > 0 and r["methods"]["plain"]["fork_rate"] == 0
        assert all(0 < m["steps_per_token"] <= 1.0 and m["speedup"] > 0 for m in r["methods"].values())
    spec = importlib.util.spec_from_file_location("apar_bench", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    base = "Tips:\n1. Sleep well: rest.\n2. **Drink water**: often.\n3. Walk daily: outside."
    assert bench.coverage(base, "You should sleep, and drink some water.") == pytest.approx(2 / 3)
    assert bench.coverage("No list here.", "anything") is None
