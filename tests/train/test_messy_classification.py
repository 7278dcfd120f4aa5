"""A label seen once lands in val or test by its hash; training then stops saying how few records it has and what
to do, not only that val holds a label train lacks."""

from __future__ import annotations

import pytest

from llmkit.errors import UserError
from llmkit.train.classification import check_labels


def test_a_label_only_outside_train_is_named_with_its_record_count_and_the_fix():
    splits = {"train": [{"text": "a", "label": "ham"}, {"text": "b", "label": "spam"}],
              "val": [{"text": "c", "label": "once"}, {"text": "d", "label": "ham"}],
              "test": [{"text": "e", "label": "twice"}, {"text": "f", "label": "twice"}]}
    with pytest.raises(UserError) as err:
        check_labels(splits, "d:v1")
    message = str(err.value)
    assert "val labels ['once'] never occur in train" in message
    assert "Outside train: 'once' 1 record" in message
    assert "merge it into another label or drop its rows" in message
