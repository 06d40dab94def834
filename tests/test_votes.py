import numpy as np
import pytest

from scorers_torch.votes import human_label, majority_vote, scorer_votes

rng = np.random.default_rng(0)


def random_scores(n=200, k=3):
    # Scales as different as the real scorers': cosine ~0.3, aesthetic ~5, counts ~100.
    scales = np.array([0.3, 5.0, 100.0, 1.0])[:k]
    return rng.standard_normal((n, k, 2)) * scales[None, :, None]


def test_majority_of_three_by_hand():
    scores = np.array(
        [
            [[0.3, 0.2], [5.0, 6.0], [10, 1]],  # +1 -1 +1 -> +1
            [[0.1, 0.2], [5.0, 6.0], [10, 1]],  # -1 -1 +1 -> -1
            [[0.2, 0.2], [6.0, 6.0], [1, 1]],  # equal scores vote +1
        ]
    )
    result = majority_vote(scores, "drop")
    np.testing.assert_array_equal(result.votes, [[1, -1, 1], [-1, -1, 1], [1, 1, 1]])
    np.testing.assert_array_equal(result.label, [1, -1, 1])
    assert result.keep.all()


def test_strictly_increasing_transform_changes_no_label():
    scores = random_scores()
    transformed = scores.copy()
    transformed[:, 1] = np.exp(3 * transformed[:, 1]) + 7  # strictly increasing
    transformed[:, 2] = transformed[:, 2] ** 3
    for policy in ("drop", "zero"):
        a, b = majority_vote(scores, policy), majority_vote(transformed, policy)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.keep, b.keep)


def test_swapping_every_pair_negates_every_label():
    scores = random_scores(k=4)
    swapped = scores[..., ::-1]
    a, b = majority_vote(scores, "zero"), majority_vote(swapped, "zero")
    np.testing.assert_array_equal(b.label, -a.label)
    assert (a.label == 0).any()  # four scorers: ties happen, and stay ties


def test_tie_policies_with_four_scorers():
    scores = np.array([[[1, 0], [1, 0], [0, 1], [0, 1]], [[1, 0], [1, 0], [1, 0], [0, 1]]], float)
    human = np.array([0.0, 1.0])  # pair 0: humans preferred image 1
    dropped = majority_vote(scores, "drop")
    assert dropped.keep.tolist() == [False, True] and dropped.counts()["ties_dropped"] == 1
    to_human = majority_vote(scores, "human", human)
    assert to_human.label.tolist() == [-1, 1] and to_human.counts()["ties_to_human"] == 1
    zero = majority_vote(scores, "zero")
    assert zero.label.tolist() == [0, 1] and zero.keep.all() and zero.counts()["label_0"] == 1


def test_human_labels_and_errors():
    assert human_label(np.array([1.0, 0.0, 0.5])).tolist() == [1, -1, 0]
    with pytest.raises(ValueError, match="human labels"):
        majority_vote(random_scores(k=2), "human")
    with pytest.raises(ValueError, match="tie policy"):
        majority_vote(random_scores(), "coin")
    with pytest.raises(ValueError, match="shape"):
        scorer_votes(np.zeros((3, 2)))
