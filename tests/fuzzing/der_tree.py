"""A lenient DER tree for structural mutation: parse, change a node, encode with lengths recomputed.

Parsing never fails: what does not parse as TLVs is kept as the primitive content of its node.
OCTET STRINGs and BIT STRINGs whose content is itself one DER element (extension values, public
keys) are opened too, so a mutation can reach inside them. Encoding recomputes every length, except
where a mutation set `raw_length` on purpose (non-minimal, indefinite or wrong lengths).
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Iterator

from tests.fuzzing.mutate import interesting_content, interesting_integer, interesting_text

OCTET_STRING = 0x04
BIT_STRING = 0x03
MAX_DEPTH = 40


@dataclasses.dataclass
class Node:
    """One TLV: its identifier octets, and either children (constructed or encapsulating) or content."""

    tag: bytes
    content: bytes = b""
    children: list[Node] | None = None
    prefix: bytes = b""  # octets before encapsulated children (a BIT STRING's unused-bits octet)
    raw_length: bytes | None = None  # when set, sent instead of the computed length octets

    @property
    def first(self) -> int:
        """The first identifier octet (0 for a headless node)."""
        return self.tag[0] if self.tag else 0

    def walk(self) -> Iterator[Node]:
        """This node and every node below it, depth first."""
        yield self
        for child in self.children or ():
            yield from child.walk()

    def body(self) -> bytes:
        """The content octets as encoded now."""
        if self.children is None:
            return self.content
        return self.prefix + b"".join(child.encode() for child in self.children)

    def encode(self) -> bytes:
        """The DER of this node (lengths recomputed unless overridden); a headless node is its body."""
        body = self.body()
        if not self.tag:
            return body
        return self.tag + (self.raw_length if self.raw_length is not None else der_length(len(body))) + body


def der_length(length: int) -> bytes:
    """The DER length octets of `length` (short form below 128, else long form)."""
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _read_header(data: bytes, offset: int) -> tuple[bytes, int, int]:
    """(identifier octets, content length, content offset); ValueError when the header is broken."""
    start = offset
    if offset >= len(data):
        raise ValueError("no header")
    first = data[offset]
    offset += 1
    if first & 0x1F == 0x1F:
        while offset < len(data) and data[offset] & 0x80:
            offset += 1
        offset += 1
    tag = data[start:offset]
    if offset >= len(data):
        raise ValueError("no length")
    length_octet = data[offset]
    offset += 1
    if length_octet < 0x80:
        length = length_octet
    else:
        count = length_octet & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise ValueError("unsupported length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise ValueError("truncated")
    return tag, length, offset


def _parse_all(data: bytes, depth: int) -> list[Node] | None:
    """Every TLV of `data` in a row, or None when `data` is not exactly a sequence of TLVs."""
    nodes: list[Node] = []
    offset = 0
    while offset < len(data):
        try:
            tag, length, start = _read_header(data, offset)
        except ValueError:
            return None
        nodes.append(_node(tag, data[start : start + length], depth))
        offset = start + length
    return nodes


def _node(tag: bytes, content: bytes, depth: int) -> Node:
    if depth < MAX_DEPTH:
        if tag[0] & 0x20:
            children = _parse_all(content, depth + 1)
            if children is not None:
                return Node(tag, children=children)
        elif tag[0] == OCTET_STRING and content[:1] in (b"\x30", b"\x31", b"\x04", b"\x03"):
            children = _parse_all(content, depth + 1)
            if children is not None and len(children) == 1:
                return Node(tag, children=children)
        elif tag[0] == BIT_STRING and content[:2] == b"\x00\x30":
            children = _parse_all(content[1:], depth + 1)
            if children is not None and len(children) == 1:
                return Node(tag, children=children, prefix=b"\x00")
    return Node(tag, content=content)


def parse(data: bytes) -> Node:
    """The tree of `data`'s first element; data that is not DER becomes one opaque node."""
    try:
        tag, length, start = _read_header(data, 0)
    except ValueError:
        return Node(b"", content=data)
    node = _node(tag, data[start : start + length], 0)
    rest = data[start + length :]
    if rest:  # trailing bytes are kept: wrap both in a headless node that encodes them back to back
        return Node(b"", content=node.encode() + rest)
    return node


# --- mutations -------------------------------------------------------------------------------------

