"""OpenAI chat content parts as Anthropic content blocks (for `providers.anthropic_request`).

- Text and refusal parts -> text blocks; empty texts are left out (Anthropic rejects empty text blocks).
- Images: `data:` URIs -> base64 source blocks, http(s) URLs -> url source blocks (Anthropic fetches them).
- Files: an inline PDF (`file_data: data:application/pdf;base64,...`, what the openai SDK sends) -> a
  `document` block with a base64 source, its `filename` as the title. Claude reads no other file type
  inline, and a `file_id` names a file kept at OpenAI: both are refused (`param` `messages`).
- A part's `cache_control` mark stays on its block.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from providers.types import JSON, ProviderError, Untranslatable

PDF_BASE64 = "application/pdf;base64"  # the head of the one file data: URI Claude reads (as a document block)
_FILES_TAKEN = "Anthropic models take files only as inline PDF data (file_data: data:application/pdf;base64,...)"

__all__ = ["PDF_BASE64", "parts"]


def parts(content: Any, where: str) -> list[JSON]:
    """Claude blocks of an OpenAI message content (a string or a list of parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise ProviderError(f"{where}.content must be a string or a list of parts")
    blocks: list[JSON] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise ProviderError(f"{where}.content[{j}] has no {kind} string")
            if not text:
                continue
            block: JSON = {"type": "text", "text": text}
        elif kind == "image_url":
            block = _image(part.get("image_url"), f"{where}.content[{j}]")
        elif kind == "file":
            block = _document(part.get("file"), f"{where}.content[{j}]")
        else:
            raise ProviderError(f"{where}.content[{j}]: part type {kind!r} is not supported for Anthropic models")
        if isinstance(part.get("cache_control"), dict):
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _image(image: Any, where: str) -> JSON:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise ProviderError(f"{where}: image_url has no url")
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not comma or encoding != "base64" or not media_type:
            raise ProviderError(f"{where}: image data URIs must be data:<media type>;base64,<data>")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise ProviderError(f"{where}: image URLs must be https:// or data: URIs")


def _document(file: Any, where: str) -> JSON:
    """A chat `file` part holding an inline PDF as Claude's `document` block (its filename the title). A
    `file_id` names a file kept at OpenAI, and Claude reads no other file type inline: both are refused."""
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str):
        kept = isinstance(file, dict) and file.get("file_id")
        raise Untranslatable(f"{where}: {'a file_id names a file kept at OpenAI' if kept else 'no file_data'}; "
                             f"{_FILES_TAKEN}", param="messages")
    header, comma, encoded = data[5:].partition(",") if data.startswith("data:") else ("", "", "")
    if not comma or header != PDF_BASE64:
        raise Untranslatable(f"{where}: {_FILES_TAKEN}", param="messages")
    block: JSON = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                  "data": encoded}}
    if isinstance(file.get("filename"), str) and file["filename"]:
        block["title"] = file["filename"]
    return block
