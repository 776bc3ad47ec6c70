/* Link, IP and transport headers of a batch, one pass per packet: the compiled twin of
 * headers.py's numpy decoder.
 *
 * The numpy decoder makes ~100 whole-array passes per batch (one per field and layer); at a
 * million packets that is a third of a replay worker's time. This file follows it line by line,
 * reading the same bytes at the same (clipped) offsets, so every output column is identical;
 * tests/decode/test_headers_compiled.py holds the two equal on every peer capture and on random
 * packets. headers.py stays the reference, the documentation of each rule, and the fallback.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

enum { RS_OK, RS_TRUNC_LINK, RS_TRUNC_IP, RS_IP_HDR, RS_IP_VER, RS_IP_TOTAL, RS_TRUNC_TCP, RS_TCP_LEN,
       RS_TRUNC_UDP, RS_UDP_LEN, RS_ZERO_CAPLEN, RS_TRUNC_V6EXT };

typedef struct {
    const uint8_t *d;
    int64_t maxoff; /* as _Gather: offsets are clipped to [0, len - 17] */
} gather_t;

static inline int64_t clip(const gather_t *g, int64_t off) {
    if (off < 0) off = 0;
    return off > g->maxoff ? g->maxoff : off;
}
static inline uint32_t u8(const gather_t *g, int64_t off) { return g->d[clip(g, off)]; }
static inline uint32_t u16(const gather_t *g, int64_t off) {
    int64_t o = clip(g, off);
    return ((uint32_t)g->d[o] << 8) | g->d[o + 1];
}
static inline uint32_t u32(const gather_t *g, int64_t off) {
    int64_t o = clip(g, off);
    return ((uint32_t)g->d[o] << 24) | ((uint32_t)g->d[o + 1] << 16) | ((uint32_t)g->d[o + 2] << 8) | g->d[o + 3];
}
static inline uint64_t u64(const gather_t *g, int64_t off) {
    int64_t o = clip(g, off);
    uint64_t v = 0;
    for (int k = 0; k < 8; k++) v = (v << 8) | g->d[o + k];
    return v;
}

/* ICMP request/answer types (Community ID spec): each pair maps both ways, every other type to -1.
 * Filled once when the module loads. */
static const uint8_t ICMP4_PAIRS[][2] = {{8, 0}, {13, 14}, {15, 16}, {17, 18}, {10, 9}};
static const uint8_t ICMP6_PAIRS[][2] = {{128, 129}, {133, 134}, {135, 136}, {130, 131}, {139, 140}, {144, 145}};
static int16_t PAIRS4[256], PAIRS6[256];

static void fill_pairs(int16_t *t, const uint8_t (*pairs)[2], size_t n) {
    for (int i = 0; i < 256; i++) t[i] = -1;
    for (size_t k = 0; k < n; k++) {
        t[pairs[k][0]] = pairs[k][1];
        t[pairs[k][1]] = pairs[k][0];
    }
}

static inline int is_v6_ext(int64_t nh) { return nh == 0 || nh == 43 || nh == 44 || nh == 51 || nh == 60 || nh == 135; }

#define N_OUT 20
static const char *OUT_NAMES[N_OUT] = {
    "reason", "ipver", "fragment", "snap_cut", "vlan_outer", "vlan_inner", "proto", "ip_bytes", "src_hi", "src_lo",
    "dst_hi", "dst_lo", "sport", "dport", "icmp_oneway", "tcp_flags", "seq", "payload_off", "payload_len", "payload_cap"};

