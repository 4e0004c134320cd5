"""Tokenising M2D2 splits in bounded memory, with the stream of tokenising each text whole.

Under the ``keep`` join policy a split is one text (its lines joined with ``\\n``): a GB of text for
the largest domains, far too much to hand to a tokenizer at once (about 200x the text in memory).
So texts are cut into pieces of about ``piece_chars`` characters, pieces are tokenised in batches on
the tokenizer's threads, and the ids are streamed to the token file. Cutting anywhere would change
the stream: for GPT-2's byte-level BPE a piece ending in ``"\\n\\n"`` becomes one token where the whole
text has two, and SentencePiece-style tokenizers prepend a space to every call.

**The cut rule.** A text is cut only at a newline followed by a non-whitespace character,
``...X\\n|Y...`` (``X`` may be whitespace, such as the ``\\r`` of Windows line ends or trailing
spaces), with no added token (such as ``</s>``) on either side of the newline; the left piece is
tokenised as it is, the right piece as ``PRIMER + "\\n" + piece``, and the primer's tokens (checked)
are dropped. Then ``tokens(text) == tokens(left) + tokens(right)`` for two families of tokenizers,
recognised from their ``tokenizer.json`` (``cut_rule``):

* **byte-level** (GPT-2, GPT-NeoX / OLMo): a ``ByteLevel`` pre-tokenizer with the GPT-2 regex and no
  prefix space, an optional Unicode normaliser (NFC ...), BPE. BPE never merges across pre-tokens, and
  the regex splits ``X | \\n | Y`` the same way with or without the text around them: no alternative
  extends from a non-space across a newline; whitespace before the newline is matched by
  ``\\s+(?!\\S)`` up to the newline, as it is at the end of the left piece; a newline before a
  non-space is its own pre-token; and the regex has no look-behind, so matching from ``Y`` on is the
  same in the piece as in the text. The primer ``a\\n`` is split off the same way. A newline is a
  starter that composes with nothing, so Unicode normalisation does not act across it.
* **newline barrier** (LLaMA): no pre-tokenizer (or a ``Metaspace`` one), a ``Prepend("▁")`` +
  ``Replace(" ", "▁")`` normaliser, BPE with byte fallback, and no vocabulary entry holding a newline
  beside anything else: no merge can join a newline to a neighbour, so BPE acts on the text between
  newlines independently. The ``"▁"`` the normaliser prepends to each call lands on the primer,
  whose tokens are dropped, not on the piece. (Added tokens are split off before the normaliser runs,
  which then prepends its ``"▁"`` to each stretch of text between them: hence no cut next to one.)

Any other tokenizer is never cut (each text is tokenised whole, with a warning), and each cut is also
checked on the two lines around it before it is used (a cut whose check fails is skipped).
``tests/test_tokenize.py`` compares the stream with whole-text tokenisation for tokenizers built like
GPT-2's, LLaMA's and OLMo's on text full of blank-line runs, leading and trailing spaces, carriage
returns, long lines and non-ASCII.

**Bounded memory.** Tokenising one piece costs about 200 MB per MB of its text (measured: 196 MiB for
a piece of 4 and of 16 MB with a byte-level BPE; pieces of 256 kB in a batch cost a third of that).
A text with no allowed cut for more than ``max_piece_chars`` characters (a tokenizer that is never
cut under the ``keep`` policy, a very long line) would have to be tokenised as one piece: the job
stops there with ``PieceTooLong``, naming the file, before it exhausts its memory.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from analysis.corpora import m2d2
from analysis.errors import PipelineError

log = logging.getLogger(__name__)

PRIMER = "a"
#: The longest piece tokenised at once (characters): about 0.8 GB at ~200 MB per MB (module
#: docstring), inside a tokenize_domain job's memory (``resources.TOKENIZE_MEM_MB``) beside the
#: interpreter (~0.4 GB) and the batches read ahead.
MAX_PIECE_CHARS = 1 << 22
_UNICODE_FORMS = {"NFC", "NFD", "NFKC", "NFKD"}


@dataclass(frozen=True)
class CutRule:
    """Which family a tokenizer belongs to (``None``: never cut) and why."""

    family: str | None
    reason: str


def _normalizers_within(spec: dict | None, allowed: set[str]) -> bool:
    if spec is None:
        return True
    if spec["type"] == "Sequence":
        return all(_normalizers_within(s, allowed) for s in spec["normalizers"])
    if spec["type"] == "Replace":
        return "Replace" in allowed and spec["pattern"] == {"String": " "} and spec["content"] == "▁"
    if spec["type"] == "Prepend":
        return "Prepend" in allowed and spec["prepend"] == "▁"
    return spec["type"] in allowed


def cut_rule(tokenizer) -> CutRule:
    """The family of a Hugging Face tokenizer for the cut rule (see the module docstring)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return CutRule(None, "not a fast tokenizer (no tokenizer.json to inspect)")
    spec = json.loads(backend.to_str())
    model, pre, normalizer = spec["model"], spec.get("pre_tokenizer"), spec.get("normalizer")
    if model.get("type") != "BPE" or model.get("dropout"):
        return CutRule(None, f"model {model.get('type')} (not a deterministic BPE)")
    added = [t["content"] for t in spec.get("added_tokens", []) if "\n" in t["content"]]
    if added:
        return CutRule(None, f"added tokens hold a newline ({added[0]!r})")
    if pre is not None and pre["type"] == "Sequence" and len(pre["pretokenizers"]) == 1:
        pre = pre["pretokenizers"][0]
    if pre is not None and pre["type"] == "ByteLevel":
        if not pre.get("use_regex", True) or pre.get("add_prefix_space"):
            return CutRule(None, "ByteLevel pre-tokenizer without the GPT-2 regex or with a prefix space")
        if not _normalizers_within(normalizer, _UNICODE_FORMS):
            return CutRule(None, f"normaliser {normalizer['type']} next to a ByteLevel pre-tokenizer")
        return CutRule("byte-level", "ByteLevel pre-tokenizer (GPT-2 regex, no prefix space), BPE")
    if pre is None or (pre["type"] == "Metaspace" and pre.get("replacement", "▁") == "▁"):
        if not _normalizers_within(normalizer, _UNICODE_FORMS | {"Prepend", "Replace"}):
            return CutRule(None, f"normaliser {normalizer['type']} before a BPE without pre-tokenizer")
        joined = [t for t in model["vocab"] if "\n" in t and t != "\n"]
        if joined:
            return CutRule(None, f"the vocabulary joins a newline to other characters ({joined[0]!r})")
        return CutRule("newline-barrier", "BPE without pre-tokenizer whose vocabulary never joins a newline")
    return CutRule(None, f"pre-tokenizer {pre['type']}")


