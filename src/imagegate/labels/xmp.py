"""The XMP packet that carries the implicit label, written and read.

GB 45438-2025 puts the AIGC object in a file's XMP as the property `TC260:AIGC`. A file may
already hold XMP that is not ours (an upstream's title, IPTC's digital source type, its own
AIGC label), and removing someone else's metadata is not ours to do: the packet is edited, not
rewritten. minidom keeps every prefix, namespace declaration and property of the packet as it
was written, where ElementTree would rename prefixes. Whatever comes from outside is escaped
by the DOM's serializer, never pasted into markup.

The packets come from files we did not make, so a document type (the door to entity expansion)
is refused before the parser sees it; XMP has no use for one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from xml.dom import Node, minidom
from xml.parsers.expat import ExpatError

from .aigc import AigcLabel
from .errors import LabelError

TC260_NS = "http://www.tc260.org.cn/ns/AIGC/1.0/"
IMAGEGATE_NS = "https://imagegate.dev/ns/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XMPMETA_NS = "adobe:ns:meta/"

_TC260_NAMESPACES = frozenset({TC260_NS, TC260_NS.rstrip("/")})
"""Read (and replaced) under either spelling, so a writer that dropped the slash still counts
towards the one label a file may hold."""

_HEADER = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
_TRAILER = '<?xpacket end="w"?>'
_SKELETON = f'<x:xmpmeta xmlns:x="{XMPMETA_NS}"><rdf:RDF xmlns:rdf="{RDF_NS}"/></x:xmpmeta>'

_Wanted = Callable[[str | None, str | None], bool]
"""A test on a property's namespace and local name."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters XML 1.0 cannot hold at all, escaped or not."""


def aigc_packet(label: AigcLabel, *, existing: str | None = None,
                extra: dict[str, str] | None = None) -> str:
    """A complete XMP packet with `label` as its one TC260:AIGC property.

    `existing` (the file's packet) keeps all it holds except AIGC properties, which ours
    replaces, and the imagegate properties named in `extra`, which its values replace.
    """
    value = label.to_json()
    _check_text(value, "the AIGC label")
    extra = extra or {}
    for name, text in extra.items():
        if not _NAME.match(name):
            raise LabelError(f"{name!r} is not an XMP property name")
        _check_text(text, f"imagegate:{name}")
    document = _parse(existing) if existing else None
    if document is None:
        # No packet, or one we cannot read (not XML, a document type, no rdf:RDF): it is
        # replaced, since what cannot be parsed cannot be kept property by property.
        document = minidom.parseString(_SKELETON)
    root, rdf = document.documentElement, _rdf(document)
    assert root is not None and rdf is not None  # _parse and the skeleton guarantee both
    for description in _descriptions(rdf):
        removed = _remove(description, lambda ns, name: (
            (ns in _TC260_NAMESPACES and name == "AIGC") or (ns == IMAGEGATE_NS and name in extra)))
        if removed and _is_empty(description):
            rdf.removeChild(description)
    rdf.appendChild(_our_description(document, rdf, value, extra))
    try:
        body = root.toxml()
    except RecursionError:  # nested beyond the serializer's reach: start afresh
        return aigc_packet(label, extra=extra)
    return f"{_HEADER}\n{body}\n{_TRAILER}"


def read_aigc(packet: str) -> list[AigcLabel]:
    """Every well-formed AIGC property in the packet (a file should hold exactly one).

    An AIGC value that is not the standard's JSON object is not a label and is skipped;
    LabelError when the packet itself is not XMP."""
    labels = []
    for text in _properties(packet, lambda ns, name: ns in _TC260_NAMESPACES and name == "AIGC"):
        try:
            labels.append(AigcLabel.from_json(text))
        except LabelError:
            continue
    return labels


def read_extra(packet: str) -> dict[str, str]:
    """The imagegate-namespace properties: what imagegate recorded besides the label."""
    found: dict[str, str] = {}
    for description in _descriptions(_rdf_of(packet)):
        for attr in _attributes(description):
            if attr.namespaceURI == IMAGEGATE_NS:
                found[attr.localName] = attr.value
        for child in _elements(description):
            if child.namespaceURI == IMAGEGATE_NS:
                found[child.localName] = _value(child)
    return found


# --------------------------------------------------------------------------------------------


