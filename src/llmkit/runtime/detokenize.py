"""Incremental detokenisation: generated token ids to stable text pieces, with stop strings."""

from __future__ import annotations


class TextStream:
    """Turns a growing list of generated ids into stable text pieces, watching for stop strings.

    Decodes incrementally (as vLLM does): each push decodes a short window that starts a few tokens
    back and keeps what it adds beyond the window's previous text, so byte-level BPE pieces that only
    form a character together, and tokenizers whose pieces depend on their neighbours, come out
    right at O(1) cost per token rather than re-decoding everything. Held back: a trailing U+FFFD
    (an incomplete UTF-8 sequence) and any tail that could be the start of a stop string.
    """

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.emitted = ""
        self.text = ""
        self.stopped = False
        self.decoded = ""  # text of ids[:read], complete characters only
        self.prefix = self.read = 0  # the window ids[prefix:read] decodes to the tail of `decoded`

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, ids: list[int]) -> str:
        """Update with all generated ids so far; return the newly stable text ('' if none)."""
        head = self._decode(ids[self.prefix:self.read])
        tail = self._decode(ids[self.prefix:])
        pending = tail[len(head):] if tail.startswith(head) else ""
        if pending and not tail.endswith("\ufffd"):
            self.decoded += pending
            self.prefix, self.read = self.read, len(ids)
            pending = ""
        text = self.decoded + pending
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = text[:min(hits)], True
            return self.finish()
        self.text = stable = text
        while stable.endswith("\ufffd"):
            stable = stable[:-1]
        # Only after the U+FFFD cut: the incomplete character may be what completes a stop string.
        hold = max((k for s in self.stop for k in range(1, min(len(s), len(stable) + 1))
                    if stable.endswith(s[:k])), default=0)
        return self._emit(stable[:len(stable) - hold])

    def finish(self) -> str:
        """Release whatever was held back; after this, the pieces concatenate to `self.text`.

        But a character cut by the end (max_tokens reached after the first of its bytes) is left out: decoded it is
        U+FFFD, and answers in Chinese ended in '�'. Only the undecided tail is cut: `decoded` holds whole characters,
        so a U+FFFD the model made from invalid bytes earlier stays."""
        while len(self.text) > len(self.decoded) and self.text.endswith("\ufffd"):
            self.text = self.text[:-1]
        return self._emit(self.text)

    def _emit(self, stable: str) -> str:
        if len(stable) <= len(self.emitted) or not stable.startswith(self.emitted):
            return ""
        piece, self.emitted = stable[len(self.emitted):], stable
        return piece
