"""cffi build script of ``storage._pagecheck``: page verification for a whole read in C.

Optional: ``storage/page.py`` falls back to pure Python when the module is absent, and
``setup.py`` builds it only when a C compiler works. One call checks a run of pages (the
header rules of ``page.py``'s invariant 2, the all-zero new page, then CRC-32C with the
checksum field read as zero, continued over ``pack("<IBI", rel, fork, block)``) and writes
one ``PageStatus`` code per page; Python builds the reason sentence only for a bad page.
Beside it, page-sized B+tree helpers (``engine/access/btree_page.py`` holds their Python
references, and ``tests/storage/test_btree_c.py`` compares the two): ``slk_bt_search``
binary-searches a B+tree page for a (key, xmin) target, ``slk_bt_visible`` lists the leaf
entries a snapshot sees.

CRC-32C: with SSE4.2 (checked at run time) three interleaved streams of the ``crc32``
instruction joined by a precomputed shift table; otherwise a portable slicing-by-8 table.
Both give exactly ``crc32c.crc32c``'s value (tests compare them with ``page_checksum``).
"""

from __future__ import annotations

CDEF = r"""
int slk_pagecheck_init(void);
int slk_pagecheck_hw(void);
/* --- pool memory (storage/prefault.py) --- */
int slk_populate(uintptr_t addr, size_t len);
uint32_t slk_page_checksum(const uint8_t *page, uint32_t rel, uint8_t fork, uint32_t block);
uint32_t slk_page_checksum_portable(const uint8_t *page, uint32_t rel, uint8_t fork,
                                    uint32_t block);
int slk_verify_pages(const uint8_t *base, const uint32_t *buf_ids, int n, int first_buf,
                     uint32_t rel, uint8_t fork, uint32_t first_block, uint8_t *status_out);
int slk_bt_search(const uint8_t *page, const uint8_t *key, uint32_t keylen, uint64_t xmin,
                  int upper);
int slk_bt_visible(const uint8_t *page, uint64_t snap_xmax, uint64_t own,
                   const uint64_t *excluded, int nexcluded, uint16_t *out);
int64_t slk_bt_locate(const uint8_t *page, const uint8_t *key, uint32_t keylen, uint64_t xmin);
/* --- btree read --- */
int slk_bt_probe(const uint8_t *page, const uint8_t *key, uint32_t keylen, uint64_t *out,
                 int maxv);
int slk_bt_extract(const uint8_t *page, const uint8_t *start, int32_t startlen,
                   const uint8_t *stop, int32_t stoplen, uint64_t snap_xmax, uint64_t own,
                   const uint64_t *excluded, int nexcluded, uint32_t *out, int *flags);
int slk_bt_gather(const uint8_t *page, const uint32_t *ents, int n, int values, uint8_t *dst,
                  char *fmt);
int slk_bt_children(const uint8_t *page, int first, uint32_t *out);
int slk_bt_probe_many(const uint8_t *page, const uint8_t *keys, const uint32_t *ends,
                      int lo, int hi, uint64_t snap_xmax, uint64_t own,
                      const uint64_t *excluded, int nexcluded, uint64_t *out);
/* --- heap page --- */
int slk_heap_run_items(const uint8_t *buf, int npages, int visibility, uint64_t snap_xmax,
                       uint64_t own, const uint64_t *excluded, int nexcluded, int cap,
                       uint32_t *page_out, uint16_t *offnum_out, uint32_t *start_out,
                       uint32_t *end_out, uint64_t *xmin_out, uint64_t *xmax_out,
                       uint16_t *flags_out);
int slk_row_layout(const uint8_t *buf, int n, const uint32_t *starts, const uint32_t *ends,
                   int nb, int nfixed, const uint8_t *fixed_sizes, int nvar,
                   uint8_t *fixed_out, uint32_t *var_out, uint8_t *joined_out,
                   uint32_t *joined_len, uint8_t *joined_ok);
int slk_row_bounds(const uint8_t *buf, int n, const uint32_t *starts, const uint32_t *ends,
                   int nb, int nfixed, const uint8_t *fixed_sizes, int nvar,
                   uint8_t *fixed_out, uint32_t *var_out);
int slk_heap_fill_page(uint8_t *page, const uint8_t *datas, const uint32_t *data_at,
                       const uint32_t *lens, int n, uint64_t xmin, uint16_t flags,
                       uint8_t *record_out, uint32_t *record_len);
int64_t slk_rows_pack(int n, int nb, int nfixed, const uint8_t *fixed_sizes,
                      const uint8_t *const *fixed_cols, int nvar,
                      const uint8_t *const *var_data, const uint32_t *const *var_lens,
                      uint32_t max_row, uint8_t *out, uint32_t *out_at, uint32_t *out_len);
#define SLK_ROWS_PACK_MAX_VAR ...
/* --- table index --- */
int64_t slk_heap_gather(const uint8_t *const *pages, int npages, const uint32_t *page_of,
                        const uint16_t *offnums, int n, uint64_t snap_xmax, uint64_t own,
                        const uint64_t *excluded, int nexcluded, uint8_t *out,
                        uint32_t out_cap, uint8_t *status, uint32_t *start, uint32_t *end);
int slk_ix_point(const uint8_t *page, const uint8_t *prefix, uint32_t plen, int maxn,
                 uint32_t *ents, uint32_t *out);
/* --- wal decode --- */
int slk_wal_scan(const uint8_t *chunk, uint32_t chunk_len, uint64_t chunk_lsn, uint32_t pos,
                 uint64_t seg_size, uint64_t prev, int check_prev, uint32_t *rec_at,
                 uint32_t *rec_len, uint32_t *rec_end, uint8_t *gathered, int cap,
                 uint32_t *stop);
int slk_wal_fields(const uint8_t *chunk, const uint8_t *gathered, uint64_t chunk_lsn,
                   const uint32_t *rec_at, const uint32_t *rec_len, const uint32_t *rec_end,
                   int n, int fast_rmgr, uint64_t *xid, uint32_t *fast_index,
                   uint32_t *rel, uint32_t *block, uint8_t *fork, uint64_t *end_lsn,
                   uint8_t *arena, uint32_t *offs);
int slk_heap_redo_multi(uint8_t *page, const uint8_t *payload, uint32_t len,
                        uint32_t *pos_out);
int slk_bt_redo_actions(uint8_t *page, const uint8_t *payload, uint32_t len, int index);
/* --- btree redo run --- */
int slk_bt_redo_actions_from(uint8_t *page, const uint8_t *payload, uint32_t len, int index,
                             int skip);
int slk_bt_redo_run(uint8_t *pool, const int32_t *bufs, const uint64_t *end_lsn,
                    const uint8_t *payloads, const uint32_t *offs, int first, int n,
                    uint8_t *changed, int *actions_done);
int slk_bt_apply_delete(uint8_t *page, const uint8_t *data, uint32_t len);
/* --- optimistic (seqlock) reads --- */
#define SLK_OPT_RETRY ...
void slk_seq_bump(uint32_t *seq, uint32_t b);
uint32_t slk_seq_get(const uint32_t *seq, uint32_t b);
/* --- content locks --- */
int slk_cl_try_shared(uint32_t *cl, uint32_t i);
int slk_cl_try_exclusive(uint32_t *cl, uint32_t *seq, uint32_t i);
int slk_cl_release_shared(uint32_t *cl, const uint32_t *waiters, uint32_t i);
int slk_cl_release_exclusive(uint32_t *cl, uint32_t *seq, const uint32_t *waiters, uint32_t i);
int slk_cl_try_exclusive_many(uint32_t *cl, uint32_t *seq, uint32_t nlocks,
                              const uint32_t *ids, uint32_t n, uint32_t *busy);
int slk_cl_release_exclusive_many(uint32_t *cl, uint32_t *seq, const uint32_t *waiters,
                                  uint32_t nlocks, const uint32_t *ids, uint32_t n,
                                  uint32_t *notify);
int64_t slk_heap_fetch_opt(const uint8_t *pool, const uint32_t *seq, uint32_t b,
                           uint32_t offnum, uint8_t *out, uint32_t out_cap, uint64_t *meta);
int64_t slk_heap_gather_opt(const uint8_t *pool, const uint32_t *seq, const uint32_t *bufs,
                            int npages, uint32_t *seen, const uint32_t *page_of,
                            const uint16_t *offnums, int n, uint64_t snap_xmax, uint64_t own,
                            const uint64_t *excluded, int nexcluded, uint8_t *out,
                            uint32_t out_cap, uint8_t *status, uint32_t *start, uint32_t *end);
int slk_ix_point_opt(const uint8_t *pool, const uint32_t *seq, uint32_t b,
                     const uint8_t *prefix, uint32_t plen, int maxn, uint32_t *ents,
                     uint32_t *out);
int slk_bt_probe_opt(const uint8_t *pool, const uint32_t *seq, uint32_t b,
                     const uint8_t *key, uint32_t keylen, uint64_t *out, int maxv,
                     uint8_t *copy);
/* --- KV point read in place --- */
int slk_bt_probe_inplace(const uint8_t *pool, const uint32_t *seq, uint32_t b,
                         const uint8_t *key, uint32_t keylen, uint64_t *out, int maxv,
                         uint8_t *copy);
/* --- point probe --- */
#define SLK_IX_POINT_RIGHT ...
int64_t slk_ix_point_right(const uint8_t *page, const uint8_t *prefix, uint32_t plen);
int slk_ix_point_step_opt(const uint8_t *pool, const uint32_t *seq, uint32_t b,
                          const uint8_t *prefix, uint32_t plen, int maxn, uint32_t *ents,
                          uint32_t *out);
int64_t slk_bt_descend(const uint8_t *const *pages, uint32_t npages, uint32_t root,
                       const uint8_t *key, uint32_t keylen, uint64_t xmin);
/* --- index batch TIDs --- */
#define SLK_IX_TIDS_MAX ...
int slk_ix_batch_tids(const uint8_t *keys, uint32_t len, const uint32_t *ends, int n,
                      uint32_t nblocks, uint32_t *out, uint32_t *distinct, int *ndistinct);
/* --- index range leaf keys --- */
int slk_ix_leaf_keys(const uint8_t *page, const uint32_t *ents, int n, uint8_t *dst,
                     uint32_t at, uint32_t *ends);
/* --- run copy of pinned pages (seqlock) --- */
uint32_t slk_seq_copy_pages(const uint8_t *pool, const uint32_t *seq, uint32_t nbuffers,
                            const uint32_t *bufs, uint32_t n, uint8_t *out);
/* --- leaf run apply --- */
int slk_bt_leaf_run(const uint8_t *page, const uint8_t *high, int32_t highlen,
                    const uint8_t *keys, const uint64_t *key_at, const uint8_t *payloads,
                    const uint64_t *pay_at, const uint8_t *kinds, const uint64_t *xids,
                    const uint64_t *olds, int start, int n, int64_t *state,
                    uint8_t *xout, uint32_t xcap, uint8_t *iout, uint32_t icap);
int slk_bt_apply_build(uint8_t *page, int code, const uint8_t *data, uint32_t len);
int slk_bt_block_actions(const uint8_t *p, uint32_t len, int index, int *first);
int slk_bt_redo_block(uint8_t *page, const uint8_t *p, uint32_t len, int index);
int slk_bt_first_versions(const uint8_t *page, const uint8_t *high, int32_t highlen,
                          const uint8_t *keys, const uint64_t *key_at, int start, int n,
                          uint32_t *out);
/* --- index range fetch --- */
int slk_ix_range_rows(const uint8_t *pool, const uint32_t *seq, const uint32_t *bufs,
                      int npages, uint32_t *seen, const uint32_t *page_of,
                      const uint32_t *offnums, int n, uint64_t snap_xmax, uint64_t own,
                      const uint64_t *excluded, int nexcluded, uint8_t *out,
                      uint32_t out_cap, uint32_t *sel, uint32_t *vstart, uint32_t *vend,
                      int nb, int nfixed, const uint8_t *fixed_sizes, int nvar,
                      uint8_t *fixed_out, uint32_t *var_out, uint8_t *joined_out,
                      uint32_t *joined_len, uint8_t *joined_ok, int *layout,
                      const uint8_t *keys, const uint32_t *key_ends, int nkey,
                      const uint8_t *key_kinds, const uint16_t *key_cols,
                      const uint32_t *key_at, const uint8_t *var_text);
/* --- leaf run extraction (KV ordered scans) --- */
int slk_bt_extract_run(const uint8_t *pages, int npages, const uint32_t *blocks,
                       int64_t expect, const uint8_t *start, int32_t startlen,
                       const uint8_t *stop, int32_t stoplen, uint64_t snap_xmax, uint64_t own,
                       const uint64_t *excluded, int nexcluded, int values, uint32_t *ents,
                       uint8_t *dst, uint32_t dst_cap, char *fmt, uint32_t fmt_cap,
                       int64_t *res);
/* --- wal record build --- */
uint32_t slk_wal_build(uint8_t *ring, uint32_t at, uint64_t xid, uint64_t prev, uint8_t rmgr,
                       uint8_t info, const char *bhdrs, uint32_t nblocks,
                       const char *payload, uint32_t plen);
uint64_t slk_wal_build_span(uint8_t *ring, uint32_t npages, uint32_t seg_size, uint64_t cur,
                            uint64_t xid, uint64_t prev, uint8_t rmgr, uint8_t info,
                            const char *bhdrs, uint32_t nblocks,
                            const char *payload, uint32_t plen);
/* --- kv commit key sort --- */
int slk_kv_sort(const uint8_t *blob, const uint64_t *at, uint32_t n, uint32_t *perm,
                uint8_t *tmp, uint8_t *out_blob, uint64_t *out_at);
/* --- heap scan rows --- */
int slk_heap_scan_rows(const uint8_t *buf, int npages, int visibility, uint64_t snap_xmax,
                       uint64_t own, const uint64_t *excluded, int nexcluded, int cap,
                       uint32_t *page_out, uint16_t *offnum_out, uint32_t *start_out,
                       uint32_t *end_out, uint64_t *xmin_out, uint64_t *xmax_out,
                       uint16_t *flags_out, int nb, int nfixed, const uint8_t *fixed_sizes,
                       int nvar, const uint8_t *var_text, uint32_t slice_min,
                       uint8_t *fixed_out, uint32_t *var_out, uint8_t *text_out,
                       uint32_t *text_len, uint8_t *text_ok, uint32_t *text_at, int *layout);
void slk_heap_run_free(const uint8_t *buf, int npages, uint32_t empty_free, uint32_t lp_size,
                       uint32_t align, uint32_t *out);
/* --- leaf vacuum judgement --- */
int slk_bt_leaf_vacuum(const uint8_t *page, int first, const uint64_t *dead, int ndead,
                       uint64_t *xmin_out, uint64_t *xmax_out, uint8_t *flags_out,
                       uint16_t *off_out);
/* --- heap page prune --- */
int slk_heap_prune(uint8_t *page, int n, const uint16_t *offnums, const uint64_t *xmins,
                   const uint64_t *xmaxs, const uint16_t *tflags, uint16_t *pruned);
/* --- autocommit put --- */
int slk_bt_put_new(uint8_t *page, const uint8_t *key, uint32_t keylen,
                   const uint8_t *value, uint32_t vlen, uint64_t xid, uint64_t *old,
                   uint8_t *out, uint32_t cap, uint8_t *pre);
int64_t slk_bt_put_logged(uint8_t *out, uint32_t cap, uint8_t *pre, uint8_t *ring,
                          uint8_t *page, const uint8_t *key,
                          uint32_t keylen, const uint8_t *value, uint32_t vlen, uint64_t xid,
                          uint64_t *old, uint32_t at, int64_t room, uint64_t cur, uint64_t prev,
                          uint64_t redo, const char *bhdr, uint8_t rmgr, uint8_t info,
                          uint8_t rmgr2, uint8_t info2, const char *payload2, uint32_t plen2);
/* --- wal group flush --- */
void *slk_wf_new(uint8_t *ring, uint32_t npages, uint64_t seg_size, uint64_t flushed,
                 int direct);
void slk_wf_free(void *st);
void slk_wf_set_delay(void *st, int64_t delay_us, int64_t siblings);
int slk_wf_flush(void *st, uint64_t lsn, uint64_t hint, int64_t active, int handback,
                 uint64_t *out);
void slk_wf_done(void *st, uint64_t target, int ok, int fd, uint64_t segno);
void slk_wf_close(void *st);
void slk_wf_stats(void *st, int64_t *out);
int slk_wf_set_placement(void *st, int commit_cpu, int flush_cpu);
int slk_wf_pinned(void);
void slk_wf_placement_forked(void);
"""

SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* --- pool memory (storage/prefault.py) ---
 * Fault in [addr, addr + len) of a private anonymous mapping for writing, without
 * changing a byte (MADV_POPULATE_WRITE, Linux 5.14): a page already present is left as
 * it is, so a range in use by readers and by O_DIRECT transfers may be populated. Runs
 * without the GIL (cffi releases it), so a background thread can take the page faults
 * (and a transparent huge page's zeroing and compaction) off the thread that is about to
 * read into the buffers. 0, or -errno (EINVAL: a kernel without the advice). */
#include <errno.h>
#include <sys/mman.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
int slk_populate(uintptr_t addr, size_t len)
{
    if (len == 0) return 0;
    return madvise((void *)addr, len, MADV_POPULATE_WRITE) == 0 ? 0 : -errno;
}

#define BLCKSZ 8192
#define HEADER_SIZE 24
#define PAGE_LAYOUT_VERSION 1
#define PD_VALID_FLAG_BITS 0x7
#define ST_VALID 0
#define ST_NEW 1
#define ST_BAD_CHECKSUM 2
#define ST_BAD_HEADER 3
#define POLY 0x82f63b78u            /* CRC-32C (Castagnoli), reflected */
#define LONG_QWORDS 340             /* 3 x 340 x 8 = 8160 bytes interleaved per page */
#define LONG_BYTES (LONG_QWORDS * 8)

static uint32_t sw_table[8][256];   /* slicing-by-8 */
static uint32_t shift_table[4][256];/* raw register advanced over LONG_BYTES zero bytes */
static int have_hw = 0;
static int initialised = 0;

static inline uint64_t load64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t load32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t load16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* ---- portable: raw register in, raw register out (no inversion) ---- */
static uint32_t sw_bytes(uint32_t crc, const uint8_t *p, size_t len)
{
    while (len && ((uintptr_t)p & 7)) { crc = sw_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8); len--; }
    while (len >= 8) {
        uint64_t w = load64(p) ^ crc;
        crc = sw_table[7][w & 0xff] ^ sw_table[6][(w >> 8) & 0xff] ^
              sw_table[5][(w >> 16) & 0xff] ^ sw_table[4][(w >> 24) & 0xff] ^
              sw_table[3][(w >> 32) & 0xff] ^ sw_table[2][(w >> 40) & 0xff] ^
              sw_table[1][(w >> 48) & 0xff] ^ sw_table[0][w >> 56];
        p += 8; len -= 8;
    }
    while (len--) crc = sw_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

static uint32_t sw_page(const uint8_t *page, const uint8_t tag[9])
{
    static const uint8_t zero4[4] = {0, 0, 0, 0};
    uint32_t crc = 0xffffffffu;
    crc = sw_bytes(crc, page, 8);
    crc = sw_bytes(crc, zero4, 4);
    crc = sw_bytes(crc, page + 12, BLCKSZ - 12);
    crc = sw_bytes(crc, tag, 9);
    return ~crc;
}

/* ---- SSE4.2 ---- */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define SLK_HAVE_X86 1

__attribute__((target("sse4.2")))
static void hw_build_shift(void)
{
    for (int k = 0; k < 4; k++)
        for (int b = 0; b < 256; b++) {
            uint64_t r = (uint64_t)b << (8 * k);
            for (int i = 0; i < LONG_QWORDS; i++)
                r = _mm_crc32_u64(r, 0);
            shift_table[k][b] = (uint32_t)r;
        }
}

static inline uint32_t shift_long(uint32_t crc)
{
    return shift_table[0][crc & 0xff] ^ shift_table[1][(crc >> 8) & 0xff] ^
           shift_table[2][(crc >> 16) & 0xff] ^ shift_table[3][crc >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t hw_page(const uint8_t *page, const uint8_t tag[9])
{
    uint64_t c0 = 0xffffffffu, c1 = 0, c2 = 0;
    const uint8_t *p, *end;
    c0 = _mm_crc32_u64(c0, load64(page));           /* lsn */
    c0 = _mm_crc32_u32((uint32_t)c0, 0);             /* checksum read as zero */
    c0 = _mm_crc32_u32((uint32_t)c0, load32(page + 12));
    p = page + 16;                                   /* 8176 bytes left: 3 x 2720 + 16 */
    end = p + LONG_BYTES;
    while (p < end) {
        c0 = _mm_crc32_u64(c0, load64(p));
        c1 = _mm_crc32_u64(c1, load64(p + LONG_BYTES));
        c2 = _mm_crc32_u64(c2, load64(p + 2 * LONG_BYTES));
        p += 8;
    }
    c0 = shift_long((uint32_t)c0) ^ (uint32_t)c1;
    c0 = shift_long((uint32_t)c0) ^ (uint32_t)c2;
    p += 2 * LONG_BYTES;
    end = page + BLCKSZ;
    while (p < end) { c0 = _mm_crc32_u64(c0, load64(p)); p += 8; }
    c0 = _mm_crc32_u32((uint32_t)c0, load32(tag));
    c0 = _mm_crc32_u8((uint32_t)c0, tag[4]);
    c0 = _mm_crc32_u32((uint32_t)c0, load32(tag + 5));
    return ~(uint32_t)c0;
}
#endif

int slk_pagecheck_init(void)
{
    if (initialised)
        return have_hw;
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        sw_table[0][b] = c;
    }
    for (int b = 0; b < 256; b++)
        for (int k = 1; k < 8; k++)
            sw_table[k][b] = sw_table[0][sw_table[k - 1][b] & 0xff] ^ (sw_table[k - 1][b] >> 8);
#ifdef SLK_HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) {
        hw_build_shift();
        have_hw = 1;
    }
#endif
    initialised = 1;
    return have_hw;
}

int slk_pagecheck_hw(void) { return have_hw; }

static uint32_t page_crc(const uint8_t *page, uint32_t rel, uint8_t fork, uint32_t block)
{
    uint8_t tag[9];
    memcpy(tag, &rel, 4);       /* little-endian host: x86-64, aarch64 */
    tag[4] = fork;
    memcpy(tag + 5, &block, 4);
#ifdef SLK_HAVE_X86
    if (have_hw)
        return hw_page(page, tag);
#endif
    return sw_page(page, tag);
}

uint32_t slk_page_checksum(const uint8_t *page, uint32_t rel, uint8_t fork, uint32_t block)
{
    return page_crc(page, rel, fork, block);
}

/* The table-driven path even where SSE4.2 exists (tests compare both with page.py). */
uint32_t slk_page_checksum_portable(const uint8_t *page, uint32_t rel, uint8_t fork,
                                    uint32_t block)
{
    uint8_t tag[9];
    memcpy(tag, &rel, 4);
    tag[4] = fork;
    memcpy(tag + 5, &block, 4);
    return sw_page(page, tag);
}

static int header_ok(const uint8_t *page)
{
    uint16_t flags = load16(page + 12), lower = load16(page + 14), upper = load16(page + 16);
    uint16_t special = load16(page + 18), version = load16(page + 20);
    uint16_t reserved = load16(page + 22);
    return version == PAGE_LAYOUT_VERSION && reserved == 0 &&
           (flags & ~PD_VALID_FLAG_BITS) == 0 && lower >= HEADER_SIZE && lower <= upper &&
           upper <= special && special <= BLCKSZ && special % 8 == 0 && upper % 8 == 0 &&
           (lower - HEADER_SIZE) % 4 == 0;
}

static int all_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i += 8)
        if (load64(p + i))
            return 0;
    return 1;
}

/* Verify n pages: page k is at base + BLCKSZ * (buf_ids ? buf_ids[k] : first_buf + k) and
 * was read as block first_block + k. Writes a status per page; returns how many are
 * neither VALID nor NEW. */
int slk_verify_pages(const uint8_t *base, const uint32_t *buf_ids, int n, int first_buf,
                     uint32_t rel, uint8_t fork, uint32_t first_block, uint8_t *status_out)
{
    int bad = 0;
    for (int k = 0; k < n; k++) {
        size_t id = buf_ids ? buf_ids[k] : (size_t)first_buf + (size_t)k;
        const uint8_t *page = base + id * BLCKSZ;
        uint8_t st;
        if (all_zero(page, HEADER_SIZE))
            st = all_zero(page + HEADER_SIZE, BLCKSZ - HEADER_SIZE) ? ST_NEW : ST_BAD_HEADER;
        else if (!header_ok(page))
            st = ST_BAD_HEADER;
        else
            st = page_crc(page, rel, fork, first_block + (uint32_t)k) == load32(page + 8)
                 ? ST_VALID : ST_BAD_CHECKSUM;
        status_out[k] = st;
        bad += st >= ST_BAD_CHECKSUM;
    }
    return bad;
}

/* ---- B+tree page helpers (engine/access/btree_page.py has the Python references) ----
 * Special space (16 bytes at BLCKSZ - 16): prev u32, next u32, level u32, flags u16, 0 u16.
 * Leaf entry "<QQBH" xmin, xmax, eflags, keylen | key | payload; pivot "<IQBH" child,
 * xmin, pflags (1 = minus infinity), keylen | key. Order: key ascending, xmin descending.
 * Both return -1 for a page they cannot read safely; the caller then runs the reference,
 * which raises naming the flaw. */
#define BT_SPECIAL_AT (BLCKSZ - 16)
#define BT_LEAF_HDR 19
#define BT_PIVOT_HDR 15

static int bt_item(const uint8_t *page, int offnum, int lower, uint32_t *off, uint32_t *len)
{
    uint32_t at = HEADER_SIZE + 4u * (uint32_t)(offnum - 1);
    if (at + 4 > (uint32_t)lower) return -1;
    uint32_t lp = load32(page + at);
    *off = lp & 0x7fff;
    *len = lp >> 17;
    if (((lp >> 15) & 3) != 1 || *off < HEADER_SIZE || *off + *len > BT_SPECIAL_AT) return -1;
    return 0;
}

