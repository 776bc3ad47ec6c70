/* ClientHello field extraction: the compiled twin of tls.py's _client_hello_python.
 *
 * A ClientHello costs ~20 us in Python, about a tenth of a decoding process's time on a replay. This
 * file walks the same bytes with the same checks, in the same order, and raises the same
 * Malformed(reason, detail) on the first bad length; it returns only the raw pieces (integers, byte
 * strings, the SNI text) so that JA3/JA4 and the event dict are still built in one place, tls.py.
 * tests/decode/test_tls_compiled.py holds the two equal on every hello of the peer and demo captures
 * and on fuzzed hellos. tls.py stays the reference, the documentation of each rule, and the fallback.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *Malformed; /* appliance.decode.anomaly.Malformed, looked up at import */

#define CH_TRUNCATED "TLS_client_hello_truncated"
#define CH_LIES "TLS_client_hello_len_lies"

/* Raise Malformed(reason, detail) exactly as tls.py does; returns -1 for the caller to propagate. */
static int malformed(const char *reason, const char *detail) {
    PyObject *exc = PyObject_CallFunction(Malformed, "ss", reason, detail);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return -1;
}

static inline unsigned u16(const uint8_t *b, Py_ssize_t pos) { return ((unsigned)b[pos] << 8) | b[pos + 1]; }

/* RFC 8701 GREASE: 0x0a0a, 0x1a1a, ... 0xfafa (both bytes equal, low nibbles 0xa). */
static inline int is_grease(unsigned v) { return (v & 0x0F0F) == 0x0A0A && (v >> 8) == (v & 0xFF); }

typedef struct { Py_ssize_t start, end; } span_t;

/* What the walk over a valid hello found; each span is of the last occurrence, as in tls.py where a
 * repeated extension overwrites the earlier value. */
typedef struct {
    unsigned legacy_version;
    span_t ciphers;     /* uint16 values, GREASE still in */
    span_t exts;        /* the extension block (headers re-walked to list the types) */
    Py_ssize_t n_exts;  /* non-GREASE extensions */
    int has_sni;
    span_t sni;         /* host_name bytes, empty when none */
    span_t alpn;        /* ProtocolNameList without its length, validated */
    span_t groups, sig_algs, versions; /* uint16 values, GREASE still in */
    span_t point_formats;
} hello_t;

/* _u16_vector: a `uint16 list<2..2^16-2>` extension body. */
static int u16_vector(const uint8_t *b, Py_ssize_t start, Py_ssize_t end, span_t *out) {
    if (end - start < 2 || 2 + (Py_ssize_t)u16(b, start) != end - start || ((end - start) & 1))
        return malformed(CH_LIES, "u16 vector");
    out->start = start + 2;
    out->end = end;
    return 0;
}

/* _parse_sni: RFC 6066 §3 server_name list; the first host_name (type 0) entry is the SNI. */
static int parse_sni(const uint8_t *b, Py_ssize_t start, Py_ssize_t end, span_t *out) {
    out->start = out->end = start;
    if (start == end) return 0;
    if (end - start < 2 || 2 + (Py_ssize_t)u16(b, start) != end - start) return malformed(CH_LIES, "server_name list");
    Py_ssize_t pos = start + 2;
    while (pos + 3 <= end) {
        unsigned ntype = b[pos];
        Py_ssize_t nlen = u16(b, pos + 1);
        pos += 3;
        if (pos + nlen > end) return malformed(CH_LIES, "server_name");
        if (ntype == 0) {
            out->start = pos;
            out->end = pos + nlen;
            return 0;
        }
        pos += nlen;
    }
    if (pos != end) return malformed(CH_LIES, "server_name");
    return 0;
}

/* _parse_alpn: RFC 7301 §3.1 ProtocolNameList, uint16 length then uint8-prefixed names. */
static int parse_alpn(const uint8_t *b, Py_ssize_t start, Py_ssize_t end, span_t *out) {
    if (end - start < 2 || 2 + (Py_ssize_t)u16(b, start) != end - start) return malformed(CH_LIES, "alpn list");
    Py_ssize_t pos = start + 2;
    while (pos < end) {
        Py_ssize_t plen = b[pos];
        pos += 1;
        if (pos + plen > end) return malformed(CH_LIES, "alpn");
        pos += plen;
    }
    out->start = start + 2;
    out->end = end;
    return 0;
}

