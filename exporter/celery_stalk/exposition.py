"""The /metrics body, rendered fast for the families that grow with the label space.

prometheus_client renders every sample through a Sample object and formats its
labels one by one, several microseconds a line. 500 task names on 10 queues
make over 200,000 lines of task counters and histograms, and a broker a thousand queues,
so those families (SeriesCounter, SeriesHistogram, SeriesGauge) render themselves: a template of the family's
lines, labels escaped once, is kept between scrapes by the Renderer and filled
in with one %-format per scrape. The lines are byte for byte prometheus_client's
(tests/unit/test_exposition.py checks both formats); every other family still
goes through prometheus_client's encoders, and both kinds remain ordinary
prometheus_client families for any registry or encoder that asks for samples.

The response is compressed at gzip level 1 (prometheus_client uses 9): on a
20 MB exposition that is about 40 ms instead of 800, for a body 20% larger.
What did not change since the last scrape costs neither: a series family whose
values are the same returns the same text, and each family's compressed piece
is kept (Renderer.render_gzip).
"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from itertools import accumulate
from operator import is_
from typing import NamedTuple
from urllib.parse import parse_qs

from prometheus_client import make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.utils import floatToGoString

GZIP_LEVEL = 1
OPENMETRICS = "application/openmetrics-text"
EOF = b"# EOF\n"


class _LazySamples:
    """Builds prometheus_client samples only when an encoder asks for them."""

    @property
    def samples(self):
        if self._built is None:
            self._built = []
            self._add_all()
        return self._built

    @samples.setter
    def samples(self, value):  # Metric.__init__ assigns []
        self._built = value or None


class _Series(_LazySamples):
    """Renders its own sample lines with one %-format of a template for the whole family.

    The template (the family's lines with a slot per value, labels already
    escaped) is kept in the renderer's cache from one scrape to the next and rebuilt only
    when a series appears or disappears, or a series' values grow past what the
    fast slots print right (from 1,000,000 on, prometheus_client prints Go's
    exponent form). Series come in prometheus_client's order: sorted by labels.
    """

    def __init__(self, series: dict):
        self.series = series

    def _add_all(self) -> None:
        for labels, value in sorted(self.series.items()):
            self._add(labels, value)

    def render_text(self, header: bytes, cache: dict) -> bytes:
        """The family's text, header and lines. When no value changed since the last
        scrape, the very bytes object of that scrape: what is cached downstream
        (its compressed form) is then known valid by identity."""
        if not self.series:
            return header
        kept = cache.get(self.name)
        if kept is None or kept.header != header or self.series.keys() != kept.keys:
            keys, order, big, template = set(self.series), sorted(self.series), frozenset(), None
        else:
            keys, order, big, template = kept.keys, kept.order, kept.big, kept.template
        sources = list(map(self.series.__getitem__, order))
        if template is not None and all(map(is_, sources, kept.sources)):
            # The very objects of the last scrape: the model replaces a histogram
            # rather than change one it handed out, so nothing changed.
            return kept.text
        values, now_big = self._values(order, big)
        if now_big != big:
            big, template = now_big, None
            values, _ = self._values(order, big)
        if template is not None and values == kept.values:
            return kept.text
        if template is None:
            template = header.replace(b"%", b"%%") + b"".join(
                [self._template(labels, labels in big) for labels in order])
        text = template % values
        cache[self.name] = _Kept(header, keys, order, big, template, sources, values, text)
        return text


class _Kept(NamedTuple):
    """What a series family keeps between scrapes in the renderer's cache."""

    header: bytes
    keys: set
    order: list
    big: frozenset  # series whose values print in the exact (slow) form
    template: bytes  # header and lines, a %-slot per value
    sources: list  # the series' values (ints, histograms) in order, as the model handed them
    values: tuple
    text: bytes  # template % values


class SeriesCounter(_Series, CounterMetricFamily):
    """A counter family over a dict {label values: count (an int)}."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], values: dict):
        CounterMetricFamily.__init__(self, name, documentation, labels=labels)
        _Series.__init__(self, values)

    def _add(self, labels, value) -> None:
        CounterMetricFamily.add_metric(self, list(labels), value)

    def _template(self, labels, big: bool) -> bytes:
        label_string = _pct(_label_string(tuple(self._labelnames), labels))
        return f"{self.name}_total{{{label_string}}} {_EXACT if big else _COUNT}\n".encode()

    def _values(self, order, big) -> tuple[tuple, frozenset]:
        counts = tuple(map(self.series.__getitem__, order))
        if max(counts) < LARGE and min(counts) >= 0:
            return counts, frozenset()
        now_big = frozenset(k for k, v in zip(order, counts) if not 0 <= v < LARGE)
        return tuple(_go(v).encode() if k in big else v for k, v in zip(order, counts)), now_big


class SeriesGauge(_Series, GaugeMetricFamily):
    """A gauge family over a dict {label values: number}: one line per queue of a broker
    with a thousand queues, where only some values change from one scrape to the next."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], values: dict):
        GaugeMetricFamily.__init__(self, name, documentation, labels=labels)
        _Series.__init__(self, values)

    def _add(self, labels, value) -> None:
        GaugeMetricFamily.add_metric(self, list(labels), value)

    def _template(self, labels, big: bool) -> bytes:
        label_string = _pct(_label_string(tuple(self._labelnames), labels))
        return f"{self.name}{{{label_string}}} %s\n".encode()

    def _values(self, order, big) -> tuple[tuple, frozenset]:
        # Every value printed exactly (floats any size): no fast slot to outgrow.
        return tuple([_go(self.series[key]).encode() for key in order]), frozenset()