static int bt_bounds(const uint8_t *page, int *first, int *count, int *leaf)
{
    uint16_t lower = load16(page + 14);
    if (load16(page + 18) != BT_SPECIAL_AT || lower < HEADER_SIZE || lower > BT_SPECIAL_AT ||
        (lower - HEADER_SIZE) % 4)
        return -1;
    *count = (lower - HEADER_SIZE) / 4;
    *first = load32(page + BT_SPECIAL_AT + 4) == 0 ? 1 : 2;  /* next == P_NONE: rightmost */
    *leaf = load32(page + BT_SPECIAL_AT + 8) == 0;
    return lower;
}

int slk_bt_search(const uint8_t *page, const uint8_t *key, uint32_t keylen, uint64_t xmin,
                  int upper)
{
    int first, count, leaf;
    int lower = bt_bounds(page, &first, &count, &leaf);
    if (lower < 0) return -1;
    uint32_t hdr = leaf ? BT_LEAF_HDR : BT_PIVOT_HDR;
    int lo = first, hi = count + 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        uint32_t off, len;
        if (bt_item(page, mid, lower, &off, &len) < 0 || len < hdr) return -1;
        const uint8_t *it = page + off;
        uint64_t ixmin;
        uint32_t ikeylen = load16(it + hdr - 2);
        if (leaf) {
            ixmin = load64(it);
        } else {
            ixmin = load64(it + 4);
            if (it[12] & 1) { lo = mid + 1; continue; }     /* minus infinity */
        }
        if (hdr + ikeylen > len) return -1;
        uint32_t n = ikeylen < keylen ? ikeylen : keylen;
        int c = memcmp(it + hdr, key, n);
        if (c == 0) c = ikeylen < keylen ? -1 : ikeylen > keylen ? 1 : 0;
        if (c == 0) c = ixmin > xmin ? -1 : ixmin < xmin ? 1 : 0;   /* xmin descending */
        if (c < 0 || (upper && c == 0)) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* One step of a descent: -2 when the target is >= the high key (move right), else on a
 * leaf the first offnum >= target, on an internal page the child block of the last pivot
 * <= target; -1 for a page that cannot be read safely. */
int64_t slk_bt_locate(const uint8_t *page, const uint8_t *key, uint32_t keylen, uint64_t xmin)
{
    int first, count, leaf;
    int lower = bt_bounds(page, &first, &count, &leaf);
    if (lower < 0) return -1;
    if (first == 2) {                                   /* high key: a pivot at offnum 1 */
        uint32_t off, len;
        if (bt_item(page, 1, lower, &off, &len) < 0 || len < BT_PIVOT_HDR) return -1;
        const uint8_t *it = page + off;
        uint32_t hklen = load16(it + 13);
        if (BT_PIVOT_HDR + hklen > len) return -1;
        uint64_t hxmin = load64(it + 4);
        uint32_t n = hklen < keylen ? hklen : keylen;
        int c = memcmp(key, it + BT_PIVOT_HDR, n);
        if (c == 0) c = keylen < hklen ? -1 : keylen > hklen ? 1 : 0;
        if (c == 0) c = xmin > hxmin ? -1 : xmin < hxmin ? 1 : 0;
        if (c >= 0) return -2;
    }
    if (leaf)
        return slk_bt_search(page, key, keylen, xmin, 0);
    int pos = slk_bt_search(page, key, keylen, xmin, 1) - 1;
    if (pos < first) return -1;
    uint32_t off, len;
    if (bt_item(page, pos, lower, &off, &len) < 0 || len < BT_PIVOT_HDR) return -1;
    return (int64_t)load32(page + off);
}

static int xid_sees(uint64_t x, uint64_t snap_xmax, uint64_t own, const uint64_t *ex, int n)
{
    if (x == own) return 1;
    if (x >= snap_xmax) return 0;
    int lo = 0, hi = n;
    while (lo < hi) { int mid = lo + (hi - lo) / 2; if (ex[mid] < x) lo = mid + 1; else hi = mid; }
    return !(lo < n && ex[lo] == x);
}

int slk_bt_visible(const uint8_t *page, uint64_t snap_xmax, uint64_t own,
                   const uint64_t *excluded, int nexcluded, uint16_t *out)
{
    int first, count, leaf, n = 0;
    int lower = bt_bounds(page, &first, &count, &leaf);
    if (lower < 0 || !leaf) return -1;
    for (int k = first; k <= count; k++) {
        uint32_t off, len;
        if (bt_item(page, k, lower, &off, &len) < 0 || len < BT_LEAF_HDR) return -1;
        uint64_t xmin = load64(page + off), xmax = load64(page + off + 8);
        if (xid_sees(xmin, snap_xmax, own, excluded, nexcluded) &&
            !(xmax && xid_sees(xmax, snap_xmax, own, excluded, nexcluded)))
            out[n++] = (uint16_t)k;
    }
    return n;
}

/* --- btree read --- (engine/access/btree_page.py: probe_leaf_py, extract_leaf_py;
 * tests/storage/test_btree_c.py compares them) */

/* memcmp order of two byte strings, shorter first on a common prefix. */
static int bt_keycmp(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen)
{
    uint32_t n = alen < blen ? alen : blen;
    int c = memcmp(a, b, n);
    if (c) return c;
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

/* Every version of ``key`` on a leaf, for a point read. out[0] = the right-link, out[1] =
 * status bits (1: go right instead -- the page is DELETED or (key, XMIN_MAX) >= its high
 * key; 2: versions may continue on the right sibling -- the last one is the page's last
 * entry and the high key's key is ``key``); then per version (at most maxv, newest first)
 * item offset, item length, xmin, xmax, eflags. Returns the number of versions on the page
 * (more than maxv: call again with room), or -1 for a page the reference must judge. */
int slk_bt_probe(const uint8_t *page, const uint8_t *key, uint32_t keylen, uint64_t *out,
                 int maxv)
{
    int first, count, leaf;
    int lower = bt_bounds(page, &first, &count, &leaf);
    if (lower < 0 || !leaf) return -1;
    uint16_t flags = load16(page + BT_SPECIAL_AT + 12);
    /* BTP_DELETED (vacuum's unlink clears BTP_LEAF): move right, as from any leaf */
    if (!(flags & 0x5) || load16(page + BT_SPECIAL_AT + 14) || (flags & ~0x3f)) return -1;
    out[0] = load32(page + BT_SPECIAL_AT + 4);
    out[1] = 0;
    if (flags & 0x4) { out[1] = 1; return 0; }          /* BTP_DELETED: move right */
    int hk_same = 0;
    if (first == 2) {
        uint32_t off, len;
        if (bt_item(page, 1, lower, &off, &len) < 0 || len < BT_PIVOT_HDR) return -1;
        uint32_t hklen = load16(page + off + 13);
        if (BT_PIVOT_HDR + hklen > len) return -1;
        int c = bt_keycmp(key, keylen, page + off + BT_PIVOT_HDR, hklen);
        /* (key, XMIN_MAX) >= (hk, hxmin) iff key > hk, or key == hk and hxmin == XMIN_MAX */
        if (c > 0 || (c == 0 && load64(page + off + 4) == UINT64_MAX)) { out[1] = 1; return 0; }
        hk_same = c == 0;
    }
    int pos = slk_bt_search(page, key, keylen, UINT64_MAX, 0);
    if (pos < 0) return -1;
    int n = 0, k;
    for (k = pos; k <= count; k++) {
        uint32_t off, len;
        if (bt_item(page, k, lower, &off, &len) < 0 || len < BT_LEAF_HDR) return -1;
        const uint8_t *it = page + off;
        uint32_t ikeylen = load16(it + 17);
        if (BT_LEAF_HDR + ikeylen > len || (it[16] & ~0x1)) return -1;
        if (bt_keycmp(it + BT_LEAF_HDR, ikeylen, key, keylen) != 0) break;
        if (n < maxv) {
            uint64_t *v = out + 2 + 5 * n;
            v[0] = off; v[1] = len; v[2] = load64(it); v[3] = load64(it + 8); v[4] = it[16];
        }
        n++;
    }
    if (k > count && hk_same) out[1] |= 2;
    return n;
}

/* The visible entries of a leaf with start <= key < stop (a length of -1: no bound), for a
 * scan: per entry key start, key end (= value start), value end, eflags, in page order.
 * *flags: 1 the scan ends here (an entry >= stop, or a high key whose key is >= stop);
 * 2 some entry returned is out of line (eflags & 1); 4 the page holds a data entry below
 * start (a backward scan ends here). Returns the count, or -1 for a page the reference
 * must judge. */
int slk_bt_extract(const uint8_t *page, const uint8_t *start, int32_t startlen,
                   const uint8_t *stop, int32_t stoplen, uint64_t snap_xmax, uint64_t own,
                   const uint64_t *excluded, int nexcluded, uint32_t *out, int *flags)
{
    int first, count, leaf, n = 0, f = 0;
    int lower = bt_bounds(page, &first, &count, &leaf);
    if (lower < 0 || !leaf) return -1;
    int pos = first;
    if (startlen >= 0) {
        pos = slk_bt_search(page, start, (uint32_t)startlen, UINT64_MAX, 0);
        if (pos < 0) return -1;
        if (pos > first) f |= 4;
    }
    if (stoplen >= 0 && first == 2) {
        uint32_t off, len;
        if (bt_item(page, 1, lower, &off, &len) < 0 || len < BT_PIVOT_HDR) return -1;
        uint32_t hklen = load16(page + off + 13);
        if (BT_PIVOT_HDR + hklen > len) return -1;
        if (bt_keycmp(page + off + BT_PIVOT_HDR, hklen, stop, (uint32_t)stoplen) >= 0) f |= 1;
    }
    for (int k = pos; k <= count; k++) {
        uint32_t off, len;
        if (bt_item(page, k, lower, &off, &len) < 0 || len < BT_LEAF_HDR) return -1;
        const uint8_t *it = page + off;
        uint32_t ikeylen = load16(it + 17);
        if (BT_LEAF_HDR + ikeylen > len || (it[16] & ~0x1)) return -1;
        if (stoplen >= 0 && bt_keycmp(it + BT_LEAF_HDR, ikeylen, stop, (uint32_t)stoplen) >= 0) {
            f |= 1;
            break;
        }
        uint64_t xmin = load64(it), xmax = load64(it + 8);
        if (!xid_sees(xmin, snap_xmax, own, excluded, nexcluded) ||
            (xmax && xid_sees(xmax, snap_xmax, own, excluded, nexcluded)))
            continue;
        uint32_t *e = out + 4 * n;
        e[0] = off + BT_LEAF_HDR; e[1] = off + BT_LEAF_HDR + ikeylen; e[2] = off + len;
        e[3] = it[16];
        if (it[16] & 1) f |= 2;
        n++;
    }
    *flags = f;
    return n;
}

static char *bt_fmt_len(char *f, uint32_t len)      /* "<len>s" */
{
    char digits[10];
    int k = 0;
    do { digits[k++] = (char)('0' + len % 10); len /= 10; } while (len);
    while (k) *f++ = digits[--k];
    *f++ = 's';
    return f;
}

/* The keys (and with ``values`` the values) of slk_bt_extract's n entries ``ents`` copied
 * back to back into dst (BLCKSZ bytes), and the struct format that unpacks them in one
 * call ("<keylen>s<valuelen>s" per entry, NUL-terminated) into fmt (12 bytes per entry and
 * value, plus 1). Returns the bytes copied, or -1 when an entry's offsets are not
 * start <= key end <= value end inside the page (or would overrun dst). */
int slk_bt_gather(const uint8_t *page, const uint32_t *ents, int n, int values, uint8_t *dst,
                  char *fmt)
{
    uint32_t pos = 0;
    char *f = fmt;
    for (int i = 0; i < n; i++) {
        uint32_t ks = ents[4 * i], ke = ents[4 * i + 1], ve = ents[4 * i + 2];
        if (ks > ke || ke > ve || ve > BLCKSZ) return -1;
        uint32_t take = values ? ve - ks : ke - ks;
        if (pos + take > BLCKSZ) return -1;
        memcpy(dst + pos, page + ks, take);
        pos += take;
        f = bt_fmt_len(f, ke - ks);
        if (values) f = bt_fmt_len(f, ve - ke);
    }
    *f = 0;
    return (int)pos;
}

/* The child blocks of the pivots at offnums first..count of an internal page, into out
 * (room for every line pointer); the count, or -1 for a leaf or an item that is not a
 * well-formed pivot (the reference then raises naming it). A scan's leaf feed. */
int slk_bt_children(const uint8_t *page, int first, uint32_t *out)
{
    int f, count, leaf, n = 0;
    int lower = bt_bounds(page, &f, &count, &leaf);
    if (lower < 0 || leaf || first < 1) return -1;
    for (int k = first; k <= count; k++) {
        uint32_t off, len;
        if (bt_item(page, k, lower, &off, &len) < 0 || len < BT_PIVOT_HDR) return -1;
        const uint8_t *it = page + off;
        if (BT_PIVOT_HDR + load16(it + 13) != len || (it[12] & ~1)) return -1;
        out[n++] = load32(it);
    }
    return n;
}

/* A batch read's look at one leaf: keys lo..hi-1 of a sorted batch (concatenated in keys,
 * key i ending at ends[i], starting at ends[i-1] or 0), each probed as slk_bt_probe does and
 * its versions judged by a snapshot given as data (xid_sees, as slk_bt_extract). Per key
 * four numbers at out[4*i]: status (slk_bt_probe's bits 1 and 2; 4 a visible version was
 * found; 8 more than 64 versions on the page: not judged, the caller asks slk_bt_probe),
 * then that version's value start, value end (page offsets) and eflags (0 0 0 when none).
 * Returns 0, or -1 for a page the reference must judge (engine/access/btree_page.py:
 * probe_many_py). */
#define BT_PROBE_MANY_VERSIONS 64
int slk_bt_probe_many(const uint8_t *page, const uint8_t *keys, const uint32_t *ends,
                      int lo, int hi, uint64_t snap_xmax, uint64_t own,
                      const uint64_t *excluded, int nexcluded, uint64_t *out)
{
    uint64_t v[2 + 5 * BT_PROBE_MANY_VERSIONS];
    for (int i = lo; i < hi; i++) {
        uint32_t start = i > 0 ? ends[i - 1] : 0;
        uint32_t keylen = ends[i] - start;
        int got = slk_bt_probe(page, keys + start, keylen, v, BT_PROBE_MANY_VERSIONS);
        if (got < 0) return -1;
        uint64_t *o = out + 4 * i;
        o[0] = v[1]; o[1] = 0; o[2] = 0; o[3] = 0;
        if (got > BT_PROBE_MANY_VERSIONS) { o[0] |= 8; continue; }
        for (int j = 0; j < got; j++) {
            const uint64_t *e = v + 2 + 5 * j;
            if (xid_sees(e[2], snap_xmax, own, excluded, nexcluded) &&
                !(e[3] && xid_sees(e[3], snap_xmax, own, excluded, nexcluded))) {
                o[0] |= 4;
                o[1] = e[0] + BT_LEAF_HDR + keylen;
                o[2] = e[0] + e[1];
                o[3] = e[4];
                break;
            }
        }
    }
    return 0;
}

/* --- heap page --- (engine/access/heap.py and engine/access/tuple.py hold the Python
 * references; tests/engine/test_heap_c.py compares them)
 * Line pointer u32: offset (15 bits) | state << 15 (1 = NORMAL) | length << 17.
 * Heap tuple: "<QQHIxx" xmin, xmax, flags, data_len, pad | data (24-byte header). */
#define HEAP_TUPLE_HDR 24
#define HEAP_PAGE_MAX_LPS ((BLCKSZ - HEADER_SIZE) / 4)

/* The NORMAL tuples of npages consecutive pages in buf (page k at buf + k * BLCKSZ), in
 * page then offnum order; with `visibility` only those the snapshot (snap_xmax, own,
 * sorted excluded) sees. Per tuple: page index, offnum, data start and end (offsets into
 * buf), xmin, xmax, flags. Returns the count, -(k + 1) when page k holds a line pointer or
 * tuple header that cannot be read safely (the caller runs the reference, which raises
 * naming it), or -(npages + 1) when `cap` entries are not enough. */
int slk_heap_run_items(const uint8_t *buf, int npages, int visibility, uint64_t snap_xmax,
                       uint64_t own, const uint64_t *excluded, int nexcluded, int cap,
                       uint32_t *page_out, uint16_t *offnum_out, uint32_t *start_out,
                       uint32_t *end_out, uint64_t *xmin_out, uint64_t *xmax_out,
                       uint16_t *flags_out)
{
    int n = 0;
    for (int k = 0; k < npages; k++) {
        const uint8_t *page = buf + (size_t)k * BLCKSZ;
        uint32_t lower = load16(page + 14), upper = load16(page + 16);
        if (lower == 0) continue;                       /* a new, all-zero page */
        if (lower < HEADER_SIZE || lower > BLCKSZ || (lower - HEADER_SIZE) % 4) return -(k + 1);
        int count = (int)((lower - HEADER_SIZE) / 4);
        for (int i = 0; i < count; i++) {
            uint32_t lp = load32(page + HEADER_SIZE + 4u * (uint32_t)i);
            if (((lp >> 15) & 3) != 1) continue;
            uint32_t off = lp & 0x7fff, len = lp >> 17;
            if (off < upper || off + len > BLCKSZ || len < HEAP_TUPLE_HDR) return -(k + 1);
            const uint8_t *t = page + off;
            if (load32(t + 18) != len - HEAP_TUPLE_HDR) return -(k + 1);
            uint64_t xmin = load64(t), xmax = load64(t + 8);
            if (visibility && !(xid_sees(xmin, snap_xmax, own, excluded, nexcluded) &&
                                !(xmax && xid_sees(xmax, snap_xmax, own, excluded, nexcluded))))
                continue;
            if (n >= cap) return -(npages + 1);
            page_out[n] = (uint32_t)k;
            offnum_out[n] = (uint16_t)(i + 1);
            start_out[n] = (uint32_t)((size_t)k * BLCKSZ + off + HEAP_TUPLE_HDR);
            end_out[n] = (uint32_t)((size_t)k * BLCKSZ + off + len);
            xmin_out[n] = xmin;
            xmax_out[n] = xmax;
            flags_out[n] = load16(t + 16);
            n++;
        }
    }
    return n;
}

/* Row layout of n rows buf[starts[i]:ends[i]] (tuple.py's row format: nb-byte null bitmap,
 * nfixed fixed-width values of fixed_sizes[c] bytes, nvar u32 lengths, the values).
 * Column-major output, so Python builds each column with one memoryview.cast().tolist():
 * fixed column c (at byte o_c of the fixed part) goes to fixed_out + n * o_c + i * size_c;
 * var column j's bounds to var_out[(2j) * n + i] (start) and var_out[(2j + 1) * n + i]
 * (end), and its values joined with a separator byte between them to joined_out (column
 * after column; joined_len[j] bytes each): NUL when no value holds one, else the smallest
 * ASCII byte (1..127: one character of the decoded text, never inside a UTF-8 sequence) no
 * value of the column holds; joined_ok[j] = separator + 1, or 0 when every ASCII byte is in
 * some value (the caller then slices by the bounds). joined_out needs sum(ends - starts) +
 * nvar * n bytes.
 * Returns 0; 1 when a row has a NULL (the caller decodes row by row); -1 when a row's
 * lengths do not add up (the caller decodes row by row, which raises naming the flaw).
 * joined_out NULL: no join (slk_row_bounds). */
int slk_row_layout(const uint8_t *buf, int n, const uint32_t *starts, const uint32_t *ends,
                   int nb, int nfixed, const uint8_t *fixed_sizes, int nvar,
                   uint8_t *fixed_out, uint32_t *var_out, uint8_t *joined_out,
                   uint32_t *joined_len, uint8_t *joined_ok)
{
    uint32_t fixed_size = 0;
    for (int c = 0; c < nfixed; c++) fixed_size += fixed_sizes[c];
    uint32_t head = (uint32_t)nb + fixed_size + 4u * (uint32_t)nvar;
    int nulls = 0;
    for (int i = 0; i < n; i++) {
        uint32_t s = starts[i], e = ends[i];
        if (e < s || e - s < head) return -1;
        const uint8_t *row = buf + s;
        for (int b = 0; b < nb; b++) nulls |= row[b];
        uint32_t o = 0;
        for (int c = 0; c < nfixed; c++) {
            uint32_t sz = fixed_sizes[c];
            memcpy(fixed_out + (size_t)n * o + (size_t)i * sz, row + nb + o, sz);
            o += sz;
        }
        uint64_t pos = s + head;
        for (int j = 0; j < nvar; j++) {
            uint64_t len = load32(row + nb + fixed_size + 4 * j);
            var_out[(size_t)(2 * j) * n + i] = (uint32_t)(pos > e ? e : pos);
            pos += len;
            var_out[(size_t)(2 * j + 1) * n + i] = (uint32_t)(pos > e ? e : pos);
        }
        if (pos != e) return -1;
    }
    if (nulls) return 1;
    if (joined_out == NULL) return 0;
    uint8_t *out = joined_out;
    for (int j = 0; j < nvar; j++) {
        const uint32_t *vs = var_out + (size_t)(2 * j) * n, *ve = vs + n;
        uint8_t *first = out;
        int sep = 0;
        for (int i = 0; i < n; i++) {
            uint32_t len = ve[i] - vs[i];
            if (len && memchr(buf + vs[i], 0, len)) { sep = -1; break; }
        }
        if (sep < 0) {   /* a NUL in some value: the smallest ASCII byte in none */
            uint8_t seen[256];
            memset(seen, 0, sizeof seen);
            for (int i = 0; i < n; i++) {
                const uint8_t *p = buf + vs[i];
                for (uint32_t q = 0, len = ve[i] - vs[i]; q < len; q++) seen[p[q]] = 1;
            }
            for (int s = 1; s < 128; s++)
                if (!seen[s]) { sep = s; break; }
        }
        uint8_t sepb = (uint8_t)(sep < 0 ? 0 : sep);
        for (int i = 0; i < n; i++) {
            uint32_t len = ve[i] - vs[i];
            if (i) *out++ = sepb;
            memcpy(out, buf + vs[i], len);
            out += len;
        }
        joined_len[j] = (uint32_t)(out - first);
        joined_ok[j] = (uint8_t)(sep < 0 ? 0 : sep + 1);
    }
    return 0;
}

/* --- row layout of long values --- (tuple.py RowCodec.decode_run: rows whose values are
 * long are cheaper sliced by their bounds, one bytes.decode each, than joined, decoded and
 * split: str.split scans a character at a time, and the join is a copy more)
 * slk_row_layout's fixed columns and var bounds, no join (nothing written to joined_*);
 * the same results 0 / 1 / -1. */
int slk_row_bounds(const uint8_t *buf, int n, const uint32_t *starts, const uint32_t *ends,
                   int nb, int nfixed, const uint8_t *fixed_sizes, int nvar,
                   uint8_t *fixed_out, uint32_t *var_out)
{
    return slk_row_layout(buf, n, starts, ends, nb, nfixed, fixed_sizes, nvar, fixed_out,
                          var_out, NULL, NULL, NULL);
}

/* --- row packing --- (engine/access/tuple.py: RowCodec.pack_many's reference is its
 * generated encode, row by row; tests/engine/test_rows_pack_c.py compares them)
 * n rows with no NULL, given column by column, laid out as RowCodec.encode lays out each:
 * nb zero bytes (the null bitmap), the fixed-width columns in schema order (column k: n
 * values of fixed_sizes[k] bytes each, little-endian, at fixed_cols[k]), a u32 length per
 * text/bytea column, then those columns' bytes (column j: its values back to back at
 * var_data[j], their lengths in var_lens[j]). Row i goes to out + out_at[i], out_len[i]
 * bytes; the rows are back to back. Returns the bytes written, or -(i + 1) for the first
 * row i longer than max_row (nothing after it is written); -(n + 1) for more than
 * SLK_ROWS_PACK_MAX_VAR text/bytea columns (nothing written). */
#define SLK_ROWS_PACK_MAX_VAR 64
int64_t slk_rows_pack(int n, int nb, int nfixed, const uint8_t *fixed_sizes,
                      const uint8_t *const *fixed_cols, int nvar,
                      const uint8_t *const *var_data, const uint32_t *const *var_lens,
                      uint32_t max_row, uint8_t *out, uint32_t *out_at, uint32_t *out_len)
{
    uint64_t at = 0;
    uint64_t var_at[SLK_ROWS_PACK_MAX_VAR] = {0};
    if (nvar > SLK_ROWS_PACK_MAX_VAR) return -(int64_t)n - 1;
    uint32_t head = (uint32_t)nb + 4u * (uint32_t)nvar;
    for (int k = 0; k < nfixed; k++) head += fixed_sizes[k];
    for (int i = 0; i < n; i++) {
        uint64_t len = head;
        for (int j = 0; j < nvar; j++) len += var_lens[j][i];
        if (len > max_row) return -(int64_t)i - 1;
        uint8_t *o = out + at;
        memset(o, 0, (size_t)nb);
        o += nb;
        for (int k = 0; k < nfixed; k++) {
            uint32_t z = fixed_sizes[k];
            const uint8_t *src = fixed_cols[k] + (size_t)i * z;
            if (z == 8) memcpy(o, src, 8);          /* (constant sizes: inlined moves) */
            else if (z == 1) *o = *src;
            else memcpy(o, src, z);
            o += z;
        }
        for (int j = 0; j < nvar; j++) {
            memcpy(o, &var_lens[j][i], 4);
            o += 4;
        }
        for (int j = 0; j < nvar; j++) {
            uint32_t z = var_lens[j][i];
            memcpy(o, var_data[j] + var_at[j], z);
            var_at[j] += z;
            o += z;
        }
        out_at[i] = (uint32_t)at;
        out_len[i] = (uint32_t)len;
        at += len;
    }
    return (int64_t)at;
}

/* A new, empty page (init_page, no free line pointers) filled with heap tuples (xmin,
 * xmax 0, flags, data i = lens[i] bytes at datas + data_at[i]) in order until one does not
 * fit, exactly as page_add_item of each pack_tuple would. The INSERT_MULTI items of the
 * page's WAL record ("<HH" offnum, item length | item, per tuple) go to record_out (room:
 * sum of the data lengths + 28 per tuple), their size to *record_len. Returns how many
 * tuples went in (offnums 1..count). */
int slk_heap_fill_page(uint8_t *page, const uint8_t *datas, const uint32_t *data_at,
                       const uint32_t *lens, int n, uint64_t xmin, uint16_t flags,
                       uint8_t *record_out, uint32_t *record_len)
{
    uint32_t lower = load16(page + 14), upper = load16(page + 16);
    uint8_t *rec = record_out;
    int k = 0;
    for (; k < n; k++) {
        uint32_t len = HEAP_TUPLE_HDR + lens[k], aligned = (len + 7u) & ~7u;
        if (upper < aligned || upper - aligned < lower + 4) break;
        upper -= aligned;
        uint8_t *t = page + upper;
        uint64_t zero64 = 0;
        uint32_t dlen = lens[k];
        memcpy(t, &xmin, 8);
        memcpy(t + 8, &zero64, 8);
        memcpy(t + 16, &flags, 2);
        memcpy(t + 18, &dlen, 4);
        memset(t + 22, 0, 2);
        memcpy(t + HEAP_TUPLE_HDR, datas + data_at[k], dlen);
        memset(t + len, 0, aligned - len);
        uint32_t lp = upper | (1u << 15) | (len << 17);
        memcpy(page + lower, &lp, 4);
        lower += 4;
        uint16_t off16 = (uint16_t)(k + 1), len16 = (uint16_t)len;
        memcpy(rec, &off16, 2);
        memcpy(rec + 2, &len16, 2);
        memcpy(rec + 4, t, len);
        rec += 4 + len;
    }
    uint16_t l16 = (uint16_t)lower, u16 = (uint16_t)upper;
    memcpy(page + 14, &l16, 2);
    memcpy(page + 16, &u16, 2);
    *record_len = (uint32_t)(rec - record_out);
    return k;
}

/* --- table index --- (engine/access/heap_fetch.py has the Python reference, gather_py;
 * tests/engine/test_heap_fetch.py compares them)
 * An index scan's heap fetch: the pages its TIDs point at (pages[p], BLCKSZ bytes each:
 * the pool's own pages, share-locked by the caller), and the tuples at (page_of[k],
 * offnums[k]) for k < n judged and gathered in one call. Tuple header "<QQHIxx": xmin,
 * xmax, flags, data_len. */
#define SLK_TUPLE_HDR 24

/* One gathered tuple (its slot checked: off + len inside the page, len at least the
 * header): *status 1 when the snapshot does not see it, else 2 and its data copied to
 * out at *pos (which moves on) and *end set; 0 when out has no room for the data. */
static int gather_tuple(const uint8_t *page, uint32_t off, uint32_t len, uint64_t snap_xmax,
                        uint64_t own, const uint64_t *excluded, int nexcluded, uint8_t *out,
                        uint32_t out_cap, uint32_t *pos, uint8_t *status, uint32_t *end)
{
    uint64_t xmin = load64(page + off), xmax = load64(page + off + 8);
    if (!xid_sees(xmin, snap_xmax, own, excluded, nexcluded) ||
        (xmax && xid_sees(xmax, snap_xmax, own, excluded, nexcluded))) {
        *status = 1;
        return 1;
    }
    uint32_t dlen = len - SLK_TUPLE_HDR;
    if (dlen > out_cap - *pos) return 0;
    memcpy(out + *pos, page + off + SLK_TUPLE_HDR, dlen);
    *status = 2;
    *pos += dlen;
    *end = *pos;
    return 1;
}

/* status[k] 0 = no NORMAL tuple at the slot (unused or redirected, past the line
 * pointers, an all-zero page), 1 = a tuple the snapshot (xids seen: own, or below
 * snap_xmax and not in the sorted excluded) does not see, 2 = a visible one, whose data
 * is copied to out[start[k], end[k]), one after another in request order. Returns the
 * bytes written; -1 - k when request k names a page outside the list or its line pointer
 * or tuple header is not a heap tuple (the reference then raises naming it); INT64_MIN
 * when out_cap is too small (the caller passes the pages' total size: never). */
int64_t slk_heap_gather(const uint8_t *const *pages, int npages, const uint32_t *page_of,
                        const uint16_t *offnums, int n, uint64_t snap_xmax, uint64_t own,
                        const uint64_t *excluded, int nexcluded, uint8_t *out,
                        uint32_t out_cap, uint8_t *status, uint32_t *start, uint32_t *end)
{
    uint32_t pos = 0;
    for (int k = 0; k < n; k++) {
        status[k] = 0;
        start[k] = end[k] = pos;
        if (page_of[k] >= (uint32_t)npages) return -1 - k;
        const uint8_t *page = pages[page_of[k]];
        uint32_t lower = load16(page + 14), upper = load16(page + 16);
        uint32_t offnum = offnums[k];
        uint32_t lp_at = HEADER_SIZE + (offnum - 1) * 4u;
        if (lower > BLCKSZ)          /* line pointers past the page: slot_tuple raises */
            return -1 - k;
        if (lower == 0 || offnum < 1 || lp_at + 4 > lower)
            continue;
        uint32_t lp = load32(page + lp_at);
        if (((lp >> 15) & 3) != 1)
            continue;
        uint32_t off = lp & 0x7fff, len = lp >> 17;
        if (off < upper || off + len > BLCKSZ || len < SLK_TUPLE_HDR)
            return -1 - k;
        if (load32(page + off + 18) != len - SLK_TUPLE_HDR)
            return -1 - k;
        if (!gather_tuple(page, off, len, snap_xmax, own, excluded, nexcluded, out, out_cap,
                          &pos, status + k, end + k))
            return INT64_MIN;
    }
    return pos;
}

/* A point read of an index (engine/index.py: point_entries_py; tests/engine/
 * test_table_index_c.py compares them): the entries of a leaf whose key starts with
 * ``prefix``, when the page holds all of them. -2 when it may not (a DELETED page or not
 * a leaf, entries continuing or moved right, more than ``maxn``, an entry too short for a
 * heap TID, a prefix that is empty, all 0xFF or longer than a page): the caller walks
 * the leaves instead. Else per entry out[3k] = its key length without the TID suffix,
 * out[3k+1] = block, out[3k+2] = offnum (the suffix, big-endian u32 + u16). ``ents`` is
 * slk_bt_extract's scratch (4 * max items per page). -1: a page the reference judges. */
int slk_ix_point(const uint8_t *page, const uint8_t *prefix, uint32_t plen, int maxn,
                 uint32_t *ents, uint32_t *out)
{
    uint8_t stop[BLCKSZ];
    uint16_t pflags = load16(page + BT_SPECIAL_AT + 12);
    if ((pflags & 0x4) || !(pflags & 0x1)) return -2;
    uint32_t stoplen = plen;
    if (plen > BLCKSZ) return -2;
    while (stoplen > 0 && prefix[stoplen - 1] == 0xff) stoplen--;
    if (stoplen == 0) return -2;
    memcpy(stop, prefix, stoplen);
    stop[stoplen - 1]++;
    int f = 0;
    int n = slk_bt_extract(page, prefix, (int32_t)plen, stop, (int32_t)stoplen,
                           (uint64_t)1 << 63, 0, NULL, 0, ents, &f);
    if (n < 0) return -1;
    if (!(f & 1) && load32(page + BT_SPECIAL_AT + 4) != 0) return -2;
    if (n > maxn) return -2;
    for (int k = 0; k < n; k++) {
        uint32_t ks = ents[4 * k], ke = ents[4 * k + 1];
        if (ke - ks < 6) return -2;
        const uint8_t *t = page + ke - 6;
        out[3 * k] = ke - ks - 6;
        out[3 * k + 1] = ((uint32_t)t[0] << 24) | ((uint32_t)t[1] << 16) |
                         ((uint32_t)t[2] << 8) | t[3];
        out[3 * k + 2] = ((uint32_t)t[4] << 8) | t[5];
    }
    return n;
}

/* --- wal decode --- */
/* wal/walpage.py's page header and wal/record.py's record layout; engine/wal_decode.py
 * wraps slk_wal_scan for wal/reader.py, whose scan_records_py is the reference. */
#define WAL_PAGE_SIZE 8192u
#define WAL_PHDR 32u                  /* page header bytes */
#define WAL_PAGE_MAGIC 0xD119u        /* format version 2 */
#define WAL_RHDR 32u                  /* record header bytes */
#define WAL_BHDR 16u                  /* block reference header bytes */
#define WAL_MAX_RECORD (4u * 1024u * 1024u)
#define WAL_MAX_BLOCKS 32u

#ifdef SLK_HAVE_X86
__attribute__((target("sse4.2")))
static uint32_t hw_bytes(uint32_t crc, const uint8_t *p, size_t len)
{
    uint64_t c = crc;
    while (len >= 8) { c = _mm_crc32_u64(c, load64(p)); p += 8; len -= 8; }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = _mm_crc32_u8(c32, *p++);
    return c32;
}
#endif

/* CRC-32C of p[0:at] + 4 zero bytes + p[at+4:len] (a CRC field read as zero). */
static uint32_t wal_crc_skip4(const uint8_t *p, uint32_t at, uint32_t len)
{
    static const uint8_t zero4[4] = {0, 0, 0, 0};
    uint32_t c = 0xffffffffu;
#ifdef SLK_HAVE_X86
    if (have_hw) {
        c = hw_bytes(c, p, at);
        c = hw_bytes(c, zero4, 4);
        return ~hw_bytes(c, p + at + 4, len - at - 4);
    }
#endif
    c = sw_bytes(c, p, at);
    c = sw_bytes(c, zero4, 4);
    return ~sw_bytes(c, p + at + 4, len - at - 4);
}

/* decode_page_header's checks of the page at pageaddr. */
static int wal_page_ok(const uint8_t *pg, uint64_t pageaddr, uint64_t seg_size)
{
    uint32_t info = load16(pg + 2), rem = load32(pg + 4);
    if (load16(pg) != WAL_PAGE_MAGIC) return 0;
    if (wal_crc_skip4(pg, 28, WAL_PHDR) != load32(pg + 28)) return 0;
    if (load64(pg + 8) != pageaddr) return 0;
    if ((uint64_t)load32(pg + 24) != seg_size) return 0;
    if (info & ~3u) return 0;
    if (((info & 1u) != 0) != (pageaddr % seg_size == 0)) return 0;
    if (((info & 2u) != 0) != (rem > 0)) return 0;
    if (!(load64(pg + 16) < pageaddr + WAL_PAGE_SIZE)) return 0;
    return 1;
}

/* decode_record's checks (CRC, reserved bytes, block count, block flags and holes, lengths
 * adding up) of the record of ``total`` bytes at r. */
static int wal_record_ok(const uint8_t *r, uint32_t total)
{
    uint32_t nblocks = r[26], plen = load32(r + 28);
    if (total < WAL_RHDR || total > WAL_MAX_RECORD || r[27] || nblocks > WAL_MAX_BLOCKS)
        return 0;
    uint64_t pos = WAL_RHDR + (uint64_t)nblocks * WAL_BHDR;
    if (pos + plen > total) return 0;
    for (uint32_t i = 0; i < nblocks; i++) {
        const uint8_t *b = r + WAL_RHDR + i * WAL_BHDR;
        uint32_t flags = b[9], off = load16(b + 10), hole = load16(b + 12);
        if ((flags & ~3u) || load16(b + 14)) return 0;
        if (!(flags & 1u)) {
            if (off || hole) return 0;
            continue;
        }
        if (off + hole > 8192u || (off && !hole)) return 0;
        pos += 8192u - hole;
        if (pos + plen > total) return 0;
    }
    if (pos + plen != total) return 0;
    return wal_crc_skip4(r, 4, total) == load32(r + 4);
}

/* The valid records of ``chunk`` (whole WAL pages, chunk_lsn the LSN of its first byte, all
 * of one segment) from the record start at chunk offset ``pos``: page headers, continuation
 * lengths (rem_len), record checks, CRC and prev link (the first record's against ``prev``
 * when check_prev) as WalReader makes them. Writes each record's chunk offset, length and
 * end offset (at most cap records); a record continued onto later pages of the chunk is
 * also copied whole into ``gathered`` (chunk_len bytes) at its own start offset. *stop gets
 * the chunk offset of the next record start, where it stopped: the end of the chunk, a
 * record continued past it, or anything invalid -- the caller's reader judges that record
 * on its own. Returns the count. */
int slk_wal_scan(const uint8_t *chunk, uint32_t chunk_len, uint64_t chunk_lsn, uint32_t pos,
                 uint64_t seg_size, uint64_t prev, int check_prev, uint32_t *rec_at,
                 uint32_t *rec_len, uint32_t *rec_end, uint8_t *gathered, int cap,
                 uint32_t *stop)
{
    int n = 0;
    int64_t checked = -1;           /* chunk offset of the page whose header passed last */
    chunk_len -= chunk_len % WAL_PAGE_SIZE;
    while (n < cap && pos < chunk_len) {
        uint32_t off = pos % WAL_PAGE_SIZE, page = pos - off, end;
        if (off < WAL_PHDR || (pos & 7u)) break;
        const uint8_t *pg = chunk + page, *rec = chunk + pos;
        if ((int64_t)page != checked) {
            if (!wal_page_ok(pg, chunk_lsn + page, seg_size)) break;
            checked = page;
        }
        if (off == WAL_PHDR && load32(pg + 4)) break;       /* a continuation, no record */
        uint32_t total = load32(rec);
        if (total < WAL_RHDR || total > WAL_MAX_RECORD) break;
        if (total <= WAL_PAGE_SIZE - off) {
            end = pos + total;
        } else {                                            /* continued onto later pages */
            uint8_t *g = gathered + pos;                    /* total < end - pos: no overlap */
            uint32_t got = WAL_PAGE_SIZE - off, p = page + WAL_PAGE_SIZE, last = page;
            memcpy(g, rec, got);
            end = 0;
            while (got < total) {
                if (p + WAL_PAGE_SIZE > chunk_len) break;
                if (!wal_page_ok(chunk + p, chunk_lsn + p, seg_size)) break;
                uint32_t missing = total - got;
                if (load32(chunk + p + 4) != missing) break;
                uint32_t take = missing < WAL_PAGE_SIZE - WAL_PHDR ? missing
                                                                   : WAL_PAGE_SIZE - WAL_PHDR;
                memcpy(g + got, chunk + p + WAL_PHDR, take);
                got += take;
                end = p + WAL_PHDR + take;
                last = p;
                p += WAL_PAGE_SIZE;
            }
            if (got < total) break;
            rec = g;
            checked = last;
        }
        if (!wal_record_ok(rec, total)) break;
        if (check_prev && load64(rec + 16) != prev) break;
        rec_at[n] = pos;
        rec_len[n] = total;
        rec_end[n] = end;
        n++;
        prev = chunk_lsn + pos;
        check_prev = 1;
        pos = (end + 7u) & ~7u;
        if (pos % WAL_PAGE_SIZE == 0) pos += WAL_PHDR;
    }
    *stop = pos;
    return n;
}

/* The fields recovery's batch redo needs of n records slk_wal_scan accepted (rec_at,
 * rec_len, rec_end as it wrote them; a record is read from ``gathered`` when it continued
 * onto later pages, else from the chunk). Every record: its xid. A record of ``fast_rmgr``
 * with one block reference that has no image and is not will_init (a "fast" record, the
 * bulk of a B+tree WAL): appended to the fast list -- its record index (fast_index), the
 * block's rel, block and fork, the record's end LSN, and its payload copied into ``arena``
 * at offs[k] (offs[k + 1] its end: slk_bt_redo_run's layout). Nothing is checked again.
 * Returns the number of fast records. engine/wal_decode.py's wal_fields_py is the
 * reference. */
int slk_wal_fields(const uint8_t *chunk, const uint8_t *gathered, uint64_t chunk_lsn,
                   const uint32_t *rec_at, const uint32_t *rec_len, const uint32_t *rec_end,
                   int n, int fast_rmgr, uint64_t *xid, uint32_t *fast_index,
                   uint32_t *rel, uint32_t *block, uint8_t *fork, uint64_t *end_lsn,
                   uint8_t *arena, uint32_t *offs)
{
    int k = 0;
    uint32_t used = 0;
    offs[0] = 0;
    for (int i = 0; i < n; i++) {
        uint32_t at = rec_at[i], total = rec_len[i];
        const uint8_t *r = (rec_end[i] - at == total ? chunk : gathered) + at;
        xid[i] = load64(r + 8);
        if (r[24] != (uint32_t)fast_rmgr || r[26] != 1) continue;
        const uint8_t *b = r + WAL_RHDR;
        if (b[9]) continue;                               /* an image or will_init */
        uint32_t plen = load32(r + 28);
        fast_index[k] = (uint32_t)i;
        rel[k] = load32(b);
        block[k] = load32(b + 4);
        fork[k] = b[8];
        end_lsn[k] = chunk_lsn + rec_end[i];
        memcpy(arena + used, r + total - plen, plen);
        used += plen;
        offs[++k] = used;
    }
    return k;
}

/* page_add_item(page, item, offnum) (storage/page.py) for the items of a heap INSERT_MULTI
 * payload (engine/access/heap.py: count u16, page flags u16, then per item offnum u16,
 * length u16, the item), in order, while each is one page_add_item accepts: a valid page
 * header (header_ok), offnum the next new line pointer or an UNUSED one, a nonempty item
 * that fits. Returns how many items were added, *pos_out the payload offset after them;
 * the rest (and the error for a refused one) are heap.py's Python loop's. -1: no count. */
int slk_heap_redo_multi(uint8_t *page, const uint8_t *payload, uint32_t len,
                        uint32_t *pos_out)
{
    if (len < 4) return -1;
    uint32_t count = load16(payload), pos = 4, k;
    for (k = 0; k < count; k++) {
        if (pos + 4 > len) break;
        uint32_t offnum = load16(payload + pos), length = load16(payload + pos + 2);
        if (pos + 4 + length > len || length == 0 || !header_ok(page)) break;
        uint32_t lower = load16(page + 14), upper = load16(page + 16);
        uint32_t nlp = (lower - HEADER_SIZE) / 4;
        if (offnum < 1 || offnum > nlp + 1) break;
        if (offnum <= nlp && ((load32(page + HEADER_SIZE + (offnum - 1) * 4) >> 15) & 3u))
            break;                                          /* in use, not UNUSED */
        uint32_t new_lower = offnum == nlp + 1 ? lower + 4 : lower;
        uint32_t aligned = (length + 7u) & ~7u;
        if (upper < aligned || upper - aligned < new_lower) break;
        uint32_t new_upper = upper - aligned;
        memcpy(page + new_upper, payload + pos + 4, length);
        memset(page + new_upper + length, 0, aligned - length);
        uint32_t lp = new_upper | (1u << 15) | (length << 17);
        uint16_t lo16 = (uint16_t)new_lower, up16 = (uint16_t)new_upper;
        memcpy(page + HEADER_SIZE + (offnum - 1) * 4, &lp, 4);
        memcpy(page + 14, &lo16, 2);
        memcpy(page + 16, &up16, 2);
        pos += 4 + length;
    }
    *pos_out = pos;
    return (int)k;
}

/* B+tree redo (engine/access/btree_wal.py): the actions of block ``index`` in a record's
 * payload (per action: block index u8, code u8, data length u32, data; decode_actions has
 * checked the layout) applied to ``page`` in order while each is an insert (A_INSERT 2:
 * bt_insert_item's rules and bytes) or a set-xmax (A_SET_XMAX 3: page_get_item's checks of
 * a NORMAL item of at least 16 bytes, xmax at item + 8) that its Python twin accepts.
 * Returns how many of the block's actions were applied; apply_action does the rest (and
 * raises for a refused one). */
int slk_bt_redo_actions_from(uint8_t *page, const uint8_t *payload, uint32_t len, int index,
                             int skip);

int slk_bt_redo_actions(uint8_t *page, const uint8_t *payload, uint32_t len, int index)
{
    return slk_bt_redo_actions_from(page, payload, len, index, 0);
}

/* The same from the block's action ``skip`` on (those before it are not looked at): how
 * many of the actions after the first ``skip`` were applied. */
int slk_bt_redo_actions_from(uint8_t *page, const uint8_t *payload, uint32_t len, int index,
                             int skip)
{
    uint32_t pos = 0;
    int k = 0;
    while (pos + 6 <= len) {
        uint32_t idx = payload[pos], code = payload[pos + 1], dlen = load32(payload + pos + 2);
        const uint8_t *data = payload + pos + 6;
        if (dlen > len - pos - 6) return k;
        pos += 6 + dlen;
        if ((int)idx != index) continue;
        if (skip > 0) { skip--; continue; }
        uint32_t lower = load16(page + 14), upper = load16(page + 16);
        if (code == 2) {                                    /* A_INSERT */
            if (dlen < 2) return k;
            uint32_t offnum = load16(data), n = dlen - 2;
            if (lower < HEADER_SIZE || lower > upper || upper > BT_SPECIAL_AT) return k;
            uint32_t count = (lower - HEADER_SIZE) / 4;
            if (offnum < 1 || offnum > count + 1) return k;
            uint32_t aligned = (n + 7u) & ~7u;
            if (n == 0 || upper < aligned || upper - aligned < lower + 4) return k;
            uint32_t new_upper = upper - aligned, at = HEADER_SIZE + (offnum - 1) * 4;
            memcpy(page + new_upper, data + 2, n);
            memset(page + new_upper + n, 0, aligned - n);
            memmove(page + at + 4, page + at, lower - at);
            uint32_t lp = new_upper | (1u << 15) | (n << 17);
            uint16_t lo16 = (uint16_t)(lower + 4), up16 = (uint16_t)new_upper;
            memcpy(page + at, &lp, 4);
            memcpy(page + 14, &lo16, 2);
            memcpy(page + 16, &up16, 2);
        } else if (code == 3) {                             /* A_SET_XMAX */
            if (dlen < 10 || !header_ok(page)) return k;
            uint32_t offnum = load16(data), special = load16(page + 18);
            if (offnum < 1 || HEADER_SIZE + offnum * 4 > lower) return k;
            uint32_t lp = load32(page + HEADER_SIZE + (offnum - 1) * 4);
            uint32_t off = lp & 0x7fff, state = (lp >> 15) & 3u, ilen = lp >> 17;
            if (state != 1 || ilen < 16 || off < upper || off + ilen > special || (off & 7u))
                return k;
            memcpy(page + off + 8, data + 2, 8);
        } else {
            return k;
        }
        k++;
    }
    return k;
}

/* --- btree redo run --- (engine/access/btree_wal.py: redo_leaf_run_py is the Python
 * reference; engine/recovery.py hands it a run of single-block B+tree records whose pages
 * it holds pinned and exclusive-locked, one pin and lock per distinct page). Record i
 * (payload payloads[offs[i]:offs[i+1]], its page the pool buffer bufs[i], its end
 * end_lsn[i]) in order: a payload whose action layout decode_actions would refuse stops
 * the run (*actions_done = -1: the caller's decode raises); a page whose LSN is at or past
 * the record's end already has the change (changed[i] = 0); otherwise its block-0 actions
 * are applied by slk_bt_redo_actions and the page LSN set to the record's end (changed[i]
 * = 1). An action that one refuses stops the run with *actions_done = the actions applied
 * (the caller applies the rest, which raises for a bad one, and goes on from i + 1).
 * Returns the index it stopped at (n: all done). */
static int bb_build(uint8_t *page, const uint8_t *special, const uint8_t *const *items,
                    const uint32_t *lens, int n, const uint8_t *lsn);

/* A_DELETE (6) of a B+tree page: btree_page.bt_delete_items' bytes (the items not named
 * by the action's "<H" count, count x "<H" offnums, rebuilt in order with the special
 * space and LSN kept). 0 when done; -1, nothing changed, for anything its Python twin
 * might treat differently (a short action, an offnum out of range, a page bt_items or
 * bt_special refuses, items that do not fit): apply_action then runs and raises. */
int slk_bt_apply_delete(uint8_t *page, const uint8_t *data, uint32_t len)
{
    const uint8_t *items[BLCKSZ / 4];
    uint32_t lens[BLCKSZ / 4];
    uint8_t gone[BLCKSZ / 4 + 1];
    if (len < 2) return -1;
    uint32_t ndel = load16(data);
    if (2 + 2 * ndel > len) return -1;
    uint32_t lower = load16(page + 14), pflags = load16(page + BT_SPECIAL_AT + 12);
    if (load16(page + 18) != BT_SPECIAL_AT || load16(page + BT_SPECIAL_AT + 14) ||
        (pflags & ~0x3fu) || lower < HEADER_SIZE || lower > BT_SPECIAL_AT ||
        (lower - HEADER_SIZE) % 4)
        return -1;
    uint32_t count = (lower - HEADER_SIZE) / 4;
    memset(gone, 0, count + 1);
    for (uint32_t k = 0; k < ndel; k++) {
        uint32_t o = load16(data + 2 + 2 * k);
        if (o < 1 || o > count) return -1;
        gone[o] = 1;
    }
    int n = 0;
    for (uint32_t k = 1; k <= count; k++) {
        uint32_t off, ilen;
        if (bt_item(page, (int)k, (int)lower, &off, &ilen) < 0) return -1;
        if (gone[k]) continue;
        items[n] = page + off;
        lens[n++] = ilen;
    }
    uint8_t special[14], lsn[8];
    memcpy(special, page + BT_SPECIAL_AT, 14);
    memcpy(lsn, page, 8);
    return bb_build(page, special, items, lens, n, lsn);
}

/* Where block 0's action ``k`` (counted from 0) of a payload starts (its 6-byte header);
 * the layout was checked. */
static uint32_t bt_action_at(const uint8_t *p, uint32_t len, int k)
{
    uint32_t pos = 0;
    while (pos + 6 <= len) {
        if (p[pos] == 0 && k-- == 0) return pos;
        pos += 6 + load32(p + pos + 2);
    }
    return len;
}

int slk_bt_redo_run(uint8_t *pool, const int32_t *bufs, const uint64_t *end_lsn,
                    const uint8_t *payloads, const uint32_t *offs, int first, int n,
                    uint8_t *changed, int *actions_done)
{
    for (int i = first; i < n; i++) {
        const uint8_t *p = payloads + offs[i];
        uint32_t len = offs[i + 1] - offs[i], pos = 0;
        int nact = 0;
        while (pos < len) {
            if (len - pos < 6) { *actions_done = -1; return i; }
            uint32_t code = p[pos + 1], dlen = load32(p + pos + 2);
            if (dlen > len - pos - 6 || code < 1 || code > 8) { *actions_done = -1; return i; }
            if (p[pos] == 0) nact++;
            pos += 6 + dlen;
        }
        uint8_t *page = pool + (size_t)bufs[i] * BLCKSZ;
        if (load64(page) >= end_lsn[i]) { changed[i] = 0; continue; }
        int k = 0;
        while (k < nact) {
            k += slk_bt_redo_actions_from(page, p, len, 0, k);
            if (k >= nact) break;
            uint32_t at = bt_action_at(p, len, k);          /* a vacuum's delete: in C too */
            if (at >= len || p[at + 1] != 6 ||
                slk_bt_apply_delete(page, p + at + 6, load32(p + at + 2)) != 0)
                break;
            k++;
        }
        if (k < nact) { *actions_done = k; return i; }
        memcpy(page, &end_lsn[i], 8);
        changed[i] = 1;
    }
    return n;
}

/* --- optimistic (seqlock) reads --- (storage/bufmgr.py bumps the counters; engine/access/
 * heap_fetch.py and engine/index.py read with them and hold the Python references;
 * tests/storage/test_seqlock.py and tests/engine/test_optimistic_reads.py compare them)
 * seq[b] counts buffer b's exclusive content-lock holds twice: slk_seq_bump right after
 * the acquire (odd: the page may be changing) and right before the release (even again).
 * A reader holding a pin on a VALID buffer (it cannot be evicted or read into) but no
 * content lock loads seq[b] (odd: give up), reads the page, then loads seq[b] again:
 * unchanged means no writer held the page meanwhile, so what it read is one consistent
 * state; otherwise it returns SLK_OPT_RETRY and the caller takes the share lock. Until
 * that re-check the page may be torn mid-change: every offset and length is loaded once
 * (volatile) and bounds-checked against BLCKSZ before use, no loop runs longer than the
 * request count, and results go only to the caller's buffers, valid only after the
 * re-check succeeded. */
#define SLK_OPT_RETRY (-3)

void slk_seq_bump(uint32_t *seq, uint32_t b)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    __atomic_fetch_add(seq + b, 1u, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

uint32_t slk_seq_get(const uint32_t *seq, uint32_t b)
{
    return __atomic_load_n(seq + b, __ATOMIC_ACQUIRE);
}

/* --- content locks --- (storage/bufmgr.py ContentLock and LockWords; LockWords' py_*
 * methods are the Python reference, tests/storage/test_content_lock_c.py compares them)
 * A content lock is one word: CL_EXCL while held exclusively, else its number of shared
 * holders. These calls are built into the GIL-keeping module (storage/hotlib.py), so
 * each is one indivisible step for every other Python thread, and the lock word needs no
 * mutex of its own. Waiting is Python's: a thread that must wait counts itself in
 * waiters[i] under the lock's stripe mutex, tries again and sleeps on its condition; a
 * release reports (1) that someone is counted there, to be notified under that mutex.
 * The exclusive calls move the buffer's change counter with the word (seq NULL: none):
 * odd as the lock is taken, even as it is given back (invariant 20). A call refused
 * (-1; -(k + 1) for the run's k-th id) changes nothing. */
#define CL_EXCL 0x80000000u
#define CL_SHARED_MAX 0x3fffffffu   /* below CL_MARK */

int slk_cl_try_shared(uint32_t *cl, uint32_t i)
{
    uint32_t v = cl[i];
    if (v >= CL_SHARED_MAX) return 0;          /* held exclusively (or saturated) */
    cl[i] = v + 1;
    return 1;
}

int slk_cl_try_exclusive(uint32_t *cl, uint32_t *seq, uint32_t i)
{
    if (cl[i] != 0) return 0;
    cl[i] = CL_EXCL;
    if (seq != NULL) slk_seq_bump(seq, i);
    return 1;
}

int slk_cl_release_shared(uint32_t *cl, const uint32_t *waiters, uint32_t i)
{
    uint32_t v = cl[i];
    if (v == 0 || v >= CL_EXCL) return -1;     /* not held shared */
    cl[i] = v - 1;
    return v == 1 && waiters[i] != 0;
}

int slk_cl_release_exclusive(uint32_t *cl, uint32_t *seq, const uint32_t *waiters, uint32_t i)
{
    if (cl[i] != CL_EXCL) return -1;
    if (seq != NULL) slk_seq_bump(seq, i);
    cl[i] = 0;
    return waiters[i] != 0;
}

/* The exclusive run calls refuse a repeated id before they change anything (a lock taken
 * twice would wait for itself; a counter moved twice would make its parity lie to
 * optimistic readers): one pass sets CL_MARK on each word it meets, and meeting a marked
 * one is a repeat; the marks are cleared again before the call goes on. No other thread
 * sees a mark: the call is one step for them. */
#define CL_MARK 0x40000000u

static int cl_repeat(uint32_t *cl, uint32_t nlocks, const uint32_t *ids, uint32_t n)
{
    int rc = 0;
    uint32_t k = 0;
    for (; k < n; k++)                      /* an id beyond the words first, as Python */
        if (ids[k] >= nlocks) return -(int)k - 1;
    for (k = 0; k < n; k++) {
        if (cl[ids[k]] & CL_MARK) { rc = -(int)k - 1; break; }
        cl[ids[k]] |= CL_MARK;
    }
    for (uint32_t j = 0; j < k; j++) cl[ids[j]] &= ~CL_MARK;
    return rc;
}

/* slk_cl_try_exclusive of each of the n distinct ids (the counters moved in one pass);
 * the ids held by someone are written to busy, in order; returns how many were taken. */
int slk_cl_try_exclusive_many(uint32_t *cl, uint32_t *seq, uint32_t nlocks,
                              const uint32_t *ids, uint32_t n, uint32_t *busy)
{
    uint32_t taken = 0, nbusy = 0;
    int rc = cl_repeat(cl, nlocks, ids, n);
    if (rc) return rc;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = ids[k];
        if (cl[i] != 0) { busy[nbusy++] = i; continue; }
        cl[i] = CL_EXCL;
        taken++;
    }
    if (seq != NULL && taken) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        for (uint32_t k = 0, b = 0; k < n; k++)
            if (b < nbusy && busy[b] == ids[k]) b++;
            else __atomic_fetch_add(seq + ids[k], 1u, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    return (int)taken;
}

/* slk_cl_release_exclusive of each of the n distinct ids, all held exclusively and none
 * repeated (checked first); the ids someone waits on are written to notify; returns how
 * many. */
int slk_cl_release_exclusive_many(uint32_t *cl, uint32_t *seq, const uint32_t *waiters,
                                  uint32_t nlocks, const uint32_t *ids, uint32_t n,
                                  uint32_t *notify)
{
    uint32_t nn = 0;
    int rc = cl_repeat(cl, nlocks, ids, n);
    if (rc) return rc;
    for (uint32_t k = 0; k < n; k++)
        if (cl[ids[k]] != CL_EXCL) return -(int)k - 1;
    if (seq != NULL) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        for (uint32_t k = 0; k < n; k++)
            __atomic_fetch_add(seq + ids[k], 1u, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = ids[k];
        cl[i] = 0;
        if (waiters[i] != 0) notify[nn++] = i;
    }
    return (int)nn;
}

static inline int seq_same(const uint32_t *seq, uint32_t b, uint32_t seen)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);   /* the page's loads before the re-load */
    return __atomic_load_n(seq + b, __ATOMIC_RELAXED) == seen;
}

/* Loaded exactly once (a torn page can change between two loads): the page is
 * BLCKSZ-aligned in the pool, pd_lower/pd_upper 2-aligned, line pointers 4-aligned. */
static inline uint32_t once16(const uint8_t *p) { return *(const volatile uint16_t *)(const void *)p; }
static inline uint32_t once32(const uint8_t *p) { return *(const volatile uint32_t *)(const void *)p; }

/* tuple.slot_tuple's checks of one slot, safe on a torn page: 1 and the item's offset and
 * length, 0 when the slot holds no NORMAL tuple, -1 for a flawed slot (pd_lower past the
 * page, a line pointer outside [pd_upper, BLCKSZ), a data length that disagrees). */
static int heap_slot_once(const uint8_t *page, uint32_t offnum, uint32_t *off_out,
                          uint32_t *len_out)
{
    uint32_t lower = once16(page + 14), upper = once16(page + 16);
    if (lower > BLCKSZ) return -1;
    if (lower == 0 || offnum < 1 || offnum > BLCKSZ / 4) return 0;
    uint32_t lp_at = HEADER_SIZE + (offnum - 1) * 4u;
    if (lp_at + 4 > lower) return 0;
    uint32_t lp = once32(page + lp_at);
    if (((lp >> 15) & 3) != 1) return 0;
    uint32_t off = lp & 0x7fff, len = lp >> 17;
    if (off < upper || off + len > BLCKSZ || len < SLK_TUPLE_HDR) return -1;
    if (load32(page + off + 18) != len - SLK_TUPLE_HDR) return -1;
    *off_out = off;
    *len_out = len;
    return 1;
}

/* heap_fetch.fetch_tuple's read of pool buffer b without its share lock: the data length
 * (the data in out, meta[0..2] = xmin, xmax, flags), -1 when the slot holds no tuple,
 * SLK_OPT_RETRY when a writer held the page meanwhile or the slot is flawed (the locked
 * path decides, and raises for a flawed slot). */
int64_t slk_heap_fetch_opt(const uint8_t *pool, const uint32_t *seq, uint32_t b,
                           uint32_t offnum, uint8_t *out, uint32_t out_cap, uint64_t *meta)
{
    const uint8_t *page = pool + (size_t)b * BLCKSZ;
    uint32_t seen = __atomic_load_n(seq + b, __ATOMIC_ACQUIRE);
    if (seen & 1) return SLK_OPT_RETRY;
    uint32_t off = 0, len = 0;
    int got = heap_slot_once(page, offnum, &off, &len);
    if (got < 0) return SLK_OPT_RETRY;
    int64_t ret = -1;
    if (got > 0) {
        uint32_t dlen = len - SLK_TUPLE_HDR;
        if (dlen > out_cap) return SLK_OPT_RETRY;
        meta[0] = load64(page + off);
        meta[1] = load64(page + off + 8);
        meta[2] = load16(page + off + 16);
        memcpy(out, page + off + SLK_TUPLE_HDR, dlen);
        ret = dlen;
    }
    return seq_same(seq, b, seen) ? ret : SLK_OPT_RETRY;
}

/* slk_heap_gather over pool buffers bufs[0..npages) without their share locks (seen:
 * npages of scratch): the bytes written, or SLK_OPT_RETRY when a writer held one of the
 * pages meanwhile, a request names a page outside the list, a slot is flawed or out is
 * too small (the caller then share-locks the pages and runs slk_heap_gather). */
int64_t slk_heap_gather_opt(const uint8_t *pool, const uint32_t *seq, const uint32_t *bufs,
                            int npages, uint32_t *seen, const uint32_t *page_of,
                            const uint16_t *offnums, int n, uint64_t snap_xmax, uint64_t own,
                            const uint64_t *excluded, int nexcluded, uint8_t *out,
                            uint32_t out_cap, uint8_t *status, uint32_t *start, uint32_t *end)
{
    for (int p = 0; p < npages; p++) {
        seen[p] = __atomic_load_n(seq + bufs[p], __ATOMIC_ACQUIRE);
        if (seen[p] & 1) return SLK_OPT_RETRY;
    }
    uint32_t pos = 0;
    for (int k = 0; k < n; k++) {
        status[k] = 0;
        start[k] = end[k] = pos;
        if (page_of[k] >= (uint32_t)npages) return SLK_OPT_RETRY;
        const uint8_t *page = pool + (size_t)bufs[page_of[k]] * BLCKSZ;
        uint32_t off = 0, len = 0;
        int got = heap_slot_once(page, offnums[k], &off, &len);
        if (got < 0) return SLK_OPT_RETRY;
        if (got == 0) continue;
        if (!gather_tuple(page, off, len, snap_xmax, own, excluded, nexcluded, out, out_cap,
                          &pos, status + k, end + k))
            return SLK_OPT_RETRY;
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    for (int p = 0; p < npages; p++)
        if (__atomic_load_n(seq + bufs[p], __ATOMIC_RELAXED) != seen[p]) return SLK_OPT_RETRY;
    return (int64_t)pos;
}

/* slk_ix_point on pool buffer b without its share lock: the page is copied whole and the
 * copy used once the counter shows no writer held it meanwhile (a B+tree leaf search is
 * not written for torn pages); SLK_OPT_RETRY otherwise. */
int slk_ix_point_opt(const uint8_t *pool, const uint32_t *seq, uint32_t b,
                     const uint8_t *prefix, uint32_t plen, int maxn, uint32_t *ents,
                     uint32_t *out)
{
    uint8_t copy[BLCKSZ];
    uint32_t seen = __atomic_load_n(seq + b, __ATOMIC_ACQUIRE);
    if (seen & 1) return SLK_OPT_RETRY;
    memcpy(copy, pool + (size_t)b * BLCKSZ, BLCKSZ);
    if (!seq_same(seq, b, seen)) return SLK_OPT_RETRY;
    return slk_ix_point(copy, prefix, plen, maxn, ents, out);
}

/* slk_bt_probe on pool buffer b without its share lock (the KV point read's leaf): the
 * page is copied whole to ``copy`` (BLCKSZ bytes of the caller's) and probed there once
 * the counter shows no writer held it meanwhile, so the versions' offsets are into the
 * copy; SLK_OPT_RETRY otherwise. */
int slk_bt_probe_opt(const uint8_t *pool, const uint32_t *seq, uint32_t b,
                     const uint8_t *key, uint32_t keylen, uint64_t *out, int maxv,
                     uint8_t *copy)
{
    uint32_t seen = __atomic_load_n(seq + b, __ATOMIC_ACQUIRE);
    if (seen & 1) return SLK_OPT_RETRY;
    memcpy(copy, pool + (size_t)b * BLCKSZ, BLCKSZ);
    if (!seq_same(seq, b, seen)) return SLK_OPT_RETRY;
    return slk_bt_probe(copy, key, keylen, out, maxv);
}

/* --- KV point read in place ---
 * slk_bt_probe_opt without the whole-page copy (8 KiB from a cold pool page was most of a
 * warm get's C time): slk_bt_probe's steps run on the pool page itself, every value that
 * decides an address, a length or a loop bound loaded exactly once (volatile: a torn page
 * can change between two loads) and bounds-checked before use, every loop bounded by the
 * line-pointer count taken once; only the items of the versions reported (at most maxv)
 * are copied to ``copy`` at their own offsets (so the caller slices values from ``copy``
 * with the reported offsets, as after slk_bt_probe_opt), then the counter is re-checked:
 * changed (or odd before) -> SLK_OPT_RETRY, else slk_bt_probe's answer on that page.
 * tests/engine/test_optimistic_reads.py compares it with slk_bt_probe on random and
 * garbled leaves. */
static inline uint32_t vload16u(const uint8_t *p)   /* any alignment, little-endian */
{
    const volatile uint8_t *q = p;
    return (uint32_t)q[0] | ((uint32_t)q[1] << 8);
}

static inline uint32_t vload8(const uint8_t *p) { return *(const volatile uint8_t *)p; }

/* bt_item, the line pointer loaded once. */
static int btv_item(const uint8_t *page, int offnum, int lower, uint32_t *off, uint32_t *len)
{
    uint32_t at = HEADER_SIZE + 4u * (uint32_t)(offnum - 1);
    if (at + 4 > (uint32_t)lower) return -1;
    uint32_t lp = once32(page + at);
    uint32_t o = lp & 0x7fff, l = lp >> 17;
    if (((lp >> 15) & 3) != 1 || o < HEADER_SIZE || o + l > BT_SPECIAL_AT) return -1;
    *off = o;
    *len = l;
    return 0;
}

/* memcmp order of (an item's key of ikeylen bytes at a, key), bytes read once each. */
static int btv_keycmp(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen)
{
    uint32_t n = alen < blen ? alen : blen;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t x = vload8(a + i), y = b[i];
        if (x != y) return x < y ? -1 : 1;
    }
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

int slk_bt_probe_inplace(const uint8_t *pool, const uint32_t *seq, uint32_t b,
                         const uint8_t *key, uint32_t keylen, uint64_t *out, int maxv,
                         uint8_t *copy)
{
    uint32_t seen = __atomic_load_n(seq + b, __ATOMIC_ACQUIRE);
    if (seen & 1) return SLK_OPT_RETRY;
    const uint8_t *page = pool + (size_t)b * BLCKSZ;
    int n = 0;
    /* bt_bounds */
    uint32_t lower = once16(page + 14);
    uint32_t upper_special = once16(page + 18);
    uint32_t next = once32(page + BT_SPECIAL_AT + 4);
    uint32_t level = once32(page + BT_SPECIAL_AT + 8);
    uint32_t flags = once16(page + BT_SPECIAL_AT + 12);
    uint32_t pad = once16(page + BT_SPECIAL_AT + 14);
    if (upper_special != BT_SPECIAL_AT || lower < HEADER_SIZE || lower > BT_SPECIAL_AT ||
        (lower - HEADER_SIZE) % 4 || level != 0) {
        n = -1;
        goto done;
    }
    int count = (int)((lower - HEADER_SIZE) / 4);
    int first = next == 0 ? 1 : 2;
    if (!(flags & 0x5) || pad || (flags & ~0x3fu)) { n = -1; goto done; }  /* as slk_bt_probe */
    out[0] = next;
    out[1] = 0;
    if (flags & 0x4) { out[1] = 1; goto done; }          /* BTP_DELETED: move right */
    int hk_same = 0;
    if (first == 2) {
        uint32_t off, len;
        if (btv_item(page, 1, (int)lower, &off, &len) < 0 || len < BT_PIVOT_HDR) { n = -1; goto done; }
        uint32_t hklen = vload16u(page + off + 13);
        if (BT_PIVOT_HDR + hklen > len) { n = -1; goto done; }
        int c = -btv_keycmp(page + off + BT_PIVOT_HDR, hklen, key, keylen);
        uint64_t hxmin;
        memcpy(&hxmin, page + off + 4, 8);
        if (c > 0 || (c == 0 && hxmin == UINT64_MAX)) { out[1] = 1; goto done; }
        hk_same = c == 0;
    }
    /* slk_bt_search(page, key, keylen, UINT64_MAX, upper=0) on a leaf */
    int lo = first, hi = count + 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        uint32_t off, len;
        if (btv_item(page, mid, (int)lower, &off, &len) < 0 || len < BT_LEAF_HDR) { n = -1; goto done; }
        const uint8_t *it = page + off;
        uint32_t ikeylen = vload16u(it + BT_LEAF_HDR - 2);
        if (BT_LEAF_HDR + ikeylen > len) { n = -1; goto done; }
        uint64_t ixmin;
        memcpy(&ixmin, it, 8);
        int c = btv_keycmp(it + BT_LEAF_HDR, ikeylen, key, keylen);
        if (c == 0) c = ixmin > UINT64_MAX ? -1 : ixmin < UINT64_MAX ? 1 : 0;
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    int k;
    for (k = lo; k <= count; k++) {
        uint32_t off, len;
        if (btv_item(page, k, (int)lower, &off, &len) < 0 || len < BT_LEAF_HDR) { n = -1; goto done; }
        const uint8_t *it = page + off;
        uint32_t ikeylen = vload16u(it + 17);
        uint32_t eflags = vload8(it + 16);
        if (BT_LEAF_HDR + ikeylen > len || (eflags & ~0x1u)) { n = -1; goto done; }
        if (btv_keycmp(it + BT_LEAF_HDR, ikeylen, key, keylen) != 0) break;
        if (n < maxv) {
            uint64_t *v = out + 2 + 5 * n;
            memcpy(copy + off, it, len);    /* the item, at its own offset */
            v[0] = off; v[1] = len; memcpy(&v[2], copy + off, 8); memcpy(&v[3], copy + off + 8, 8);
            v[4] = eflags;
        }
        n++;
    }
    if (k > count && hk_same) out[1] |= 2;
done:
    if (!seq_same(seq, b, seen)) return SLK_OPT_RETRY;
    return n;
}

/* --- point probe --- (engine/index.py: point_right_py is the Python reference;
 * tests/engine/test_index_point_probe.py compares them)
 * slk_ix_point answers -2 ("walk the leaves") on a leaf whose high key starts with the
 * prefix. A unique key whose entry begins the right sibling (the leaf split exactly at
 * it) gets that answer on the leaf the descent reaches, which holds no entry of the key:
 * slk_ix_point_right names that case, so a point read moves right instead of walking. */
#define SLK_IX_POINT_RIGHT (-4)

/* The right-link of a live leaf (flags LEAF, not DELETED, a right sibling) that holds no
 * entry whose key starts with prefix and whose high key starts with it; 0 (P_NONE) when
 * the page is not that case; -1 for a page that cannot be read safely. */
int64_t slk_ix_point_right(const uint8_t *page, const uint8_t *prefix, uint32_t plen)
{
    int first, count, leaf;
    int lower = bt_bounds(page, &first, &count, &leaf);
    if (lower < 0) return -1;
    uint16_t flags = load16(page + BT_SPECIAL_AT + 12);
    if (load16(page + BT_SPECIAL_AT + 14) || (flags & ~0x3f)) return -1;
    uint32_t nxt = load32(page + BT_SPECIAL_AT + 4);
    if ((flags & 0x4) || !(flags & 0x1) || nxt == 0) return 0;
    if (!leaf) return -1;                       /* flagged a leaf, but not at level 0 */
    uint32_t off, len;                          /* nxt != 0: the high key is offnum 1 */
    if (bt_item(page, 1, lower, &off, &len) < 0 || len < BT_PIVOT_HDR) return -1;
    uint32_t hklen = load16(page + off + 13);
    if (BT_PIVOT_HDR + hklen != len || (page[off + 12] & ~1)) return -1;
    if (hklen < plen || memcmp(page + off + BT_PIVOT_HDR, prefix, plen) != 0) return 0;
    int pos = slk_bt_search(page, prefix, plen, UINT64_MAX, 0);   /* first entry >= prefix */
    if (pos < 0) return -1;
    if (pos <= count) {
        if (bt_item(page, pos, lower, &off, &len) < 0 || len < BT_LEAF_HDR) return -1;
        uint32_t klen = load16(page + off + 17);
        if (BT_LEAF_HDR + klen > len) return -1;
        if (klen >= plen && memcmp(page + off + BT_LEAF_HDR, prefix, plen) == 0) return 0;
    }
    return nxt;
}

/* slk_ix_point_opt, and SLK_IX_POINT_RIGHT with out[0] = the right-link when its -2 is
 * slk_ix_point_right's case (judged on the same consistent copy of the page). */
int slk_ix_point_step_opt(const uint8_t *pool, const uint32_t *seq, uint32_t b,
                          const uint8_t *prefix, uint32_t plen, int maxn, uint32_t *ents,
                          uint32_t *out)
{
    uint8_t copy[BLCKSZ];
    uint32_t seen = __atomic_load_n(seq + b, __ATOMIC_ACQUIRE);
    if (seen & 1) return SLK_OPT_RETRY;
    memcpy(copy, pool + (size_t)b * BLCKSZ, BLCKSZ);
    if (!seq_same(seq, b, seen)) return SLK_OPT_RETRY;
    int n = slk_ix_point(copy, prefix, plen, maxn, ents, out);
    if (n == -2) {
        int64_t right = slk_ix_point_right(copy, prefix, plen);
        if (right > 0) {
            out[0] = (uint32_t)right;
            return SLK_IX_POINT_RIGHT;
        }
    }
    return n;
}

/* A point read's descent (engine/access/btree.py: BTree._leaf_for is the reference;
 * tests/engine/test_btree_descend.py compares them): the leaf block for (key, xmin) by
 * immutable copies of internal pages (pages[b]: block b's copy, NULL when not among them,
 * b < npages) from root, one slk_bt_locate per level, moving right at -2, each page's
 * level checked against its parent's as _leaf_for checks it. -1 when a block on the way
 * is not among the copies (a lone root leaf included), a page cannot be read safely,
 * the levels disagree, or the walk passes SLK_BT_DESCEND_STEPS pages: _leaf_for then
 * decides, and raises naming a bad page. */
#define SLK_BT_DESCEND_STEPS 64
int64_t slk_bt_descend(const uint8_t *const *pages, uint32_t npages, uint32_t root,
                       const uint8_t *key, uint32_t keylen, uint64_t xmin)
{
    uint32_t block = root, expect = 0;          /* expect 0: no parent yet */
    for (int step = 0; step < SLK_BT_DESCEND_STEPS; step++) {
        if (block >= npages || pages[block] == NULL) return -1;
        const uint8_t *page = pages[block];
        uint32_t level = load32(page + BT_SPECIAL_AT + 8);
        if (level == 0 || (expect && level != expect)) return -1;
        int64_t found = slk_bt_locate(page, key, keylen, xmin);
        if (found == -1) return -1;
        if (found == -2) {                      /* >= the high key: move right */
            block = load32(page + BT_SPECIAL_AT + 4);
            expect = level;
            continue;
        }
        if (level == 1) return found;
        expect = level - 1;
        block = (uint32_t)found;
    }
    return -1;
}

/* --- index batch TIDs --- (engine/index.py: batch_tids_py is the Python reference;
 * tests/engine/test_index_batch_c.py compares them)
 * An index scan's batch of n whole entry keys, joined in keys[0..len): key k ends at
 * ends[k] and starts at ends[k-1] (0 for the first); its last 6 bytes are the heap TID
 * (block u32 BE, offnum u16 BE). Per key, in out (5 * n u32, five runs of n, so one
 * Python tolist takes them all): cut[k] = its length without the TID, block[k] and
 * offnum[k] as stored; the heap request page_of[k] (index into distinct[], the distinct
 * blocks below nblocks in order of first appearance, *ndistinct of them) and req_off[k]
 * = offnum, or page_of 0 and req_off 0 (no tuple: offnum 0 is never one) for a block at
 * or past nblocks. Returns how many keys point at or past nblocks; -1 when a
 * key is shorter than the TID or the ends are not ascending within len; -2 when n is
 * outside [0, SLK_IX_TIDS_MAX] (the caller splits the batch). */
#define SLK_IX_TIDS_MAX 512
#define SLK_IX_TIDS_SLOTS (2 * SLK_IX_TIDS_MAX)   /* a power of two: at most half full */

int slk_ix_batch_tids(const uint8_t *keys, uint32_t len, const uint32_t *ends, int n,
                      uint32_t nblocks, uint32_t *out, uint32_t *distinct, int *ndistinct)
{
    uint16_t slot[SLK_IX_TIDS_SLOTS];   /* 1 + index into distinct, 0: empty */
    uint32_t prev = 0;
    int nd = 0, past = 0;
    *ndistinct = 0;
    if (n < 0 || n > SLK_IX_TIDS_MAX) return -2;
    uint32_t *cut = out, *block = out + n, *offnum = out + 2 * n, *page_of = out + 3 * n,
             *req_off = out + 4 * n;
    memset(slot, 0, sizeof slot);
    for (int k = 0; k < n; k++) {
        uint32_t e = ends[k];
        if (e < prev || e > len || e - prev < 6) return -1;
        const uint8_t *t = keys + e - 6;
        uint32_t b = ((uint32_t)t[0] << 24) | ((uint32_t)t[1] << 16) |
                     ((uint32_t)t[2] << 8) | t[3];
        uint32_t o = ((uint32_t)t[4] << 8) | t[5];
        cut[k] = e - prev - 6;
        block[k] = b;
        offnum[k] = o;
        prev = e;
        if (b >= nblocks) {
            page_of[k] = 0;
            req_off[k] = 0;
            past++;
            continue;
        }
        uint32_t h = (b * 2654435761u) & (SLK_IX_TIDS_SLOTS - 1);
        while (slot[h] && distinct[slot[h] - 1] != b) h = (h + 1) & (SLK_IX_TIDS_SLOTS - 1);
        if (!slot[h]) {
            distinct[nd] = b;
            slot[h] = (uint16_t)++nd;
        }
        page_of[k] = slot[h] - 1u;
        req_off[k] = o;
    }
    *ndistinct = nd;
    return past;
}

/* --- run copy of pinned pages (seqlock) --- (storage/bufmgr.py: copy_release, with the
 * Python reference seq_copy_pages_py; tests/storage/test_seq_copy.py compares them)
 * Copies the pages of buffers bufs[0..n-1] (pinned and VALID: never evicted, never read
 * into) one after the other into out (n * BLCKSZ bytes), each under its change counter as
 * the optimistic reads above: counter loaded (odd: stop), page copied, acquire fence,
 * counter re-loaded (changed: stop). Returns how many leading pages were copied whole and
 * consistent; the caller copies the rest under share locks. A buffer id not below
 * nbuffers also stops the copy (the caller's own lookup then raises). */
uint32_t slk_seq_copy_pages(const uint8_t *pool, const uint32_t *seq, uint32_t nbuffers,
                            const uint32_t *bufs, uint32_t n, uint8_t *out)
{
    for (uint32_t k = 0; k < n; k++) {
        uint32_t b = bufs[k];
        if (b >= nbuffers)
            return k;
        uint32_t seen = __atomic_load_n(seq + b, __ATOMIC_ACQUIRE);
        if (seen & 1u)
            return k;
        memcpy(out + (size_t)k * BLCKSZ, pool + (size_t)b * BLCKSZ, BLCKSZ);
        if (!seq_same(seq, b, seen))
            return k;
    }
    return n;
}

/* --- index range leaf keys --- (engine/index.py: leaf_keys_py is the Python reference;
 * tests/engine/test_index_batch_c.py compares them)
 * The keys of slk_bt_extract's n entries ents (4 u32 per entry: key start, key end, value
 * end, flags) of page, copied back to back to dst + at, and their ends (offsets into dst,
 * continuing from at) to ends[0..n): a range scan's leaf keys as slk_ix_batch_tids takes
 * them, with no bytes object per key. Returns at + the bytes copied; -1 when an entry's
 * offsets are not ordered inside the page (key start <= key end <= value end <= BLCKSZ),
 * with nothing past the last good key written. */
int slk_ix_leaf_keys(const uint8_t *page, const uint32_t *ents, int n, uint8_t *dst,
                     uint32_t at, uint32_t *ends)
{
    for (int i = 0; i < n; i++) {
        uint32_t ks = ents[4 * i], ke = ents[4 * i + 1], ve = ents[4 * i + 2];
        if (!(ks <= ke && ke <= ve && ve <= BLCKSZ)) return -1;
        memcpy(dst + at, page + ks, ke - ks);
        at += ke - ks;
        ends[i] = at;
    }
    return (int)at;
}

/* --- index range fetch --- (engine/access/heap_fetch.py: gather_rows_py is the Python
 * reference; tests/engine/test_range_fetch_c.py compares them)
 * An index scan's batch in one call: slk_heap_gather_opt's judgement of the tuples at
 * (page_of[k], offnums[k]) for k < n over pool buffers bufs[0..npages) read without
 * content locks (the caller keeps each VALID and holding its block: pins, or the
 * descriptor lock), the visible ones' data copied to out one after another (visible tuple
 * m is request sel[m], its data out[vstart[m], vend[m])), the change counters re-checked,
 * then the index's re-check of each row's key against its entry (below) and
 * slk_row_layout over the rows kept (its result in *layout; 0 when none is kept), so the
 * row decoder gets its column arrays without a second call. Offnums are u32 as
 * slk_ix_batch_tids writes them (0: no tuple). Returns the count kept, or SLK_OPT_RETRY
 * when a writer held a page meanwhile, a request names a page outside the list, a slot
 * is flawed or out is too small (the caller takes the locked path, which decides or
 * raises naming the slot).
 *
 * The key re-check (nkey > 0): request k's entry key is keys[key_ends[k-1], key_ends[k])
 * (key_ends[-1] = 0) less its 6-byte TID; a visible row is kept only when its key
 * columns, encoded as engine/access/keycodec.py encodes them, are exactly that (a slot
 * reused since the entry was read holds another key). Key column c is schema column
 * key_cols[c] (its NULL bit), of kind key_kinds[c] (0 int8, 1 float8, 2 bool, 3 text or
 * bytea) at key_at[c] (fixed kinds: byte offset in the fixed part; text/bytea: index
 * among the variable-width columns). A row that would not decode (lengths that do not
 * add up, a text value that is not UTF-8 as Python's strict decoder judges it: var_text[j]
 * says which variable-width columns are text) is kept whatever its key, so the caller's
 * decode raises naming it exactly as when the re-check ran after decoding. */
#define RK_INT8 0
#define RK_FLOAT8 1
#define RK_BOOL 2

/* Python's strict UTF-8 decoder's verdict on s[0, n): no overlong forms, surrogates or
 * code points past U+10FFFF, no truncated sequence. */
static int utf8_ok(const uint8_t *s, uint64_t n)
{
    uint64_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        uint32_t need, cp, min;
        if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 0x1F; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; cp = c & 0x0F; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (n - i <= need) return 0;
        for (uint32_t j = 1; j <= need; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += need + 1;
    }
    return 1;
}

/* 1 when the row at row[0, rowlen) (tuple.py's row format) would not decode: its lengths
 * do not add up, or a text value is not UTF-8. */
static int row_flawed(const uint8_t *row, uint32_t rowlen, int nb, uint32_t fixed_size,
                      int nvar, const uint8_t *var_text)
{
    uint64_t head = (uint64_t)nb + fixed_size + 4u * (uint64_t)nvar, off = head;
    if (rowlen < head) return 1;
    const uint8_t *lens = row + nb + fixed_size;
    for (int j = 0; j < nvar; j++) off += load32(lens + 4 * j);
    if (off != rowlen) return 1;
    off = head;
    for (int j = 0; j < nvar; j++) {
        uint64_t len = load32(lens + 4 * j);
        if (var_text[j] && !utf8_ok(row + off, len)) return 1;
        off += len;
    }
    return 0;
}

/* 1 when the row at row[0, rowlen) (tuple.py's row format) encodes to key[0, keylen). */
static int row_key_is(const uint8_t *row, uint32_t rowlen, int nb, uint32_t fixed_size,
                      int nvar, int nkey, const uint8_t *kinds, const uint16_t *cols,
                      const uint32_t *at, const uint8_t *key, uint32_t keylen)
{
    uint32_t head = (uint32_t)nb + fixed_size + 4u * (uint32_t)nvar, p = 0;
    if (rowlen < head) return 1;                 /* malformed: the decode raises */
    const uint8_t *lens = row + nb + fixed_size;
    for (int c = 0; c < nkey; c++) {
        uint32_t col = cols[c];
        if ((int)(col >> 3) < nb && (row[col >> 3] >> (col & 7)) & 1) {
            if (p >= keylen || key[p] != 0x02) return 0;
            p++;
            continue;
        }
        if (p >= keylen || key[p] != 0x01) return 0;
        p++;
        if (kinds[c] == RK_INT8 || kinds[c] == RK_FLOAT8) {
            if (at[c] + 8 > fixed_size) return 1;
            uint64_t v = load64(row + nb + at[c]);
            if (kinds[c] == RK_INT8) {
                v ^= (uint64_t)1 << 63;
            } else {
                double d;
                memcpy(&d, &v, 8);
                if (d != d) v = 0x7FF8000000000000ull;     /* every NaN as one */
                else if (d == 0.0) v = 0;                   /* -0.0 as 0.0 */
                v = (v >> 63) ? ~v : (v | ((uint64_t)1 << 63));
            }
            if (keylen - p < 8) return 0;
            for (int sh = 56; sh >= 0; sh -= 8)
                if (key[p++] != (uint8_t)(v >> sh)) return 0;
        } else if (kinds[c] == RK_BOOL) {
            if (at[c] + 1 > fixed_size) return 1;
            if (p >= keylen || key[p] != (row[nb + at[c]] ? 1 : 0)) return 0;
            p++;
        } else {
            if ((int)at[c] >= nvar) return 1;
            uint64_t off = head;
            for (uint32_t j = 0; j < at[c]; j++) off += load32(lens + 4 * j);
            uint64_t len = load32(lens + 4 * at[c]);
            if (off + len > rowlen) return 1;
            const uint8_t *v = row + off;
            for (uint64_t i = 0; i < len; i++) {
                if (p >= keylen || key[p] != v[i]) return 0;
                p++;
                if (v[i] == 0) {
                    if (p >= keylen || key[p] != 0xff) return 0;
                    p++;
                }
            }
            if (keylen - p < 2 || key[p] != 0 || key[p + 1] != 1) return 0;
            p += 2;
        }
    }
    return p == keylen;
}

int slk_ix_range_rows(const uint8_t *pool, const uint32_t *seq, const uint32_t *bufs,
                      int npages, uint32_t *seen, const uint32_t *page_of,
                      const uint32_t *offnums, int n, uint64_t snap_xmax, uint64_t own,
                      const uint64_t *excluded, int nexcluded, uint8_t *out,
                      uint32_t out_cap, uint32_t *sel, uint32_t *vstart, uint32_t *vend,
                      int nb, int nfixed, const uint8_t *fixed_sizes, int nvar,
                      uint8_t *fixed_out, uint32_t *var_out, uint8_t *joined_out,
                      uint32_t *joined_len, uint8_t *joined_ok, int *layout,
                      const uint8_t *keys, const uint32_t *key_ends, int nkey,
                      const uint8_t *key_kinds, const uint16_t *key_cols,
                      const uint32_t *key_at, const uint8_t *var_text)
{
    *layout = 0;
    for (int p = 0; p < npages; p++) {
        seen[p] = __atomic_load_n(seq + bufs[p], __ATOMIC_ACQUIRE);
        if (seen[p] & 1) return SLK_OPT_RETRY;
    }
    /* The pages of a scattered batch are mostly not in the CPU caches: ask for every
     * request's page header and line pointer, then (those in) for its tuple, before
     * reading any, so the misses overlap instead of coming one after another. Prefetches
     * are hints (no fault, no effect on what is read); addresses stay inside the page. */
    for (int k = 0; k < n; k++) {
        if (page_of[k] >= (uint32_t)npages) continue;
        const uint8_t *page = pool + (size_t)bufs[page_of[k]] * BLCKSZ;
        __builtin_prefetch(page + 14);
        if (offnums[k] >= 1 && offnums[k] <= (BLCKSZ - HEADER_SIZE) / 4)
            __builtin_prefetch(page + HEADER_SIZE + (offnums[k] - 1) * 4u);
    }
    for (int k = 0; k < n; k++) {
        if (page_of[k] >= (uint32_t)npages) continue;
        if (offnums[k] < 1 || offnums[k] > (BLCKSZ - HEADER_SIZE) / 4) continue;
        const uint8_t *page = pool + (size_t)bufs[page_of[k]] * BLCKSZ;
        uint32_t at = once32(page + HEADER_SIZE + (offnums[k] - 1) * 4u) & 0x7fff;
        __builtin_prefetch(page + at);
        if (at + 64 < BLCKSZ) __builtin_prefetch(page + at + 64);
    }
    uint32_t pos = 0;
    int m = 0;
    for (int k = 0; k < n; k++) {
        if (page_of[k] >= (uint32_t)npages) return SLK_OPT_RETRY;
        const uint8_t *page = pool + (size_t)bufs[page_of[k]] * BLCKSZ;
        uint32_t off = 0, len = 0, s = pos, e = 0;
        uint8_t st = 0;
        int got = heap_slot_once(page, offnums[k], &off, &len);
        if (got < 0) return SLK_OPT_RETRY;
        if (got == 0) continue;
        if (!gather_tuple(page, off, len, snap_xmax, own, excluded, nexcluded, out, out_cap,
                          &pos, &st, &e))
            return SLK_OPT_RETRY;
        if (st == 2) {
            sel[m] = (uint32_t)k;
            vstart[m] = s;
            vend[m] = e;
            m++;
        }
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    for (int p = 0; p < npages; p++)
        if (__atomic_load_n(seq + bufs[p], __ATOMIC_RELAXED) != seen[p]) return SLK_OPT_RETRY;
    if (nkey > 0) {
        uint32_t fixed_size = 0;
        for (int c = 0; c < nfixed; c++) fixed_size += fixed_sizes[c];
        int kept = 0;
        for (int i = 0; i < m; i++) {
            uint32_t k = sel[i], ks = k ? key_ends[k - 1] : 0, ke = key_ends[k];
            const uint8_t *row = out + vstart[i];
            uint32_t rowlen = vend[i] - vstart[i];
            if (ke < ks + 6 ||
                row_key_is(row, rowlen, nb, fixed_size, nvar, nkey, key_kinds, key_cols,
                           key_at, keys + ks, ke - ks - 6) ||
                row_flawed(row, rowlen, nb, fixed_size, nvar, var_text)) {
                sel[kept] = sel[i];
                vstart[kept] = vstart[i];
                vend[kept] = vend[i];
                kept++;
            }
        }
        m = kept;
    }
    if (m)
        *layout = slk_row_layout(out, m, vstart, vend, nb, nfixed, fixed_sizes, nvar,
                                 fixed_out, var_out, joined_out, joined_len, joined_ok);
    return m;
}
/* --- leaf run apply --- (engine/access/btree_leafrun.py: leaf_run_py is the Python
 * reference; tests/storage/test_btree_leafrun.py compares them)
 * A run of version writes start.. (sorted by key, distinct keys) on one exclusive-locked
 * leaf, as one INSERT record's actions: per write, while it fits, a set-xmax action on
 * its old version (olds[j] > 0: that version must be on the page) appended to xout, then
 * (kinds[j]: 1 inline value, 2 overflow reference, 0 none) the new entry (xmin xids[j])
 * (olds[j] UINT64_MAX: OLD_LOOKUP; a key with no entry on this leaf has nothing to
 * supersede and goes on as olds[j] 0, one with versions here is handed back as LR_LOOKUP:
 * the reference judges which of them is committed)
 * appended to iout as an insert action at its offnum among the original items plus the
 * inserts before it. Write j's key is keys[key_at[j]..key_at[j+1]), its payload likewise.
 * state in: [0] room (bytes free), [1] inserts so far; out: [2] xout bytes, [3] iout
 * bytes, [4] why the run stopped (LR_* below). Returns the writes done, -1 for a page it
 * cannot read safely (the reference then runs and raises). */
#define LR_END 0          /* every write up to n done */
#define LR_HIGH 1         /* key >= the high key: it belongs right of this leaf */
#define LR_NO_OLD 2       /* the old version is not on this leaf */
#define LR_EXISTS 3       /* the new version (key, xid) is there already */
#define LR_NO_ROOM 4      /* the new entry does not fit */
#define LR_LOOKUP 5       /* old = OLD_LOOKUP: the reference judges the versions */
#define LR_FULL 6         /* an output buffer is full: the reference goes on */

static int lr_entry_is(const uint8_t *page, int lower, int off, const uint8_t *key,
                       uint32_t keylen, uint64_t xmin)
{
    uint32_t at, len;
    if (bt_item(page, off, lower, &at, &len) < 0 || len < BT_LEAF_HDR) return -1;
    const uint8_t *it = page + at;
    uint32_t ikeylen = load16(it + 17);
    if (BT_LEAF_HDR + ikeylen > len) return -1;
    return ikeylen == keylen && load64(it) == xmin && memcmp(it + BT_LEAF_HDR, key, keylen) == 0;
}

/* 1 when item off of the leaf has key ``key`` (any xmin), 0 when not, -1 malformed. */
static int lr_key_is(const uint8_t *page, int lower, int off, const uint8_t *key,
                     uint32_t keylen)
{
    uint32_t at, len;
    if (bt_item(page, off, lower, &at, &len) < 0 || len < BT_LEAF_HDR) return -1;
    const uint8_t *it = page + at;
    uint32_t ikeylen = load16(it + 17);
    if (BT_LEAF_HDR + ikeylen > len) return -1;
    return ikeylen == keylen && memcmp(it + BT_LEAF_HDR, key, keylen) == 0;
}

int slk_bt_leaf_run(const uint8_t *page, const uint8_t *high, int32_t highlen,
                    const uint8_t *keys, const uint64_t *key_at, const uint8_t *payloads,
                    const uint64_t *pay_at, const uint8_t *kinds, const uint64_t *xids,
                    const uint64_t *olds, int start, int n, int64_t *state,
                    uint8_t *xout, uint32_t xcap, uint8_t *iout, uint32_t icap)
{
    int first, count, leaf;
    int lower = bt_bounds(page, &first, &count, &leaf);
    if (lower < 0 || !leaf) return -1;
    int64_t room = state[0], inserted = state[1];
    uint8_t bidx = (uint8_t)state[5];                    /* the actions' block index */
    uint32_t xlen = 0, ilen = 0;
    int j, stop = LR_END;
    for (j = start; j < n; j++) {
        const uint8_t *key = keys + key_at[j];
        uint32_t keylen = (uint32_t)(key_at[j + 1] - key_at[j]);
        if (highlen >= 0) {
            uint32_t m = keylen < (uint32_t)highlen ? keylen : (uint32_t)highlen;
            int c = memcmp(key, high, m);
            if (c == 0) c = keylen < (uint32_t)highlen ? -1 : keylen > (uint32_t)highlen ? 1 : 0;
            if (c >= 0) { stop = LR_HIGH; break; }
        }
        uint64_t old = olds[j], xid = xids[j];
        if (old == UINT64_MAX) {                                    /* OLD_LOOKUP */
            int off = slk_bt_search(page, key, keylen, UINT64_MAX, 0);  /* its first entry */
            if (off < 0) return -1;
            int has = off <= count ? lr_key_is(page, lower, off, key, keylen) : 0;
            if (has < 0) return -1;
            if (has) { stop = LR_LOOKUP; break; }   /* versions to judge: the reference */
            old = 0;                                /* none on this leaf: a new key */
        }
        uint32_t xmark = xlen;
        if (old) {
            if (xlen + 16 > xcap) { stop = LR_FULL; break; }
            int off = slk_bt_search(page, key, keylen, old, 0);
            if (off < 0) return -1;
            int is = off <= count ? lr_entry_is(page, lower, off, key, keylen, old) : 0;
            if (is < 0) return -1;
            if (!is) { stop = LR_NO_OLD; break; }
            uint8_t *a = xout + xlen;
            uint32_t dlen = 10;
            uint16_t off16 = (uint16_t)off;
            a[0] = bidx; a[1] = 3;                           /* A_SET_XMAX */
            memcpy(a + 2, &dlen, 4);
            memcpy(a + 6, &off16, 2);
            memcpy(a + 8, &xid, 8);
            xlen += 16;
        }
        if (kinds[j]) {
            int off = slk_bt_search(page, key, keylen, xid, 0);
            if (off < 0) return -1;
            int is = off <= count ? lr_entry_is(page, lower, off, key, keylen, xid) : 0;
            if (is < 0) return -1;
            if (is) { xlen = xmark; stop = LR_EXISTS; break; }
            const uint8_t *pay = payloads + pay_at[j];
            uint32_t paylen = (uint32_t)(pay_at[j + 1] - pay_at[j]);
            uint32_t itemlen = BT_LEAF_HDR + keylen + paylen;
            int64_t cost = (int64_t)((itemlen + 7u) & ~7u) + 4;
            if (cost > room) { xlen = xmark; stop = LR_NO_ROOM; break; }
            if (ilen + 8 + itemlen > icap) { xlen = xmark; stop = LR_FULL; break; }
            room -= cost;
            uint8_t *a = iout + ilen;
            uint32_t dlen = 2 + itemlen;
            uint16_t off16 = (uint16_t)(off + inserted), klen16 = (uint16_t)keylen;
            uint64_t zero = 0;
            a[0] = bidx; a[1] = 2;                           /* A_INSERT */
            memcpy(a + 2, &dlen, 4);
            memcpy(a + 6, &off16, 2);
            memcpy(a + 8, &xid, 8);                          /* "<QQBH" xmin, xmax, flags, keylen */
            memcpy(a + 16, &zero, 8);
            a[24] = kinds[j] == 2 ? 1 : 0;                   /* ENTRY_OVERFLOW */
            memcpy(a + 25, &klen16, 2);
            memcpy(a + 27, key, keylen);
            memcpy(a + 27 + keylen, pay, paylen);
            ilen += 8 + itemlen;
            inserted++;
        }
    }
    state[0] = room;
    state[1] = inserted;
    state[2] = xlen;
    state[3] = ilen;
    state[4] = stop;
    return j - start;
}

/* A B+tree page rebuilt from items (engine/access/btree_page.py: bt_build's bytes, and
 * btree_wal.apply_action's A_INIT and A_SPLIT_LEFT, which call this first): code 1
 * (A_INIT) builds the page from the action's special space and items with LSN 0; code 4
 * (A_SPLIT_LEFT) keeps the page's first ``keep`` data items, puts the new item at ``new
 * index`` among them (-1 or below: none), the new high key first, the LSN kept. Returns 0
 * when done; -1 (nothing changed) for anything the Python twin might treat differently
 * (a malformed action or page, items that do not fit): it then runs and raises. */
static int bb_build(uint8_t *page, const uint8_t *special, const uint8_t *const *items,
                    const uint32_t *lens, int n, const uint8_t *lsn)
{
    static __thread uint8_t buf[BLCKSZ];
    uint32_t upper = BT_SPECIAL_AT, lower = HEADER_SIZE + 4u * (uint32_t)n;
    if (lower > BT_SPECIAL_AT) return -1;
    memset(buf, 0, BLCKSZ);
    for (int k = 0; k < n; k++) {
        uint32_t len = lens[k], a = (len + 7u) & ~7u;
        if (len == 0 || len > 0x7fff || a > upper || upper - a < lower) return -1;
        upper -= a;
        memcpy(buf + upper, items[k], len);
        uint32_t lp = upper | (1u << 15) | (len << 17);
        memcpy(buf + HEADER_SIZE + 4u * (uint32_t)k, &lp, 4);
    }
    uint16_t h[5] = {(uint16_t)lower, (uint16_t)upper, BT_SPECIAL_AT, PAGE_LAYOUT_VERSION, 0};
    memcpy(buf, lsn, 8);
    memcpy(buf + 14, h, 10);
    memcpy(buf + BT_SPECIAL_AT, special, 14);            /* prev, next, level, flags */
    memset(buf + BT_SPECIAL_AT + 14, 0, 2);
    memcpy(page, buf, BLCKSZ);
    return 0;
}

int slk_bt_apply_build(uint8_t *page, int code, const uint8_t *data, uint32_t len)
{
    const uint8_t *items[BLCKSZ / 4];
    uint32_t lens[BLCKSZ / 4];
    int n = 0;
    if (code == 1) {                                        /* A_INIT */
        static const uint8_t zero_lsn[8] = {0};
        if (len < 18) return -1;
        uint32_t count = load16(data + 16), pos = 18;
        if (count > BLCKSZ / 4) return -1;
        for (uint32_t k = 0; k < count; k++) {
            if (pos + 2 > len) return -1;
            uint32_t ilen = load16(data + pos);
            if (pos + 2 + ilen > len) return -1;
            items[n] = data + pos + 2;
            lens[n++] = ilen;
            pos += 2 + ilen;
        }
        if (pos != len) return -1;
        return bb_build(page, data, items, lens, n, zero_lsn);
    }
    if (code != 4 || len < 20) return -1;                   /* A_SPLIT_LEFT */
    uint32_t keep = load16(data), hklen = load16(data + 18);
    int16_t new_index;
    memcpy(&new_index, data + 2, 2);
    if (20 + hklen > len) return -1;
    /* the page as bt_special and bt_items accept it */
    uint32_t lower = load16(page + 14), pflags = load16(page + BT_SPECIAL_AT + 12);
    if (load16(page + 18) != BT_SPECIAL_AT || load16(page + BT_SPECIAL_AT + 14) ||
        (pflags & ~0x3fu) || lower < HEADER_SIZE || lower > BT_SPECIAL_AT ||
        (lower - HEADER_SIZE) % 4)
        return -1;
    uint32_t count = (lower - HEADER_SIZE) / 4;
    uint32_t first = load32(page + BT_SPECIAL_AT + 4) == 0 ? 1 : 2;
    uint32_t ndata = count >= first - 1 ? count - (first - 1) : 0;
    if (keep > ndata) return -1;
    if (new_index >= 0 && (uint32_t)new_index > keep) return -1;
    items[n] = data + 20;
    lens[n++] = hklen;
    for (uint32_t k = 0; k <= keep; k++) {
        if (new_index >= 0 && (uint32_t)new_index == k) {
            items[n] = data + 20 + hklen;
            lens[n++] = len - 20 - hklen;
        }
        if (k == keep) break;
        uint32_t off, ilen;
        if (bt_item(page, (int)(first + k), (int)lower, &off, &ilen) < 0) return -1;
        items[n] = page + off;
        lens[n++] = ilen;
    }
    /* every line pointer must be one bt_items accepts, kept or not */
    for (uint32_t k = 1; k <= count; k++) {
        uint32_t off, ilen;
        if (bt_item(page, (int)k, (int)lower, &off, &ilen) < 0) return -1;
    }
    uint8_t special[14], lsn[8];
    memcpy(special, data + 4, 14);                          /* prev, next, level, flags */
    memcpy(lsn, page, 8);
    return bb_build(page, special, items, lens, n, lsn);
}

/* How many actions block ``index`` has in a B+tree redo payload (engine/access/btree_wal.py
 * layout: index u8, code u8, length u32, data); *first gets the code of its first (0 if it
 * has none). -1: the layout is bad (decode_actions says how). */
int slk_bt_block_actions(const uint8_t *p, uint32_t len, int index, int *first)
{
    uint32_t pos = 0;
    int n = 0;
    *first = 0;
    while (pos < len) {
        if (len - pos < 6) return -1;
        uint32_t code = p[pos + 1], dlen = load32(p + pos + 2);
        if (dlen > len - pos - 6 || code < 1 || code > 8) return -1;
        if ((int)p[pos] == index && n++ == 0) *first = (int)code;
        pos += 6 + dlen;
    }
    return n;
}

/* Redo of block ``index``'s actions (slk_bt_block_actions counts them) on ``page``, as far
 * as C takes them: stretches of inserts and set-xmaxes (slk_bt_redo_actions_from), page
 * rebuilds (A_INIT, A_SPLIT_LEFT: slk_bt_apply_build), deletes (slk_bt_apply_delete),
 * set-prev and set-next. Returns how many were applied, in order; the action it stopped at
 * was refused and changed nothing: apply_action applies it (or raises naming the flaw). */
int slk_bt_redo_block(uint8_t *page, const uint8_t *p, uint32_t len, int index)
{
    int first, n = slk_bt_block_actions(p, len, index, &first), k = 0;
    if (n < 0) return 0;
    while (k < n) {
        k += slk_bt_redo_actions_from(page, p, len, index, k);
        if (k >= n) break;
        uint32_t pos = 0;                                   /* the block's action k */
        for (int seen = 0;; pos += 6 + load32(p + pos + 2))
            if ((int)p[pos] == index && seen++ == k) break;
        uint32_t code = p[pos + 1], dlen = load32(p + pos + 2);
        const uint8_t *data = p + pos + 6;
        if (code == 1 || code == 4) {                       /* A_INIT, A_SPLIT_LEFT */
            if (slk_bt_apply_build(page, (int)code, data, dlen) != 0) return k;
        } else if (code == 6) {                             /* A_DELETE */
            if (slk_bt_apply_delete(page, data, dlen) != 0) return k;
        } else if ((code == 5 || code == 8) && dlen >= 4) { /* A_SET_PREV, A_SET_NEXT */
            memcpy(page + BT_SPECIAL_AT + (code == 8 ? 4 : 0), data, 4);
        } else {
            return k;
        }
        k++;
    }
    return k;
}

/* A commit's validation (engine/access/btree_page.py: first_versions_py is the Python
 * reference): for sorted keys start.. below the leaf's high key (highlen -1: none), the
 * offnum of each key's first (newest) entry on the page, 0 when it has none, in out[k -
 * start]. Returns how many keys it answered (it stops at the first key >= the high key),
 * -1 for a page it cannot read safely. */
int slk_bt_first_versions(const uint8_t *page, const uint8_t *high, int32_t highlen,
                          const uint8_t *keys, const uint64_t *key_at, int start, int n,
                          uint32_t *out)
{
    int first, count, leaf;
    int lower = bt_bounds(page, &first, &count, &leaf);
    if (lower < 0 || !leaf) return -1;
    int j;
    for (j = start; j < n; j++) {
        const uint8_t *key = keys + key_at[j];
        uint32_t keylen = (uint32_t)(key_at[j + 1] - key_at[j]);
        if (highlen >= 0) {
            uint32_t m = keylen < (uint32_t)highlen ? keylen : (uint32_t)highlen;
            int c = memcmp(key, high, m);
            if (c == 0) c = keylen < (uint32_t)highlen ? -1 : keylen > (uint32_t)highlen ? 1 : 0;
            if (c >= 0) break;
        }
        int off = slk_bt_search(page, key, keylen, UINT64_MAX, 0);
        if (off < 0) return -1;
        uint32_t found = 0;
        if (off <= count) {
            uint32_t at, len;
            if (bt_item(page, off, lower, &at, &len) < 0 || len < BT_LEAF_HDR) return -1;
            uint32_t ikeylen = load16(page + at + 17);
            if (BT_LEAF_HDR + ikeylen > len) return -1;
            if (ikeylen == keylen && memcmp(page + at + BT_LEAF_HDR, key, keylen) == 0)
                found = (uint32_t)off;
        }
        out[j - start] = found;
    }
    return j - start;
}

/* --- leaf run extraction (KV ordered scans) --- (engine/access/btree_scanrun.py:
 * extract_run_py is the Python reference; tests/storage/test_btree_scanrun.py compares them)
 * A forward scan's look at a run of leaves in one call. pages[0..npages) are page copies
 * (BLCKSZ each) of blocks[0..npages). Each page is taken, in order, while it is a live
 * leaf (flags LEAF, not DELETED, no unknown flag, zero pad) whose block is the right-link
 * of the page taken before it (for the first: ``expect``; any block when expect < 0),
 * that slk_bt_extract reads (visible entries with start <= key < stop) with every entry
 * returned inline, and whose bytes surely fit (a page's gather is under BLCKSZ bytes and
 * 10 format characters an entry). A page taken has its entries' keys (with ``values``,
 * key and value) appended to dst and the struct format that cuts them to fmt (as
 * slk_bt_gather). The run ends after a page that ends the scan (an entry or its high key
 * reaches stop, or it has no right-link) and before a page not taken (the caller looks at
 * that one alone). res: [0] pages taken, [1] bytes in dst, [2] flags (1: the scan ends at
 * the last page taken; 8: every entry appended has key length res[3] and value length
 * res[4], 0 without values), [5] the last page taken's right-link (-1: none taken).
 * Returns the number of entries appended. */
int slk_bt_extract_run(const uint8_t *pages, int npages, const uint32_t *blocks,
                       int64_t expect, const uint8_t *start, int32_t startlen,
                       const uint8_t *stop, int32_t stoplen, uint64_t snap_xmax, uint64_t own,
                       const uint64_t *excluded, int nexcluded, int values, uint32_t *ents,
                       uint8_t *dst, uint32_t dst_cap, char *fmt, uint32_t fmt_cap,
                       int64_t *res)
{
    uint32_t pos = 0, fpos = 0, klen = 0, vlen = 0;
    int total = 0, taken = 0, uniform = 1, done = 0;
    int64_t next = expect;
    for (int k = 0; k < npages; k++) {
        const uint8_t *page = pages + (size_t)k * BLCKSZ;
        if (next >= 0 && blocks[k] != (uint32_t)next) break;
        uint32_t pflags = load16(page + BT_SPECIAL_AT + 12);
        if (!(pflags & 0x1) || (pflags & 0x4) || (pflags & ~0x3fu) ||
            load16(page + BT_SPECIAL_AT + 14))
            break;
        int f = 0;
        int n = slk_bt_extract(page, start, startlen, stop, stoplen, snap_xmax, own,
                               excluded, nexcluded, ents, &f);
        if (n < 0 || (f & 2)) break;
        if (pos + BLCKSZ > dst_cap || fpos + 10u * (uint32_t)n + 1 > fmt_cap) break;
        for (int i = 0; i < n; i++) {
            uint32_t ks = ents[4 * i], ke = ents[4 * i + 1], ve = ents[4 * i + 2];
            uint32_t kl = ke - ks, vl = values ? ve - ke : 0;
            if (total + i == 0) { klen = kl; vlen = vl; }
            else if (kl != klen || vl != vlen) uniform = 0;
            memcpy(dst + pos, page + ks, kl + vl);
            pos += kl + vl;
            fpos = (uint32_t)(bt_fmt_len(fmt + fpos, kl) - fmt);
            if (values) fpos = (uint32_t)(bt_fmt_len(fmt + fpos, vl) - fmt);
        }
        total += n;
        taken++;
        next = load32(page + BT_SPECIAL_AT + 4);
        if ((f & 1) || next == 0) { done = f & 1; break; }
    }
    fmt[fpos] = 0;
    res[0] = taken;
    res[1] = pos;
    res[2] = (done ? 1 : 0) | (uniform && total ? 8 : 0);
    res[3] = klen;
    res[4] = vlen;
    res[5] = taken ? next : -1;
    return total;
}

/* --- wal record build --- (wal/record.py: encode_fields is the Python reference, with
 * wal/xlog.py's copy_in for a record crossing pages (slk_wal_build_span);
 * wal/xlog.py's Wal.insert writes its image-less records with these,
 * engine/wal_build.py hands it over: wal/ may not import storage/) */
/* Write one WAL record at ring + at: the 32-byte header, nblocks 16-byte block reference
 * headers as given (no full-page images), the payload, and the CRC-32C of the whole with
 * its CRC field read as zero. Returns the record's length. The caller checked the bounds
 * (nblocks <= WAL_MAX_BLOCKS, the record fits where it goes). */
uint32_t slk_wal_build(uint8_t *ring, uint32_t at, uint64_t xid, uint64_t prev, uint8_t rmgr,
                       uint8_t info, const char *bhdrs, uint32_t nblocks,
                       const char *payload, uint32_t plen)
{
    uint8_t *p = ring + at;
    uint32_t total = WAL_RHDR + nblocks * WAL_BHDR + plen, zero = 0;
    memcpy(p, &total, 4);
    memcpy(p + 4, &zero, 4);
    memcpy(p + 8, &xid, 8);
    memcpy(p + 16, &prev, 8);
    p[24] = rmgr;
    p[25] = info;
    p[26] = (uint8_t)nblocks;
    p[27] = 0;
    memcpy(p + 28, &plen, 4);
    if (nblocks) memcpy(p + WAL_RHDR, bhdrs, (size_t)nblocks * WAL_BHDR);
    if (plen) memcpy(p + WAL_RHDR + nblocks * WAL_BHDR, payload, plen);
    uint32_t crc = wal_crc_skip4(p, 4, total);
    memcpy(p + 4, &crc, 4);
    return total;
}

/* CRC-32C register update over p[0:len] (no inversion: the caller starts at 0xffffffff and
 * inverts the end result). */
static uint32_t wal_crc_more(uint32_t c, const uint8_t *p, size_t len)
{
#ifdef SLK_HAVE_X86
    if (have_hw) return hw_bytes(c, p, len);
#endif
    return sw_bytes(c, p, len);
}

/* Write one WAL record (slk_wal_build's bytes) at stream position cur into the ring of
 * npages WAL pages, across as many pages as it needs, as wal/xlog.py's copy_in does: a page
 * it enters (cur itself when page-aligned) is zeroed and gets walpage.encode_page_header's
 * header, stamped 0 (a flush stamps it), with the record's remaining length on every page
 * after its first (continuation) and the first-in-segment flag at segment starts. Returns
 * the stream position after the record's last byte. The caller checked the bounds
 * (nblocks <= WAL_MAX_BLOCKS, ring room for the record and its page headers). */
uint64_t slk_wal_build_span(uint8_t *ring, uint32_t npages, uint32_t seg_size, uint64_t cur,
                            uint64_t xid, uint64_t prev, uint8_t rmgr, uint8_t info,
                            const char *bhdrs, uint32_t nblocks,
                            const char *payload, uint32_t plen)
{
    uint8_t hdr[WAL_RHDR];
    uint32_t bl = nblocks * WAL_BHDR;
    uint32_t total = WAL_RHDR + bl + plen, zero = 0;
    memcpy(hdr, &total, 4);
    memcpy(hdr + 4, &zero, 4);
    memcpy(hdr + 8, &xid, 8);
    memcpy(hdr + 16, &prev, 8);
    hdr[24] = rmgr;
    hdr[25] = info;
    hdr[26] = (uint8_t)nblocks;
    hdr[27] = 0;
    memcpy(hdr + 28, &plen, 4);
    uint32_t c = wal_crc_more(0xffffffffu, hdr, WAL_RHDR);
    if (bl) c = wal_crc_more(c, (const uint8_t *)bhdrs, bl);
    if (plen) c = wal_crc_more(c, (const uint8_t *)payload, plen);
    c = ~c;
    memcpy(hdr + 4, &c, 4);
    const uint8_t *part[3] = {hdr, (const uint8_t *)bhdrs, (const uint8_t *)payload};
    uint32_t plens[3] = {WAL_RHDR, bl, plen};
    uint32_t k = 0, kat = 0, done = 0;       /* part k, its next byte; record bytes done */
    uint64_t pos = cur;
    while (done < total) {
        uint32_t off = (uint32_t)(pos % WAL_PAGE_SIZE);
        uint8_t *pg = ring + (size_t)((pos / WAL_PAGE_SIZE) % npages) * WAL_PAGE_SIZE;
        if (off == 0) {
            uint16_t magic = WAL_PAGE_MAGIC, pinfo = 0;
            uint32_t rem = done ? total - done : 0, crc;
            uint64_t stamp = 0;
            if (rem) pinfo |= 2u;                       /* INFO_CONTINUATION */
            if (pos % seg_size == 0) pinfo |= 1u;       /* INFO_FIRST_IN_SEGMENT */
            memset(pg, 0, WAL_PAGE_SIZE);
            memcpy(pg, &magic, 2);
            memcpy(pg + 2, &pinfo, 2);
            memcpy(pg + 4, &rem, 4);
            memcpy(pg + 8, &pos, 8);
            memcpy(pg + 16, &stamp, 8);
            memcpy(pg + 24, &seg_size, 4);
            crc = wal_crc_skip4(pg, 28, WAL_PHDR);
            memcpy(pg + 28, &crc, 4);
            off = WAL_PHDR;
            pos += WAL_PHDR;
        }
        uint32_t room = WAL_PAGE_SIZE - off;
        uint32_t take = total - done < room ? total - done : room;
        uint8_t *dst = pg + off;
        done += take;
        pos += take;
        while (take) {
            uint32_t m = plens[k] - kat;
            if (m > take) m = take;
            if (m) memcpy(dst, part[k] + kat, m);
            dst += m;
            kat += m;
            take -= m;
            if (kat == plens[k]) { k++; kat = 0; }
        }
    }
    return pos;
}

/* --- kv commit key sort --- (engine/access/btree_leafrun.py: sorted_joined_py is the
 * Python reference; tests/storage/test_btree_leafrun.py compares them)
 * The n keys joined in blob (key i is blob[at[i]..at[i+1])) sorted as Python sorts bytes
 * (memcmp over the shorter length, then the shorter first): perm gets the key indices in
 * that order, out_blob the keys joined in that order and out_at their n + 1 offsets.
 * A stable bottom-up merge sort of (first 8 bytes big-endian, zero-padded; index) pairs
 * (tmp: 2n scratch pairs, 32n bytes, 8-byte aligned): most comparisons are one integer compare on contiguous memory,
 * equal prefixes compare the whole keys. Returns 0. */
typedef struct { uint64_t pre; uint64_t idx; } ks_pair;

static inline int ks_less(const uint8_t *blob, const uint64_t *at, const ks_pair *a,
                          const ks_pair *b)
{
    if (a->pre != b->pre) return a->pre < b->pre;
    uint64_t la = at[a->idx + 1] - at[a->idx], lb = at[b->idx + 1] - at[b->idx];
    if (la > 8 && lb > 8) {
        uint64_t m = la < lb ? la : lb;
        int c = memcmp(blob + at[a->idx] + 8, blob + at[b->idx] + 8, m - 8);
        if (c) return c < 0;
    }
    return la < lb;   /* equal over the shorter (the prefix pads with zeros: see below) */
}

int slk_kv_sort(const uint8_t *blob, const uint64_t *at, uint32_t n, uint32_t *perm,
                uint8_t *tmp, uint8_t *out_blob, uint64_t *out_at)
{
    ks_pair *src = (ks_pair *)tmp, *dst = src + n;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t len = at[i + 1] - at[i], pre = 0;
        const uint8_t *k = blob + at[i];
        for (uint64_t b = 0; b < 8; b++) pre = (pre << 8) | (b < len ? k[b] : 0);
        src[i].pre = pre;
        src[i].idx = i;
    }
    for (uint64_t width = 1; width < n; width *= 2) {
        for (uint64_t lo = 0; lo < n; lo += 2 * width) {
            uint64_t mid = lo + width < n ? lo + width : n;
            uint64_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            uint64_t i = lo, j = mid, k = lo;
            if (mid >= hi || !ks_less(blob, at, &src[mid], &src[mid - 1])) {
                memcpy(dst + lo, src + lo, (size_t)(hi - lo) * sizeof(ks_pair));
                continue;   /* already in order */
            }
            while (i < mid && j < hi)
                dst[k++] = ks_less(blob, at, &src[j], &src[i]) ? src[j++] : src[i++];
            while (i < mid) dst[k++] = src[i++];
            while (j < hi) dst[k++] = src[j++];
        }
        ks_pair *t = src; src = dst; dst = t;
    }
    uint64_t pos = 0;
    out_at[0] = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t x = (uint32_t)src[i].idx;
        uint64_t len = at[x + 1] - at[x];
        perm[i] = x;
        memcpy(out_blob + pos, blob + at[x], len);
        pos += len;
        out_at[i + 1] = pos;
    }
    return 0;
}

/* --- heap scan rows --- (engine/access/heap.py: _RunReader.rows, for Heap.scan_rows; the
 * Python reference is scan_rows_py = run_items_py + RowCodec.decode_run_py, and
 * tests/engine/test_heap_scan_rows.py compares the two)
 * One call per run of a table scan: slk_heap_run_items (the visible tuples' page indexes,
 * offnums and data bounds), then slk_row_layout of those rows without a join (fixed
 * columns column-major, var bounds), then each text/bytea column's values joined to
 * text_out (column after column, text_len[j] bytes each; 0 when not joined), how in
 * text_ok[j]:
 * - values shorter than slice_min bytes on average: joined with a separator byte none of
 *   them holds (NUL first, else the smallest ASCII byte: never inside a UTF-8 sequence,
 *   so the join decodes exactly when every value does); text_ok[j] = separator + 2.
 * - else, a text column (var_text[j] != 0) none of whose non-empty values starts with a
 *   UTF-8 continuation byte: joined with nothing between, each value's bounds counted in
 *   characters of that UTF-8 text to text_at[2j * n + i] (start) and
 *   text_at[(2j + 1) * n + i] (end): if the join decodes, every value alone decodes to its
 *   slice of it (the join of valid pieces splits only at character boundaries);
 *   text_ok[j] = 1.
 * - else (long bytea, a value starting inside a character, no separator left): not
 *   joined, text_ok[j] = 0 (the caller slices the values by var_out's bounds).
 * text_out needs the run's bytes plus nvar * n (the values are inside the run).
 * Returns slk_heap_run_items' result (the count; -(k + 1) page k cannot be read safely;
 * -(npages + 1) cap too small) and, when the count is positive, *layout =
 * slk_row_layout's result (0 laid out; 1 a row has a NULL; -1 a row's lengths do not add
 * up: the caller decodes row by row, which raises naming the flaw); otherwise 0. */
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
/* Copies len bytes p -> out and returns how many UTF-8 characters they start (the bytes
 * that are not continuation bytes 10xxxxxx), in one pass. */
static uint32_t copy_count_chars(uint8_t *out, const uint8_t *p, uint32_t len)
{
    uint32_t cont = 0, q = 0;
#if defined(__SSE2__)
    const __m128i below = _mm_set1_epi8(-64);   /* signed: 0x80..0xBF are -128..-65 */
    while (q + 16 <= len) {
        __m128i acc = _mm_setzero_si128();      /* per-lane counts, at most 255 */
        for (int r = 0; r < 255 && q + 16 <= len; r++, q += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(p + q));
            _mm_storeu_si128((__m128i *)(out + q), v);
            acc = _mm_sub_epi8(acc, _mm_cmplt_epi8(v, below));
        }
        __m128i sums = _mm_sad_epu8(acc, _mm_setzero_si128());
        cont += (uint32_t)_mm_cvtsi128_si32(sums) + (uint32_t)_mm_extract_epi16(sums, 4);
    }
#endif
    for (; q + 8 <= len; q += 8) {
        uint64_t w;
        memcpy(&w, p + q, 8);
        memcpy(out + q, &w, 8);
        uint64_t top = (w & ~(w << 1) & 0x8080808080808080ULL) >> 7;  /* 0/1 per byte */
        cont += (uint32_t)((top * 0x0101010101010101ULL) >> 56);    /* their sum */
    }
    for (; q < len; q++) {
        out[q] = p[q];
        cont += (p[q] & 0xC0u) == 0x80u;
    }
    return len - cont;
}

