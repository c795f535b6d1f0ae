"""`spectax bench`: the smoke run writes the documented JSON, table and plots; a method whose greedy tokens differ from
plain decoding's fails the run; the statistics and the flags."""

import dataclasses
import json

import matplotlib.image
import numpy as np
import pytest

from spectax import cli
from spectax.bench import methods, plots, report
from spectax.loop import acceptance_per_depth
from spectax.tree import DraftTree

METHOD_KEYS = {"description", "reference", "tree", "tau", "acceptance_per_depth", "decode_tokens_per_s",
               "e2e_tokens_per_s", "speedup", "speedup_median", "speedup_ci95", "decode_speedup", "eta",
               "compile_seconds", "compiles", "program_memory_bytes", "tokens_match_reference", "batches",
               "by_category"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    status = cli.main(["bench", "--smoke", "--quiet", "--out", str(out)])
    return status, out


def test_smoke_run_writes_the_schema_the_table_and_the_plots(smoke):
    status, out = smoke
    assert status == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["schema"] == report.SCHEMA and result["model"] == "smoke"
    assert result["verify_cost"]["nodes"] == [0, 1, 2] and result["verify_cost"]["cost"][0] == 1.0
    (run,) = result["runs"]
    assert (run["batch"], run["temperature"], run["prompts"]) == (1, 0.0, 4)
    assert list(run["methods"]) == ["plain", "draft-chain"]
    for m in run["methods"].values():
        assert set(m) == METHOD_KEYS
        assert m["batches"] == 4 and m["compiles"] == 3 and m["program_memory_bytes"] > 0
        lo, hi = m["speedup_ci95"]
        assert lo <= m["speedup_median"] <= hi and m["e2e_tokens_per_s"] > 0
    plain, drafted = run["methods"]["plain"], run["methods"]["draft-chain"]
    assert plain["tau"] == 1.0 and plain["speedup"] == 1.0 and plain["tokens_match_reference"] is None
    # the model drafting for itself: every chain of 3 is accepted, so tau is 4 but for the last step of a row
    assert drafted["tokens_match_reference"] is True and drafted["reference"] == "plain"
    assert 3.5 < drafted["tau"] <= 4.0 and drafted["acceptance_per_depth"] == [1.0, 1.0, 1.0]
    assert drafted["tree"] == [[0], [0, 0], [0, 0, 0]] and set(drafted["by_category"]) == {"smoke"}
    table = (out / "bench.md").read_text()
    assert "| draft-chain | 3 | " in table and "| yes |" in table
    for name in plots.PLOTS:
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_a_method_whose_greedy_tokens_differ_from_plain_fails_the_run(tmp_path, monkeypatch):
    """No drafter can change greedy output (the verifiers are lossless against any draft), so the corrupted method
    decodes with a perturbed copy of the target: the harness must see its tokens differ and exit 1, the JSON still
    written and saying which."""
    build = methods.build

    def corrupted(model, registered, names):
        out = build(model, registered, names)
        bad = out["draft-chain"]
        params = dict(model.params, final_norm={"scale": -model.params["final_norm"]["scale"]})
        return {**out, "draft-chain": dataclasses.replace(bad, target=model.replace(params=params))}

    monkeypatch.setattr(methods, "build", corrupted)
    assert cli.main(["bench", "--smoke", "--quiet", "--out", str(tmp_path)]) == 1
    run = json.loads((tmp_path / "bench.json").read_text())["runs"][0]
    assert run["methods"]["draft-chain"]["tokens_match_reference"] is False
    assert report.mismatches({"runs": [run]}) == ["draft-chain (batch 1, temperature 0)"]


def test_bootstrap_interval_holds_the_median_and_narrows_with_more_batches():
    rng = np.random.default_rng(1)
    few = rng.normal(1.2, 0.2, 8)
    many = rng.normal(1.2, 0.2, 400)
    m, lo, hi = report.bootstrap_median(few)
    assert m == np.median(few) and lo <= m <= hi
    _, lo2, hi2 = report.bootstrap_median(many)
    assert hi2 - lo2 < (hi - lo) / 2 and lo2 < 1.2 < hi2
    assert report.bootstrap_median(few) == report.bootstrap_median(few)    # seeded


def test_acceptance_per_depth_from_the_histogram():
    # 10 speculating steps: 4 accepted nothing, 3 one token, 2 two, 1 three
    assert acceptance_per_depth([4, 3, 2, 1]) == pytest.approx([6 / 10, 3 / 6, 1 / 3])
    assert acceptance_per_depth([5]).size == 0                                # no tree: no depth


def test_tree_specs():
    assert methods.parse_tree("chain:3") == DraftTree.chain(3)
    assert methods.parse_tree("kary:3,2") == DraftTree.kary((3, 2))
    assert methods.parse_tree("optimal") == "optimal"
    for bad in ("chain", "chain:0", "kary:", "kary:2,x", "star:3"):
        with pytest.raises(ValueError, match="chain:K"):
            methods.parse_tree(bad)


@pytest.mark.parametrize("argv, message", [
    (["bench", "--smoke", "--methods", "nope"], "unknown method"),
    (["bench", "--smoke", "--methods", "medusa"], "registered model"),
    (["bench", "--smoke", "--tree", "chain:9"], "deeper than it can fill"),
    (["bench", "--smoke", "--tree", "kary"], "chain:K"),
    (["bench", "--smoke", "--reference"], "--reference"),       # no torch, or no GGUF to give transformers
])
def test_bench_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(argv + ["--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spectax: error:") and message in err and "\n" not in err
    assert not (tmp_path / "bench.json").exists()


def test_a_missing_reference_is_measured_first_and_is_its_own_reference():
    import spectax
    from spectax.bench import harness, run, workload
    from spectax.drafters import DraftModel
    from spectax.io.tokenizer import load_tokenizer

    model = spectax.Model.random(spectax.ModelConfig(**run.SMOKE_CONFIG), seed=0, scale=3.0)
    drafted = methods.Method("self-draft", model, DraftModel(model, tree=DraftTree.chain(2)), reference="plain-own")
    prompts = workload.smoke(load_tokenizer("byte"))[:2]
    records = harness.measure({"self-draft": drafted}, prompts, batch=1, new_tokens=8, prompt_bucket=64)
    assert list(records) == ["plain-own", "self-draft"]
    summary = report.summarize(records)
    assert summary["plain-own"]["reference"] is None and summary["plain-own"]["speedup"] == 1.0
    assert summary["self-draft"]["reference"] == "plain-own" and summary["self-draft"]["tokens_match_reference"]


@pytest.mark.slow
def test_transformers_reference_counts_target_calls():
    """The [bench] extra's reference (skipped without torch, which CI never installs): transformers' greedy makes one
    target call per token after the prefill (tau exactly 1), its tokens are spectax's plain greedy tokens, and
    assisted generation with the draft chain makes fewer target calls than tokens or as many."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import spectax
    from spectax.bench import reference, workload
    from spectax.io import hub

    name = "smollm2-135m-instruct"
    tok = hub.tokenizer(name)
    prompts = workload.spec_bench(tok, per_category=1)[:1] if workload.question_file().is_file() else [
        harness_prompt(tok)]
    ours = spectax.decode(spectax.load(name), [list(prompts[0].ids)], 12)
    mine = np.asarray(ours.tokens[0, :int(ours.lengths[0])]).tolist()
    ref = reference.measure(hub.resolve(name), prompts, 12, 512, methods.DRAFT_LAYERS, methods.DRAFT_CHAIN,
                            spectax_plain={0: mine})
    greedy, assisted = ref["methods"]["hf-greedy"], ref["methods"]["hf-assisted"]
    assert greedy["tau"] == 1.0 and greedy["same_tokens_as_spectax_plain"] == 1.0
    assert 1.0 <= assisted["tau"] <= methods.DRAFT_CHAIN + 1 and assisted["same_tokens_as_spectax_plain"] == 1.0


def harness_prompt(tok):
    from spectax.bench.harness import Prompt

    return Prompt("held-out", 0, tuple(tok.encode_chat([{"role": "user", "content": "Name three rivers."}])))


def test_the_command_line_names_the_harness_methods(capsys):
    """cli.py lists the methods without importing the harness (a fast --help): the list and the default must be the
    harness's."""
    assert cli.BENCH_METHODS == tuple(methods.METHODS)
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    assert "(default: " + " ".join(methods.DEFAULT_METHODS) + ";" in " ".join(capsys.readouterr().out.split())


def test_optimal_tree_for_a_draft_that_is_always_right():
    """--tree optimal: the model drafting for itself accepts every rank-0 child and no other, so at a flat c(N) the
    Sequoia tree is the deepest chain the probe allows (4 nodes), with no siblings."""
    import argparse

    from spectax.bench import run

    args = argparse.Namespace(smoke=True, model=None, tokenizer=None, prompt_bucket=64, max_new_tokens=16)
    subject = run._subject(args)
    ms = methods.build(subject.model, None, ["draft-chain"])
    flat = {"nodes": [0, 1, 2, 4, 8], "cost": [1.0, 1.0, 1.0, 1.0, 1.0]}
    out = run.optimal_trees(ms, subject, flat, args)
    assert out["plain"] is ms["plain"]
    assert out["draft-chain"].drafter.tree == DraftTree.chain(4)
