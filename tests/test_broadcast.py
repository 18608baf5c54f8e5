"""broadcast_state leaves every rank with the root's weights and optimizer slots."""

import numpy as np
import pytest
from conftest import load_ranks, run_workers


@pytest.mark.parametrize("root", [0, 1])
def test_broadcast_state_copies_weights_and_slots(tmp_path, controller, root):
    out = str(tmp_path)
    run_workers("broadcast_state.py", ["--out", out, "--root", str(root)], controller=controller)
    ranks = load_ranks(out, 2)
    # Ranks really started apart, in weights and in optimizer slots.
    assert np.abs(ranks[0]["before"] - ranks[1]["before"]).max() > 0.1
    assert int(ranks[0]["n_optimizer"]) > 2  # iterations, learning rate, Adam moments
    for r in ranks:
        np.testing.assert_array_equal(r["after"], ranks[root]["before"])