/* The separator byte for n values buf[vs[i]:ve[i]]: NUL when none holds one, else the
 * smallest ASCII byte (1..127) none holds (never inside a UTF-8 sequence); -1 when every
 * ASCII byte is in some value. */
static int scan_separator(const uint8_t *buf, const uint32_t *vs, const uint32_t *ve, int n)
{
    int nul = 0;
    for (int i = 0; i < n && !nul; i++)
        nul = ve[i] > vs[i] && memchr(buf + vs[i], 0, ve[i] - vs[i]) != NULL;
    if (!nul) return 0;
    uint8_t seen[256];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < n; i++)
        for (uint32_t q = vs[i]; q < ve[i]; q++) seen[buf[q]] = 1;
    for (int b = 1; b < 128; b++)
        if (!seen[b]) return b;
    return -1;
}

int slk_heap_scan_rows(const uint8_t *buf, int npages, int visibility, uint64_t snap_xmax,
                       uint64_t own, const uint64_t *excluded, int nexcluded, int cap,
                       uint32_t *page_out, uint16_t *offnum_out, uint32_t *start_out,
                       uint32_t *end_out, uint64_t *xmin_out, uint64_t *xmax_out,
                       uint16_t *flags_out, int nb, int nfixed, const uint8_t *fixed_sizes,
                       int nvar, const uint8_t *var_text, uint32_t slice_min,
                       uint8_t *fixed_out, uint32_t *var_out, uint8_t *text_out,
                       uint32_t *text_len, uint8_t *text_ok, uint32_t *text_at, int *layout)
{
    *layout = 0;
    int n = slk_heap_run_items(buf, npages, visibility, snap_xmax, own, excluded, nexcluded,
                               cap, page_out, offnum_out, start_out, end_out, xmin_out,
                               xmax_out, flags_out);
    if (n <= 0) return n;
    *layout = slk_row_layout(buf, n, start_out, end_out, nb, nfixed, fixed_sizes, nvar,
                             fixed_out, var_out, NULL, NULL, NULL);
    if (*layout != 0) return n;
    uint8_t *out = text_out;
    for (int j = 0; j < nvar; j++) {
        text_len[j] = 0;
        text_ok[j] = 0;
        const uint32_t *vs = var_out + (size_t)(2 * j) * n, *ve = vs + n;
        uint64_t total = 0;
        for (int i = 0; i < n; i++) total += ve[i] - vs[i];
        uint8_t *first = out;
        int sep = total < (uint64_t)slice_min * (uint64_t)n ? scan_separator(buf, vs, ve, n) : -1;
        if (sep >= 0) {          /* short values: joined with a byte none of them holds */
            for (int i = 0; i < n; i++) {
                uint32_t len = ve[i] - vs[i];
                if (i) *out++ = (uint8_t)sep;
                memcpy(out, buf + vs[i], len);
                out += len;
            }
            text_ok[j] = (uint8_t)(sep + 2);
        } else {                 /* long text values: joined, bounds in characters */
            int ok = var_text[j] != 0;
            for (int i = 0; i < n && ok; i++)
                ok = !(ve[i] > vs[i] && (buf[vs[i]] & 0xC0u) == 0x80u);
            if (!ok) continue;
            uint32_t *cs = text_at + (size_t)(2 * j) * n, *ce = cs + n;
            uint32_t chars = 0;
            for (int i = 0; i < n; i++) {
                uint32_t len = ve[i] - vs[i];
                cs[i] = chars;
                chars += copy_count_chars(out, buf + vs[i], len);
                ce[i] = chars;
                out += len;
            }
            text_ok[j] = 1;
        }
        text_len[j] = (uint32_t)(out - first);
    }
    return n;
}

