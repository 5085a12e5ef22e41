from __future__ import annotations

import pytest

from common.companies import parse_document
from common.errors import InvalidInputError

DOCUMENT = """ticker: goto
company: PT GoTo Gojek Tokopedia Tbk
exchange: IDX
currency: IDR
period: 2Q 2024
source: GoTo press release

Gross revenue rose 39% year on year to Rp4.3 trillion.
"""


def test_parse_document_reads_header_and_text() -> None:
    document = parse_document(DOCUMENT, name="goto.md")

    assert document.ticker == "GOTO"
    assert document.company == "PT GoTo Gojek Tokopedia Tbk"
    assert document.period == "2Q 2024"
    assert document.currency == "IDR"
    assert document.body == "Gross revenue rose 39% year on year to Rp4.3 trillion."


def test_parse_document_without_blank_line() -> None:
    with pytest.raises(InvalidInputError, match=r"goto\.md: no blank line between the header"):
        parse_document("ticker: GOTO\ncompany: GoTo\nperiod: 1Q\nText.", name="goto.md")


def test_parse_document_missing_field_named() -> None:
    with pytest.raises(InvalidInputError, match=r"goto\.md: header lacks period"):
        parse_document("ticker: GOTO\ncompany: GoTo\n\nText.", name="goto.md")


def test_parse_document_unknown_header_line() -> None:
    with pytest.raises(
        InvalidInputError, match=r"goto\.md, line 2: 'sector: tech' is not a header"
    ):
        parse_document("ticker: GOTO\nsector: tech\n\nText.", name="goto.md")
