"""Every drafter through the loop (issue 26, items 8 and 9): plain, DraftModel (chain and tree), Heads, Block, NGram,
Combined and CoS each run one target forward per step and, on top, exactly the forwards their design states; no
compiled program copies a KV cache; and an end token inside an accepted block ends the row as plain decoding does.

The forwards a step runs, as each drafter's design states them (spectax/drafters/*.py):
  every drafter   one target forward over the root and the tree's nodes (T = 1 + N; a depth cut of the tree for
                  drafters that limit their rows' depths, NGram and Combined), the only target call of the step
  DraftModel      one forward of the draft model per tree level (tree.max_depth), each over [x0, root, nodes]
  Heads           one pass of the heads (in update, on the verification forward's hidden state)
  Block           one draft forward (block_logits) for the whole block
  NGram           nothing: it reads the token history
  Combined        its parts' work: here NGram (nothing) + Heads (one pass)
  CoS             the target is the Ensemble, so the one target call is one forward of each member; the proposer is
                  a DraftModel over the smallest member: one forward of it per tree level

The EOS tests need drafts that are accepted, so they decode a target built to be predictable: a permutation model
(`cycle_model`) whose greedy text walks one fixed cycle through the vocabulary, and drafters constructed to know that
cycle (a draft model of the same kind, heads and a block drafter with weights set by hand, prompts holding the text
for the n-gram matcher). The step log then shows where each row's EOS fell, and the tests assert it fell inside an
accepted block (an accepted draft token with more accepted tokens after it in the same step).
"""

import dataclasses
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import pallas_kernels.tree_attention.reference as reference_mod
import spectax
import spectax.api as api
import spectax.drafters.block as block_mod
import spectax.drafters.heads as heads_mod
import spectax.loop as loop_mod
import spectax.models.model as model_mod
from hlo_copies import cache_copies
from spectax import DraftTree, Ensemble
from spectax.drafters import Block, Combined, CoS, DraftModel, Heads, NGram, NoDraft
from spectax.models import Model, ModelConfig

V = 32
TARGET = ModelConfig(arch="llama", vocab_size=V, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=12, intermediate_size=2 * V, max_position=256)
DRAFT = dataclasses.replace(TARGET, hidden_size=40, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=10)
ORDER = np.random.default_rng(0).permutation(V)          # the cycle: ORDER[i] is followed by ORDER[i + 1]
NEXT = np.empty(V, np.int64)
NEXT[ORDER] = np.roll(ORDER, -1)                          # g: token -> the token after it
NEW = 24                                                  # < V: no row repeats a token
J = 13        # the EOS: row 0's plain token at output slot J (mid-answer; with every draft accepted, a draft slot of
              # both a depth-2 and a depth-3 tree: (J - 1) % 3 != 2 and (J - 1) % 4 != 3)
# row b: a stretch of the cycle from ORDER[start], then ORDER[start] again: its answer continues the stretch, so the
# n-gram matcher finds it in the prompt (rows of different lengths and starts: ragged, EOS at different slots)
PROMPTS = [[int(ORDER[(start + i) % V]) for i in range(n)] + [int(ORDER[start])]
           for start, n in ((0, 20), (7, 13), (15, 17), (24, 9))]


def power(k: int) -> np.ndarray:
    """g^k as an index array [V]."""
    out = np.arange(V)
    for _ in range(k):
        out = NEXT[out]
    return out


def moves(k: int, E: int) -> np.ndarray:
    """float32 [E, E]: x @ moves(k) maps the one-hot e_t (t < V) to e_{g^k(t)}."""
    m = np.zeros((E, E), np.float32)
    m[np.arange(V), power(k)] = 1.0
    return m