class SeriesHistogram(_Series, HistogramMetricFamily):
    """A histogram family over a dict {label values: model.Histogram} with shared bounds."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], hists: dict,
                 bounds: tuple[float, ...]):
        HistogramMetricFamily.__init__(self, name, documentation, labels=labels)
        _Series.__init__(self, hists)
        self.les = tuple(floatToGoString(b) for b in bounds) + ("+Inf",)

    def _add(self, labels, hist) -> None:
        buckets = list(zip(self.les, accumulate(hist.counts)))
        HistogramMetricFamily.add_metric(self, list(labels), buckets, hist.total)

    def _template(self, labels, big: bool) -> bytes:
        pairs = sorted(zip(self._labelnames, labels))
        before = _pct("".join(f'{k}="{_escape(v)}",' for k, v in pairs if k < "le"))
        after = _pct("".join(f',{k}="{_escape(v)}"' for k, v in pairs if k > "le"))
        plain = _pct(_label_string(tuple(self._labelnames), labels))
        count = _EXACT if big else _COUNT
        lines = [f'{self.name}_bucket{{{before}le="{le}"{after}}} {count}\n' for le in self.les]
        lines.append(f"{self.name}_count{{{plain}}} {count}\n")
        lines.append(f"{self.name}_sum{{{plain}}} {_EXACT if big else _SUM}\n")
        return "".join(lines).encode()

    def _values(self, order, big) -> tuple[tuple, frozenset]:
        hists, values, now_big = self.series, [], []
        extend, append = values.extend, values.append
        for labels in order:
            hist = hists[labels]
            cumulative = list(accumulate(hist.counts))
            total = hist.total
            if not (cumulative[-1] < LARGE and 0.0 <= total < LARGE):
                now_big.append(labels)
            if labels in big:
                extend([_go(c).encode() for c in cumulative])
                append(_go(cumulative[-1]).encode())
                append(_go(total).encode())
            else:
                extend(cumulative)
                append(cumulative[-1])
                append(total)
        return tuple(values), frozenset(now_big)


# Value slots of the templates (whose label strings have their % doubled). Below
# LARGE, "%d.0" of a count and "%r" of a float's sum print what floatToGoString
# prints; anything else is passed through it first, into "%s".
LARGE = 1_000_000
_COUNT, _SUM, _EXACT = "%d.0", "%r", "%s"


def _pct(text: str) -> str:
    return text.replace("%", "%%")


def _go(value) -> str:
    """floatToGoString, without its cost for the usual small integer."""
    if type(value) is int and 0 <= value < 1_000_000:
        return f"{value}.0"
    return floatToGoString(value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


@lru_cache(maxsize=1 << 16)
def _label_string(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(zip(names, values)))


class _One:
    """A registry of one family, for prometheus_client's encoders."""

    def __init__(self, family: Metric):
        self.family = family

    def collect(self):
        return [self.family]


def _encode(encoder, openmetrics: bool, family: Metric) -> bytes:
    body = encoder(_One(family))
    return body.removesuffix(EOF) if openmetrics else body


_headers: dict[tuple, bytes] = {}


def _header(encoder, content_type: str, family: Metric) -> bytes:
    """HELP and TYPE lines of a family, as the encoder writes them for one without samples."""
    key = (content_type, family.name, family.documentation, family.type, family.unit)
    header = _headers.get(key)
    if header is None:
        empty = Metric(family.name, family.documentation, family.type, family.unit)
        header = _headers[key] = _encode(encoder, content_type.startswith(OPENMETRICS), empty)
    return header


