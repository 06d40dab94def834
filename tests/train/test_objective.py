"""Our Diffusion-DPO loss against the reference implementation's formula, in
PyTorch, on the same UNet outputs: loss and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bdpo_jax.labels import LabelSource, LabelSourceError, pair_label, pair_signs
from bdpo_jax.objective import dpo_loss, per_sample_mse, sft_loss

BETA = 5000.0


def pair_labels(batch, source, rng):
    """s per pair: which image the source prefers."""
    return pair_label(*pair_signs(batch, source, rng))


def reference_loss(model_pred, ref_pred, target, beta):
    """Wallace et al., DiffusionDPO train.py: the batch is [winners; losers]."""
    model_losses = (model_pred - target).pow(2).mean(dim=[1, 2, 3])
    model_losses_w, model_losses_l = model_losses.chunk(2)
    model_diff = model_losses_w - model_losses_l
    with torch.no_grad():
        ref_losses = (ref_pred - target).pow(2).mean(dim=[1, 2, 3])
        ref_losses_w, ref_losses_l = ref_losses.chunk(2)
        ref_diff = ref_losses_w - ref_losses_l
    scale_term = -0.5 * beta
    inside_term = scale_term * (model_diff - ref_diff)
    implicit_acc = (inside_term > 0).sum().float() / inside_term.size(0)
    loss = -1 * F.logsigmoid(inside_term).mean()
    return loss, implicit_acc


ONE = jnp.ones((1,))


def ours(pol, ref, target, labels, beta):
    n = pol.shape[0] // 2

    def loss_fn(pol):
        mse_pol = per_sample_mse(pol, target)
        mse_ref = per_sample_mse(ref, target)
        return dpo_loss((mse_pol[:n], mse_pol[n:]), (mse_ref[:n], mse_ref[n:]), labels[:, None], ONE, beta)

    return jax.value_and_grad(loss_fn, has_aux=True)(pol)


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_gradient_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    n, shape = 6, (4, 8, 8)
    target = rng.standard_normal((2 * n, *shape)).astype(np.float32)
    ref = target + 0.3 * rng.standard_normal(target.shape).astype(np.float32)
    pol = ref + 0.002 * rng.standard_normal(target.shape).astype(np.float32)  # near the reference, as in training
    labels = rng.choice([-1.0, 1.0], n).astype(np.float32)

    # Ours: pairs (x0, x1) with labels. NHWC layout; the mean is over C, H, W either way.
    nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    (loss, metrics), grad = ours(nhwc(pol), nhwc(ref), nhwc(target), jnp.asarray(labels), BETA)

    # Reference: reorder each pair so that the winner comes first.
    x0_wins = labels > 0
    order = np.concatenate(
        [np.where(x0_wins, np.arange(n), np.arange(n) + n), np.where(x0_wins, np.arange(n) + n, np.arange(n))]
    )
    t_pol = torch.tensor(pol[order], dtype=torch.float64, requires_grad=True)
    t_loss, t_acc = reference_loss(
        t_pol, torch.tensor(ref[order], dtype=torch.float64), torch.tensor(target[order], dtype=torch.float64), BETA
    )
    t_loss.backward()
    t_grad = np.empty_like(pol, dtype=np.float64)
    t_grad[order] = t_pol.grad.numpy()

    assert 0.05 < t_loss.item() < 5  # beta * gap is O(1): the sigmoid is neither flat nor saturated
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["implicit_accuracy"]), float(t_acc), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad).transpose(0, 3, 1, 2), t_grad, rtol=1e-4, atol=1e-9)


def test_label_sources():
    batch = {
        "label": jnp.array([1, -1, 0, 1], jnp.int8),
        "label_0": jnp.array([1.0, 1.0, 0.0, 0.0]),
        "votes": jnp.array([[1, -1, 1], [-1, -1, 1], [1, 1, -1], [-1, 1, 1]], jnp.int8),
        "scores": jnp.array(
            [
                [[0.3, 0.2], [4.0, 5.0], [9, 1]],
                [[0.1, 0.2], [4.0, 4.5], [2, 1]],
                [[0.5, 0.1], [5.0, 4.0], [1, 3]],
                [[0.1, 0.2], [6.0, 4.0], [3, 1]],
            ],
            jnp.float32,
        ),
    }
    key = jax.random.key(0)
    assert pair_labels(batch, LabelSource("vote"), key).tolist() == [1, -1, 0, 1]
    assert pair_labels(batch, LabelSource("human"), key).tolist() == [1, 1, -1, -1]
    assert pair_labels(batch, LabelSource.parse("scorer:b", ["a", "b", "c"]), key).tolist() == [-1, -1, 1, 1]
    drawn = {tuple(pair_labels(batch, LabelSource("random_scorer"), jax.random.key(i)).tolist()) for i in range(20)}
    assert drawn == {tuple(batch["votes"][:, k].astype(float).tolist()) for k in range(3)}
    # normalized: differences divided by each scorer's scale, summed
    scale = (0.1, 1.0, 10.0)
    assert pair_labels(batch, LabelSource("normalized", score_scale=scale), key).tolist() == [1, -1, 1, 1]
    with pytest.raises(ValueError, match="cache has scorers"):
        LabelSource.parse("scorer:z", ["a", "b"])
    with pytest.raises(ValueError, match="label source"):
        LabelSource.parse("majority", ["a"])
    with pytest.raises(LabelSourceError, match="label_weights has 2 weights; the cache has 3 scorers"):
        LabelSource.parse("weighted_sum", ["a", "b", "c"], weights=(0.5, 0.5))
    # every source is signs (N, K) with weights (K,): K = 1 but for the weighted sum
    for source in (LabelSource("vote"), LabelSource("human"), LabelSource("random_scorer")):
        signs, weights = pair_signs(batch, source, key)
        assert signs.shape == (4, 1) and weights.tolist() == [1.0]
    signs, weights = pair_signs(batch, LabelSource.parse("weighted_sum", ["a", "b", "c"], (0.2, 0.3, 0.5)), key)
    assert signs.shape == (4, 3) and np.allclose(weights, [0.2, 0.3, 0.5])


def test_weighted_sum_is_the_weighted_per_scorer_loss():
    rng = np.random.default_rng(0)
    mse = [jnp.asarray(rng.uniform(0.1, 0.2, 5), jnp.float32) for _ in range(4)]
    votes = jnp.asarray(rng.choice([-1, 1], (5, 3)), jnp.int8)
    weights = (0.5, 0.3, 0.2)
    source = LabelSource("weighted_sum", weights=weights)
    signs, w = pair_signs({"votes": votes}, source, jax.random.key(0))
    loss, _ = dpo_loss((mse[0], mse[1]), (mse[2], mse[3]), signs, w, 100.0)
    expected = 0.0
    for k, w in enumerate(weights):
        single, _ = dpo_loss((mse[0], mse[1]), (mse[2], mse[3]), votes[:, k, None].astype(jnp.float32), ONE, 100.0)
        expected += w * single
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_ties_give_no_gradient_and_sft_trains_winners():
    mse = [jnp.array([0.2, 0.3]), jnp.array([0.25, 0.1])]
    labels = jnp.array([[0.0], [1.0]])
    grad = jax.grad(lambda p0: dpo_loss((p0, mse[1]), (mse[0], mse[1]), labels, ONE, BETA)[0])(mse[0])
    assert grad[0] == 0 and grad[1] != 0
    np.testing.assert_allclose(sft_loss(jnp.array([0.2, 0.1]), jnp.array([1.0, -1.0])), (0.2 + 0.1) / 2)


def test_ties_are_left_out_of_the_mean():
    """A kept tie (label 0) adds nothing: the loss is the decided pairs' mean."""
    rng = np.random.default_rng(1)
    mse = [jnp.asarray(rng.uniform(0.1, 0.2, 5), jnp.float32) for _ in range(4)]
    labels = jnp.array([1.0, 0.0, -1.0, 0.0, 1.0])
    decided = np.flatnonzero(np.asarray(labels))
    with_ties, _ = dpo_loss((mse[0], mse[1]), (mse[2], mse[3]), labels[:, None], ONE, BETA / 100)
    pick = lambda m: m[decided]  # noqa: E731
    without, _ = dpo_loss(
        (pick(mse[0]), pick(mse[1])), (pick(mse[2]), pick(mse[3])), labels[decided, None], ONE, BETA / 100
    )
    np.testing.assert_allclose(with_ties, without, rtol=1e-6)
    # the mean over all five pairs would add 2 x log 2 and divide by 5
    assert abs(float(with_ties) - (3 * float(without) + 2 * np.log(2)) / 5) > 1e-3