def cycle_model(config: ModelConfig) -> Model:
    """A permutation LM: attention and MLP outputs zero, embeddings one-hot (E >= V), so the hidden state at token t
    is the normed e_t whatever the context, and the LM head maps e_t to g(t): logits sqrt(E) at g(t), 0 elsewhere."""
    p = jax.tree_util.tree_map(np.array, Model.random(config, seed=0).params)
    E = config.hidden_size
    p["embed"]["embedding"] = np.eye(V, E, dtype=np.float32)
    for i in range(config.num_layers):
        p[f"layers_{i}"]["attn"]["o"]["kernel"][:] = 0
        p[f"layers_{i}"]["mlp"]["down"]["kernel"][:] = 0
    p["final_norm"]["scale"][:] = 1
    p["lm_head"]["kernel"] = moves(1, E)[:, :V]          # column g(t) reads e_t
    return Model.create(config, p)


def cycle_heads(target: Model, tree: DraftTree) -> Heads:
    """Blockwise heads that know the cycle: head i maps the hidden state at token t, c e_t, to c e_{g^(i+1)(t)}
    (h = x + relu(x I) (M - I) = x M), which the target's LM head reads as g^(i+2)(t): the token i + 1 after the root
    g(t)."""
    D, E = tree.max_depth, target.config.hidden_size
    eye = np.eye(E, dtype=np.float32)
    params = {"w1": np.stack([eye] * D), "b1": np.zeros((D, E), np.float32),
              "w2": np.stack([moves(i + 1, E) - eye for i in range(D)])}
    heads = Heads.create(target, kind="blockwise", num_heads=D, tree=tree)
    return heads.replace(params=jax.tree_util.tree_map(jnp.asarray, params))


def cycle_block(target: Model, k: int) -> Block:
    """A block drafter that knows the cycle: no context (zero fusion) and no attention output; mask slot j flags the
    hidden dimension V + j - 1, and MLP unit (j, i) (j >= 2) fires when slot j holds root i (silu(gate on the flag) x
    up on e_i) and writes e_{g^(j-1)(i)}, which the target's LM head reads as g^j(i): slot j proposes the token j
    after the root."""
    E, F = target.config.hidden_size, target.config.intermediate_size
    assert E >= V + k and F >= (k - 1) * V
    block = Block.create(target, block_size=k, num_layers=1, target_layers=(0, 1), tree=DraftTree.chain(k))
    p = jax.tree_util.tree_map(np.array, block.params)
    p["fuse"][:] = 0
    p["mask"] = np.eye(k, E, V, dtype=np.float32)
    layer = p["layers_0"]
    layer["attn"]["o"]["kernel"][:] = 0
    gate_up, down = np.zeros((E, 2, F), np.float32), np.zeros((F, E), np.float32)
    for j in range(2, k + 1):
        units = (j - 2) * V + np.arange(V)
        gate_up[V + j - 1, 0, units] = 4.0
        gate_up[np.arange(V), 1, units] = 1.0
        down[units, power(j - 1)] = 1.0
    layer["mlp"]["gate_up"]["kernel"], layer["mlp"]["down"]["kernel"] = gate_up, down
    return block.replace(params=jax.tree_util.tree_map(jnp.asarray, p))


@pytest.fixture(scope="module")
def models():
    target, small = cycle_model(TARGET), cycle_model(DRAFT)
    return {"target": target, "small": small, "ensemble": Ensemble((target, small))}


HEADS_TREE = DraftTree.from_paths([(0,), (1,), (0, 0), (1, 0), (0, 0, 0)])
DRAFTERS = {   # name -> (the target it decodes, drafter)
    "plain": lambda m: (m["target"], NoDraft()),
    "draft-chain": lambda m: (m["target"], DraftModel(m["small"], tree=DraftTree.chain(3))),
    "draft-tree": lambda m: (m["target"], DraftModel(m["small"], tree=DraftTree.kary((2, 2)))),
    "heads": lambda m: (m["target"], cycle_heads(m["target"], HEADS_TREE)),
    "block": lambda m: (m["target"], cycle_block(m["target"], 3)),
    "ngram": lambda m: (m["target"], NGram(tree=DraftTree.chain(3))),
    "combined": lambda m: (m["target"], Combined((NGram(tree=DraftTree.chain(3)),
                                                  cycle_heads(m["target"], DraftTree.chain(3))))),
    "cos": lambda m: (m["ensemble"], CoS(m["ensemble"], tree=DraftTree.chain(3))),
}
SPECULATIVE = [name for name in DRAFTERS if name != "plain"]
CUTS = ("ngram", "combined")      # drafters whose rows offer depths: the target forward may run a depth cut
PER_STEP = {   # (what, which model) -> count, per loop step, from the designs (module docstring)
    "plain": {("verify", "target"): 1},
    "draft-chain": {("verify", "target"): 1, ("draft", "small"): 3},
    "draft-tree": {("verify", "target"): 1, ("draft", "small"): 2},
    "heads": {("verify", "target"): 1, ("head", None): 1},
    "block": {("verify", "target"): 1, ("block", None): 1},
    "ngram": {("verify", "target"): 1},
    "combined": {("verify", "target"): 1, ("head", None): 1},
    "cos": {("verify", "target"): 1, ("verify", "small"): 1, ("draft", "small"): 3},
}


