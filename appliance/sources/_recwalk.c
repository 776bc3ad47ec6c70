/* The capture record walk: the one per-packet loop numpy cannot vectorise.
 *
 * A pcap or pcapng file is a chain of variable-length records: where record k+1 starts depends on
 * record k's length field, so finding every record start is inherently sequential. In Python that
 * loop costs ~0.5 s per million packets (a third of a whole replay); here it costs milliseconds.
 * Everything else about a record (timestamps, lengths, link types) is gathered afterwards with
 * numpy from the starts this returns. recwalk.py has the same two functions in pure Python, used
 * when this module was not compiled; tests hold the two to identical results.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static inline uint32_t rd32(const unsigned char *p, int big) {
    return big ? ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3])
               : ((uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]);
}

/* pcap_records(buf, pos, big_endian, max_caplen, out, fields) -> (count, next_pos, absurd)
 * Writes the start of each complete record from `pos` into `out` (a writable int64 buffer) until
 * `out` is full or the next record is incomplete, and the record's four header fields (seconds,
 * fraction, captured and original length) into `fields` (int64, 4 per record): reading them here,
 * while the header is in cache, saves a second pass over the file's memory. absurd=1 when it
 * stopped at a record whose caplen exceeds max_caplen (next_pos is that record's start). */
static PyObject *pcap_records(PyObject *self, PyObject *args) {
    Py_buffer buf, out, fields;
    Py_ssize_t pos;
    int big;
    unsigned long max_caplen;
    if (!PyArg_ParseTuple(args, "y*nikw*w*", &buf, &pos, &big, &max_caplen, &out, &fields))
        return NULL;
    const unsigned char *p = (const unsigned char *)buf.buf;
    Py_ssize_t end = buf.len, cap = out.len / 8, n = 0;
    if (fields.len / 32 < cap)
        cap = fields.len / 32;
    int64_t *o = (int64_t *)out.buf, *f = (int64_t *)fields.buf;
    int absurd = 0;
    Py_BEGIN_ALLOW_THREADS
    while (n < cap && pos >= 0 && pos + 16 <= end) {
        const unsigned char *h = p + pos;
        uint32_t caplen = rd32(h + 8, big);
        if (caplen > max_caplen) {
            absurd = 1;
            break;
        }
        Py_ssize_t nxt = pos + 16 + (Py_ssize_t)caplen;
        if (nxt > end)
            break;
        __builtin_prefetch(h + 4096); /* records are dense: pull the memory ahead of the walk */
        o[n] = pos;
        f[4 * n] = rd32(h, big);
        f[4 * n + 1] = rd32(h + 4, big);
        f[4 * n + 2] = caplen;
        f[4 * n + 3] = rd32(h + 12, big);
        n++;
        pos = nxt;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    PyBuffer_Release(&out);
    PyBuffer_Release(&fields);
    return Py_BuildValue("nni", n, pos, absurd);
}

/* pcapng_packets(buf, pos, big_endian, max_block, out) -> (count, next_pos)
 * Writes the start of each consecutive, complete Enhanced Packet Block (type 6) from `pos` into
 * `out`, stopping at any other block type, an incomplete block, a block length that is not a
 * multiple of 4 or outside [32, max_block], or a full `out`. The caller handles the block at
 * next_pos (interface descriptions, section headers, errors) itself. */
static PyObject *pcapng_packets(PyObject *self, PyObject *args) {
    Py_buffer buf, out;
    Py_ssize_t pos;
    int big;
    unsigned long max_block;
    if (!PyArg_ParseTuple(args, "y*nikw*", &buf, &pos, &big, &max_block, &out))
        return NULL;
    const unsigned char *p = (const unsigned char *)buf.buf;
    Py_ssize_t end = buf.len, cap = out.len / 8, n = 0;
    int64_t *o = (int64_t *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    while (n < cap && pos >= 0 && pos + 12 <= end) {
        if (rd32(p + pos, big) != 6)
            break;
        uint32_t blen = rd32(p + pos + 4, big);
        if (blen < 32 || (blen & 3) || blen > max_block || pos + (Py_ssize_t)blen > end)
            break;
        o[n++] = pos;
        pos += blen;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    PyBuffer_Release(&out);
    return Py_BuildValue("nn", n, pos);
}

static PyMethodDef methods[] = {
    {"pcap_records", pcap_records, METH_VARARGS, "Starts of complete pcap records: (count, next_pos, absurd)."},
    {"pcapng_packets", pcapng_packets, METH_VARARGS, "Starts of consecutive pcapng EPBs: (count, next_pos)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_recwalk", "Capture record walk (see recwalk.py).", -1, methods};

PyMODINIT_FUNC PyInit__recwalk(void) { return PyModule_Create(&module); }
