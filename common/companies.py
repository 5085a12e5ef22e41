"""Company documents: parsing the document files and storing or reading them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, selectinload

from common.errors import CompanyNotFoundError, InvalidInputError
from common.models import Company, CompanyDocument

_REQUIRED_FIELDS = ("ticker", "company", "period")
_KNOWN_FIELDS = (*_REQUIRED_FIELDS, "exchange", "currency", "source")


@dataclass(frozen=True)
class DocumentFile:
    """A parsed company document: header fields, then the text."""

    ticker: str
    company: str
    period: str
    exchange: str | None
    currency: str | None
    source: str | None
    body: str


@dataclass(frozen=True)
class CompanyContext:
    """A company and its documents, as the analysis prompt uses them."""

    ticker: str
    name: str
    exchange: str | None
    currency: str | None
    documents: list[tuple[str, str | None, str]]  # (period, source, body)


# Tickers as exchanges print them: letters and digits, with '.' or '-' for share
# classes and markets (BRK.B, RDS-A), at most the width of companies.ticker.
_TICKER = re.compile(r"[A-Z0-9][A-Z0-9.\-]{0,15}")
# PostgreSQL text cannot hold NUL, and UTF-8 cannot encode an unpaired surrogate.
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def normalize_ticker(ticker: str) -> str:
    return ticker.strip().upper()


def is_valid_ticker(ticker: str) -> bool:
    """Check a normalized ticker against the format companies.ticker stores."""
    return _TICKER.fullmatch(ticker) is not None


def is_storable_text(text: str) -> bool:
    """Check that PostgreSQL can store `text`: no NUL and no unpaired surrogate."""
    return _UNSTORABLE.search(text) is None


def parse_document(text: str, *, name: str) -> DocumentFile:
    """Parse a document: `field: value` header lines, a blank line, then the text."""
    header, separator, body = text.partition("\n\n")
    if not separator or not body.strip():
        raise InvalidInputError(
            f"{name}: no blank line between the header and the text; "
            "write 'field: value' lines, a blank line, then the text"
        )
    fields: dict[str, str] = {}
    for number, line in enumerate(header.splitlines(), start=1):
        field, colon, value = line.partition(":")
        field = field.strip().lower()
        if not colon or field not in _KNOWN_FIELDS:
            raise InvalidInputError(
                f"{name}, line {number}: {line!r} is not a header line; "
                f"use 'field: value' with one of: {', '.join(_KNOWN_FIELDS)}"
            )
        fields[field] = value.strip()
    missing = [field for field in _REQUIRED_FIELDS if not fields.get(field)]
    if missing:
        raise InvalidInputError(
            f"{name}: header lacks {', '.join(missing)}; add 'FIELD: value' lines"
        )
    if not is_storable_text(text):
        raise InvalidInputError(f"{name}: contains a NUL character; save it as plain UTF-8 text")
    ticker = normalize_ticker(fields["ticker"])
    if not is_valid_ticker(ticker):
        raise InvalidInputError(
            f"{name}: ticker {fields['ticker']!r} is not a ticker; "
            "use 1 to 16 letters, digits, '.' or '-'"
        )
    return DocumentFile(
        ticker=ticker,
        company=fields["company"],
        period=fields["period"],
        exchange=fields.get("exchange") or None,
        currency=fields.get("currency") or None,
        source=fields.get("source") or None,
        body=body.strip(),
    )


def read_document_file(path: Path) -> DocumentFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    return parse_document(text, name=str(path))


def find_document_files(paths: list[Path]) -> list[Path]:
    """Expand folders into their .md files, README.md excepted; check that files exist."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(item for item in path.glob("*.md") if item.name.lower() != "readme.md")
            )
        elif path.is_file():
            found.append(path)
        else:
            raise InvalidInputError(f"{path} does not exist; pass document files or folders")
    if not found:
        raise InvalidInputError("no document files found; pass .md files or folders holding them")
    return found


def store_documents(session: Session, documents: list[DocumentFile]) -> None:
    """Insert or update companies and their documents in one transaction.

    A document with the same ticker and period as a stored one replaces it, so
    loading the same files twice leaves one copy.
    """
    for document in documents:
        company_id = session.scalar(
            insert(Company)
            .values(
                ticker=document.ticker,
                name=document.company,
                exchange=document.exchange,
                currency=document.currency,
            )
            .on_conflict_do_update(
                index_elements=[Company.ticker],
                set_={
                    "name": document.company,
                    "exchange": document.exchange,
                    "currency": document.currency,
                },
            )
            .returning(Company.id)
        )
        session.execute(
            insert(CompanyDocument)
            .values(
                company_id=company_id,
                period=document.period,
                source=document.source,
                body=document.body,
            )
            .on_conflict_do_update(
                constraint="uq_company_documents_period",
                set_={"source": document.source, "body": document.body},
            )
        )
    session.commit()


def _to_context(company: Company) -> CompanyContext:
    return CompanyContext(
        ticker=company.ticker,
        name=company.name,
        exchange=company.exchange,
        currency=company.currency,
        documents=[(doc.period, doc.source, doc.body) for doc in company.documents],
    )


async def load_company_context(session: AsyncSession, ticker: str) -> CompanyContext:
    """Load a company with its documents; raise CompanyNotFoundError if none is stored."""
    company = await session.scalar(
        select(Company)
        .where(Company.ticker == normalize_ticker(ticker))
        .options(selectinload(Company.documents))
    )
    if company is None:
        raise CompanyNotFoundError(ticker)
    return _to_context(company)


async def company_exists(session: AsyncSession, ticker: str) -> bool:
    found = await session.scalar(
        select(Company.id).where(Company.ticker == normalize_ticker(ticker))
    )
    return found is not None