/* The free space of each of npages verified heap pages in buf (heap.py's _run_free is the
 * reference, Heap._page_free per page): empty_free for a new, all-zero page (lower 0),
 * else upper - lower - lp_size rounded down to a multiple of align, 0 when not positive. */
void slk_heap_run_free(const uint8_t *buf, int npages, uint32_t empty_free, uint32_t lp_size,
                       uint32_t align, uint32_t *out)
{
    for (int k = 0; k < npages; k++) {
        const uint8_t *page = buf + (size_t)k * BLCKSZ;
        int64_t lower = load16(page + 14), upper = load16(page + 16);
        int64_t room = upper - lower - (int64_t)lp_size;
        out[k] = lower == 0 ? empty_free : room > 0 ? (uint32_t)(room - room % align) : 0;
    }
}

/* --- leaf vacuum judgement --- (engine/access/btree.py: leaf_vacuum_py is the Python
 * reference; tests/engine/test_btree_leaf_vacuum_c.py compares the two)
 * One share-locked leaf's entries (offnums first..count) for B+tree vacuum, each checked
 * as unpack_entry checks it (a NORMAL item inside the page, a 19-byte header, the key
 * inside the item, no unknown flag). dead NULL: each entry's xmin, xmax and flags to
 * xmin_out / xmax_out / flags_out [offnum - first] (the caller judges them); returns the
 * number of entries. dead (ndead TIDs as block << 16 | offnum, ascending): the entries
 * whose key ends with one of them (a table index's key | TID, the TID big-endian), their
 * offnums to off_out and flags to flags_out, ascending; returns how many. -1 for a page
 * or entry the reference refuses (the caller runs it: it raises naming the flaw). */
