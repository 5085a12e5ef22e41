"""The analysis itself: the prompt for a question, and the LLM call through the rotator."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from llama_index.core.llms import ChatMessage, MessageRole
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.companies import CompanyContext, load_company_context
from common.rotator import AttemptCallback, Completion, KeyRotator


class Mode(enum.StrEnum):
    COMPANY_ANALYSIS = "company-analysis"
    GENERAL = "general"


class Level(enum.StrEnum):
    NOVICE = "novice"
    INTERMEDIATE = "intermediate"
    EXPERT = "expert"


_LEVEL_GUIDANCE = {
    Level.NOVICE: (
        "The reader is new to investing. Use plain words, explain every financial term "
        "you use in one short sentence, and keep the answer under 200 words."
    ),
    Level.INTERMEDIATE: (
        "The reader knows the common financial terms. Be concise, compare periods where "
        "the documents allow, and point out what drives the changes."
    ),
    Level.EXPERT: (
        "The reader is a professional analyst. Be dense and precise, quote figures with "
        "their periods and units, and note caveats such as adjusted versus reported measures."
    ),
}

_SYSTEM_PROMPT = (
    "You are Modcus, an analyst of listed companies. Answer only from the company "
    "documents given in the message when there are any, quote figures with their "
    "periods, and say so when the documents do not cover the question."
)


@dataclass(frozen=True)
class AnalysisRequest:
    query: str
    mode: Mode
    level: Level
    ticker: str | None = None


@dataclass(frozen=True)
class AnalysisResult:
    answer: str
    completion: Completion


def _escape_attribute(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;")


def build_messages(request: AnalysisRequest, company: CompanyContext | None) -> list[ChatMessage]:
    """Build the chat messages: instructions shaped by level, documents, then the question."""
    system = f"{_SYSTEM_PROMPT}\n\n{_LEVEL_GUIDANCE[request.level]}"
    parts = []
    if company is not None:
        parts.append(f"Company: {company.name} ({company.ticker})")
        for period, source, body in company.documents:
            attributes = {
                "ticker": company.ticker,
                "company": company.name,
                "period": period,
                "source": source or "",
            }
            rendered = " ".join(
                f'{name}="{_escape_attribute(value)}"' for name, value in attributes.items()
            )
            parts.append(f"<document {rendered}>\n{body}\n</document>")
        if not company.documents:
            parts.append("No documents are stored for this company.")
    parts.append(f"Question: {request.query}")
    return [
        ChatMessage(role=MessageRole.SYSTEM, content=system),
        ChatMessage(role=MessageRole.USER, content="\n\n".join(parts)),
    ]


async def run_analysis(
    request: AnalysisRequest,
    *,
    rotator: KeyRotator,
    session_factory: async_sessionmaker[AsyncSession],
    on_attempt: AttemptCallback | None = None,
) -> AnalysisResult:
    """Answer `request` with the LLM, using the company's stored documents as context."""
    company = None
    if request.mode is Mode.COMPANY_ANALYSIS and request.ticker:
        async with session_factory() as session:
            company = await load_company_context(session, request.ticker)

    completion = await rotator.acomplete(build_messages(request, company), on_attempt=on_attempt)
    return AnalysisResult(answer=completion.text, completion=completion)