# ------------------------------------------------------------------------------------------------ the step log

class Events:
    """What a decode ran, in program order, recorded from inside the program (ordered jax.debug.callback)."""

    def __init__(self):
        self.seen = []

    def emit(self, tag, *arrays):
        jax.debug.callback(lambda *xs: self.seen.append((tag, *map(np.asarray, xs))), *arrays, ordered=True)


@struct.dataclass
class Stepped:
    """Any drafter, marking each loop step: ("propose",) before its proposal, ("update", n_accepted [B],
    new tokens [B, D + 1], active [B]) after its update."""

    inner: object
    events: Events = struct.field(pytree_node=False)

    tree = property(lambda self: self.inner.tree)
    target_layers = property(lambda self: self.inner.target_layers)
    follows_any_path = property(lambda self: self.inner.follows_any_path)

    def check(self, target, batch=None):
        self.inner.check(target, batch)

    def init(self, *args):
        return self.inner.init(*args)

    def propose(self, *args):
        self.events.emit("propose")
        return self.inner.propose(*args)

    def update(self, state, verdict, new_tokens_BC, out, active_B):
        state = self.inner.update(state, verdict, new_tokens_BC, out, active_B)
        self.events.emit("update", verdict.n_accepted, new_tokens_BC, active_B)
        return state


def instrument(mp, events: Events) -> None:
    """Every Model.forward emits (("verify" inside the loop's target call, else "draft"), "target" / "small", T);
    the heads' pass and the block drafter's forward emit ("head", None) and ("block", None)."""
    verifying = []
    forward, forward_over = model_mod.Model.forward, loop_mod.Loop._forward_over

    def counted(m, tokens_BT, *args, **kw):
        which = {TARGET: "target", DRAFT: "small"}[m.config]
        events.emit(("verify" if verifying else "draft", which, tokens_BT.shape[1]))
        return forward(m, tokens_BT, *args, **kw)

    def verify_over(self, *args, **kw):
        verifying.append(True)
        try:
            return forward_over(self, *args, **kw)
        finally:
            verifying.pop()

    def tagged(module, name):
        original = getattr(module, name)

        def call(*args, **kw):
            events.emit((name.split("_")[0], None, 0))
            return original(*args, **kw)
        mp.setattr(module, name, call)

    mp.setattr(model_mod.Model, "forward", counted)
    mp.setattr(loop_mod.Loop, "_forward_over", verify_over)
    tagged(heads_mod, "head_logits")
    tagged(block_mod, "block_logits")


def steps_of(seen) -> list:
    """Per loop step: (the (what, which, T) it ran between "propose" and "update", (n_accepted, new, active))."""
    steps, current = [], None
    for tag, *arrays in seen:
        if tag == "propose":
            assert current is None, "a step began before the last one ended"
            current = []
        elif tag == "update":
            steps.append((current, tuple(arrays)))
            current = None
        else:
            assert current is not None or not steps, f"{tag} ran outside a step, after the loop began"
            if current is not None:
                current.append(tag)
    assert current is None, "the last step never ended"
    return steps