int slk_bt_leaf_vacuum(const uint8_t *page, int first, const uint64_t *dead, int ndead,
                       uint64_t *xmin_out, uint64_t *xmax_out, uint8_t *flags_out,
                       uint16_t *off_out)
{
    uint16_t lower = load16(page + 14);
    if (lower < HEADER_SIZE || lower > BT_SPECIAL_AT || (lower - HEADER_SIZE) % 4 || first < 1)
        return -1;
    int count = (lower - HEADER_SIZE) / 4, k = 0;
    for (int o = first; o <= count; o++) {
        uint32_t off, len;
        if (bt_item(page, o, lower, &off, &len) < 0 || len < 19) return -1;
        const uint8_t *it = page + off;
        uint32_t keylen = load16(it + 17);
        uint8_t flags = it[16];
        if (19 + keylen > len || (flags & ~1u)) return -1;
        if (dead == NULL) {
            xmin_out[o - first] = load64(it);
            xmax_out[o - first] = load64(it + 8);
            flags_out[o - first] = flags;
            continue;
        }
        if (keylen < 6) continue;
        const uint8_t *t = it + 19 + keylen - 6;
        uint64_t tid = ((uint64_t)t[0] << 40) | ((uint64_t)t[1] << 32) | ((uint64_t)t[2] << 24)
                       | ((uint64_t)t[3] << 16) | ((uint64_t)t[4] << 8) | t[5];
        int lo = 0, hi = ndead;
        while (lo < hi) {
            int mid = lo + (hi - lo) / 2;
            if (dead[mid] < tid) lo = mid + 1; else hi = mid;
        }
        if (lo < ndead && dead[lo] == tid) {
            off_out[k] = (uint16_t)o;
            flags_out[k] = flags;
            k++;
        }
    }
    return dead == NULL ? count + 1 - first : k;
}

