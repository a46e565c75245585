"""Built-in conditioners: none and class labels with a null class for guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sciddpm.components.conditioners import ClassLabel, ClassLabelConfig, Unconditional, UnconditionalConfig
from sciddpm.data import ArraySource, collate
from sciddpm.interfaces import Conditioning


@pytest.fixture
def cond() -> ClassLabel:
    torch.manual_seed(0)
    return ClassLabel(ClassLabelConfig(num_classes=10, dim=16))


def test_unconditional():
    c = Unconditional(UnconditionalConfig())
    assert c.forward([1, 2], 2) == Conditioning()
    assert c.null(3) == Conditioning()
    assert c.drop([1, 2], torch.tensor([True, False])) == Conditioning()
    assert c.vector_dim == c.token_dim == c.concat_channels == 0
    assert c.collate([1, 2]) is None


def test_class_label_shapes_and_inputs(cond):
    assert cond.vector_dim == 16 and cond.null_index == 10
    assert cond.embedding.num_embeddings == 11
    a = cond([3, 1, 4], 3).vector
    assert a.shape == (3, 16)
    torch.testing.assert_close(cond(torch.tensor([3, 1, 4]), 3).vector, a)
    torch.testing.assert_close(cond(np.array([3, 1, 4]), 3).vector, a)
    one = cond(7, 5).vector
    assert one.shape == (5, 16) and torch.equal(one[0], one[4])
    torch.testing.assert_close(cond(None, 2).vector, cond.null(2).vector)


def test_null_is_last_index(cond):
    null = cond.null(4).vector
    assert null.shape == (4, 16)
    torch.testing.assert_close(null[0], cond.embedding.weight[10])
    assert not torch.allclose(null[0], cond([9], 1).vector[0])


def test_drop_uses_null_for_dropped_rows(cond):
    labels = torch.tensor([0, 1, 2, 3])
    keep = torch.tensor([True, False, True, False])
    out = cond.drop(labels, keep).vector
    full = cond(labels, 4).vector
    null = cond.null(4).vector
    torch.testing.assert_close(out[keep], full[keep])
    torch.testing.assert_close(out[~keep], null[~keep])
    # gradients reach both the class and the null embeddings
    out.sum().backward()
    grad = cond.embedding.weight.grad
    assert grad[[0, 2, 10]].abs().sum(dim=1).gt(0).all() and grad[[1, 3]].abs().sum() == 0


def test_out_of_range_and_bad_labels(cond):
    with pytest.raises(ValueError, match=r"class label 10 is out of range; valid labels are 0..9"):
        cond([1, 10], 2)
    with pytest.raises(ValueError, match=r"class label -1"):
        cond(-1, 3)
    with pytest.raises(ValueError, match="3 class labels for a batch of 2"):
        cond([1, 2, 3], 2)
    with pytest.raises(TypeError, match="integers"):
        cond(torch.tensor([0.5, 1.0]), 2)


def test_num_classes_required():
    with pytest.raises(ValueError, match="ClassLabel needs num_classes"):
        ClassLabel(ClassLabelConfig())
    with pytest.raises(ValidationError):
        ClassLabelConfig(num_classes=3, dims=4)


def test_collate_with_conditioner(cond):
    x = np.zeros((4, 1, 3), dtype=np.float32)
    src = ArraySource.from_array(x, labels=[2, 0, 1, 2])
    _, raw, mask = collate(list(src), cond)
    assert raw.dtype == torch.long and raw.tolist() == [2, 0, 1, 2] and mask is None
    assert cond(raw, 4).vector.shape == (4, 16)
    with pytest.raises(ValueError, match="sample 0 of the batch has no class label"):
        collate(list(ArraySource.from_array(x)), cond)
    _, raw, _ = collate(list(src), Unconditional())
    assert raw is None


def test_state_dict_round_trip(cond):
    fresh = ClassLabel(ClassLabelConfig(num_classes=10, dim=16))
    fresh.load_state_dict(cond.state_dict())
    torch.testing.assert_close(fresh([5], 1).vector, cond([5], 1).vector)
