"""tlkit.LinearProbe: a converged, cross-validated multinomial logistic regression."""

from __future__ import annotations

import pytest
import torch

from tlkit.probe import LinearProbe
from tlkit.splits import kfold


def clouds(n: int = 40, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat(n // 3 + 1)[:n]
    x = torch.randn(n, d, generator=g) * 2 + 1.5 * torch.nn.functional.one_hot(y, d).float()
    return x * 10 + 3, y  # far from standardised: the probe standardises


def test_the_fit_reaches_the_minimum_of_the_regularised_loss() -> None:
    x, y = clouds()
    probe = LinearProbe(C=0.3).fit(x, y)
    assert probe.C_ == 0.3 and probe.cv_accuracy_ == {}  # one C: nothing to cross-validate
    w = probe.weight_.clone().requires_grad_(True)
    b = probe.bias_.clone().requires_grad_(True)
    z = (x - probe.mean_) / probe.std_
    loss = torch.nn.functional.cross_entropy(z @ w.T + b, y) + (w**2).sum() / (2 * 0.3 * len(y))
    loss.backward()
    assert w.grad is not None and b.grad is not None
    assert float(w.grad.abs().max()) < 1e-4 and float(b.grad.abs().max()) < 1e-4


def test_c_is_chosen_by_cross_validated_accuracy_and_the_model_refit_on_everything() -> None:
    x, y = clouds(60)
    probe = LinearProbe(C=(0.001, 1.0), folds=3).fit(x, y)
    assert set(probe.cv_accuracy_) == {0.001, 1.0}
    assert max(probe.cv_accuracy_, key=lambda c: (probe.cv_accuracy_[c], c)) == probe.C_
    assert probe.cv_probs_ is not None and probe.cv_probs_.shape == (60, 3)
    refit = LinearProbe(C=probe.C_).fit(x, y)
    torch.testing.assert_close(probe.weight_, refit.weight_, atol=1e-4, rtol=1e-3)


def test_out_of_fold_probabilities_come_from_models_that_did_not_see_the_image() -> None:
    x, y = clouds(60)
    wrong = y.clone()
    wrong[:6] = (y[:6] + 1) % 3  # six mislabelled images, far from their label's cloud
    probe = LinearProbe(C=3.0, folds=3).fit(x, wrong, cv=True)
    assert probe.cv_probs_ is not None
    seen = probe.predict_proba(x[:6]).gather(1, wrong[:6, None])
    unseen = probe.cv_probs_[:6].gather(1, wrong[:6, None])
    assert bool((unseen < seen).all())  # the model that saw a wrong label believes it more


def test_views_train_as_rows_and_are_averaged_at_prediction() -> None:
    x, y = clouds()
    mirror = x + torch.randn_like(x)
    probe = LinearProbe(C=1.0).fit(torch.stack([x, mirror]), y)
    both = probe.predict_proba(torch.stack([x, mirror]))
    one, other = probe.predict_proba(x), probe.predict_proba(mirror)
    torch.testing.assert_close(both, (one + other) / 2)
    # the same as fitting on the rows stacked by hand
    rows = LinearProbe(C=1.0).fit(torch.cat([x, mirror]), torch.cat([y, y]))
    torch.testing.assert_close(probe.weight_, rows.weight_, atol=1e-4, rtol=1e-3)


def test_to_linear_folds_the_standardisation_into_a_layer() -> None:
    x, y = clouds()
    probe = LinearProbe(C=1.0).fit(x, y)
    layer = probe.to_linear()
    torch.testing.assert_close(layer(x).softmax(1), probe.predict_proba(x), atol=1e-5, rtol=0)


def test_groups_are_held_out_whole() -> None:
    x, y = clouds(60)
    groups = torch.arange(60) // 4  # 15 groups of 4 neighbours (classes cycle 0, 1, 2)
    for held in kfold(y, 5, groups=groups, seed=3):
        inside = set(groups[held].tolist())
        outside = set(groups.tolist()) - inside
        assert not any(g in outside for g in inside)
    probe = LinearProbe(folds=5).fit(x, y, groups=groups)
    assert probe.cv_probs_ is not None


def test_bad_input_is_refused_with_the_value() -> None:
    x, y = clouds()
    with pytest.raises(ValueError, match="C must be a positive number"):
        LinearProbe(C=0)
    with pytest.raises(ValueError, match="folds must be an integer of at least 2, got 1"):
        LinearProbe(folds=1)
    with pytest.raises(ValueError, match="labels must be 40 class indices"):
        LinearProbe().fit(x, y[:-1])
    with pytest.raises(ValueError, match="labels must be 40 class indices"):
        LinearProbe().fit(x, y.float())
    with pytest.raises(ValueError, match="NaN or infinite"):
        LinearProbe().fit(x.masked_fill(x > 5, float("nan")), y)
    with pytest.raises(ValueError, match="more than classes=2 allow"):
        LinearProbe().fit(x, y, classes=2)
    with pytest.raises(RuntimeError, match="not fitted yet"):
        LinearProbe().predict_proba(x)


def tagged(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and three labels per image: two common, one rare (1 in 6), each readable from
    one feature direction with noise."""
    g = torch.Generator().manual_seed(seed)
    tags = (torch.rand(n, 3, generator=g) < torch.tensor([0.5, 0.4, 1 / 6])).long()
    x = torch.randn(n, 8, generator=g) + torch.cat([2.5 * tags.float(), torch.zeros(n, 5)], 1)
    return x, tags


def test_multi_hot_labels_fit_one_converged_logistic_regression_per_label() -> None:
    x, tags = tagged()
    probe = LinearProbe(C=0.3).fit(x, tags)
    assert probe.multi_label_
    w = probe.weight_.clone().requires_grad_(True)
    b = probe.bias_.clone().requires_grad_(True)
    z = (x - probe.mean_) / probe.std_
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        z @ w.T + b, tags.float(), reduction="none"
    )
    loss = bce.sum(1).mean() + (w**2).sum() / (2 * 0.3 * len(x))
    loss.backward()
    assert w.grad is not None and float(w.grad.abs().max()) < 1e-4
    probs = probe.predict_proba(x)
    assert probs.shape == (120, 3) and not torch.allclose(probs.sum(1), torch.ones(120))
    assert torch.equal(probe.thresholds_, torch.full((3,), 0.5))  # no cross-validation


def test_multi_label_c_is_chosen_by_out_of_fold_map_and_thresholds_by_out_of_fold_f1() -> None:
    from tlkit.metrics import choose_thresholds, f1_scores, mean_average_precision

    x, tags = tagged(240)
    probe = LinearProbe(C=(0.001, 0.1, 10.0), folds=4).fit(x, tags)
    assert probe.cv_probs_ is not None
    assert probe.cv_accuracy_[probe.C_] == max(probe.cv_accuracy_.values())
    assert probe.cv_accuracy_[probe.C_] == pytest.approx(
        mean_average_precision(probe.cv_probs_, tags)
    )
    assert torch.equal(probe.thresholds_, choose_thresholds(probe.cv_probs_, tags))
    fresh_x, fresh_tags = tagged(600, seed=1)
    chosen = f1_scores(probe.predict(fresh_x), fresh_tags)["macro"]
    at_half = f1_scores((probe.predict_proba(fresh_x) >= 0.5).long(), fresh_tags)["macro"]
    assert chosen >= at_half - 0.01  # thresholds picked out of fold carry to new images
    assert mean_average_precision(probe.predict_proba(fresh_x), fresh_tags) > 0.8


def test_balanced_multi_label_weights_raise_the_rare_labels_probabilities() -> None:
    x, tags = tagged(240)
    plain = LinearProbe(C=0.1).fit(x, tags)
    weighted = LinearProbe(C=0.1, class_weight="balanced").fit(x, tags)
    rare = tags[:, 2] == 1
    assert weighted.predict_proba(x)[rare, 2].mean() > plain.predict_proba(x)[rare, 2].mean()


def test_extra_views_train_but_never_judge_out_of_fold() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(20)
    noise = torch.randn(60, 6, generator=g)  # the view predicted from: no signal at all
    leak = torch.nn.functional.one_hot(y, 6).float() * 5 + 0.1 * torch.randn(60, 6, generator=g)
    views = torch.stack([noise, leak])  # the second view names the class outright
    scored = LinearProbe(C=1.0, folds=3).fit(views, y, cv=True)
    trained = LinearProbe(C=1.0, folds=3).fit(views, y, cv=True, extra_views=1)
    assert scored.cv_accuracy_[1.0] > 0.95  # averaged into the held-out predictions
    assert trained.cv_accuracy_[1.0] < 0.6  # only trained: held-out images judged on noise
    # the same rows trained both: the refit on every image is the same model
    torch.testing.assert_close(trained.weight_, scored.weight_)
    with pytest.raises(ValueError, match=r"extra_views must be an integer from 0 to 1 .* got 2"):
        LinearProbe().fit(views, y, extra_views=2)
    with pytest.raises(ValueError, match="got True"):
        LinearProbe().fit(views, y, extra_views=True)