/* --- heap page prune --- (engine/access/heap.py: prune_page_py, page_delete_item of
 * each pruned offnum then page_compact, is the Python reference;
 * tests/engine/test_heap_prune_c.py compares the two)
 * Vacuum's change to one heap page in one call: every offnums[i] whose line pointer is
 * NORMAL and whose tuple header still reads (xmins[i], xmaxs[i], tflags[i]) (what vacuum
 * judged dead; a pointer past the page's count, or no longer NORMAL, is skipped) goes
 * UNUSED, its offnum written to pruned (in input order); then, when any went, the page is
 * defragmented as page_compact does it (PostgreSQL's PageRepairFragmentation): NORMAL
 * items slide against special in their physical order, DEAD pointers lose their storage,
 * trailing UNUSED pointers are cut, the freed gap is zeroed, PD_HAS_FREE_LINES is set
 * exactly when UNUSED pointers remain. xmins NULL (redo of a PRUNE record): every offnum
 * goes UNUSED (it must be in range and not UNUSED) and the page is always compacted.
 * Returns how many went; -1, the page unchanged, when it cannot be done safely (a header,
 * line pointer or item the reference refuses: the caller runs the reference, which raises
 * naming the flaw). */
#include <stdlib.h>
#define LP_UNUSED 0u
#define LP_NORMAL 1u
#define LP_DEAD 3u
#define PD_HAS_FREE_LINES 0x1u
static int prune_item_bad(uint32_t off, uint32_t len, uint32_t upper, uint32_t special)
{
    return len == 0 || off < upper || off + len > special || off % 8;
}