def _without_truncation(backend):
    """``backend``, or a copy of it without the truncation and padding its ``tokenizer.json`` may set.

    The ids are encoded by the backend itself (``encode_batch_fast``), which applies those sections
    (transformers applies them only when a call asks): a file that truncates at 8 tokens would cut
    every piece to 8 ids. A copy, so that the caller's tokenizer keeps its settings.
    """
    if backend is None or (backend.truncation is None and backend.padding is None):
        return backend
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


class PieceTooLong(PipelineError):
    """A stretch of text longer than ``max_piece_chars`` with no newline where a cut is allowed."""


class PieceEncoder:
    """Encodes texts and pieces of texts with a Hugging Face tokenizer (no special tokens added)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = _without_truncation(getattr(tokenizer, "backend_tokenizer", None))
        self.rule = cut_rule(tokenizer)
        # Added tokens are split off before normalisation, and each stretch of text between them is
        # normalised on its own: after a line ending in one, a Prepend normaliser would prepend "▁"
        # to the text after the newline. No cut follows such a line.
        self.added = tuple(t.content for t in self.backend.get_added_tokens_decoder().values()) \
            if self.backend is not None else ()
        self.primer_ids = self.encode([PRIMER])[0]
        self.cuts = 0
        self.rejected_cuts = 0

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, on the tokenizer's threads (ids only: no offsets are computed)."""
        if not texts:
            return []
        if self.backend is not None:
            return [e.ids for e in self.backend.encode_batch_fast(list(texts), add_special_tokens=False)]
        return self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]

    def encode_pieces(self, pieces: Sequence[str], continued: Sequence[bool]) -> list[list[int]]:
        """Token ids of pieces; a ``continued`` piece follows a cut, so it is encoded after the primer
        and a newline (the newline the cut falls on), and the primer's ids are removed."""
        texts = [f"{PRIMER}\n{piece}" if cont else piece for piece, cont in zip(pieces, continued)]
        encoded = self.encode(texts)
        k = len(self.primer_ids)
        for i, cont in enumerate(continued):
            if cont:
                if encoded[i][:k] != self.primer_ids:
                    raise RuntimeError(f"the primer {PRIMER!r} was not split off a piece (a bug in the cut rule)")
                encoded[i] = encoded[i][k:]
        return encoded

    def rule_allows(self, before: str, after: str) -> bool:
        """Whether the cut rule allows a cut at the newline between lines ``before`` and ``after``.

        ``before`` may end in whitespace (a Windows ``\r``, trailing spaces): the whitespace stays
        with the left piece, a pre-token of its own in the text as in the piece (see the module
        docstring); refusing such lines left a file with Windows line ends without any cut. Next to
        an added token there is no cut: added tokens are split off first, so the newline would end
        or begin a stretch of text of its own (where GPT-2's regex joins it to the whitespace before
        it, and a Prepend normaliser puts its "▁" after it).
        """
        if self.rule.family is None or not before or not after or after[0].isspace():
            return False
        return not (self.added and (before.endswith(self.added) or after.startswith(self.added)))

    def can_cut(self, before: str, after: str) -> bool:
        """``rule_allows``, and the two lines around the cut tokenise the same whole and cut."""
        if not self.rule_allows(before, after):
            return False
        whole = self.encode([f"{before}\n{after}"])[0]
        left, right = self.encode_pieces([before, after], [False, True])
        if whole != left + right:
            self.rejected_cuts += 1
            return False
        self.cuts += 1
        return True


