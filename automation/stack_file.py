"""Round-trip edits of a ``Pulumi.<stack>.yaml``: a command changes the lines of the values it changes, no others.

The Automation API's ``set_all_config`` rewrites the whole file, structured values as one-line JSON strings and
every comment dropped, so the reviewed, commented stack file in git became unreadable after the first release and
a release's diff was the whole file. Here the file's text is edited in place instead: ruamel.yaml parses it into
nodes that know where they start and end, a changed value is replaced within its own span (mappings are merged
leaf by leaf, so an unchanged leaf keeps its bytes), a new entry is rendered as native YAML in the file's own
indentation, and a removed entry takes only its own lines. Everything else — comments, key order, quoting, blank
lines, ``encryptionsalt``, secure values — is the file's own text. Values are written so that YAML 1.1 and 1.2
readers (the engine's Go parser, PyYAML, ruamel) read the same thing, and every edit is checked by reading the
result back before it is saved.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from io import StringIO
from pathlib import Path
from typing import Any, NamedTuple

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from components.stack_config import decode_value

_STR_TAG = "tag:yaml.org,2002:str"
_YAML11 = VersionedResolver(version=(1, 1))  # yes/no/on/off, 1e5, dates: not strings to a YAML 1.1 reader
_COMMENT_AFTER = re.compile(r"( +)#")
_FLOW_SAFE = re.compile(r"[\w./-]*")  # strings that need no care inside [a, b] (others go in a block list)


class StackFileError(ValueError):
    """The stack file cannot be edited as asked; the message names the file, the problem and the fix."""


class _Edit(NamedTuple):
    start: int
    end: int
    text: str


def same_value(a: Any, b: Any) -> bool:
    """Equal config values, as ``==`` but a boolean never equals a number (``true`` is not ``1`` in a stack file)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