class Renderer:
    """Renders expositions; keeps between scrapes the series templates, the last text
    of each series family, and the compressed form of every family's text."""

    def __init__(self) -> None:
        self.templates: dict = {}
        # family name -> (text, its deflated piece, its CRC-32)
        self._compressed: dict[str, tuple[bytes, bytes, int]] = {}

    def texts(self, registry, encoder, content_type: str):
        """(family name, its text) for each family of ``registry``, in the format of
        ``encoder`` (from choose_encoder); the OpenMetrics EOF last, named ""."""
        openmetrics = content_type.startswith(OPENMETRICS)
        for family in registry.collect():
            render_text = getattr(family, "render_text", None)
            if render_text is None:
                yield family.name, _encode(encoder, openmetrics, family)
            else:  # the header from prometheus_client, the lines from the family
                yield family.name, render_text(_header(encoder, content_type, family),
                                               self.templates)
        if openmetrics:
            yield "", EOF

    def render(self, registry, encoder, content_type: str):
        """The exposition, one bytes object per family."""
        for _, text in self.texts(registry, encoder, content_type):
            yield text

    def render_gzip(self, registry, encoder, content_type: str) -> bytes:
        """The exposition as one gzip member.

        Each family is deflated on its own, ending on a byte boundary with no
        reference to what came before (a sync flush of a fresh compressor), so
        the pieces concatenate into one valid deflate stream and a family whose
        text did not change since the last scrape is not compressed again: an
        idle exporter's scrape costs no compression at all. Large families are
        deflated on two threads (zlib lets go of the GIL) while the next family
        is rendered.
        """
        kept, fresh = self._compressed, {}
        pieces: list = []  # (name, text, deflated, crc) or (name, text, future of (deflated, crc))
        for name, text in self.texts(registry, encoder, content_type):
            cached = kept.get(name)
            if cached is not None and cached[0] == text:  # the same object when unchanged
                pieces.append((name, *cached))
            elif len(text) >= THREADED_DEFLATE:
                pieces.append((name, text, _deflaters.submit(_deflate, text)))
            else:
                pieces.append((name, text, *_deflate(text)))
        crc, size, out = 0, 0, [GZIP_HEADER]
        for piece in pieces:
            name, text = piece[0], piece[1]
            if len(piece) == 3:  # deflated on a side thread
                piece = (name, text, *piece[2].result())
            fresh[name] = piece[1:]
            if len(text) < THREADED_DEFLATE:
                crc = zlib.crc32(text, crc)
            else:  # its CRC was taken beside its deflate, or kept: only combined here
                crc = crc32_combine(crc, piece[3], len(text))
            size += len(text)
            out.append(piece[2])
        self._compressed = fresh  # replaced whole: thread safe; families gone are dropped
        out += [DEFLATE_END, struct.pack("<II", crc, size & 0xFFFFFFFF)]
        return b"".join(out)


# A gzip member around one raw deflate stream (RFC 1952): magic, deflate, no flags,
# no mtime, no extra flags, OS unknown; the stream ends with an empty final block,
# then the CRC-32 and length of the text.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
DEFLATE_END = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
# Families at least this large are deflated on the side threads; smaller ones cost
# less than the hand-over.
THREADED_DEFLATE = 64 << 10
_deflaters = ThreadPoolExecutor(2, thread_name_prefix="celery-stalk-deflate")


def _deflate(text: bytes) -> tuple[bytes, int]:
    """``text`` as deflate blocks that stand alone and end on a byte boundary; its CRC-32."""
    if not text:
        return b"", 0
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH), zlib.crc32(text)


# CRC-32 of two texts from the CRC of each (zlib's crc32_combine, which Python's
# zlib does not offer): crc(a + b) = crc(a) * x^(8 len(b)) + crc(b) over GF(2),
# modulo the CRC polynomial, in zlib's reflected bit order.
_CRC_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (a non-zero)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^n) modulo the polynomial, n = 0..31
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    power, k, n = 1 << 31, 3, length2  # x^(8 length2), bit by bit of length2
    while n:
        if n & 1:
            power = _multmodp(_X2N[k & 31], power)
        n >>= 1
        k += 1
    return _multmodp(power, crc1) ^ crc2


def render(registry, encoder, content_type: str):
    """One exposition of ``registry``, with no templates kept (see Renderer)."""
    return Renderer().render(registry, encoder, content_type)


def make_metrics_app(registry):
    """A WSGI app for /metrics: negotiated format and compression, fast rendering."""
    fallback = make_wsgi_app(registry)  # OPTIONS, other methods and name[] filters
    renderer = Renderer()

    def app(environ, start_response):
        if environ.get("REQUEST_METHOD") != "GET" or "name[]" in parse_qs(
            environ.get("QUERY_STRING", "")
        ):
            return fallback(environ, start_response)
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT"))
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING")):
            body = renderer.render_gzip(registry, encoder, content_type)
            headers.append(("Content-Encoding", "gzip"))
        else:
            body = b"".join(renderer.render(registry, encoder, content_type))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    return app
