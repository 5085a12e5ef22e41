from __future__ import annotations

from common.analysis import AnalysisRequest, Level, Mode, build_messages
from common.companies import CompanyContext

COMPANY = CompanyContext(
    ticker="GOTO",
    name="PT GoTo Gojek Tokopedia Tbk",
    exchange="IDX",
    currency="IDR",
    documents=[("2Q 2024", "press release", "Gross revenue rose 39% to Rp4.3 trillion.")],
)


def _request(level: Level, mode: Mode = Mode.COMPANY_ANALYSIS) -> AnalysisRequest:
    return AnalysisRequest(query="How did revenue change?", mode=mode, level=level, ticker="GOTO")


def test_build_messages_puts_documents_and_question() -> None:
    system, user = build_messages(_request(Level.NOVICE), COMPANY)

    assert system.role == "system"
    assert user.content is not None
    assert '<document ticker="GOTO" company="PT GoTo Gojek Tokopedia Tbk" period="2Q 2024"' in (
        user.content
    )
    assert "Gross revenue rose 39% to Rp4.3 trillion." in user.content
    assert user.content.endswith("Question: How did revenue change?")


def test_build_messages_level_shapes_instructions() -> None:
    prompts = {level: build_messages(_request(level), COMPANY)[0].content for level in Level}

    assert "new to investing" in str(prompts[Level.NOVICE])
    assert "common financial terms" in str(prompts[Level.INTERMEDIATE])
    assert "professional analyst" in str(prompts[Level.EXPERT])
    assert len(set(prompts.values())) == 3


def test_build_messages_general_mode_has_no_documents() -> None:
    _, user = build_messages(_request(Level.EXPERT, Mode.GENERAL), None)

    assert user.content == "Question: How did revenue change?"


def test_build_messages_escapes_attribute_quotes() -> None:
    company = CompanyContext("X", 'Say "hi" & co', None, None, [("1Q", None, "Text 1.")])

    _, user = build_messages(_request(Level.NOVICE), company)

    assert 'company="Say &quot;hi&quot; &amp; co"' in str(user.content)