def decode_logged(model, drafter, batch, eos_id):
    """decode() of PROMPTS[:batch] with every forward and step recorded; the program is traced afresh and dropped
    after (no other decode reuses an instrumented program)."""
    events = Events()
    with pytest.MonkeyPatch.context() as mp:
        instrument(mp, events)
        api.decode_program.clear_cache()
        try:
            out = spectax.decode(model, PROMPTS[:batch], NEW, drafter=Stepped(drafter, events), eos_id=eos_id,
                                 pad_id=-1)
        finally:
            api.decode_program.clear_cache()
    return out, steps_of(events.seen)


@pytest.fixture(scope="module")
def eos(models):
    """Row 0's plain greedy token at slot J: its first occurrence there, mid-answer."""
    row = np.asarray(spectax.decode(models["target"], PROMPTS[:1], NEW).tokens[0]).tolist()
    assert row.index(row[J]) == J
    return row[J]


@pytest.fixture(scope="module")
def plain(models, eos):
    """Plain greedy decoding with that EOS, of each target at batch 1 and 4 (traced before any patch)."""
    return {(name, b): spectax.decode(models[name], PROMPTS[:b], NEW, eos_id=eos, pad_id=-1)
            for name in ("target", "ensemble") for b in (1, 4)}


@pytest.fixture(scope="module")
def runs(models, plain, eos):
    """(name, batch) -> (DecodeResult, steps): each drafter's logged decode with the EOS, run once per module."""
    done = {}

    def run(name, batch):
        if (name, batch) not in done:
            done[name, batch] = decode_logged(*DRAFTERS[name](models), batch, eos)
        return done[name, batch]
    return run


# ---------------------------------------------------------------------------------------------- item 8: counts

def check_forwards(name, tree, out, steps):
    """Every step ran exactly PER_STEP[name]; the target forward over the whole tree (or a depth cut of it, for the
    drafters that limit depths), each draft-model forward over [x0, root, nodes]."""
    assert len(steps) == int(out.stats.target_calls) > 0
    depths = range(tree.max_depth + 1) if name in CUTS else [tree.max_depth]
    widths = {1 + tree.truncated(d).num_nodes for d in depths}
    for i, (ran, _) in enumerate(steps):
        assert Counter((what, which) for what, which, _ in ran) == PER_STEP[name], f"step {i} ran {ran}"
        for what, which, T in ran:
            if what == "verify":
                assert T in widths, f"step {i}: a target forward over {T} tokens"
            if what == "draft":
                assert T == tree.num_nodes + 2, f"step {i}: a draft forward over {T} tokens"


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", list(DRAFTERS))
def test_forwards_per_step(runs, models, name, batch):
    out, steps = runs(name, batch)
    check_forwards(name, DRAFTERS[name](models)[1].tree, out, steps)
    if name == "ngram" and batch == 4:     # late in this run no row matches any more
        widths = {T for ran, _ in steps for what, _, T in ran if what == "verify"}
        assert len(widths) > 1, "the run must take both full and cut steps (else the cut forward is unchecked)"


def test_the_forward_count_catches_a_second_target_call(models, monkeypatch):
    """Teeth: a loop that runs the target forward twice per step fails the count."""
    forward = loop_mod.Loop._forward
    monkeypatch.setattr(loop_mod.Loop, "_forward", lambda self, s, draft: (forward(self, s, draft),
                                                                          forward(self, s, draft))[1])
    out, steps = decode_logged(*DRAFTERS["plain"](models), 1, None)
    with pytest.raises(AssertionError, match="step 0 ran"):
        check_forwards("plain", DraftTree(), out, steps)


# ----------------------------------------------------------------------------------------- item 8: no KV copy