def _check_text(text: str, what: str) -> None:
    bad = _NOT_XML.search(text)
    if bad:
        raise LabelError(f"{what} holds a character XML cannot carry: {bad.group()!r}")


def _parse(packet: str) -> minidom.Document | None:
    """The packet as a DOM with an rdf:RDF in it, or None when it is not XMP we can read."""
    text = packet.strip("\ufeff\x00 \t\r\n")
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        return None
    try:
        document = minidom.parseString(text)
    except (ExpatError, ValueError, RecursionError):
        return None
    return document if _rdf(document) is not None else None


def _rdf(document: minidom.Document) -> minidom.Element | None:
    """rdf:RDF: the root, or a child of x:xmpmeta (where XMP puts it)."""
    root = document.documentElement
    if root is None:
        return None
    for element in [root, *_elements(root)]:
        if element.namespaceURI == RDF_NS and element.localName == "RDF":
            return element
    return None


def _rdf_of(packet: str) -> minidom.Element:
    document = _parse(packet)
    rdf = _rdf(document) if document is not None else None
    if rdf is None:
        raise LabelError("the XMP packet is not XML with an rdf:RDF element")
    return rdf


def _elements(node: minidom.Node) -> list[minidom.Element]:
    return [child for child in node.childNodes if child.nodeType == Node.ELEMENT_NODE]


def _attributes(element: minidom.Element) -> list[minidom.Attr]:
    return list(element.attributes.values())


def _descriptions(rdf: minidom.Element) -> list[minidom.Element]:
    """The top-level rdf:Description elements: the ones whose children are the file's
    properties (a Description deeper down is a structure's value)."""
    return [element for element in _elements(rdf)
            if element.namespaceURI == RDF_NS and element.localName == "Description"]


def _value(element: minidom.Element) -> str:
    """A property's text: its own, or for a structured value (rdf:Alt's rdf:li) the first
    text found inside."""
    own = "".join(child.data for child in element.childNodes
                  if child.nodeType in (Node.TEXT_NODE, Node.CDATA_SECTION_NODE))
    if own.strip() or not _elements(element):
        return own
    for child in _elements(element):
        text = _value(child)
        if text.strip():
            return text
    return ""


def _properties(packet: str, wanted: _Wanted) -> list[str]:
    values = []
    for description in _descriptions(_rdf_of(packet)):
        values += [attr.value for attr in _attributes(description)
                   if wanted(attr.namespaceURI, attr.localName)]
        values += [_value(child) for child in _elements(description)
                   if wanted(child.namespaceURI, child.localName)]
    return values


def _remove(description: minidom.Element, wanted: _Wanted) -> bool:
    removed = False
    for attr in _attributes(description):
        if wanted(attr.namespaceURI, attr.localName):
            description.removeAttributeNode(attr)
            removed = True
    for child in _elements(description):
        if wanted(child.namespaceURI, child.localName):
            description.removeChild(child)
            removed = True
    return removed


def _is_empty(description: minidom.Element) -> bool:
    """Holds no property any more: only namespace declarations and rdf:about are left."""
    return not _elements(description) and all(
        attr.name.startswith("xmlns") or (attr.namespaceURI == RDF_NS and attr.localName == "about")
        for attr in _attributes(description))


def _our_description(document: minidom.Document, rdf: minidom.Element, value: str,
                     extra: dict[str, str]) -> minidom.Element:
    """A Description of our own that declares the namespaces it uses, so no prefix the packet
    already binds (to anything) can clash with ours."""
    prefix = rdf.prefix or "rdf"
    description = document.createElementNS(RDF_NS, f"{prefix}:Description")
    if prefix != rdf.prefix:
        description.setAttribute(f"xmlns:{prefix}", RDF_NS)
    description.setAttributeNS(RDF_NS, f"{prefix}:about", "")
    description.setAttribute("xmlns:TC260", TC260_NS)
    if extra:
        description.setAttribute("xmlns:imagegate", IMAGEGATE_NS)
    description.appendChild(_property(document, TC260_NS, "TC260:AIGC", value))
    for name, text in extra.items():
        description.appendChild(_property(document, IMAGEGATE_NS, f"imagegate:{name}", text))
    return description


def _property(document: minidom.Document, namespace: str, name: str,
              text: str) -> minidom.Element:
    element = document.createElementNS(namespace, name)
    element.appendChild(document.createTextNode(text))
    return element
