"""Deterministic answers built from the company documents in a prompt, and success bodies.

The answer quotes sentences with figures from each `<document ...>` element of the prompt, so
tests and demos can check that the context reached the model. The same prompt always gives the
same text.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_SENTENCES_PER_DOCUMENT = 2
MAX_SENTENCES = 6

_DOCUMENT_RE = re.compile(r"<document\b([^>]*)>(.*?)</document>", re.DOTALL)
_ATTRIBUTE_RE = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*"([^"]*)"')
_QUESTION_RE = re.compile(r"^[ \t]*Question:[ \t]*(.*)$", re.MULTILINE)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")
_METADATA_LINE_RE = re.compile(r"^[a-z_]+:\s")
_WORD_RE = re.compile(r"[a-z0-9]+")
# Words too common to tell which sentence a question is about.
_STOP_WORDS = frozenset(
    {
        "the",
        "and",
        "for",
        "with",
        "what",
        "how",
        "did",
        "does",
        "was",
        "were",
        "are",
        "from",
        "that",
        "this",
        "its",
        "their",
        "about",
        "into",
        "over",
        "than",
        "year",
        "which",
        "who",
        "whom",
        "when",
        "where",
        "why",
        "company",
    }
)


@dataclass(frozen=True)
class Document:
    """One `<document>` element of a prompt."""

    attributes: dict[str, str]
    text: str


def parse_documents(prompt: str) -> list[Document]:
    """Return the `<document ...>...</document>` elements of `prompt` in order."""
    documents = []
    for match in _DOCUMENT_RE.finditer(prompt):
        attributes = dict(_ATTRIBUTE_RE.findall(match.group(1)))
        documents.append(Document(attributes, match.group(2)))
    return documents


def find_question(prompt: str) -> str:
    """Return the text after the last `Question:` line outside the documents.

    Without such a line, the last paragraph of the prompt is used as the question.
    """
    outside = _DOCUMENT_RE.sub(" ", prompt)
    matches = _QUESTION_RE.findall(outside)
    if matches:
        return str(matches[-1]).strip()
    paragraphs = [part for part in re.split(r"\n\s*\n", outside) if part.strip()]
    if not paragraphs:
        return ""
    return " ".join(paragraphs[-1].split())


def split_sentences(text: str) -> list[str]:
    """Split document text into sentences, skipping headings and `name: value` header blocks."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        lines = [line for line in lines if not line.startswith("#")]
        if not lines:
            continue
        if all(_METADATA_LINE_RE.match(line) for line in lines):
            continue
        joined = " ".join(" ".join(lines).split())
        sentences.extend(part for part in _SENTENCE_END_RE.split(joined) if part)
    return sentences


def _content_words(text: str) -> set[str]:
    words = _WORD_RE.findall(text.lower())
    return {word for word in words if len(word) >= 3 and word not in _STOP_WORDS}


def _pick_sentences(document: Document, question_words: set[str], limit: int) -> list[str]:
    """Pick up to `limit` sentences with a digit, preferring those sharing words with the question.

    The picked sentences keep their order in the document.
    """
    candidates = [
        (position, sentence)
        for position, sentence in enumerate(split_sentences(document.text))
        if any(character.isdigit() for character in sentence)
    ]
    ranked = sorted(
        candidates,
        key=lambda item: (-len(question_words & _content_words(item[1])), item[0]),
    )
    chosen = sorted(ranked[:limit])
    return [sentence for _, sentence in chosen]