class StackFile:
    """One stack file, read from disk once, edited in memory by ``set`` and ``remove``, written by ``save``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, encoding="utf-8", newline="") as handle:
                self.text = handle.read()
        except FileNotFoundError:
            raise StackFileError(
                f"{self.path} does not exist: the stack's config lives there; restore it from version control or"
                f" write it (Pulumi.staging.yaml is a documented example)"
            ) from None
        self._saved = self.text
        self._newline = "\r\n" if "\r\n" in self.text else "\n"
        root, _data = self._parse()
        self._dumper = _dumper(*_guess_indent(root, self._column))

    # -- reading -----------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The file's ``config:`` mapping as plain values (secure values as their ``{secure: ...}`` mapping)."""
        data = self._parse()[1]
        return dict((data or {}).get("config") or {})

    @property
    def changed(self) -> bool:
        """Whether the text differs from the file on disk."""
        return self.text != self._saved

    # -- editing -----------------------------------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        """Make ``config[key]`` equal ``value``, changing only the leaves that differ (nested keys absent from
        ``value`` are removed)."""
        current = self.config()
        self._edit_config({**current, key: value}, current)

    def remove(self, key: str) -> None:
        """Remove ``config[key]`` with its lines; a key the file does not have is left alone."""
        current = self.config()
        if key in current:
            self._edit_config({k: v for k, v in current.items() if k != key}, current)

    def save(self) -> bool:
        """Write the text if it changed (atomically, keeping the file's mode); whether it was written."""
        if not self.changed:
            return False
        mode = self.path.stat().st_mode & 0o7777
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(self.text)
            os.chmod(tmp, mode)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._saved = self.text
        return True

    # -- the edit ----------------------------------------------------------------------------------

    def _edit_config(self, wanted: dict[str, Any], current: dict[str, Any]) -> None:
        # A top-level JSON string (as ``set_all_config`` writes) that decodes to the wanted value is that value.
        wanted = {
            k: current[k] if isinstance(current.get(k), str) and decode_value(current[k]) == v else v
            for k, v in wanted.items()
        }
        root, _data = self._parse()
        entry = next(((k, v) for k, v in root.value if k.value == "config"), None) if root is not None else None
        if entry is None:
            if root is not None and root.flow_style:
                raise StackFileError(f"{self.path} is one flow mapping with no config: add `config: {{}}` to it")
            separator = self._newline if self.text and not self.text.endswith(("\n", "\r")) else ""
            self.text += separator + self._newline.join(self._render({"config": wanted})) + self._newline
        else:
            key, node = entry
            edits: list[_Edit] = []
            if current:
                self._merge(key, node, current, wanted, edits, "config")
            else:  # `config:` with nothing, or `config: {}`
                edits.append(self._replace_entry(key, node, wanted))
            text = self.text
            for edit in sorted(edits, key=lambda e: (e.start, e.end), reverse=True):
                text = text[: edit.start] + edit.text + text[edit.end :]
            self.text = text
        got = self.config()
        if not same_value(got, wanted):  # never save a file the engine would read differently
            raise StackFileError(f"{self.path}: editing config would not read back as written ({got!r}): please report")

    def _merge(self, key: Node, node: Node, old: Any, new: Any, edits: list[_Edit], where: str) -> None:
        """Edits that turn the value ``node`` of entry ``key`` from ``old`` into ``new``."""
        if same_value(old, new):
            return
        name = where.removeprefix("config.")
        if getattr(node, "anchor", None):
            raise StackFileError(f"{self.path}: {name} uses a YAML anchor or alias: write its value out in full")
        if isinstance(old, dict) and set(old) == {"secure"}:
            raise StackFileError(
                f"{self.path}: {name} is a secret and mlrelease never writes secrets: set it with"
                f" `pulumi config set --secret --path '{name}' VALUE`"
            )
        if isinstance(new, Mapping) and new and isinstance(old, dict) and self._mergeable(node):
            entries = {k.value: (k, v) for k, v in node.value}
            edits.extend(self._removal(*entries[child]) for child in entries if child not in new)
            for child, item in new.items():
                if child in entries:
                    self._merge(*entries[child], old[child], item, edits, f"{where}.{child}")
            added = {child: item for child, item in new.items() if child not in entries}
            if added:
                edits.append(self._insertion(node, added))
            return
        edits.append(self._inline(node, new) or self._replace_entry(key, node, new))

    def _mergeable(self, node: Node) -> bool:
        """A block mapping whose every key starts its own line: entries can be edited, added and removed by line."""
        return (
            isinstance(node, MappingNode)
            and not node.flow_style
            and bool(node.value)
            and all(self._starts_line(k.start_mark.index) for k, _v in node.value)
        )

    def _inline(self, node: Node, new: Any) -> _Edit | None:
        """``new`` in place of a one-line value (a scalar, or a flow collection such as ``[5, 25]``), or None."""
        start, end = node.start_mark.index, node.end_mark.index
        if start == end or node.start_mark.line != node.end_mark.line:
            return None
        if isinstance(node, ScalarNode):
            if node.style in ("|", ">") or isinstance(new, Mapping | list | tuple):
                return None
            # Quotes the file chose are kept; quotes a value needed (a digest of digits) are not passed on.
            chosen = node.style in ("'", '"') and not self._scalar(node.value, None).startswith(("'", '"'))
            text = self._scalar(new, node.style if chosen else None)
        elif getattr(node, "flow_style", False) and node.value:
            structured = isinstance(new, Mapping | list | tuple)
            text = json.dumps(new, ensure_ascii=False) if structured else self._scalar(new, None)
        else:
            return None
        if "\n" in text:
            return None
        comment = _COMMENT_AFTER.match(self.text, end, self._line_end(end))
        if comment:  # keep an end-of-line comment in its column when the new value leaves room
            padding = self._column(end) + len(comment.group(1)) - (self._column(start) + len(text))
            text, end = text + " " * max(1, padding), end + len(comment.group(1))
        return _Edit(start, end, text)

    def _replace_entry(self, key: Node, node: Node, new: Any) -> _Edit:
        """The whole entry ``key: value`` rendered again (a type change, a multi-line value)."""
        start, end = key.start_mark.index, self._end(key, node)
        lines = self._render({"k": new})
        lines[0] = self.text[start : key.end_mark.index] + lines[0][1:]
        comment = _COMMENT_AFTER.match(self.text, end, self._line_end(end))
        if comment and self._line_start(end) != self._line_start(start):
            end = self._line_end(end)  # the comment of a replaced value's last line goes with that line
        elif comment and len(lines) > 1:
            end = self._line_end(end)  # the key line's comment stays on the key line
            lines[0] += " " + self.text[comment.end() - 1 : end]
        indent = " " * self._column(start)
        return _Edit(start, end, (self._newline + indent).join(lines))

    def _insertion(self, node: MappingNode, added: Mapping[str, Any]) -> _Edit:
        """New entries after the last entry of a block mapping, in the indentation of its keys."""
        last_key, last_value = node.value[-1]
        at = self._line_end(self._end(last_key, last_value))
        indent = " " * self._column(node.value[0][0].start_mark.index)
        return _Edit(at, at, "".join(self._newline + indent + line for line in self._render(added)))

    def _removal(self, key: Node, node: Node) -> _Edit:
        """The lines of one entry, from its key's line to the end of its value's last line (and one of two blank
        lines that were around it)."""
        line, end = self._line_start(key.start_mark.index), self._line_end(self._end(key, node))
        start = line
        if end < len(self.text):
            end += 2 if self.text.startswith("\r\n", end) else 1
        elif start > 0:  # the last line of the file: take the line break before it instead
            start -= 2 if self.text[:start].endswith("\r\n") else 1
        blank_before = line > 0 and not self.text[self._line_start(line - 1) : line].strip()
        if blank_before and not self.text[end : self._line_end(end)].strip():
            start = min(start, self._line_start(line - 1))
        return _Edit(start, end, "")

    # -- text positions ----------------------------------------------------------------------------

    def _end(self, key: Node | None, node: Node) -> int:
        """Where the value ``node`` ends in the text (a block collection ends with its last item)."""
        if isinstance(node, ScalarNode):
            if node.start_mark.index == node.end_mark.index and key is not None:  # `key:` with nothing
                colon = self.text.find(":", key.end_mark.index)  # (the empty value's own mark is on the next line)
                return colon + 1 if colon >= 0 else key.end_mark.index
            end = node.end_mark.index
            while node.style in ("|", ">") and end > node.start_mark.index and self.text[end - 1] in "\r\n":
                end -= 1  # a block scalar's mark is past its last line break
            return end
        if getattr(node, "flow_style", False) or not node.value:
            return node.end_mark.index
        if isinstance(node, MappingNode):
            return self._end(*node.value[-1])
        return self._end(None, node.value[-1])

    def _starts_line(self, index: int) -> bool:
        return not self.text[self._line_start(index) : index].strip()

    def _line_start(self, index: int) -> int:
        return self.text.rfind("\n", 0, index) + 1

    def _line_end(self, index: int) -> int:
        end = self.text.find("\n", index)
        end = len(self.text) if end < 0 else end
        return end - 1 if end > index and self.text[end - 1] == "\r" else end

    def _column(self, index: int) -> int:
        return index - self._line_start(index)

    # -- YAML --------------------------------------------------------------------------------------

    def _parse(self) -> tuple[MappingNode | None, Any]:
        try:
            root = YAML(typ="rt").compose(self.text)
            data = YAML(typ="safe", pure=True).load(self.text)
        except YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise StackFileError(f"{self.path} is not valid YAML ({problem}{where}): fix the file") from None
        if root is not None and not isinstance(root, MappingNode):
            raise StackFileError(f"{self.path} is not a mapping: a stack file has `config:` and its keys at the top")
        if data and data.get("config") is not None and not isinstance(data["config"], dict):
            raise StackFileError(f"{self.path}: `config:` is not a mapping: make it `config:` with keys below it")
        return root, data

    def _render(self, mapping: Mapping[str, Any]) -> list[str]:
        out = StringIO()
        self._dumper.dump(_native(mapping), out)
        return out.getvalue().splitlines()

    def _scalar(self, value: Any, style: str | None) -> str:
        """One scalar in the quoting it replaces (plain, 'single' or "double"), or quoted where plain would not
        read back as the same value."""
        if isinstance(value, str) and style in ("'", '"'):
            value = SingleQuotedScalarString(value) if style == "'" else DoubleQuotedScalarString(value)
        return self._newline.join(self._render({"k": value}))[len("k: ") :]


def _native(value: Any) -> Any:
    """``value`` as ruamel nodes: mappings in block style, lists of scalars in flow style (``[5, 25, 50]``), strings
    quoted where a YAML 1.1 or 1.2 reader would take them for something else."""
    if isinstance(value, Mapping):
        return CommentedMap((_native(str(k)), _native(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        seq = CommentedSeq(_native(item) for item in value)
        if all(_FLOW_SAFE.fullmatch(item) if isinstance(item, str) else _is_scalar(item) for item in value):
            seq.fa.set_flow_style()
        return seq
    quoted = isinstance(value, SingleQuotedScalarString | DoubleQuotedScalarString)
    if isinstance(value, str) and not quoted and _YAML11.resolve(ScalarNode, value, (True, False)) != _STR_TAG:
        return SingleQuotedScalarString(value)
    return value


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, Mapping | list | tuple)


def _dumper(mapping_indent: int, sequence_offset: int) -> YAML:
    dumper = YAML(typ="rt")
    dumper.width = 4096  # never fold a long value onto a second line
    dumper.indent(mapping=mapping_indent, sequence=sequence_offset + 2, offset=sequence_offset)
    dumper.representer.add_representer(
        type(None), lambda rep, _none: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return dumper


def _guess_indent(root: Node | None, column: Callable[[int], int]) -> tuple[int, int]:
    """The file's mapping indent and block-sequence dash offset, from its first nested block mapping and sequence
    (2 and 2 when it has none)."""
    mapping_indent = sequence_offset = None
    stack = [root] if root is not None else []
    while stack and (mapping_indent is None or sequence_offset is None):
        node = stack.pop(0)
        if not isinstance(node, MappingNode) or node.flow_style:
            continue
        for key, value in node.value:
            key_column = column(key.start_mark.index)
            if isinstance(value, MappingNode) and not value.flow_style and value.value and mapping_indent is None:
                mapping_indent = column(value.value[0][0].start_mark.index) - key_column
            if isinstance(value, SequenceNode) and not value.flow_style and value.value and sequence_offset is None:
                sequence_offset = column(value.value[0].start_mark.index) - 2 - key_column
            stack.append(value)
    return (mapping_indent if mapping_indent and mapping_indent > 0 else 2), (
        sequence_offset if sequence_offset is not None and sequence_offset >= 0 else 2
    )
