"""spectax.calibrate: verify_cost's result on a tiny model (never its timings) and cost_curve's interpolation."""

import math

import jax
import numpy as np
import pytest

from spectax.calibrate import cost_curve, verify_cost
from spectax.tree import DraftTree


def test_verify_cost_is_well_formed(tiny_llama):
    tree_for = lambda n: DraftTree.kary((2, 2)) if n == 6 else DraftTree.chain(n)
    out = verify_cost(tiny_llama, node_counts=(6, 0, 1), batch=2, context=16, repeats=2, tree_for=tree_for)
    assert set(out) == {"nodes", "cost", "ms", "backend", "batch", "context", "repeats"}
    assert out["nodes"] == [0, 1, 6] and len(out["cost"]) == len(out["ms"]) == 3
    assert out["cost"][0] == 1.0 and all(math.isfinite(c) and c > 0 for c in out["cost"] + out["ms"])
    assert out["backend"] == jax.default_backend()
    assert (out["batch"], out["context"], out["repeats"]) == (2, 16, 2)
    curve = cost_curve(out, 5)
    assert curve.shape == (6,) and curve[0] == 1.0 and (np.diff(curve) >= 0).all()
    assert DraftTree.optimal([0.5, 0.2], 5, 2, cost=curve).num_nodes <= 5        # ready for optimal(cost=)


def test_cost_curve_interpolates_a_monotone_envelope():
    measured = {"nodes": [0, 2, 4, 8], "cost": [1.0, 1.4, 1.2, 2.0]}     # a noisy dip at 4
    np.testing.assert_allclose(cost_curve(measured, 8), [1.0, 1.2, 1.4, 1.4, 1.4, 1.55, 1.7, 1.85, 2.0])
    np.testing.assert_allclose(cost_curve(measured, 3), [1.0, 1.2, 1.4, 1.4])
    np.testing.assert_allclose(cost_curve({"nodes": [0, 1], "cost": [1.0, 0.9]}, 1), [1.0, 1.0])
    assert cost_curve(measured, 0).tolist() == [1.0]


@pytest.mark.parametrize("kwargs,word", [
    ({"node_counts": (1, 2)}, "include 0"), ({"node_counts": (0, 1, 1)}, "duplicates"),
    ({"node_counts": (0, -1)}, ">= 0"), ({"node_counts": (0, 1.0)}, "int"), ({"node_counts": 4}, "sequence"),
    ({"batch": 0}, "batch"), ({"context": -1}, "context"), ({"repeats": 0}, "repeats"), ({"repeats": 1.5}, "repeats"),
    ({"context": 1000, "node_counts": (0, 64)}, "max_position"),
    ({"node_counts": (0, 2), "tree_for": lambda n: DraftTree.chain(2 * n)}, "of 2 nodes"),
    ({"node_counts": (0, 2), "tree_for": lambda n: (-1, 0)}, "DraftTree")])
def test_verify_cost_bad_input(tiny_llama, kwargs, word):
    with pytest.raises(ValueError, match=word):
        verify_cost(tiny_llama, **kwargs)


@pytest.mark.parametrize("measured,budget,word", [
    ({"nodes": [0, 4], "cost": [1.0, 1.5]}, 5, "beyond"), ({"nodes": [0, 4], "cost": [1.0, 1.5]}, -1, "budget"),
    ({"nodes": [0, 4]}, 2, "dict"), ([1.0, 1.5], 2, "dict"), ({"nodes": [4, 0], "cost": [1.5, 1.0]}, 2, "increasing"),
    ({"nodes": [1, 4], "cost": [1.0, 1.5]}, 2, "include 0"), ({"nodes": [0, 4], "cost": [1.0]}, 2, "as long"),
    ({"nodes": [0, 4], "cost": [1.0, np.nan]}, 2, "finite"), ({"nodes": [0, 4], "cost": [1.0, 0.0]}, 2, "> 0"),
    ({"nodes": [0, 4], "cost": [2.0, 3.0]}, 2, "1 at N = 0"), ({"nodes": [0, 4], "cost": [1.0, "x"]}, 2, "floats")])
def test_cost_curve_bad_input(measured, budget, word):
    with pytest.raises(ValueError, match=word):
        cost_curve(measured, budget)