def _unique(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(value, None)
    return list(seen)


def build_answer(prompt: str) -> str:
    """Build the deterministic answer text for the whole text of a prompt."""
    question = find_question(prompt)
    documents = parse_documents(prompt)
    if not documents:
        return f"No company documents were provided. The question was: {question}"

    question_words = _content_words(question)
    quoted: list[str] = []
    quoted_tickers: list[str] = []
    for document in documents:
        remaining = MAX_SENTENCES - len(quoted)
        if remaining <= 0:
            break
        ticker = document.attributes.get("ticker", "")
        label = document.attributes.get("period") or ticker or "document"
        limit = min(MAX_SENTENCES_PER_DOCUMENT, remaining)
        for sentence in _pick_sentences(document, question_words, limit):
            quoted.append(f"[{label}] {sentence}")
            quoted_tickers.append(ticker)

    if not quoted:
        return f"The documents contain no figures. The question was: {question}"
    tickers = _unique(ticker for ticker in quoted_tickers if ticker)
    subject = f"the {', '.join(tickers)} documents" if tickers else "the provided documents"
    return f"Figures from {subject}: " + " ".join(quoted)


def count_tokens(text: str) -> int:
    """Count tokens as whitespace-separated words, which keeps usage numbers deterministic."""
    return len(text.split())


def _text_of_content(content: Any) -> list[str]:
    """Collect the text of a message content that is a string or a list of text parts."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return texts


def openai_prompt_text(payload: dict[str, Any]) -> str:
    """Join the text of every message of an OpenAI chat completion request."""
    texts: list[str] = []
    for message in payload.get("messages") or []:
        if isinstance(message, dict):
            texts.extend(_text_of_content(message.get("content")))
    return "\n\n".join(texts)


def gemini_prompt_text(payload: dict[str, Any]) -> str:
    """Join the text of the system instruction and every content of a generateContent request."""
    contents: list[Any] = []
    system = payload.get("systemInstruction") or payload.get("system_instruction")
    if isinstance(system, dict):
        contents.append(system)
    contents.extend(payload.get("contents") or [])
    texts: list[str] = []
    for content in contents:
        if isinstance(content, dict):
            texts.extend(_text_of_content(content.get("parts")))
    return "\n\n".join(texts)


def anthropic_prompt_text(payload: dict[str, Any]) -> str:
    """Join the text of the system prompt and every message of an Anthropic Messages request."""
    texts = _text_of_content(payload.get("system"))
    for message in payload.get("messages") or []:
        if isinstance(message, dict):
            texts.extend(_text_of_content(message.get("content")))
    return "\n\n".join(texts)


def openai_completion(model: str, prompt: str, answer: str) -> dict[str, Any]:
    """Build an OpenAI ChatCompletion body."""
    prompt_tokens = count_tokens(prompt)
    completion_tokens = count_tokens(answer)
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def gemini_response(model: str, prompt: str, answer: str) -> dict[str, Any]:
    """Build a Gemini GenerateContentResponse body."""
    prompt_tokens = count_tokens(prompt)
    answer_tokens = count_tokens(answer)
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": answer}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": answer_tokens,
            "totalTokenCount": prompt_tokens + answer_tokens,
        },
        "modelVersion": model,
        "responseId": uuid.uuid4().hex[:22],
    }


def anthropic_message(model: str, prompt: str, answer: str) -> dict[str, Any]:
    """Build an Anthropic Messages API response body."""
    return {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": answer}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": count_tokens(prompt), "output_tokens": count_tokens(answer)},
    }


OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o")
GEMINI_MODELS = ("gemini-2.5-flash", "gemini-2.5-pro")
ANTHROPIC_MODELS = (
    ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
)
# A fixed creation time keeps the model lists identical between runs.
_MODELS_CREATED = 1_721_172_741


def openai_model_list() -> dict[str, Any]:
    """Build the body of OpenAI's `GET /v1/models`."""
    data = [
        {"id": name, "object": "model", "created": _MODELS_CREATED, "owned_by": "system"}
        for name in OPENAI_MODELS
    ]
    return {"object": "list", "data": data}


def gemini_model(name: str) -> dict[str, Any]:
    """Build one Gemini Model resource from a model id without the `models/` prefix."""
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name.replace("-", " ").title(),
        "description": f"Fake {name} served by the fake provider.",
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
        "temperature": 1.0,
        "topP": 0.95,
        "topK": 64,
        "maxTemperature": 2.0,
        "thinking": True,
    }


def gemini_model_list() -> dict[str, Any]:
    """Build the body of Gemini's `GET /v1beta/models`."""
    return {"models": [gemini_model(name) for name in GEMINI_MODELS]}


def anthropic_model_list() -> dict[str, Any]:
    """Build the body of Anthropic's `GET /v1/models`."""
    data = [
        {
            "type": "model",
            "id": model_id,
            "display_name": display_name,
            "created_at": "2025-09-29T00:00:00Z",
        }
        for model_id, display_name in ANTHROPIC_MODELS
    ]
    return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