@dataclass
class Piece:
    """A piece of one text; its text, whether it begins a text, ends one, continues after a cut."""

    text: str
    begins: bool
    ends: bool
    continued: bool


def lm_lines(lines: Iterable[str], policy: str) -> Iterator[tuple[str, bool]]:
    """``(line, begins_text)`` of the texts a join policy makes of a split's lines (``m2d2.lm_texts``,
    one line at a time): a text is its lines joined with ``\\n``."""
    if policy == "keep":
        first = True
        for line in lines:
            yield line, first
            first = False
    elif policy == "paragraph":
        previous_blank = True
        for line in lines:
            if line.strip():
                yield line, previous_blank
                previous_blank = False
            else:
                previous_blank = True
    elif policy == "line":
        yield from ((line, True) for line in lines if line.strip())
    elif policy == "strip":
        yield from ((line.strip(), True) for line in lines if line.strip())
    else:
        raise m2d2.CorpusError(f"unknown join policy {policy!r}; expected one of {m2d2.JOIN_POLICIES}")


def pieces(lines: Iterable[tuple[str, bool]], encoder: PieceEncoder, piece_chars: int,
           max_piece_chars: int | None = None) -> Iterator[Piece]:
    """The texts of ``lm_lines`` as pieces of at least ``piece_chars`` characters where the cut rule
    allows a cut, else as whole texts. A piece that would grow past ``max_piece_chars`` characters
    raises ``PieceTooLong`` before it is tokenised."""
    current: list[str] = []
    chars, continued = 0, False
    for line, begins in lines:
        if current and begins:
            yield Piece("\n".join(current), not continued, True, continued)
            current, chars, continued = [], 0, False
        elif current and chars >= piece_chars and encoder.can_cut(current[-1], line):
            yield Piece("\n".join(current), not continued, False, continued)
            current, chars, continued = [], 0, True
        current.append(line)
        chars += len(line) + 1
        if max_piece_chars is not None and chars > max_piece_chars:
            raise PieceTooLong(_too_long(encoder, chars, len(current)))
    if current:
        yield Piece("\n".join(current), not continued, True, continued)