/* The checks of _client_hello_python, in its order. */
static int walk_hello(const uint8_t *b, Py_ssize_t n, hello_t *h) {
    memset(h, 0, sizeof(*h));
    if (n < 38) return malformed(CH_TRUNCATED, "");
    h->legacy_version = u16(b, 0);
    Py_ssize_t pos = 34 + 1 + b[34];
    if (b[34] > 32 || pos + 2 > n) return malformed(CH_LIES, "session_id");
    Py_ssize_t clen = u16(b, pos);
    pos += 2;
    if ((clen & 1) || pos + clen + 1 > n) return malformed(CH_LIES, "cipher_suites");
    h->ciphers.start = pos;
    h->ciphers.end = pos + clen;
    pos += clen;
    pos += 1 + b[pos];
    if (pos > n) return malformed(CH_LIES, "compression_methods");
    if (pos >= n) return 0;
    if (pos + 2 > n) return malformed(CH_LIES, "extensions");
    Py_ssize_t end = pos + 2 + u16(b, pos);
    pos += 2;
    if (end != n) return malformed(CH_LIES, "extensions");
    h->exts.start = pos;
    h->exts.end = end;
    while (pos < end) {
        if (pos + 4 > end) return malformed(CH_LIES, "extension header");
        unsigned etype = u16(b, pos);
        Py_ssize_t dlen = u16(b, pos + 2), d0 = pos + 4;
        pos = d0 + dlen;
        if (pos > end) return malformed(CH_LIES, "extension");
        if (is_grease(etype)) continue;
        h->n_exts++;
        switch (etype) {
        case 0x0000: /* server_name */
            h->has_sni = 1;
            if (parse_sni(b, d0, pos, &h->sni) < 0) return -1;
            break;
        case 0x0010: /* ALPN */
            if (parse_alpn(b, d0, pos, &h->alpn) < 0) return -1;
            break;
        case 0x000A: /* supported_groups */
            if (u16_vector(b, d0, pos, &h->groups) < 0) return -1;
            break;
        case 0x000B: /* ec_point_formats */
            if (dlen < 1 || 1 + b[d0] != dlen) return malformed(CH_LIES, "ec_point_formats");
            h->point_formats.start = d0 + 1;
            h->point_formats.end = pos;
            break;
        case 0x000D: /* signature_algorithms */
            if (u16_vector(b, d0, pos, &h->sig_algs) < 0) return -1;
            break;
        case 0x002B: /* supported_versions */
            if (dlen < 1 || 1 + b[d0] != dlen || (b[d0] & 1)) return malformed(CH_LIES, "supported_versions");
            h->versions.start = d0 + 1;
            h->versions.end = pos;
            break;
        default:
            break;
        }
    }
    return 0;
}

/* Store v as item *i of tuple t unless it is GREASE; -1 (t released) when Python is out of memory. */
static int put_u16(PyObject *t, Py_ssize_t *i, unsigned v) {
    if (is_grease(v)) return 0;
    PyObject *o = PyLong_FromLong((long)v);
    if (o == NULL) {
        Py_DECREF(t);
        return -1;
    }
    PyTuple_SET_ITEM(t, (*i)++, o);
    return 0;
}

/* The non-GREASE uint16 values of a span, as a tuple (the form the fingerprint caches key on). */
static PyObject *u16_tuple(const uint8_t *b, span_t s) {
    Py_ssize_t count = 0;
    for (Py_ssize_t p = s.start; p + 1 < s.end; p += 2) count += !is_grease(u16(b, p));
    PyObject *t = PyTuple_New(count);
    if (t == NULL) return NULL;
    Py_ssize_t i = 0;
    for (Py_ssize_t p = s.start; p + 1 < s.end; p += 2)
        if (put_u16(t, &i, u16(b, p)) < 0) return NULL;
    return t;
}

/* The non-GREASE extension types in wire order (the walk counted them in n_exts). */
static PyObject *ext_tuple(const uint8_t *b, const hello_t *h) {
    PyObject *t = PyTuple_New(h->n_exts);
    if (t == NULL) return NULL;
    Py_ssize_t i = 0;
    for (Py_ssize_t p = h->exts.start; p < h->exts.end; p += 4 + u16(b, p + 2))
        if (put_u16(t, &i, u16(b, p)) < 0) return NULL;
    return t;
}

static PyObject *alpn_list(const uint8_t *b, span_t s) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (Py_ssize_t p = s.start; p < s.end; p += 1 + b[p]) {
        PyObject *v = PyBytes_FromStringAndSize((const char *)b + p + 1, b[p]);
        if (v == NULL || PyList_Append(out, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(v);
    }
    return out;
}

/* client_hello(body) -> (legacy_version, ciphers, exts, has_sni, sni, alpn_raw, groups,
 * point_formats, sig_algs, versions): _client_hello_python's result, or its Malformed. */
static PyObject *client_hello(PyObject *self, PyObject *arg) {
    Py_buffer view;
    hello_t h;
    PyObject *result = NULL;
    (void)self;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *b = view.buf;
    if (walk_hello(b, view.len, &h) == 0) {
        result = Py_BuildValue(
            "(lNNONNNNNN)", (long)h.legacy_version, u16_tuple(b, h.ciphers), ext_tuple(b, &h),
            h.has_sni ? Py_True : Py_False,
            /* _parse_sni's .decode("utf-8", "replace") */
            PyUnicode_DecodeUTF8((const char *)b + h.sni.start, h.sni.end - h.sni.start, "replace"),
            alpn_list(b, h.alpn), u16_tuple(b, h.groups),
            PyBytes_FromStringAndSize((const char *)b + h.point_formats.start, h.point_formats.end - h.point_formats.start),
            u16_tuple(b, h.sig_algs), u16_tuple(b, h.versions));
    }
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"client_hello", client_hello, METH_O, "Raw ClientHello fields, as tls._client_hello_python returns them."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tls", "Compiled twin of tls.py's hello parsing.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__tls(void) {
    PyObject *anomaly = PyImport_ImportModule("appliance.decode.anomaly");
    if (anomaly == NULL) return NULL;
    Malformed = PyObject_GetAttrString(anomaly, "Malformed");
    Py_DECREF(anomaly);
    if (Malformed == NULL) return NULL;
    return PyModule_Create(&module);
}
