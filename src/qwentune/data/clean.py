"""Cleaning: normalise records, then reject the ones no model should learn from.

Each rule is a function of one record that returns why it fails (or None); its name is both
the reason written to rejects.jsonl and the switch in the preprocess config's `cleaning:`
block. The rules run in the order of RULES; a record is rejected for the first one it fails.
Two checks need more than one record and live in their own components: the token length
filter (TokenCounter: the tokenizer's chat template, batched, in worker processes) and
exact-duplicate removal (Deduplicator: 8-byte content hashes, decided by one sort).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from qwentune.data.record import Record, Reject

# ---------------------------------------------------------------------------- normalising


def normalise(record: Record, *, strip_whitespace: bool, template_values: dict[str, str]) -> Record:
    """Strip surrounding whitespace of every turn (BELLE outputs start with a newline; Alpaca
    instructions end with spaces) and fill `{{name}}`-style placeholders the config gives values for."""
    # A pair's prompt turns appear in both of its conversations: each message once.
    messages = {id(message): message for conversation in record.conversations() for message in conversation}
    for message in messages.values():
        content = message["content"]
        for key, value in template_values.items():
            content = content.replace("{{" + key + "}}", value)
        message["content"] = content.strip() if strip_whitespace else content
    return record


# ---------------------------------------------------------------------------- rules


def _cp1252_continuations() -> str:
    """The characters UTF-8 continuation bytes (0x80-0xBF) turn into when misread as cp1252/latin-1."""
    chars = []
    for byte in range(0x80, 0xC0):
        try:
            chars.append(bytes([byte]).decode("cp1252"))
        except UnicodeDecodeError:
            chars.append(bytes([byte]).decode("latin-1"))
    return re.escape("".join(chars))


_CONTINUATION = _cp1252_continuations()
# UTF-8 read as cp1252 or latin-1: "Ã©" (é), "Â " (no-break space), "â€™" (’), "ä½ å¥½" (你好),
# "ï¿½" (a replacement character); and "锟斤拷", U+FFFD pairs read back through GBK.
_MOJIBAKE = re.compile(rf"[ÂÃ][{_CONTINUATION}]|â€[{_CONTINUATION}]|[äåæçè][{_CONTINUATION}]{{2}}|ï¿½|锟斤拷")
# C0 controls except tab, newline and carriage return; DEL; C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_PLACEHOLDER_START = re.compile(r"<\s*no\s*_?output\s*>", re.IGNORECASE)
# Whole replies that only say "there is no answer" (compared lower-cased, end punctuation removed).
_PLACEHOLDER_REPLIES = {"n/a", "n.a", "<noinput>", "<no input>", "no output", "nooutput", "无输出", "暂无回答"}
_UNFILLED = re.compile(r"\{\{[A-Za-z_][A-Za-z0-9_]*\}\}")


def broken_encoding(record: Record) -> str | None:
    for message in record.messages:
        if "\ufffd" in message["content"]:
            return f"{message['role']} text holds U+FFFD (bytes that were not valid UTF-8)"
        if match := _MOJIBAKE.search(message["content"]):
            return f"{message['role']} text looks like mis-decoded UTF-8: {match.group()!r}"
    return None


def control_characters(record: Record) -> str | None:
    for message in record.messages:
        if match := _CONTROL.search(message["content"]):
            return f"{message['role']} text holds control character U+{ord(match.group()):04X}"
    return None


def no_user_turn(record: Record) -> str | None:
    if not any(message["role"] == "user" for message in record.messages):
        return "the conversation has no user turn"
    return None


def not_ending_with_assistant(record: Record) -> str | None:
    last = record.messages[-1]["role"]
    return None if last == "assistant" else f"the conversation ends with a {last} turn, not an assistant reply"


def empty_input(record: Record) -> str | None:
    for index, message in enumerate(record.messages):
        if message["role"] == "user" and not message["content"].strip():
            return f"user turn {index} is empty"
    return None


def empty_output(record: Record) -> str | None:
    for index, message in enumerate(record.messages):
        if message["role"] == "assistant" and not message["content"].strip() and not message.get("tool_calls"):
            return f"assistant turn {index} is empty"
    return None


def placeholder_output(record: Record) -> str | None:
    for index, message in enumerate(record.messages):
        if message["role"] != "assistant":
            continue
        content = message["content"].strip()
        if _PLACEHOLDER_START.match(content) or content.lower().rstrip(".。!！ ") in _PLACEHOLDER_REPLIES:
            return f"assistant turn {index} is a placeholder: {content[:60]!r}"
    return None


def identical_pair(record: Record) -> str | None:
    """A preference pair whose two replies are the same text teaches nothing (and its loss is constant)."""
    if record.kind == "pair" and " ".join(record.chosen["content"].split()) == " ".join(record.rejected["content"].split()):
        return "the chosen and rejected replies are the same text"
    return None


def unfilled_template(record: Record) -> str | None:
    for message in record.messages:
        if match := _UNFILLED.search(message["content"]):
            return f"{message['role']} text holds the unfilled placeholder {match.group()} (set template_values)"
    return None


Rule = Callable[[Record], "str | None"]
RULES: dict[str, Rule] = {
    rule.__name__: rule
    for rule in (
        broken_encoding,
        control_characters,
        no_user_turn,
        not_ending_with_assistant,
        empty_input,
        empty_output,
        placeholder_output,
        unfilled_template,
    )
}
# Rules of preference records as a whole; a preference record passes each rule of RULES only if
# each of its conversations (prompt + chosen, prompt + rejected) does.
PAIR_RULES: dict[str, Rule] = {"identical_pair": identical_pair}
_SIDES = {"pair": ("chosen reply: ", "rejected reply: "), "kto": ("", )}


def failed_rule(record: Record, rules: list[tuple[str, Rule]]) -> tuple[str, str] | None:
    """(rule name, detail) of the first rule `record` fails, or None."""
    if record.kind == "sft":
        return next(((name, detail) for name, rule in rules if (detail := rule(record)) is not None), None)
    views = [(prefix, replace(record, messages=conversation)) for prefix, conversation in zip(_SIDES[record.kind], record.conversations(), strict=True)]
    for name, rule in rules:
        for prefix, view in views if name in RULES else [("", record)]:
            if (detail := rule(view)) is not None:
                return name, prefix + detail
    return None


def apply_rules(
    items: Iterable[Record | Reject],
    enabled: list[str],
    *,
    strip_whitespace: bool = True,
    template_values: dict[str, str] | None = None,
) -> Iterator[Record | Reject]:
    """Normalise each record and reject it for the first enabled rule it fails; rejects pass through."""
    rules = [(name, rule) for name, rule in {**RULES, **PAIR_RULES}.items() if name in enabled]
    template_values = template_values or {}
    for item in items:
        if isinstance(item, Reject):
            yield item
            continue
        normalise(item, strip_whitespace=strip_whitespace, template_values=template_values)
        failed = failed_rule(item, rules)
        yield item if failed is None else Reject.of(item, *failed)


# ---------------------------------------------------------------------------- token length

_worker_tokenizer = None


def _load_worker_tokenizer(tokenizer_path: str) -> None:
    global _worker_tokenizer
    from qwentune.data.tokenize import load_tokenizer

    _worker_tokenizer = load_tokenizer(tokenizer_path)


def count_tokens(tokenizer, conversations: list, max_chars: int | None = None) -> list[int | str]:
    """Tokens of each conversation as rendered by the tokenizer's chat template (with the end-of-turn
    tokens and tool definitions), or the template's error message when it cannot render one. An item
    is a list of messages or a (messages, tools) pair."""
    from qwentune.data.tokenize import render, with_thinking

    texts, results = [], []
    for item in conversations:
        messages, tools = item if isinstance(item, tuple) else (item, None)  # (messages, tool definitions)
        try:
            text = render(tokenizer, with_thinking(tokenizer, messages), tools=tools)
        except Exception as exc:  # a template may refuse a conversation; that is one record's problem
            results.append(f"the chat template cannot render it: {exc}")
            continue
        # A text over max_chars has more tokens than any limit we check (see AtLeast): it is not
        # tokenized, so a 50 MB record costs no more than one at the limit.
        if max_chars is not None and len(text) > max_chars:
            results.append(AtLeast(len(text) // (NORMALISATION_SLACK * max_token_chars(tokenizer))))
        else:
            texts.append(text)
            results.append(None)
    # The Rust tokenizer's batch call, asking only for lengths: no Python lists of ids are built,
    # and the fast variant (tokenizers >= 0.20) skips the character offsets we do not need.
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    encodings = iter(encode(texts, add_special_tokens=False))
    return [len(next(encodings)) if result is None else result for result in results]


# NFC composes at most 4 code points into one (Greek U+1F86 is alpha + 3 marks): the normalised text
# a tokenizer sees has at least a quarter of the characters it was given.
NORMALISATION_SLACK = 4


class AtLeast(int):
    """A lower bound on a text's tokens, found without tokenizing it: each token covers at most
    max_token_chars characters, so a text of C characters has at least C / max_token_chars tokens
    (divided by NORMALISATION_SLACK, as the tokenizer's normaliser may shrink the text first)."""


def max_token_chars(tokenizer) -> int:
    """The longest vocabulary entry in characters (byte-level entries: one character a byte, so an
    upper bound on the characters of text a token covers)."""
    return max(len(token) for token in tokenizer.get_vocab())


def char_cap(tokenizer, max_length: int) -> int:
    """Characters of rendered text past which a conversation certainly has more than max_length tokens."""
    return NORMALISATION_SLACK * max_token_chars(tokenizer) * (max_length + 1)


def _count_in_worker(conversations: list[list[dict]], max_chars: int | None) -> list[int | str]:
    return count_tokens(_worker_tokenizer, conversations, max_chars)


class TokenCounter:
    """Counts tokens of records in batches, in `num_workers` processes (0: in this process).

    At most two batches per worker are in flight, so memory does not grow with the input;
    results come back in input order, so the run is the same whatever the worker timing.
    """

    def __init__(
        self, tokenizer, tokenizer_path: str, num_workers: int, batch_size: int = 256, max_length: int | None = None
    ):
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # Texts past this are known to exceed max_length without tokenizing them (see AtLeast).
        self.max_chars = char_cap(tokenizer, max_length) if max_length is not None else None
        self.pool = None
        if num_workers > 0:
            # fork where the platform has it: no re-import of the caller's main module.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            self.pool = context.Pool(num_workers, initializer=_load_worker_tokenizer, initargs=(tokenizer_path,))
        self.window = 2 * max(1, num_workers)

    def __enter__(self) -> TokenCounter:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def _submit(self, batch: list[Record]):
        # A preference pair is counted by its longer side: both sides must fit max_length.
        conversations = [(conversation, record.tools) for record in batch for conversation in record.conversations()]
        if self.pool is None:
            return batch, count_tokens(self.tokenizer, conversations, self.max_chars)
        return batch, self.pool.apply_async(_count_in_worker, (conversations, self.max_chars))

    @staticmethod
    def _collect(pending) -> list[tuple[Record, int | str]]:
        batch, result = pending
        counts = iter(result if isinstance(result, list) else result.get())
        collected = []
        for record in batch:
            sides = [next(counts) for _ in record.conversations()]
            errors = [side for side in sides if isinstance(side, str)]
            collected.append((record, errors[0] if errors else max(sides)))
        return collected

    def stream(self, items: Iterable[Record | Reject]) -> Iterator[Record | Reject | tuple[Record, int | str]]:
        """Rejects pass straight through; each record comes back as (record, tokens or error)."""
        in_flight: deque = deque()
        batch: list[Record] = []
        for item in items:
            if isinstance(item, Reject):
                yield item
                continue
            batch.append(item)
            if len(batch) == self.batch_size:
                in_flight.append(self._submit(batch))
                batch = []
                if len(in_flight) > self.window:
                    yield from self._collect(in_flight.popleft())
        if batch:
            in_flight.append(self._submit(batch))
        while in_flight:
            yield from self._collect(in_flight.popleft())


def length_filter(
    counted: Iterable[Record | Reject | tuple[Record, int | str]],
    *,
    min_length: int,
    max_length: int,
    check_short: bool,
    check_long: bool,
    on_length: Callable[[int], None] = lambda tokens: None,
) -> Iterator[Record | Reject]:
    for item in counted:
        if isinstance(item, Reject):
            yield item
            continue
        record, tokens = item
        if isinstance(tokens, str):
            yield Reject.of(record, "template_error", tokens)
            continue
        if isinstance(tokens, AtLeast):  # not counted: a lower bound, far over max_length
            if check_long:
                yield Reject.of(record, "too_long", f"at least {tokens} tokens > max_length {max_length} (not tokenized)")
            else:
                yield record
            continue
        on_length(tokens)
        if check_short and tokens < min_length:
            yield Reject.of(record, "too_short", f"{tokens} tokens < min_length {min_length}")
        elif check_long and tokens > max_length:
            yield Reject.of(record, "too_long", f"{tokens} tokens > max_length {max_length}")
        else:
            yield record


# ---------------------------------------------------------------------------- duplicates


def content_key(record: Record) -> int:
    """8-byte hash of the roles and texts with runs of whitespace collapsed."""
    digest = hashlib.blake2b(digest_size=8)
    for conversation in record.conversations():
        for message in conversation:
            digest.update(message["role"].encode())
            digest.update(b"\x1f")
            digest.update(" ".join(message["content"].split()).encode("utf-8"))
            # Calls and reasoning are content too (only when present: plain records keep their keys).
            for key in ("reasoning_content", "tool_calls"):
                if message.get(key):
                    digest.update(b"\x1c" + json.dumps(message[key], sort_keys=True, ensure_ascii=False).encode("utf-8"))
            digest.update(b"\x1e")
        if record.kind != "sft":
            digest.update(b"\x1d")  # a pair's sides (chosen first) and a KTO label are part of its content
    if record.kind == "kto":
        digest.update(b"label:" + str(record.label).encode())
    if record.tools:
        digest.update(b"tools:" + json.dumps(record.tools, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return int.from_bytes(digest.digest(), "big")


class Deduplicator:
    """Keeps, of each set of exact duplicates, one record: a pinned one first, then the lowest order key.

    Deciding by key instead of by arrival makes the kept copy independent of input order.
    Offers go into flat arrays (17 bytes a record; a dict of Python ints took about 180, which
    at firefly's 1.65M rows was a quarter of a gigabyte) and are decided once, by one sort, in
    `decide()`; the winners are then looked up one order-key range at a time.
    """

    def __init__(self):
        self._contents = array("Q")
        self._orders = array("Q")
        self._unpinned = array("B")  # 0 sorts first: a pinned record wins over any copy
        self._winner_orders = self._winner_contents = None

    def offer(self, content: int, order: int, pinned: bool = False) -> None:
        self._contents.append(content)
        self._orders.append(order)
        self._unpinned.append(0 if pinned else 1)

    def decide(self) -> None:
        """Pick each content's winner; after this, `winners_between` answers."""
        import numpy as np

        contents = np.frombuffer(self._contents, dtype=np.uint64)
        orders = np.frombuffer(self._orders, dtype=np.uint64)
        unpinned = np.frombuffer(self._unpinned, dtype=np.uint8)
        ranked = np.lexsort((orders, unpinned, contents))  # by content, then pinned first, then order
        ranked_contents = contents[ranked]
        first = np.ones(len(ranked), dtype=bool)
        first[1:] = ranked_contents[1:] != ranked_contents[:-1]
        winners = ranked[first]
        winner_orders = orders[winners]
        by_order = np.argsort(winner_orders, kind="stable")
        self._winner_orders = winner_orders[by_order]
        self._winner_contents = contents[winners][by_order]
        self._contents, self._orders, self._unpinned = array("Q"), array("Q"), array("B")

    def winners_between(self, low: int, high: int) -> set[tuple[int, int]]:
        """(order, content) of the kept records whose order key lies in [low, high)."""
        import numpy as np

        # high - 1 with side="right": the range's end as an inclusive key, which fits 64 bits even for the last range.
        start = int(np.searchsorted(self._winner_orders, np.uint64(low), side="left"))
        end = int(np.searchsorted(self._winner_orders, np.uint64(high - 1), side="right"))
        return set(zip(self._winner_orders[start:end].tolist(), self._winner_contents[start:end].tolist()))