def _too_long(encoder: PieceEncoder, chars: int, lines: int) -> str:
    if encoder.rule.family is None:
        why = f"this tokenizer is never cut ({encoder.rule.reason})"
    elif lines == 1:
        why = "it is one line, and texts are cut only at newlines"
    else:
        why = (f"none of its {lines} line ends allows a cut (a cut needs a newline followed by a non-space "
               f"character and no added token beside it; {encoder.rejected_cuts} cuts failed their check so far)")
    return (f"a stretch of {chars:,} characters has no place to cut it into pieces: {why}. Tokenised "
            f"whole it would need about {200 * chars / 1e6:,.0f} MB of memory, so the job stops here. Use a join "
            "policy that makes shorter texts (paragraph or line, see adaptation.join_policy) or break the text "
            "into lines.")


@dataclass
class SplitCounts:
    """What a split's texts hold: texts, tokens, and the raw text's characters, words and bytes."""

    documents: int = 0
    tokens: int = 0
    characters: int = 0
    words: int = 0
    bytes: int = 0

    def add(self, piece: Piece) -> None:
        separator = 1 if piece.continued else 0  # the newline a cut falls on
        self.documents += piece.begins
        self.characters += len(piece.text) + separator
        self.words += len(piece.text.split())
        self.bytes += len(piece.text.encode("utf-8")) + separator


def _batches(texts: Iterable[Piece], counts: SplitCounts, batch_chars: int) -> Iterator[list[Piece]]:
    batch: list[Piece] = []
    size = 0
    for piece in texts:
        counts.add(piece)
        batch.append(piece)
        size += len(piece.text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _read_ahead(items: Iterator, depth: int = 2) -> Iterator:
    """``items``, produced in a thread up to ``depth`` ahead: reading, decoding and cutting the text
    (Python) overlaps the encoding of the previous batch (the tokenizer's threads, without the GIL).
    An exception in the thread is raised here."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            slots.put(exc)

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def tokenize_stream(
    texts: Iterable[Piece], encoder: PieceEncoder, writer, *, eos_id: int | None, batch_chars: int,
    progress: str = "", log_every_s: float = 30.0,
) -> SplitCounts:
    """Encode pieces in batches of about ``batch_chars`` characters and append their ids (EOS after
    each text when ``eos_id`` is set) to ``writer``'s current split. Returns the split's counts."""
    counts = SplitCounts()
    started = last_log = time.perf_counter()
    for batch in _read_ahead(_batches(texts, counts, batch_chars)):
        ids: list[int] = []
        starts: list[int] = []
        for piece, piece_ids in zip(batch, encoder.encode_pieces([p.text for p in batch],
                                                                 [p.continued for p in batch])):
            if piece.begins:
                starts.append(len(ids))
            ids.extend(piece_ids)
            if piece.ends and eos_id is not None:
                ids.append(eos_id)
        writer.append(ids, starts)
        counts.tokens += len(ids)
        now = time.perf_counter()
        if now - last_log >= log_every_s:
            megabytes = counts.bytes / 1e6
            log.info("%s%.1f MB read, %d tokens, %.2f MB/s", progress, megabytes, counts.tokens,
                     megabytes / (now - started))
            last_log = now
    return counts