def kv_copies(model, drafter, configs):
    """The lines of the compiled decode program (batch 2, a cache of 613 slots: a size no other array has, above the
    CPU attention's 512-slot block, so no block's scores [B, G, slots, Q] take a cache's shape) that copy a KV cache
    array of one of `configs`; asserts each cache shape is in the program (else the check proves nothing)."""
    size, prompt = 613, np.ones((2, 16), np.int32)
    dec = spectax.Decoder(model, drafter, max_new_tokens=16, max_prompt_len=16, cache_size=size)
    hlo = jax.jit(dec).lower(model, prompt, np.array([5, 9], np.int32), api.row_keys(0, 2)).compile().as_text()
    shapes = {f"f32[2,{c.num_kv_heads},{size},{c.head_dim}]" for c in configs}
    for shape in shapes:
        assert shape in hlo, f"no KV cache array {shape} in the program"
    return cache_copies(hlo, shapes)


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_the_loop_never_copies_a_kv_cache(models, name):
    """No compiled decode program holds a copy of a KV cache array, the target's or a drafter's own: the attention's
    block loops carry the caches and hand them back, and each step's K/V are written into those (a loop that only
    closed over the cache made XLA copy every layer's cache twice per step). Plain steps, the lax.switch over depth
    cuts and the drafters' own caches (DraftModel, CoS's proposer, Block) alike."""
    model, drafter = DRAFTERS[name](models)
    configs = [TARGET] + [DRAFT] * (name.startswith("draft") or name == "cos")
    copies = kv_copies(model, drafter, configs)
    assert not copies, f"{len(copies)} copies of a KV cache array, e.g. {copies[0]}"


def test_the_copy_check_catches_a_loop_without_the_barrier(models, monkeypatch, fresh_trace):
    """Teeth: without reference.py's optimization_barrier the caches become closed-over constants of the attention's
    block loops, and XLA copies them before each in-place write."""
    monkeypatch.setattr(reference_mod.lax, "optimization_barrier", lambda x: x)
    jax.clear_caches()       # an equal Decoder traced before the patch would hand back its cached jaxpr
    try:
        assert kv_copies(models["target"], NoDraft(), [TARGET])
    finally:
        jax.clear_caches()   # and no later test gets the patched one


# ------------------------------------------------------------------------------------------------ item 9: EOS

def rows_cut_inside_a_block(steps, eos) -> set:
    """The rows whose EOS came as an accepted draft token with more accepted tokens after it in the same step (the
    bonus at least): a commit must drop those."""
    rows = set()
    for _, (n_accepted_B, new_BC, active_B) in steps:
        for b in np.flatnonzero(active_B):
            hits = np.flatnonzero(new_BC[b, :n_accepted_B[b] + 1] == eos)
            if hits.size and hits[0] < n_accepted_B[b]:
                rows.add(int(b))
    return rows


def check_eos(out, steps, want, eos):
    np.testing.assert_array_equal(out.tokens, want.tokens)
    np.testing.assert_array_equal(out.lengths, want.lengths)
    np.testing.assert_array_equal(out.stats.new_tokens, np.asarray(out.lengths) - 1)   # nothing past EOS counted
    assert int(out.lengths[0]) == J + 1
    assert 0 in rows_cut_inside_a_block(steps, eos), "row 0's EOS must fall inside an accepted block"


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", SPECULATIVE)
def test_eos_inside_an_accepted_block_ends_the_row_as_plain_decoding(runs, plain, eos, name, batch):
    """Tokens and lengths equal plain greedy decoding with the same eos_id (pad after each row's end; at batch 4 the
    rows end at different slots, or not at all); row 0's EOS was an accepted draft token with accepted tokens after
    it in its step, and none of those was committed or counted."""
    out, steps = runs(name, batch)
    check_eos(out, steps, plain["ensemble" if name == "cos" else "target", batch], eos)


def test_the_eos_check_catches_a_commit_that_ignores_eos_in_a_block(models, plain, eos, monkeypatch):
    """Teeth: a commit that looks for end tokens only in one-token blocks (plain steps, the prefill) fails."""
    append = loop_mod.Loop._append

    def blind(self, s, new_BC, count_B):
        return append(self if new_BC.shape[1] == 1 else dataclasses.replace(self, eos_ids=self.eos_ids * 0 - 1),
                      s, new_BC, count_B)
    monkeypatch.setattr(loop_mod.Loop, "_append", blind)
    out, steps = decode_logged(*DRAFTERS["draft-chain"](models), 4, eos)
    with pytest.raises(AssertionError):
        check_eos(out, steps, plain["target", 4], eos)
