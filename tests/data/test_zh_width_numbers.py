"""Full-width numbers, model names, times and e-mail addresses typed through a Chinese IME fold to ASCII whole:
the separators inside them too, so cleaning never leaves a half-converted "1，234．56" or "GPT－4o"."""

from __future__ import annotations

from llmkit.data.clean import clean_text
from llmkit.data.pii import find_pii


def test_separators_inside_a_full_width_number_become_ascii_with_its_digits():
    assert clean_text("價格是￥１，２３４．５６元，折扣８５％。") == "價格是￥1,234.56元，折扣85%。"
    assert clean_text("１０：３０开会，ＧＰＴ－４ｏ发布") == "10:30开会，GPT-4o发布"


def test_chinese_punctuation_next_to_a_number_stays_chinese():
    # a clause break after a number, brackets around one, and a % after ASCII digits are the text's own choice
    assert clean_text("我买了２，他买了３。（１）第一；100％纯棉") == "我买了2，他买了3。（1）第一；100％纯棉"


def test_a_full_width_email_address_is_an_ascii_one_after_cleaning():
    text = clean_text("联系邮箱：ｔｅｓｔ＠ｅｘａｍｐｌｅ．ｃｏｍ，谢谢")
    assert text == "联系邮箱：test@example.com，谢谢"
    assert [(m.type, text[m.start:m.end]) for m in find_pii(text)] == [("EMAIL", "test@example.com")]
