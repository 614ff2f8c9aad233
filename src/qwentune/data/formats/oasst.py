"""OpenAssistant (OASST1/2): conversation trees rebuilt from messages."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from qwentune.data.formats.base import Conversation, ConversionError, ConversionOptions, Converter, register
from qwentune.data.readers import RawRecord
from qwentune.data.record import Record, Reject

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def _rank_key(message: dict) -> tuple:
    """Best reply first: rank 0, 1, ...; unranked (null or missing) last; ties go to the earlier
    message (created_date, then message_id), so the choice never depends on file order."""
    rank = message.get("rank")
    return (
        rank is None,
        rank if rank is not None else 0,
        str(message.get("created_date") or ""),
        str(message.get("message_id") or ""),
    )


def _thread_order(message: dict) -> tuple:
    return (str(message.get("created_date") or ""), str(message.get("message_id") or ""))


@register
class OasstConverter(Converter):
    """OpenAssistant: export trees ({"message_tree_id", "prompt": message}), nested messages
    (a root message with "replies"), or flat message rows (rebuilt from message_id/parent_id
    across the whole file). Deleted messages and everything under them are skipped.

    One conversation per tree follows the best-ranked reply at each step; with
    `oasst_all_paths`, one per assistant message that has no assistant reply below it. A
    thread that stops at a prompter message ends at the assistant turn before it. The id is
    the message_id of the thread's last message.
    """

    name = "oasst"

    def __init__(self, source: str, file: str, options: ConversionOptions = ConversionOptions()):
        super().__init__(source, file, options)
        self.rows: dict[str, tuple[int, dict]] = {}  # flat rows: message_id -> (line, row)

    @staticmethod
    def recognizes(data: dict) -> bool:
        if isinstance(data.get("prompt"), dict):
            return "message_tree_id" in data or "replies" in data["prompt"]
        return "message_id" in data and "text" in data and "role" in data

    def feed(self, raw: RawRecord) -> Iterator[Record | Reject]:
        data = raw.data
        if isinstance(data, dict) and "message_id" in data and "replies" not in data and "prompt" not in data:
            if data["message_id"] in self.rows:
                yield self.reject(raw.line, data, "duplicate_message", f"message_id {data['message_id']} seen before")
            else:
                self.rows[data["message_id"]] = (raw.line, data)
            return
        yield from super().feed(raw)

    def conversations(self, data: dict) -> list[Conversation]:
        root = data["prompt"] if isinstance(data.get("prompt"), dict) else data
        tree_id = data.get("message_tree_id", root.get("message_tree_id", root.get("message_id")))
        return self.threads(root, lambda message: message.get("replies") or [], tree_id)

    def finish(self) -> Iterator[Record | Reject]:
        children: dict[str, list[dict]] = defaultdict(list)
        roots = []
        for _, row in self.rows.values():
            parent = row.get("parent_id")
            if parent is None:
                roots.append(row)
            else:
                children[parent].append(row)
        for replies in children.values():
            replies.sort(key=_thread_order)  # rows may come in any order; replies come oldest first
        reached = set()
        for root in roots:
            line, _ = self.rows[root["message_id"]]
            stack = [root]
            while stack:  # mark the whole tree, deleted branches included: they are part of this record
                message = stack.pop()
                reached.add(message["message_id"])
                stack.extend(children.get(message["message_id"], ()))
            try:
                conversations = self.threads(
                    root, lambda m: children.get(m["message_id"], ()), root.get("message_tree_id", root["message_id"])
                )
            except ConversionError as exc:
                yield self.reject(line, root, exc.reason, exc.detail)
                continue
            yield from self.build(conversations, line, root)
        for message_id, (line, row) in self.rows.items():
            if message_id not in reached:
                yield self.reject(
                    line, row, "orphan_message", f"parent {row.get('parent_id')} is not in this file (or a cycle)"
                )
        self.rows.clear()

    def threads(self, root: dict, replies_of, tree_id) -> list[Conversation]:
        if root.get("deleted"):
            raise ConversionError("deleted", "the tree's first message is deleted")
        if root.get("role") != "prompter":
            raise ConversionError("bad_tree", f"the tree starts with a {root.get('role')!r} message, not a prompter")

        def live_replies(message: dict) -> list[dict]:
            return [m for m in replies_of(message) if isinstance(m, dict) and not m.get("deleted")]

        if self.options.oasst_all_paths:
            paths = self.all_paths(root, live_replies)
        else:
            paths = [self.best_path(root, live_replies)]
        meta = {"message_tree_id": tree_id}
        if root.get("lang"):
            meta["oasst_lang"] = root["lang"]
        return [
            Conversation([self.message(m) for m in path], id=path[-1].get("message_id"), meta=dict(meta))
            for path in paths
        ]

    @staticmethod
    def best_path(root: dict, live_replies) -> list[dict]:
        path = [root]
        while replies := live_replies(path[-1]):
            path.append(min(replies, key=_rank_key))
        return _trim_to_assistant(path)

    @staticmethod
    def all_paths(root: dict, live_replies) -> list[dict]:
        leaves, stack = [], [[root]]
        while stack:
            path = stack.pop()
            replies = live_replies(path[-1])
            if not replies:
                leaves.append(_trim_to_assistant(path))
            # Reversed so that threads come out in reply order.
            stack.extend(path + [reply] for reply in reversed(replies))
        inner = {id(message) for path in leaves for message in path[:-1]}
        kept, seen = [], set()
        for path in leaves:
            last = id(path[-1])
            if last not in inner and last not in seen:
                seen.add(last)
                kept.append(path)
        return kept

    @staticmethod
    def message(message: dict) -> dict:
        role = OASST_ROLES.get(message.get("role"))
        if role is None:
            raise ConversionError(
                "unknown_role", f"message {message.get('message_id')} has role {message.get('role')!r}"
            )
        text = message.get("text")
        if not isinstance(text, str):
            raise ConversionError("wrong_type", f"message {message.get('message_id')} text is not text")
        return {"role": role, "content": text}


def _trim_to_assistant(path: list[dict]) -> list[dict]:
    """Drop trailing prompter messages (a question nobody answered); keep the root at least."""
    end = len(path)
    while end > 1 and path[end - 1].get("role") != "assistant":
        end -= 1
    return path[:end]