/* decode(data, offsets i64, caplen i32, wirelen i32, linktype i32, *20 output buffers in OUT_NAMES order) */
static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer in[5], out[N_OUT];
    int got_in = 0, got_out = 0;
    PyObject *result = NULL;
    if (PyTuple_GET_SIZE(args) != 5 + N_OUT) {
        PyErr_Format(PyExc_TypeError, "decode takes %d arguments", 5 + N_OUT);
        return NULL;
    }
    for (; got_in < 5; got_in++)
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(args, got_in), &in[got_in], PyBUF_SIMPLE) < 0) goto done;
    for (; got_out < N_OUT; got_out++)
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(args, 5 + got_out), &out[got_out], PyBUF_WRITABLE) < 0) goto done;

    Py_ssize_t n = in[1].len / 8;
    if (in[0].len < 17 || in[2].len != n * 4 || in[3].len != n * 4 || in[4].len != n * 4) {
        PyErr_SetString(PyExc_ValueError, "decode: input lengths disagree");
        goto done;
    }
    gather_t g = {(const uint8_t *)in[0].buf, (int64_t)in[0].len - 17};
    const int64_t *offsets = in[1].buf;
    const int32_t *caplens = in[2].buf, *wirelens = in[3].buf, *linktypes = in[4].buf;
    uint8_t *o_reason = out[0].buf, *o_ipver = out[1].buf, *o_fragment = out[2].buf, *o_snap = out[3].buf;
    int32_t *o_vout = out[4].buf, *o_vin = out[5].buf;
    uint8_t *o_proto = out[6].buf;
    int32_t *o_ipbytes = out[7].buf;
    uint64_t *o_shi = out[8].buf, *o_slo = out[9].buf, *o_dhi = out[10].buf, *o_dlo = out[11].buf;
    int32_t *o_sport = out[12].buf, *o_dport = out[13].buf;
    uint8_t *o_oneway = out[14].buf, *o_flags = out[15].buf;
    uint32_t *o_seq = out[16].buf;
    int64_t *o_poff = out[17].buf;
    int32_t *o_plen = out[18].buf, *o_pcap = out[19].buf;
    const int16_t *p4 = PAIRS4, *p6 = PAIRS6;

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t base = offsets[i], caplen = caplens[i];
        const int32_t lt = linktypes[i];
        int reason = caplen == 0 ? RS_ZERO_CAPLEN : RS_OK;

        /* link layer (_link_layer) */
        int64_t l3 = 0, etype = 0;
        int shortf = 0;
        const int eth = lt == 1 || lt == 113 || lt == 276;
        int32_t vout = -1, vin = -1;
        if (lt == 1) { l3 = 14; etype = u16(&g, base + 12); }
        else if (lt == 113) { l3 = 16; etype = u16(&g, base + 14); }
        else if (lt == 276) { l3 = 20; etype = u16(&g, base); }
        else if (lt == 0 || lt == 108) {
            int64_t fam_le = u8(&g, base) | (u8(&g, base + 1) << 8);
            int64_t fam_be = u8(&g, base + 3) | (u8(&g, base + 2) << 8);
            int64_t fam = (lt == 108 || fam_le == 0) ? fam_be : fam_le;
            etype = fam == 2 ? 0x0800 : (fam == 10 || fam == 23 || fam == 24 || fam == 28 || fam == 30) ? 0x86DD : 0;
            l3 = 4;
        } else if (lt == 101 || lt == 12 || lt == 14 || lt == 228 || lt == 229) {
            uint32_t nib = u8(&g, base) >> 4;
            etype = nib == 4 ? 0x0800 : nib == 6 ? 0x86DD : 0;
            l3 = 0;
        }
        shortf = caplen < l3;
        for (int depth = 0; depth < 3 && eth && (etype == 0x8100 || etype == 0x88A8 || etype == 0x9100); depth++) {
            int32_t tag = (int32_t)(u16(&g, base + l3) & 0x0FFF);
            if (depth == 0) vout = tag;
            else if (depth == 1) vin = tag;
            etype = u16(&g, base + l3 + 2);
            l3 += 4;
            shortf |= caplen < l3;
        }
        if (eth && etype == 0x8864) {
            uint32_t ppp = u16(&g, base + l3 + 6);
            etype = ppp == 0x0021 ? 0x0800 : ppp == 0x0057 ? 0x86DD : 0;
            l3 += 8;
            shortf |= caplen < l3;
        }
        for (int k = 0; k < 4 && eth && (etype == 0x8847 || etype == 0x8848); k++) {
            int bos = u8(&g, base + l3 + 2) & 1;
            l3 += 4;
            uint32_t nib = u8(&g, base + l3) >> 4;
            int64_t guess = nib == 4 ? 0x0800 : nib == 6 ? 0x86DD : 0;
            if (bos) etype = guess;
        }

        /* IP (decode_headers) */
        if (reason == RS_OK && shortf) reason = RS_TRUNC_LINK;
        int ipver = etype == 0x0800 ? 4 : etype == 0x86DD ? 6 : 0;
        if (reason) ipver = 0;
        const int64_t avail = caplen - l3;
        int v4 = ipver == 4, v6 = ipver == 6;
        const uint32_t b0 = u8(&g, base + l3);
        const int64_t ihl = (int64_t)(b0 & 0x0F) * 4;
        const int64_t total = u16(&g, base + l3 + 2);
        const uint32_t flags_frag = u16(&g, base + l3 + 6);
        const uint32_t proto4 = u8(&g, base + l3 + 9);
        const int64_t plen6 = u16(&g, base + l3 + 4);
        const uint32_t nh6 = u8(&g, base + l3 + 6);
        int bad = RS_OK;
        if (v4) {
            if (avail < 20) bad = RS_TRUNC_IP;
            else if ((b0 >> 4) != 4) bad = RS_IP_VER;
            else if (ihl < 20 || ihl > avail) bad = RS_IP_HDR;
            else if (total < ihl) bad = RS_IP_TOTAL;
        } else if (v6) {
            if (avail < 40) bad = RS_TRUNC_IP;
            else if ((b0 >> 4) != 6) bad = RS_IP_VER;
        }
        const int64_t ip_bytes = v4 ? total : v6 ? plen6 + 40 : 0;
        const int too_long = ipver > 0 && bad == RS_OK && ip_bytes > avail;
        const int snap = caplen < wirelens[i];
        if (too_long && !snap) bad = RS_TRUNC_IP;
        const int snap_cut = too_long && snap;
        if (reason == RS_OK) reason = bad;
        if (reason) ipver = 0;
        v4 = ipver == 4;
        v6 = ipver == 6;

        uint64_t shi = 0, slo = 0, dhi = 0, dlo = 0;
        if (v4) { slo = u32(&g, base + l3 + 12); dlo = u32(&g, base + l3 + 16); }
        int fragment = v4 && ((flags_frag & 0x2000) || (flags_frag & 0x1FFF));
        uint32_t proto = v4 ? proto4 : 0;
        int64_t l4 = v4 ? l3 + ihl : l3 + 40;
        if (v6) {
            const int64_t o = base + l3;
            shi = u64(&g, o + 8); slo = u64(&g, o + 16); dhi = u64(&g, o + 24); dlo = u64(&g, o + 32);
            int64_t nh = nh6, pos = l3 + 40;
            int64_t end = l3 + ip_bytes < caplen ? l3 + ip_bytes : caplen;
            int frag6 = 0, trunc = 0;
            for (int k = 0; k < 4 && is_v6_ext(nh); k++) {
                trunc |= pos + 8 > end;
                int64_t nxt = u8(&g, base + pos), hlen = u8(&g, base + pos + 1);
                int64_t size = nh == 44 ? 8 : nh == 51 ? (hlen + 2) * 4 : (hlen + 1) * 8;
                frag6 |= nh == 44;
                nh = nxt;
                pos += size;
            }
            proto = (uint32_t)(nh & 0xFF);
            l4 = pos;
            fragment = frag6;
            if (trunc && !snap_cut) reason = RS_TRUNC_V6EXT;
        }

        int64_t ip_end = l3 + ip_bytes;
        const int64_t cap_end = ip_end < caplen ? ip_end : caplen;
        const int64_t l4_avail = cap_end - l4;
        const int ok = reason == RS_OK && ipver > 0 && !fragment;
        int32_t sport = 0, dport = 0;
        uint32_t tcp_flags = 0, seq = 0;
        int oneway = 0;
        int64_t payload_start = l4;
        if (ok && proto == 6) {
            const int64_t o = base + l4;
            sport = (int32_t)u16(&g, o);
            dport = (int32_t)u16(&g, o + 2);
            seq = u32(&g, o + 4);
            const int64_t doff = (int64_t)(u8(&g, o + 12) >> 4) * 4;
            tcp_flags = u8(&g, o + 13);
            payload_start = l4 + doff;
            int r = l4_avail < 20 ? RS_TRUNC_TCP : RS_OK;
            if (r == RS_OK && (doff < 20 || doff > l4_avail)) r = RS_TCP_LEN;
            if (r == RS_OK && l4 + doff > ip_end) r = RS_TCP_LEN;
            if (snap_cut && r == RS_TCP_LEN && l4_avail >= 20 && doff >= 20) r = RS_OK;
            if (reason == RS_OK) reason = r;
        }
        if (ok && (proto == 17 || proto == 132)) {
            const int64_t o = base + l4;
            sport = (int32_t)u16(&g, o);
            dport = (int32_t)u16(&g, o + 2);
            const int udp = proto == 17;
            const int64_t hlen = udp ? 8 : 12;
            payload_start = l4 + hlen;
            const int64_t ulen = u16(&g, o + 4);
            int r = l4_avail < hlen ? (udp ? RS_TRUNC_UDP : RS_TRUNC_IP) : RS_OK;
            const int64_t room = ip_end - l4;
            if (r == RS_OK && udp && (ulen < 8 || ulen > room)) r = RS_UDP_LEN;
            if (reason == RS_OK) reason = r;
            if (udp && r == RS_OK) ip_end = l4 + ulen;
        }
        if (ok && (proto == 1 || proto == 58) && l4_avail >= 2) {
            const int64_t o = base + l4;
            const int32_t typ = (int32_t)u8(&g, o), code = (int32_t)u8(&g, o + 1);
            const int32_t peer = proto == 1 ? p4[typ] : p6[typ];
            sport = typ;
            dport = peer >= 0 ? peer : code;
            oneway = peer < 0;
            payload_start = l4 + 8;
        }
        if (reason) ipver = 0;
        const int64_t plen = ip_end - payload_start;
        const int64_t pcap_end = ip_end < caplen ? ip_end : caplen;
        const int64_t pcap = pcap_end - payload_start;

        o_reason[i] = (uint8_t)reason;
        o_ipver[i] = (uint8_t)ipver;
        o_fragment[i] = (uint8_t)(fragment && reason == RS_OK);
        o_snap[i] = (uint8_t)snap_cut;
        o_vout[i] = vout;
        o_vin[i] = vin;
        o_proto[i] = (uint8_t)proto;
        o_ipbytes[i] = (int32_t)ip_bytes;
        o_shi[i] = shi; o_slo[i] = slo; o_dhi[i] = dhi; o_dlo[i] = dlo;
        o_sport[i] = sport;
        o_dport[i] = dport;
        o_oneway[i] = (uint8_t)oneway;
        o_flags[i] = (uint8_t)tcp_flags;
        o_seq[i] = seq;
        o_poff[i] = base + payload_start;
        o_plen[i] = (int32_t)(plen > 0 ? plen : 0);
        o_pcap[i] = (int32_t)(pcap > 0 ? pcap : 0);
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    for (int k = 0; k < got_in; k++) PyBuffer_Release(&in[k]);
    for (int k = 0; k < got_out; k++) PyBuffer_Release(&out[k]);
    return result;
}

static PyObject *out_names(PyObject *self, PyObject *args) {
    PyObject *t = PyTuple_New(N_OUT);
    for (int k = 0; k < N_OUT; k++) PyTuple_SET_ITEM(t, k, PyUnicode_FromString(OUT_NAMES[k]));
    return t;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS, "Decode a batch's headers into 20 preallocated column buffers."},
    {"out_names", out_names, METH_NOARGS, "The output columns, in argument order."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_headers", "Compiled twin of headers.py.", -1, methods};

PyMODINIT_FUNC PyInit__headers(void) {
    fill_pairs(PAIRS4, ICMP4_PAIRS, sizeof ICMP4_PAIRS / sizeof ICMP4_PAIRS[0]);
    fill_pairs(PAIRS6, ICMP6_PAIRS, sizeof ICMP6_PAIRS / sizeof ICMP6_PAIRS[0]);
    return PyModule_Create(&module);
}