STRING_TAGS = (0x0C, 0x13, 0x14, 0x16, 0x1A, 0x1C, 0x1E, 0x12, 0x15, 0x19, 0x1B)
INTERESTING_TAGS = (
    *STRING_TAGS,
    0x01,
    0x02,
    0x03,
    0x04,
    0x05,
    0x06,
    0x09,
    0x0A,
    0x17,
    0x18,
    0x30,
    0x31,
    0x80,
    0x81,
    0x82,
    0xA0,
    0xA1,
    0xA2,
    0xA3,
    0x1F,
    0x00,
    0xFF,
    0x24,
    0x2C,
)
LENGTH_FORMS = (b"\x80", b"\x81\x00", b"\x84\xff\xff\xff\xff", b"\x83\x01\x00\x00", b"\x85\x00\x00\x00\x00\x01")


def sort_sets(root: Node) -> None:
    """DER-sort every SET OF below `root` (what a careful client sends; unsorted sets are refused early)."""
    for node in root.walk():
        if node.first == 0x31 and node.children:
            node.children.sort(key=Node.encode)


def nodes_of(root: Node) -> list[Node]:
    """Every node of the tree, depth first."""
    return list(root.walk())


def _parent_of(root: Node, target: Node) -> Node | None:
    for node in root.walk():
        if node.children and any(child is target for child in node.children):
            return node
    return None


def set_tag(rng: random.Random, node: Node) -> None:
    """Give `node` an interesting tag (string types, SET, context tags) or any other one."""
    node.tag = bytes([rng.choice(INTERESTING_TAGS) if rng.random() < 0.8 else rng.randrange(256)])
    if node.tag[0] & 0x1F == 0x1F:
        node.tag += bytes([rng.randrange(0x80)])


def set_content(rng: random.Random, node: Node) -> None:
    """Replace a node's content with an interesting value for its kind (integers, strings, anything)."""
    if node.first == 0x02:
        node.content = interesting_integer(rng)
    elif node.first in STRING_TAGS:
        node.content = interesting_text(rng, node.first)
    else:
        node.content = interesting_content(rng)
    node.children = None
    node.prefix = b""


def set_length(rng: random.Random, node: Node) -> None:
    """A length that is non-minimal, indefinite, or simply wrong."""
    real = len(node.body())
    choice = rng.randrange(4)
    if choice == 0:
        node.raw_length = rng.choice(LENGTH_FORMS)
    elif choice == 1:  # long form for a short length: not DER
        node.raw_length = b"\x82" + real.to_bytes(2, "big") if real < 0x10000 else b"\x80"
    else:
        node.raw_length = der_length(max(0, real + rng.choice((-2, -1, 1, 2, 127, 65536))))


def _mutate_node(rng: random.Random, root: Node, node: Node) -> None:
    parent = _parent_of(root, node)
    action = rng.randrange(10)
    if action == 0:
        set_tag(rng, node)
    elif action in (1, 2):
        set_content(rng, node)
    elif action == 3:
        set_length(rng, node)
    elif action == 4 and parent is not None and parent.children is not None:
        parent.children.remove(node)
    elif action == 5 and parent is not None and parent.children is not None:
        parent.children.insert(parent.children.index(node), copy.deepcopy(node))
    elif action == 6 and parent is not None and parent.children is not None and len(parent.children) > 1:
        rng.shuffle(parent.children)
    elif action == 7:
        donor = copy.deepcopy(rng.choice(nodes_of(root)))
        node.tag, node.content, node.children, node.prefix = donor.tag, donor.content, donor.children, donor.prefix
    elif action == 8:
        inner = copy.deepcopy(node)
        node.tag, node.children, node.content, node.prefix = bytes([rng.choice((0x30, 0x31, 0xA0))]), [inner], b"", b""
    else:
        node.tag = bytes([node.first ^ 0x20]) + node.tag[1:]  # primitive <-> constructed


def mutate_tree(rng: random.Random, root: Node, count: int = 1, *, where: Callable[[Node], bool] | None = None) -> None:
    """Apply `count` structural mutations to nodes of `root` (those `where` accepts, if given)."""
    for _ in range(count):
        candidates = [n for n in nodes_of(root) if where is None or where(n)]
        if not candidates:
            return
        _mutate_node(rng, root, rng.choice(candidates))


def mutate_der(rng: random.Random, data: bytes, count: int = 1) -> bytes:
    """`data` with `count` structural mutations, every other length still consistent."""
    root = parse(data)
    mutate_tree(rng, root, count)
    return root.encode()