typedef struct { uint16_t off, len, offnum; } prune_item;

static int prune_item_cmp(const void *a, const void *b)
{
    const prune_item *x = a, *y = b;   /* descending (offset, length, offnum) */
    if (x->off != y->off) return x->off < y->off ? 1 : -1;
    if (x->len != y->len) return x->len < y->len ? 1 : -1;
    return x->offnum < y->offnum ? 1 : (x->offnum > y->offnum ? -1 : 0);
}

int slk_heap_prune(uint8_t *page, int n, const uint16_t *offnums, const uint64_t *xmins,
                   const uint64_t *xmaxs, const uint16_t *tflags, uint16_t *pruned)
{
    uint32_t flags = load16(page + 12), lower = load16(page + 14), upper = load16(page + 16);
    uint32_t special = load16(page + 18);
    if (load16(page + 20) != PAGE_LAYOUT_VERSION || load16(page + 22) != 0
            || (flags & ~PD_VALID_FLAG_BITS) || lower < HEADER_SIZE || lower > upper
            || upper > special || special > BLCKSZ || special % 8 || upper % 8
            || (lower - HEADER_SIZE) % 4)
        return -1;
    uint32_t count = (lower - HEADER_SIZE) / 4;
    uint8_t gone[(BLCKSZ - HEADER_SIZE) / 4 + 1];
    memset(gone, 0, count + 1);
    int k = 0;
    for (int i = 0; i < n; i++) {
        uint32_t offnum = offnums[i];
        if (offnum < 1) return -1;
        if (offnum > count) {
            if (xmins == NULL) return -1;
            continue;
        }
        uint32_t lp = load32(page + HEADER_SIZE + 4 * (offnum - 1));
        uint32_t state = gone[offnum] ? LP_UNUSED : (lp >> 15) & 3u;
        if (xmins == NULL) {
            if (state == LP_UNUSED) return -1;
        } else {
            if (state != LP_NORMAL) continue;
            uint32_t off = lp & 0x7FFFu, len = lp >> 17;
            if (prune_item_bad(off, len, upper, special) || len < 24) return -1;
            const uint8_t *t = page + off;
            if (load64(t) != xmins[i] || load64(t + 8) != xmaxs[i] || load16(t + 16) != tflags[i])
                continue;
        }
        gone[offnum] = 1;
        pruned[k++] = (uint16_t)offnum;
    }
    if (k == 0 && xmins != NULL) return 0;
    /* page_compact of the page with those pointers UNUSED: checked in full first */
    prune_item items[(BLCKSZ - HEADER_SIZE) / 4];
    uint32_t nitems = 0, newcount = 0;
    for (uint32_t j = 1; j <= count; j++) {
        uint32_t lp = gone[j] ? 0u : load32(page + HEADER_SIZE + 4 * (j - 1));
        uint32_t state = (lp >> 15) & 3u;
        if (state != LP_UNUSED) newcount = j;
        if (state != LP_NORMAL) continue;
        uint32_t off = lp & 0x7FFFu, len = lp >> 17;
        if (prune_item_bad(off, len, upper, special)) return -1;
        items[nitems].off = (uint16_t)off;
        items[nitems].len = (uint16_t)len;
        items[nitems].offnum = (uint16_t)j;
        nitems++;
    }
    qsort(items, nitems, sizeof items[0], prune_item_cmp);
    for (uint32_t i = 1; i < nitems; i++) {
        uint32_t below = items[i].off, below_len = (items[i].len + 7u) & ~7u;
        if (below + below_len > items[i - 1].off) return -1;   /* overlapping items */
    }
    uint32_t new_lower = HEADER_SIZE + 4 * newcount;
    uint8_t snap[BLCKSZ];
    memcpy(snap, page + upper, special - upper);
    uint32_t lps[(BLCKSZ - HEADER_SIZE) / 4];
    int unused_left = 0;
    for (uint32_t j = 1; j <= newcount; j++) {
        uint32_t lp = gone[j] ? 0u : load32(page + HEADER_SIZE + 4 * (j - 1));
        uint32_t state = (lp >> 15) & 3u;
        if (state == LP_UNUSED) { lps[j - 1] = 0; unused_left = 1; }
        else if (state == LP_DEAD) lps[j - 1] = LP_DEAD << 15;
        else lps[j - 1] = lp;
    }
    memset(page + new_lower, 0, special - new_lower);
    uint32_t position = special;
    for (uint32_t i = 0; i < nitems; i++) {
        uint32_t len = items[i].len;
        position -= (len + 7u) & ~7u;
        memcpy(page + position, snap + (items[i].off - upper), len);
        lps[items[i].offnum - 1] = position | (LP_NORMAL << 15) | (len << 17);
    }
    memcpy(page + HEADER_SIZE, lps, 4 * newcount);
    flags = unused_left ? (flags | PD_HAS_FREE_LINES) : (flags & ~PD_HAS_FREE_LINES);
    uint16_t f16 = (uint16_t)flags, lo16 = (uint16_t)new_lower, up16 = (uint16_t)position;
    memcpy(page + 12, &f16, 2);
    memcpy(page + 14, &lo16, 2);
    memcpy(page + 16, &up16, 2);
    return k;
}

/* --- autocommit put --- (engine/access/btree_leafrun.py: put_new_py is the Python
 * reference; tests/storage/test_btree_put_new.py compares them)
 * The actions an autocommit put makes on its leaf: the general path's bytes (the leaf run
 * of the one write (key, xid, inline value, OLD_LOOKUP) at block index 0), found with no
 * Python step: the special space and the high key are read here. Writes the actions to out
 * and returns their length when the fast path applies: the page is a live leaf (level 0,
 * BTP_LEAF, not BTP_DELETED), the key is below its high key (or the leaf is rightmost), the
 * entry fits in its hole, and either no version of the key is on the page and old[0] is 0
 * (one INSERT action), or the key's first (newest) version is at offset old[0] with xmin
 * old[1] and no xmax (a SET_XMAX action of it, then the INSERT: the caller has found that
 * xmin committed, as the general path's OLD_LOOKUP requires). When the key's first version
 * is not the one old names, old becomes (its offset, xmin, xmax) and the answer is 0, so
 * that the caller can judge it and ask again. 0 when the fast path does not apply (the
 * general path takes the put); -1 for a page it cannot read safely (the general path then
 * names the flaw). With pre NULL the page is not changed; else, when the actions are made,
 * the page is copied to pre (BLCKSZ bytes: to put it back if logging fails) and the actions
 * applied to it as redo applies them (slk_bt_redo_actions; a refusal puts the page back
 * and returns -1). */
/* Apply a put's nactions actions (out, n bytes) to page as redo applies them, the page
 * copied to pre (BLCKSZ bytes) first and put back when redo refuses one: 1, or -1
 * refused. */
static int bt_put_apply(uint8_t *page, uint8_t *out, int n, int nactions, uint8_t *pre)
{
    memcpy(pre, page, BLCKSZ);
    if (slk_bt_redo_actions(page, out, (uint32_t)n, 0) != nactions) {
        memcpy(page, pre, BLCKSZ);
        return -1;
    }
    return 1;
}

int slk_bt_put_new(uint8_t *page, const uint8_t *key, uint32_t keylen,
                   const uint8_t *value, uint32_t vlen, uint64_t xid, uint64_t *old,
                   uint8_t *out, uint32_t cap, uint8_t *pre)
{
    int first, count, leaf;
    int lower = bt_bounds(page, &first, &count, &leaf);
    if (lower < 0) return -1;
    uint32_t next = load32(page + BT_SPECIAL_AT + 4);
    uint32_t flags = load16(page + BT_SPECIAL_AT + 12);
    if (load16(page + BT_SPECIAL_AT + 14) || (flags & ~0x3fu)) return -1;   /* bt_special */
    if (!leaf || !(flags & 0x1u) || (flags & 0x4u)) return 0;    /* BTP_LEAF, BTP_DELETED */
    if (next != 0) {                             /* the high key: item 1, a pivot */
        uint32_t at, len;
        if (bt_item(page, 1, lower, &at, &len) < 0 || len < BT_PIVOT_HDR) return -1;
        uint32_t hlen = load16(page + at + BT_PIVOT_HDR - 2);
        if (BT_PIVOT_HDR + hlen > len) return -1;
        const uint8_t *high = page + at + BT_PIVOT_HDR;
        uint32_t m = keylen < hlen ? keylen : hlen;
        int c = m ? memcmp(key, high, m) : 0;
        if (c == 0) c = keylen < hlen ? -1 : keylen > hlen ? 1 : 0;
        if (c >= 0) return 0;                    /* it belongs right, or versions may */
    }
    int off = slk_bt_search(page, key, keylen, UINT64_MAX, 0);  /* the key's first entry */
    if (off < 0) return -1;
    int has = off <= count ? lr_key_is(page, lower, off, key, keylen) : 0;
    if (has < 0) return -1;
    uint32_t xlen = 0;                                   /* the SET_XMAX action's bytes */
    if (has) {                                           /* the newest version: old's? */
        uint32_t at, len;
        if (bt_item(page, off, lower, &at, &len) < 0) return -1;   /* (lr_key_is read it) */
        uint64_t vmin = load64(page + at), vmax = load64(page + at + 8);
        if (old[0] != (uint64_t)off || old[1] != vmin || vmax != 0) {
            old[0] = (uint64_t)off; old[1] = vmin; old[2] = vmax;
            return 0;                                    /* the caller judges it */
        }
        xlen = 16;
    } else if (old[0]) {
        return 0;                                        /* the version old names is gone */
    }
    int ioff = slk_bt_search(page, key, keylen, xid, 0);        /* as slk_bt_leaf_run */
    if (ioff < 0) return -1;
    uint32_t upper = load16(page + 16);
    uint32_t itemlen = BT_LEAF_HDR + keylen + vlen;
    int64_t cost = (int64_t)((itemlen + 7u) & ~7u) + 4;
    if (upper < (uint32_t)lower || cost > (int64_t)(upper - (uint32_t)lower)) return 0;
    if (keylen > 0xffffu || xlen + 8u + itemlen > cap) return 0;
    uint32_t dlen = 2 + itemlen, xdlen = 10;
    uint16_t off16 = (uint16_t)off, ioff16 = (uint16_t)ioff, klen16 = (uint16_t)keylen;
    uint64_t zero = 0;
    if (xlen) {
        out[0] = 0; out[1] = 3;                              /* block 0, A_SET_XMAX */
        memcpy(out + 2, &xdlen, 4);
        memcpy(out + 6, &off16, 2);                          /* "<HQ" offnum, xmax */
        memcpy(out + 8, &xid, 8);
    }
    uint8_t *o = out + xlen;
    o[0] = 0; o[1] = 2;                                      /* block 0, A_INSERT */
    memcpy(o + 2, &dlen, 4);
    memcpy(o + 6, &ioff16, 2);
    memcpy(o + 8, &xid, 8);                              /* "<QQBH" xmin, xmax, flags, keylen */
    memcpy(o + 16, &zero, 8);
    o[24] = 0;
    memcpy(o + 25, &klen16, 2);
    if (keylen) memcpy(o + 27, key, keylen);
    if (vlen) memcpy(o + 27 + keylen, value, vlen);
    int n = (int)(xlen + 8 + itemlen);
    if (pre && bt_put_apply(page, out, n, xlen ? 2 : 1, pre) < 0) return -1;
    return n;
}

/* An autocommit put applied and logged in one call (wal/xlog.py's Wal.insert_put_pair;
 * BTree.put_new's two-step path -- slk_bt_put_new, then Wal.insert_pair writing both
 * records with slk_wal_build -- is the reference: tests compare the pages and WAL bytes
 * both make). When slk_bt_put_new's fast path applies to (key, value, xid, old) on page
 * (its actions made in out, of cap bytes; old as there), the page needs no full-page image
 * (its LSN is past redo) and both records fit in room bytes from stream position cur (ring
 * + at): the page is copied to pre (BLCKSZ bytes) and the actions applied to it (as
 * slk_bt_put_new does), the record (rmgr, info, the one block header bhdr, the actions) of
 * xid is written at ring + at with prev as its prev-link and, aligned after it, the record
 * (rmgr2, info2, payload2) of xid linked to cur; the page's LSN becomes the first record's
 * end. Returns
 * the first record's length + (the second's << 16) when done; 0, nothing changed, when the
 * fast path does not apply, the page needs an image or the records do not fit; -1 for a
 * page it cannot read safely (nothing changed: the two-step path names the flaw). */
int64_t slk_bt_put_logged(uint8_t *out, uint32_t cap, uint8_t *pre, uint8_t *ring,
                          uint8_t *page, const uint8_t *key,
                          uint32_t keylen, const uint8_t *value, uint32_t vlen, uint64_t xid,
                          uint64_t *old, uint32_t at, int64_t room, uint64_t cur,
                          uint64_t prev, uint64_t redo, const char *bhdr, uint8_t rmgr,
                          uint8_t info, uint8_t rmgr2, uint8_t info2, const char *payload2,
                          uint32_t plen2)
{
    uint64_t page_lsn;
    memcpy(&page_lsn, page, 8);                      /* pd_lsn (storage/page.py LSN_OFFSET) */
    if (page_lsn <= redo) return 0;                  /* a full-page image: the two-step path */
    int n = slk_bt_put_new(page, key, keylen, value, vlen, xid, old, out, cap, NULL);
    if (n <= 0) return n;
    uint64_t n1 = WAL_RHDR + WAL_BHDR + (uint64_t)n;
    uint64_t start2 = (n1 + 7u) & ~(uint64_t)7u;   /* cur is aligned: so is cur + start2 */
    uint64_t n2 = WAL_RHDR + (uint64_t)plen2;
    if (room < 0 || start2 + n2 > (uint64_t)room) return 0;
    if (bt_put_apply(page, out, n, out[1] == 3 ? 2 : 1, pre) < 0) return -1;  /* SET_XMAX? */
    slk_wal_build(ring, at, xid, prev, rmgr, info, bhdr, 1, (const char *)out,
                  (uint32_t)n);
    slk_wal_build(ring, at + (uint32_t)start2, xid, cur, rmgr2, info2, NULL, 0,
                  payload2, plen2);
    uint64_t lsn = cur + n1;
    memcpy(page, &lsn, 8);
    return (int64_t)(n1 | (n2 << 16));
}

/* --- wal group flush --- (wal/xlog.py's Wal.flush over the syscalls path is the Python
 * reference: tests/wal/test_group_flush_c.py compares the files both write)
 *
 * Group commit with the whole flush in C, so neither the leader nor a waiter needs the GIL
 * between asking for a flush and learning it is durable. A requester calls slk_wf_flush
 * with the LSN it needs and the insert position it saw (a record boundary whose bytes are
 * all in the ring). One at a time a leader stamps the pages of [flushed, target) (walpage
 * invariant 4: prev_flush_end = flushed, header CRC re-sealed), writes them with one
 * pwritev (two iovecs when the run wraps the ring) and fdatasyncs (none with O_DSYNC);
 * target is the highest position any requester has shown so far, so commits that arrived
 * during the previous write share this one. Waiters queue with their LSN, each on its
 * own futex word: the leader wakes exactly those it covered, each told the
 * durable point, so none takes the mutex again on its way out. A requester that
 * finds no flush running leads one itself (one thread: no hand-off at all); a flush that
 * ends with waiters needing more is followed at once by the next, written by the
 * flusher thread (started the first time that happens, so never for one committing
 * thread): it keeps flushing while waiters need more, so under contention no committer
 * waits on the device itself and no leader has to be woken between two flushes (eight
 * threads: +5-10% commits/s, two: +23%, interleaved A/B). A flush the C path cannot take (it
 * crosses a segment, or its segment's fd is not registered yet) is handed back to a
 * caller as leader (return 1) and finished with slk_wf_done. A failed or short write or a
 * failed sync is fatal: every later call returns -1 (xlog.py builds the exception from
 * the failure fields); of the callers waiting on a failed flush, the one that led it, or
 * for the flusher's the first to return, reports it as its own. */
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>

#define WF_PAGE 8192u
#define WF_STAMP_AT 16u
#define WF_CRC_AT 28u
#define WF_HDR 32u

/* A waiter's state, its futex word. WF_DONE: durable (flushed says how far), and the
 * waiter returns without taking mu again; WF_COVERED: woken by a failure or a close, it
 * takes mu to learn which; WF_LEAD: woken to lead the next flush. */
enum { WF_WAIT = 0, WF_COVERED = 1, WF_LEAD = 2, WF_DONE = 3 };
#define WF_FLUSHER_NAME "slonik-walflush"

typedef struct wf_waiter {
    uint64_t lsn;
    uint64_t flushed;           /* with WF_DONE: the durable point that covered it */
    int state;                  /* a futex word: set once by the waker, under mu */
    struct wf_waiter *next;
} wf_waiter;

/* stats (slk_wf_stats order): requests, flushes, joins, writes, write_bytes, syncs,
 * stamped, flush_ns, write_ns, sync_ns, delays, fail_kind, fail_errno, fail_segno,
 * fail_offset, fail_got, fail_want, flushed */
enum { WS_REQUESTS, WS_FLUSHES, WS_JOINS, WS_WRITES, WS_WRITE_BYTES, WS_SYNCS, WS_STAMPED,
       WS_FLUSH_NS, WS_WRITE_NS, WS_SYNC_NS, WS_DELAYS, WS_FAIL_KIND, WS_FAIL_ERRNO,
       WS_FAIL_SEGNO, WS_FAIL_OFFSET, WS_FAIL_GOT, WS_FAIL_WANT, WS_FLUSHED, WS_N };

typedef struct {
    pthread_mutex_t mu;
    uint8_t *ring;
    uint64_t npages, seg_size;
    uint64_t flushed, want;
    int flushing, closed, direct, fd;
    uint64_t fd_segno;
    int64_t delay_us, siblings, queued;
    wf_waiter *head, *tail;
    int64_t s[WS_N];
    int64_t active;             /* the last requester's count of active transactions */
    int handback;               /* the last requester leads every flush itself */
    uint64_t fail_target;       /* the target of the flush that failed */
    int fail_reported;          /* a requester reported that failure as its own */
    /* the flusher (wf_flusher), started by the first flush that ends with waiters */
    pthread_t thr;
    pthread_cond_t work;        /* signalled when a flush ends with waiters */
    int thr_on, stop, lead_pending;
    pid_t thr_pid;              /* the process the flusher runs in (a forked child has none) */
    int commit_cpu, flush_cpu;  /* commit placement (slk_wf_set_placement); -1: off */
} wf_state;

void *slk_wf_new(uint8_t *ring, uint32_t npages, uint64_t seg_size, uint64_t flushed,
                 int direct)
{
    wf_state *st = calloc(1, sizeof(wf_state));
    if (st == NULL) return NULL;
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->work, NULL);
    st->ring = ring;
    st->npages = npages;
    st->seg_size = seg_size;
    st->flushed = st->want = flushed;
    st->direct = direct;
    st->fd = -1;
    st->siblings = 5;
    st->commit_cpu = st->flush_cpu = -1;
    return st;
}

static void wf_stop_flusher(wf_state *st);

/* --- commit placement (wal/placement.py decides the CPUs) ---
 * Committers that wait in the group commit are bound to one CPU, commit_cpu, and the
 * flusher to another, flush_cpu (the one that takes the WAL device's completion
 * interrupts, where wal/placement.py can tell). A committer's Python runs under the GIL,
 * so the waiters never run in parallel anyway; what binding them changes is where each
 * wake-up lands. Unbound, the GIL a committer drops on its way into the wait, and the
 * flush that covers it, each wake a thread onto the idle CPU, and a guest's idle vCPU
 * halts: ~21 us a wake-up across CPUs here against ~6 us between two threads of one CPU
 * (README.md, "Commit placement").
 *
 * A thread is bound when it queues behind at least one other waiter (contention, not a
 * lone committer meeting a background flush), once per generation, unless its mask
 * already leaves out commit_cpu or names one CPU (the caller's own binding wins; but a
 * thread started since placement began on commit_cpu alone counts as a bound thread's).
 * It keeps the mask it had; when the last state with placement on ends it, every bound
 * thread still alive gets that mask back (tgkill(pid, tid, 0): whether tid is still a
 * thread of this process), and so does every thread started since placement began whose
 * mask is exactly {commit_cpu}: Linux copies a thread's mask to the threads it starts, so
 * those are (all but surely) children of bound threads; they get the mask of the thread
 * that turned placement on. A forked child's forking thread gets its own mask back. */
#include <dirent.h>
#include <sched.h>
#define WF_PIN_MAX 1024

typedef struct { pid_t tid; cpu_set_t saved; } wf_pin;

static pthread_mutex_t wf_pin_mu = PTHREAD_MUTEX_INITIALIZER;
static wf_pin *wf_pins;                 /* WF_PIN_MAX entries, allocated by the first pin */
static int wf_npins, wf_place_users;    /* bound threads; states with placement on */
static int wf_place_cpu = -1;           /* the commit CPU of the states with placement on */
static cpu_set_t wf_base;               /* the mask of the thread that turned it on */
static pid_t *wf_before;                /* the threads there were when it was turned on */
static int wf_nbefore;
static uint64_t wf_pin_gen = 1;         /* a new generation each time the pins are undone */
static __thread uint64_t wf_tls_gen;    /* == wf_pin_gen: this thread was placed (or left) */
static __thread int wf_tls_pinned;
static __thread cpu_set_t wf_tls_saved;

static pid_t wf_gettid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

/* Whether tid is (still) a thread of this process. */
static int wf_alive(pid_t tid)
{
    return syscall(SYS_tgkill, getpid(), tid, 0) == 0;
}

/* The threads of this process (/proc/self/task) into *out (malloc'd; caller frees), or
 * -1 where the list cannot be read. */
static int wf_list_threads(pid_t **out)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL) return -1;
    int n = 0, cap = 64;
    pid_t *v = malloc(cap * sizeof(pid_t));
    struct dirent *e;
    while (v != NULL && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        if (n == cap) {
            pid_t *w = realloc(v, 2 * cap * sizeof(pid_t));
            if (w == NULL) { free(v); v = NULL; break; }
            v = w;
            cap *= 2;
        }
        v[n++] = (pid_t)atoi(e->d_name);
    }
    closedir(d);
    *out = v;
    return v == NULL ? -1 : n;
}