def test_unanimous_and_veto_rules_by_hand():
    """unanimous: the pairs every scorer decides alike; veto: the vote, dropped where an outvoted scorer's
    score difference exceeds ``veto_spread`` of its score scale. The host (numpy) computes what the step does."""
    from bdpo_jax.labels import decided_rows

    # scorers a, b, c (scales 1, 1, 10); votes are +1 where image 0 scores at least image 1
    scores = [
        [[0.5, 0.1], [2, 1], [30, 20]],  # all prefer image 0
        [[0.5, 0.1], [2, 1], [5, 20]],  # c outvoted by 15 = 1.5 of its scale
        [[0.1, 0.5], [1, 2], [1, 3]],  # all prefer image 1
        [[0.5, 0.1], [1, 1.5], [3, 1]],  # b outvoted by 0.5 of its scale
        [[0.1, 0.5], [1, 2], [25, 5]],  # c outvoted by 20 = 2 of its scale
    ]
    batch = {"scores": jnp.asarray(scores, jnp.float32)}
    batch["votes"] = jnp.where(batch["scores"][..., 0] >= batch["scores"][..., 1], 1, -1).astype(jnp.int8)
    batch["label"] = jnp.sign(batch["votes"].sum(axis=1)).astype(jnp.int8)
    names, scale, key = ["a", "b", "c"], (1.0, 1.0, 10.0), jax.random.key(0)
    expected = {"unanimous": [1, 0, -1, 0, 0], "veto": [1, 0, -1, 1, 0], "veto:3": [1, 1, -1, 1, -1]}
    for spec, labels in expected.items():
        source = LabelSource.parse(spec, names, score_scale=scale)
        assert source.drops_pairs
        assert pair_labels(batch, source, key).tolist() == labels, spec
        host = {k: np.asarray(v) for k, v in batch.items()}
        assert decided_rows(host, source).tolist() == [x != 0 for x in labels], spec
    for spec in ("veto:-1", "veto:x", "unanimous:2"):
        with pytest.raises(LabelSourceError, match="label source"):
            LabelSource.parse(spec, names, score_scale=scale)
    with pytest.raises(LabelSourceError, match="needs each scorer's score scale"):
        LabelSource.parse("veto", names)