/* Whether tid was a thread of this process when placement began. Caller holds
 * wf_pin_mu. */
static int wf_was_there(pid_t tid)
{
    for (int j = 0; j < wf_nbefore; j++)
        if (wf_before[j] == tid) return 1;
    return 0;
}

/* Forget bound threads that have exited, making room. Caller holds wf_pin_mu. */
static void wf_prune(void)
{
    int k = 0;
    for (int i = 0; i < wf_npins; i++)
        if (wf_alive(wf_pins[i].tid)) wf_pins[k++] = wf_pins[i];
    wf_npins = k;
}

/* Bind the calling thread to cpu, at most once a generation. Caller holds no lock. */
static void wf_pin_self(int cpu)
{
    if (__atomic_load_n(&wf_pin_gen, __ATOMIC_ACQUIRE) == wf_tls_gen) return;
    pthread_mutex_lock(&wf_pin_mu);
    wf_tls_gen = wf_pin_gen;
    cpu_set_t saved, one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (wf_place_users > 0 && cpu == wf_place_cpu
            && sched_getaffinity(0, sizeof saved, &saved) == 0 && CPU_ISSET(cpu, &saved)) {
        /* on the commit CPU alone and started since placement began: started by a bound
         * thread (one there before was bound so by the caller, and keeps it) */
        int inherited = CPU_EQUAL(&saved, &one) && !wf_was_there(wf_gettid());
        if (inherited) saved = wf_base;
        if (wf_pins == NULL) wf_pins = calloc(WF_PIN_MAX, sizeof(wf_pin));
        if (wf_pins != NULL && wf_npins == WF_PIN_MAX) wf_prune();
        if (wf_pins != NULL && wf_npins < WF_PIN_MAX && CPU_COUNT(&saved) > 1
                && (inherited || sched_setaffinity(0, sizeof one, &one) == 0)) {
            wf_pins[wf_npins].tid = wf_gettid();
            wf_pins[wf_npins].saved = saved;
            wf_npins++;
            wf_tls_saved = saved;
            wf_tls_pinned = 1;
        }
    }
    pthread_mutex_unlock(&wf_pin_mu);
}

/* Give the bound threads still alive their masks back, and the base mask to threads
 * started since placement began that run on the commit CPU alone; a new generation.
 * Caller holds wf_pin_mu. */
static void wf_unpin_all(void)
{
    pid_t me = wf_gettid();
    for (int i = 0; i < wf_npins; i++) {
        wf_pin *p = &wf_pins[i];
        if (p->tid == me || wf_alive(p->tid))
            sched_setaffinity(p->tid == me ? 0 : p->tid, sizeof p->saved, &p->saved);
    }
    pid_t *now = NULL;
    int n = wf_list_threads(&now);
    cpu_set_t one, mask;
    CPU_ZERO(&one);
    if (wf_place_cpu >= 0) CPU_SET(wf_place_cpu, &one);
    for (int i = 0; i < n && wf_place_cpu >= 0; i++) {
        if (!wf_was_there(now[i]) && sched_getaffinity(now[i], sizeof mask, &mask) == 0
                && CPU_EQUAL(&mask, &one) && wf_alive(now[i]))
            sched_setaffinity(now[i], sizeof wf_base, &wf_base);
    }
    free(now);
    free(wf_before);
    wf_before = NULL;
    wf_nbefore = 0;
    wf_npins = 0;
    wf_tls_pinned = 0;
    wf_place_cpu = -1;
    __atomic_add_fetch(&wf_pin_gen, 1, __ATOMIC_RELEASE);
}

/* 1 if the calling thread is bound by placement now, else 0. */
int slk_wf_pinned(void)
{
    return wf_tls_pinned && wf_tls_gen == __atomic_load_n(&wf_pin_gen, __ATOMIC_ACQUIRE);
}

/* Placement on (commit_cpu, flush_cpu: two different CPUs) or off (anything else). The
 * first state to turn it on records the caller's mask and the threads there are; the
 * last to turn it off unbinds the threads. A second state with another commit CPU than
 * the first's stays off. 1: on; 0: off. */
int slk_wf_set_placement(void *p, int commit_cpu, int flush_cpu)
{
    wf_state *st = p;
    int on = commit_cpu >= 0 && flush_cpu >= 0 && commit_cpu != flush_cpu
        && commit_cpu < CPU_SETSIZE && flush_cpu < CPU_SETSIZE;
    pthread_mutex_lock(&wf_pin_mu);
    int was = st->commit_cpu >= 0;
    if (on && !was) {
        if (wf_place_users == 0) {
            if (slk_wf_pinned()) wf_base = wf_tls_saved;
            else if (sched_getaffinity(0, sizeof wf_base, &wf_base) != 0) CPU_ZERO(&wf_base);
            free(wf_before);
            wf_nbefore = wf_list_threads(&wf_before);
            if (wf_nbefore < 0) wf_nbefore = 0;
            wf_place_cpu = commit_cpu;
        }
        on = commit_cpu == wf_place_cpu;
    } else if (on && was) {
        on = commit_cpu == wf_place_cpu;
    }
    wf_place_users += on - was;
    if (was && !on && wf_place_users == 0) wf_unpin_all();
    pthread_mutex_lock(&st->mu);
    st->commit_cpu = on ? commit_cpu : -1;
    st->flush_cpu = on ? flush_cpu : -1;
    pthread_mutex_unlock(&st->mu);
    pthread_mutex_unlock(&wf_pin_mu);
    return on;
}

/* In a forked child (os.register_at_fork): the forking thread gets its mask back, the
 * parent's other threads are not here, and the lock may have been held by one of them. */
void slk_wf_placement_forked(void)
{
    pthread_mutex_init(&wf_pin_mu, NULL);
    if (slk_wf_pinned()) sched_setaffinity(0, sizeof wf_tls_saved, &wf_tls_saved);
    wf_tls_pinned = 0;
    wf_npins = 0;
    wf_pin_gen++;
}

void slk_wf_free(void *p)
{
    wf_state *st = p;
    if (st == NULL) return;
    wf_stop_flusher(st);
    slk_wf_set_placement(st, -1, -1);
    pthread_cond_destroy(&st->work);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

void slk_wf_set_delay(void *p, int64_t delay_us, int64_t siblings)
{
    wf_state *st = p;
    pthread_mutex_lock(&st->mu);
    st->delay_us = delay_us;
    st->siblings = siblings;
    pthread_mutex_unlock(&st->mu);
}

static int64_t wf_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Set a dequeued waiter's state and wake it. Its waiting thread may see the state and
 * return (its wf_waiter, on its stack, gone) before the wake: a private futex wake reads
 * no memory, and a stray one at that address later is a spurious wake-up, which every
 * futex wait here re-checks. Caller holds mu. */
static void wf_post(wf_waiter *w, int state)
{
    int *word = &w->state;
    __atomic_store_n(word, state, __ATOMIC_RELEASE);
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Wake the queued waiters the flushes so far covered (all of them after a failure or a
 * close) and, unless lead_woken, at most one they did not, to lead. A waiter made durable
 * is told the durable point and returns without mu, so the waiters a flush wakes do not
 * queue on mu behind each other and the flusher. Caller holds mu. */
static void wf_wake_some(wf_state *st, int lead_woken)
{
    wf_waiter **link = &st->head, *w, *last = NULL;
    int failed = st->s[WS_FAIL_KIND] || st->closed;
    while ((w = *link) != NULL) {
        if (w->lsn <= st->flushed && !failed) {
            *link = w->next;
            st->queued--;
            st->s[WS_JOINS]++;
            w->flushed = st->flushed;
            wf_post(w, WF_DONE);
        } else if (failed) {
            *link = w->next;
            st->queued--;
            wf_post(w, WF_COVERED);
        } else if (!lead_woken) {
            *link = w->next;
            st->queued--;
            lead_woken = 1;
            wf_post(w, WF_LEAD);
        } else {
            last = w;
            link = &w->next;
        }
    }
    st->tail = last;
}

/* Whether a queued waiter needs more than is flushed. Caller holds mu. */
static int wf_wanted(const wf_state *st)
{
    for (const wf_waiter *w = st->head; w != NULL; w = w->next)
        if (w->lsn > st->flushed) return 1;
    return 0;
}

static void *wf_flusher(void *p);

/* After a flush ended (flushed moved, or failed; flushing cleared): wake the waiters it
 * covered; if others need more, the flusher writes next (started here the first time),
 * or one of them is woken to lead: where it cannot be started, or while requesters hand
 * every flush back (their writes must pass their own OS layer). Caller holds mu. */
static void wf_wake(wf_state *st)
{
    if (st->s[WS_FAIL_KIND] || st->closed || !wf_wanted(st)) {
        wf_wake_some(st, 1);
        return;
    }
    if (st->thr_on && st->thr_pid != getpid()) {
        /* forked: the thread stayed in the parent, and its wait on work is a phantom in
         * this copy of the condition variable (a signal could go to it): a fresh one */
        st->thr_on = 0;
        pthread_cond_init(&st->work, NULL);
    }
    if (!st->thr_on && !st->stop && !st->handback
            && pthread_create(&st->thr, NULL, wf_flusher, st) == 0) {
        st->thr_on = 1;
        st->thr_pid = getpid();
    }
    if (st->thr_on && !st->handback) {
        wf_wake_some(st, 1);
        pthread_cond_signal(&st->work);
    } else {
        wf_wake_some(st, 0);
    }
}

static void wf_fail(wf_state *st, int kind, int err, uint64_t segno, uint64_t offset,
                    int64_t got, int64_t want)
{
    int64_t *s = st->s;
    s[WS_FAIL_KIND] = kind;
    s[WS_FAIL_ERRNO] = err;
    s[WS_FAIL_SEGNO] = (int64_t)segno;
    s[WS_FAIL_OFFSET] = (int64_t)offset;
    s[WS_FAIL_GOT] = got;
    s[WS_FAIL_WANT] = want;
}

/* Stamp, write and sync [flushed, target) of one registered segment, without mu. 0, or
 * the failure recorded in st (under mu by the caller's wf_end). */
static int wf_write(wf_state *st, uint64_t flushed, uint64_t target, int64_t *io)
{
    uint64_t first = flushed - flushed % WF_PAGE;
    uint64_t last = (target - 1) - (target - 1) % WF_PAGE;
    uint64_t count = (last - first) / WF_PAGE + 1;
    uint64_t slot0 = (first / WF_PAGE) % st->npages;
    for (uint64_t i = 0; i < count; i++) {
        uint8_t *h = st->ring + ((slot0 + i) % st->npages) * WF_PAGE;
        memcpy(h + WF_STAMP_AT, &flushed, 8);
        uint32_t crc = wal_crc_skip4(h, WF_CRC_AT, WF_HDR);
        memcpy(h + WF_CRC_AT, &crc, 4);
    }
    struct iovec iov[2];
    int niov = 1;
    uint64_t head = st->npages - slot0 < count ? st->npages - slot0 : count;
    iov[0].iov_base = st->ring + slot0 * WF_PAGE;
    iov[0].iov_len = head * WF_PAGE;
    if (head < count) {
        iov[1].iov_base = st->ring;
        iov[1].iov_len = (count - head) * WF_PAGE;
        niov = 2;
    }
    uint64_t offset = first % st->seg_size, segno = first / st->seg_size;
    int64_t want = (int64_t)(count * WF_PAGE);
    io[0] = want;
    io[1] = (int64_t)count;
    int64_t t0 = wf_now_ns();
    ssize_t got = pwritev(st->fd, iov, niov, (off_t)offset);
    int64_t t1 = wf_now_ns();
    io[2] = t1 - t0;
    io[3] = 0;
    if (got < 0) {
        io[4] = 1; io[5] = errno; io[6] = (int64_t)segno; io[7] = (int64_t)offset;
        io[8] = 0; io[9] = want;
        return -1;
    }
    if (got != want) {
        io[4] = 2; io[5] = 0; io[6] = (int64_t)segno; io[7] = (int64_t)offset;
        io[8] = got; io[9] = want;
        return -1;
    }
    if (!st->direct) {
        if (fdatasync(st->fd) != 0) {
            io[4] = 3; io[5] = errno; io[6] = (int64_t)segno; io[7] = 0;
            io[8] = 0; io[9] = 0;
            return -1;
        }
        io[3] = wf_now_ns() - t1;
    }
    return 0;
}

/* Whether the C path can write [flushed, target) itself: one segment whose fd it has, no
 * more pages than the ring holds. Caller holds mu. */
static int wf_can_take(const wf_state *st, uint64_t flushed, uint64_t target)
{
    uint64_t first = flushed - flushed % WF_PAGE;
    uint64_t last = (target - 1) - (target - 1) % WF_PAGE;
    uint64_t segno = first / st->seg_size;
    return st->fd >= 0 && segno == st->fd_segno && last / st->seg_size == segno
        && (last - first) / WF_PAGE + 1 <= st->npages;
}

/* With flushing set and mu held (released around the I/O): commit_delay's wait when
 * enough transactions are active, then write and sync [flushed, want) and account it.
 * 0, or -1 with the failure recorded: flushing cleared. 1, a flush the C path cannot take
 * (it may have moved on during the wait), or handback: flushing still set, for whoever
 * hands it back (range: [flushed, target)). */
static int wf_lead(wf_state *st, int handback, int64_t *io, uint64_t *range)
{
    if (st->delay_us > 0 && st->queued + st->active >= st->siblings) {
        pthread_mutex_unlock(&st->mu);
        usleep((useconds_t)st->delay_us);   /* let more commits join this flush */
        pthread_mutex_lock(&st->mu);
        st->s[WS_DELAYS]++;
    }
    uint64_t flushed = st->flushed, target = st->want;
    range[0] = flushed;
    range[1] = target;
    if (handback || !wf_can_take(st, flushed, target)) return 1;
    pthread_mutex_unlock(&st->mu);
    int64_t t0 = wf_now_ns();
    int rc = wf_write(st, flushed, target, io);
    int64_t took = wf_now_ns() - t0;
    pthread_mutex_lock(&st->mu);
    int64_t *s = st->s;
    s[WS_WRITES]++;
    s[WS_WRITE_BYTES] += io[0];
    s[WS_STAMPED] += io[1];
    s[WS_FLUSH_NS] += took;
    s[WS_WRITE_NS] += io[2];
    if (rc == 0) {
        if (!st->direct) s[WS_SYNCS]++;
        s[WS_SYNC_NS] += io[3];
        s[WS_FLUSHES]++;
        st->flushed = target;
        s[WS_FLUSHED] = (int64_t)target;
    } else {
        if (io[4] == 3) s[WS_SYNCS]++;
        wf_fail(st, (int)io[4], (int)io[5], (uint64_t)io[6], (uint64_t)io[7], io[8], io[9]);
        st->fail_target = target;
    }
    st->flushing = 0;
    return rc == 0 ? 0 : -1;
}

/* The flusher: while queued waiters need more than is flushed, flush and wake those it
 * covered. A flush it cannot take goes to the first waiter needing it, as leader. */
static void *wf_flusher(void *p)
{
    wf_state *st = p;
    sigset_t all;                           /* signals go to the interpreter's threads */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    prctl(PR_SET_NAME, WF_FLUSHER_NAME, 0, 0, 0);
    cpu_set_t start, one;                   /* the mask it was started with, its creator's */
    int placed = -1;
    if (sched_getaffinity(0, sizeof start, &start) != 0) CPU_ZERO(&start);
    pthread_mutex_lock(&st->mu);
    while (!st->stop) {
        if (st->flush_cpu != placed) {      /* placement on, moved or off: follow it */
            placed = st->flush_cpu;
            CPU_ZERO(&one);
            if (placed >= 0) CPU_SET(placed, &one);
            if (placed >= 0 ? sched_setaffinity(0, sizeof one, &one) != 0
                            : CPU_COUNT(&start) > 0)
                sched_setaffinity(0, sizeof start, &start);
        }
        if (st->flushing || st->lead_pending || st->closed || st->s[WS_FAIL_KIND]
                || !wf_wanted(st)) {
            pthread_cond_wait(&st->work, &st->mu);
            continue;
        }
        st->flushing = 1;
        int64_t io[10] = {0};
        uint64_t range[2];
        if (wf_lead(st, st->handback, io, range) == 1) {
            st->flushing = 0;
            st->lead_pending = 1;           /* until a waiter takes it (wf_queue) */
            wf_wake_some(st, 0);
            continue;
        }
        wf_wake_some(st, 1);                /* covered (every one after a failure) */
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

/* Stop and join the flusher, if it runs. Caller does not hold mu. */
static void wf_stop_flusher(wf_state *st)
{
    pthread_mutex_lock(&st->mu);
    int on = st->thr_on && st->thr_pid == getpid();
    st->stop = 1;
    st->thr_on = 0;
    pthread_cond_signal(&st->work);
    pthread_mutex_unlock(&st->mu);
    if (on) pthread_join(st->thr, NULL);
}

/* Wait in the queue, without mu, until a waker sets this waiter's state, and return it:
 * WF_DONE, durable up to *flushed, mu not held; WF_COVERED (a failure or a close) or
 * WF_LEAD, with mu held again. Caller holds mu. */
static int wf_queue(wf_state *st, uint64_t lsn, uint64_t *flushed)
{
    wf_waiter w;
    w.lsn = lsn;
    w.flushed = 0;
    w.state = WF_WAIT;
    w.next = NULL;
    if (st->tail) st->tail->next = &w; else st->head = &w;
    st->tail = &w;
    st->queued++;
    int cpu = st->queued >= 2 ? st->commit_cpu : -1;   /* (behind another waiter) */
    pthread_mutex_unlock(&st->mu);
    if (cpu >= 0) wf_pin_self(cpu);
    int state;
    while ((state = __atomic_load_n(&w.state, __ATOMIC_ACQUIRE)) == WF_WAIT)
        syscall(SYS_futex, &w.state, FUTEX_WAIT_PRIVATE, WF_WAIT, NULL, NULL, 0);
    if (state == WF_DONE) {
        *flushed = w.flushed;
        return state;
    }
    pthread_mutex_lock(&st->mu);
    if (state == WF_LEAD) st->lead_pending = 0;   /* (a hand-back the flusher made) */
    return state;
}

/* 0: WAL is durable up to lsn (out[0] = flushed; out[1] = 1 if a flush by this call wrote
 *    it, out[2..3]: that flush's bytes and pages, out[4..5]: its write and sync ns).
 * 1: the caller leads a flush of [out[0], out[1]) itself and ends it with slk_wf_done
 *    (always so with handback: the caller's writes must pass its own OS layer).
 * -1: the WAL failed (out[1] = 1 if this call's flush failed, out[0] its target).
 * -2: closed. */
int slk_wf_flush(void *p, uint64_t lsn, uint64_t hint, int64_t active, int handback,
                 uint64_t *out)
{
    wf_state *st = p;
    out[1] = 0;
    if (lsn > hint) lsn = hint;            /* nothing past the insert position is a target */
    pthread_mutex_lock(&st->mu);
    if (hint > st->want) st->want = hint;
    if (st->s[WS_FAIL_KIND]) { pthread_mutex_unlock(&st->mu); return -1; }
    if (st->closed) { pthread_mutex_unlock(&st->mu); return -2; }
    if (lsn <= st->flushed) {
        out[0] = st->flushed;
        pthread_mutex_unlock(&st->mu);
        return 0;
    }
    st->s[WS_REQUESTS]++;
    st->active = active;
    st->handback = handback;
    while (st->flushing || st->lead_pending) {
        uint64_t durable;
        int woken = wf_queue(st, lsn, &durable);
        if (woken == WF_DONE) {            /* covered by another's flush (mu not held) */
            out[0] = durable;
            return 0;
        }
        if (woken == WF_COVERED) {         /* the WAL failed, or it was closed */
            if (st->s[WS_FAIL_KIND]) {
                /* the flusher's failed flush: the first waiter it covered reports it */
                int own = st->fail_target && lsn <= st->fail_target && !st->fail_reported;
                st->fail_reported |= own;
                out[0] = st->fail_target;
                out[1] = (uint64_t)own;
                pthread_mutex_unlock(&st->mu);
                return -1;
            }
            if (lsn <= st->flushed) {
                st->s[WS_JOINS]++;
                out[0] = st->flushed;
                pthread_mutex_unlock(&st->mu);
                return 0;
            }
            break;                         /* (woken by close: the only other cause) */
        }
        if (st->s[WS_FAIL_KIND] || st->closed) break;
        if (lsn <= st->flushed) {          /* (woken to lead, but already durable) */
            st->s[WS_JOINS]++;
            wf_wake(st);
            out[0] = st->flushed;
            pthread_mutex_unlock(&st->mu);
            return 0;
        }
    }
    if (st->s[WS_FAIL_KIND] || st->closed) {
        int rc = st->s[WS_FAIL_KIND] ? -1 : -2;
        wf_wake(st);
        pthread_mutex_unlock(&st->mu);
        return rc;
    }
    st->flushing = 1;
    int64_t io[10] = {0};
    uint64_t range[2];
    int rc = wf_lead(st, handback, io, range);
    if (rc == 1) {                         /* the caller leads it (slk_wf_done ends it) */
        out[0] = range[0];
        out[1] = range[1];
        pthread_mutex_unlock(&st->mu);
        return 1;
    }
    if (rc != 0) st->fail_reported = 1;    /* this call reports its own failure */
    wf_wake(st);
    out[0] = rc == 0 ? st->flushed : st->fail_target;
    pthread_mutex_unlock(&st->mu);
    out[1] = 1;
    out[2] = (uint64_t)io[0];
    out[3] = (uint64_t)io[1];
    out[4] = (uint64_t)io[2];
    out[5] = (uint64_t)io[3];
    return rc;
}

/* End a flush slk_wf_flush handed to the caller (return 1): ok, flushed up to target, with
 * fd open on segment segno, the one the C path may write from now on (fd < 0: none); not
 * ok, the WAL failed (the caller raises its own error: fail kind 4). */
void slk_wf_done(void *p, uint64_t target, int ok, int fd, uint64_t segno)
{
    wf_state *st = p;
    pthread_mutex_lock(&st->mu);
    if (ok) {
        st->flushed = target;
        st->s[WS_FLUSHED] = (int64_t)target;
        st->fd = fd;
        st->fd_segno = segno;
    } else {
        wf_fail(st, 4, 0, 0, 0, 0, 0);
    }
    st->flushing = 0;
    wf_wake(st);
    pthread_mutex_unlock(&st->mu);
}

/* No flush from now on: wait for the one running, forget the fd (the caller closes it). */
void slk_wf_close(void *p)
{
    wf_state *st = p;
    pthread_mutex_lock(&st->mu);
    st->closed = 1;
    while (st->flushing) {
        pthread_mutex_unlock(&st->mu);
        usleep(100);
        pthread_mutex_lock(&st->mu);
    }
    st->fd = -1;
    wf_wake(st);
    pthread_mutex_unlock(&st->mu);
    wf_stop_flusher(st);
    slk_wf_set_placement(st, -1, -1);
}

void slk_wf_stats(void *p, int64_t *out)
{
    wf_state *st = p;
    pthread_mutex_lock(&st->mu);
    st->s[WS_FLUSHED] = (int64_t)st->flushed;
    memcpy(out, st->s, sizeof(st->s));
    pthread_mutex_unlock(&st->mu);
}
"""


def c_compiler_missing_reason() -> str | None:
    """None when a C compiler is on PATH (the module needs nothing else), else why not."""
    import os
    import shutil

    try:
        import cffi  # noqa: F401
    except ImportError:
        return "cffi is not installed in the build environment"
    if shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc"):
        return None
    return "no C compiler (cc/gcc) found"


def _builder():
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    # optional=True: a failed compile leaves the pure-Python verifier, not a failed install.
    ffi.set_source("slonik.storage._pagecheck", SOURCE, extra_compile_args=["-O2"], optional=True)
    return ffi


# The helpers that take well under a microsecond, called by many threads on a commit's
# path (HOT_NAMES): ``slonik.storage._pagehot`` holds them compiled again from the same
# SOURCE, but with the GIL kept across the call (storage/hotlib.py). cffi releases the GIL around every C call; with
# committers contending for it, each release hands the GIL to another thread and the
# caller must queue to take it back (two futex calls and a context switch, ~10 us, for
# a call of ~0.3 us).
HOT_NAMES = frozenset({
    "slk_pagecheck_init", "slk_bt_search", "slk_bt_visible", "slk_bt_locate", "slk_bt_probe",
    "slk_bt_children", "slk_ix_point", "slk_bt_redo_actions", "slk_bt_redo_actions_from",
    "slk_bt_apply_delete", "slk_seq_get", "slk_heap_fetch_opt",
    "slk_ix_point_opt", "slk_bt_probe_opt", "slk_bt_probe_inplace", "slk_ix_point_right",
    "slk_ix_point_step_opt", "slk_bt_descend", "slk_bt_leaf_run", "slk_bt_apply_build",
    "slk_bt_first_versions", "slk_wal_build", "slk_wal_build_span", "slk_bt_put_new",
    "slk_bt_put_logged",
    "slk_bt_block_actions", "slk_bt_redo_block", "slk_verify_pages",
    "slk_cl_try_shared", "slk_cl_try_exclusive", "slk_cl_release_shared",
    "slk_cl_release_exclusive", "slk_cl_try_exclusive_many", "slk_cl_release_exclusive_many"})


def _hot_cdef() -> str:
    """CDEF's declarations of the HOT_NAMES functions."""
    import re

    decls = [d.strip() for d in re.sub(r"/\*.*?\*/", "", CDEF, flags=re.S).split(";")]
    hot = [d for d in decls if d and re.search(r"(\w+)\s*\(", d).group(1) in HOT_NAMES]
    return "".join(d + ";\n" for d in hot)


KEEP_GIL = r"""
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
"""


def _hot_builder():
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(_hot_cdef())
    ffi.set_source("slonik.storage._pagehot", KEEP_GIL + SOURCE, extra_compile_args=["-O2"],
                   optional=True)
    return ffi


try:
    ffibuilder = _builder()
    hot_ffibuilder = _hot_builder()
except ImportError:  # cffi absent: page.py uses the pure-Python path
    ffibuilder = hot_ffibuilder = None

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    hot_ffibuilder.compile(verbose=True)
