# Lane-level emulator of kernels/attention_decode_rmma.cu (one block = 4 warps x 32 lanes),
# post_on = false path (q through L2), counters != nullptr (fused merge) and == nullptr (partials
# + an emulated pass 2). PTX fragment layouts (PTX ISA 9.7.14.5.7/5.8, .bf16, f32 accum):
#  m16n8k16 A: a{0,1} row g, col 2t+{0,1}; a{2,3} row g+8, same; a{4,5} row g, col 2t+8+{0,1};
#              a{6,7} row g+8, col 2t+8+{0,1}; reg k holds a{2k} (low 16) and a{2k+1} (high 16)
#           B: b{0,1} row 2t+{0,1}, col g; b{2,3} row 2t+8+{0,1}, col g
#  m16n8k8  A: a{0,1} row g, col 2t+{0,1}; a{2,3} row g+8, col 2t+{0,1}
#           B: b{0,1} row 2t+{0,1}, col g
#  C/D (both): c{0,1} row g, col 2t+{0,1}; c{2,3} row g+8, col 2t+{0,1}
import numpy as np, sys, itertools

f32 = np.float32
NWM, MG, TK = 4, 8, 8

def f2bf(x):  # float32 -> bf16 bits, RNE (__float2bfloat16_rn); inputs are finite
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)

def bf2f(h):
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)

def lo16(w): return (w & 0xFFFF).astype(np.uint16)
def hi16(w): return (w >> 16).astype(np.uint16)

def byte_perm(x, y, s):
    x = np.asarray(x, np.uint32); y = np.asarray(y, np.uint32)
    b = [(x >> (8 * i)) & 0xFF for i in range(4)] + [(y >> (8 * i)) & 0xFF for i in range(4)]
    out = np.zeros_like(x)
    for n in range(4):
        sel = (s >> (4 * n)) & 0x7
        out |= b[sel] << (8 * n)
    return out

def pack_bf16(lo, hi):
    return f2bf(lo).astype(np.uint32) | (f2bf(hi).astype(np.uint32) << 16)

def shfl(v, src):  # __shfl_sync full mask; v: [32] per-lane, src: int or [32]
    src = np.broadcast_to(np.asarray(src), (32,)) & 31
    return v[src]

def shfl_xor(v, m):
    return v[np.arange(32) ^ m]

def ex2(x):
    with np.errstate(over='ignore', invalid='ignore'):
        return np.exp2(np.asarray(x, f32)).astype(f32)

G_ = np.arange(32) >> 2
T_ = np.arange(32) & 3

def mma_m16n8k16(c, a, b0, b1):
    # c: [32,4] f32, a: [32,4] u32, b0/b1: [32] u32
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for l in range(32):
        g, t = G_[l], T_[l]
        for k in range(4):
            row = g + (8 if k in (1, 3) else 0)
            col = 2 * t + (8 if k >= 2 else 0)
            A[row, col] = bf2f(lo16(a[l, k])); A[row, col + 1] = bf2f(hi16(a[l, k]))
        B[2 * t, g] = bf2f(lo16(b0[l])); B[2 * t + 1, g] = bf2f(hi16(b0[l]))
        B[2 * t + 8, g] = bf2f(lo16(b1[l])); B[2 * t + 9, g] = bf2f(hi16(b1[l]))
    return _acc(c, A @ B)

def mma_m16n8k8(c, a, b0):
    A = np.zeros((16, 8)); B = np.zeros((8, 8))
    for l in range(32):
        g, t = G_[l], T_[l]
        A[g, 2 * t] = bf2f(lo16(a[l, 0])); A[g, 2 * t + 1] = bf2f(hi16(a[l, 0]))
        A[g + 8, 2 * t] = bf2f(lo16(a[l, 1])); A[g + 8, 2 * t + 1] = bf2f(hi16(a[l, 1]))
        B[2 * t, g] = bf2f(lo16(b0[l])); B[2 * t + 1, g] = bf2f(hi16(b0[l]))
    return _acc(c, A @ B)

def _acc(c, P):
    out = c.astype(np.float64).copy()
    for l in range(32):
        g, t = G_[l], T_[l]
        out[l, 0] += P[g, 2 * t]; out[l, 1] += P[g, 2 * t + 1]
        out[l, 2] += P[g + 8, 2 * t]; out[l, 3] += P[g + 8, 2 * t + 1]
    return out.astype(f32)

def words_of(mem_u16, off):  # a 16-byte load at element offset off (per lane) -> [32,4] u32
    off = np.asarray(off)
    assert np.all(off % 8 == 0), "misaligned 16-byte load"
    e = mem_u16[off[:, None] + np.arange(8)[None, :]].astype(np.uint32)  # [32,8]
    return e[:, 0::2] | (e[:, 1::2] << 16)

class Block:
    def __init__(s, D, kcache, vcache, table, table_stride, rowb, q, q_stride, t, kvl, nq, nk,
                 scale, min_keys, split, splits, kvh, b):
        s.__dict__.update(locals()); del s.__dict__['s']

    def run(s):
        D, nq, nk = s.D, s.nq, s.nk
        KQ, VQ, MT, TPR = D // 32, D // 64, D // 16, 32 // TK
        G = nq // nk
        kvl = s.kvl
        chunk = max(s.min_keys, (kvl + s.splits - 1) // s.splits)
        k_begin = s.split * chunk; k_end = min(kvl, k_begin + chunk)
        trow_base = s.rowb * s.table_stride
        tab = s.table
        reads = []
        def trow(k):
            assert 0 <= k < kvl, f"table read out of range: {k}"
            reads.append(k); return tab[trow_base + k]
        sl2 = f32(s.scale) * f32(1.4426950408889634)
        kvw = nk * D
        sm_m = np.full((NWM, MG), np.nan, f32); sm_l = np.full((NWM, MG), np.nan, f32)
        sm_o = np.full((NWM, MG, D), np.nan, f32)
        sm_q = np.full((MG, D), 0xFFFF, np.uint16)  # uninitialised: NaN pattern
        for g in range(G):
            base = s.t * s.q_stride + (s.kvh * G + g) * D
            sm_q[g] = s.q[base:base + D]
        sm_q_flat = sm_q.reshape(-1)
        lane = np.arange(32); r = lane >> 2; j = lane & 3
        for warp in range(NWM):
            span = k_end - k_begin - warp * TK
            ntw = -(-span // (NWM * TK)) if span > 0 else 0
            def slots_of(g):
                out = np.zeros(32, np.uint32)
                for l in range(32):
                    i = g * TPR + l // TK
                    key = k_begin + (warp + NWM * i) * TK + l % TK
                    out[l] = trow(key) if (i < ntw and key < k_end) else 0
                return out
            sg_cur = slots_of(0); sg_next = slots_of(1)
            q_row = np.where(r < G, r, 0)
            q_lane = q_row * D + 8 * j  # element offsets into sm_q
            q_on = np.where(r < G, 0xFFFFFFFF, 0).astype(np.uint32)
            kb = s.kvh * D + 8 * j
            vb = s.kvh * D + 8 * r
            o = np.zeros((MT, 32, 4), f32)
            mrow = np.full(32, -np.inf, f32); lrow = np.zeros(32, f32)
            for i in range(ntw):
                if i > 0 and i % TPR == 0:
                    sg_cur = sg_next
                    sg_next = slots_of(i // TPR + 1)
                n0 = k_begin + (warp + NWM * i) * TK; sl0 = (i % TPR) * TK
                # K
                slot = shfl(sg_cur, sl0 + r).astype(np.int64)
                p = kb + slot * kvw
                ok = n0 + r < k_end
                kr = np.zeros((32, KQ, 4), np.uint32)
                for qi in range(KQ):
                    w = words_of(s.kcache, np.where(ok, p + 32 * qi, 0))
                    kr[:, qi] = np.where(ok[:, None], w, 0)
                vr = np.zeros((32, 2, VQ, 4), np.uint32)
                for v in range(2):
                    kk = 2 * j + v
                    slot = shfl(sg_cur, sl0 + kk).astype(np.int64)
                    p = vb + slot * kvw
                    okv = n0 + kk < k_end
                    for qi in range(VQ):
                        w = words_of(s.vcache, np.where(okv, p + 64 * qi, 0))
                        vr[:, v, qi] = np.where(okv[:, None], w, 0)
                # S
                sacc = np.zeros((32, 4), f32)
                kw = kr.reshape(32, 4 * KQ)
                for c in range(MT):
                    off = q_lane + 32 * (c >> 1) + 4 * (c & 1)
                    assert np.all(off % 4 == 0)
                    e4 = sm_q_flat[off[:, None] + np.arange(4)[None, :]].astype(np.uint32)
                    qx = e4[:, 0] | (e4[:, 1] << 16); qy = e4[:, 2] | (e4[:, 3] << 16)
                    a = np.stack([qx & q_on, np.zeros(32, np.uint32), qy & q_on,
                                  np.zeros(32, np.uint32)], 1)
                    sacc = mma_m16n8k16(sacc, a, kw[:, 2 * c], kw[:, 2 * c + 1])
                sv = sacc.copy()
                mx = mrow.copy()
                for e in range(2):
                    sv[:, e] = np.where(n0 + 2 * j + e < k_end, sv[:, e] * sl2, -np.inf).astype(f32)
                    mx = np.fmax(mx, sv[:, e])
                mx = np.fmax(mx, shfl_xor(mx, 1)); mx = np.fmax(mx, shfl_xor(mx, 2))
                assert np.all(np.isfinite(mx))
                alpha = ex2(mrow - mx)
                mrow = mx.copy()
                lrow = (lrow * alpha).astype(f32)
                for e in range(2):
                    sv[:, e] = ex2(sv[:, e] - mx)
                    lrow = (lrow + sv[:, e]).astype(f32)
                a_lo = shfl(alpha, 8 * j); a_hi = shfl(alpha, 8 * j + 4)
                pb = pack_bf16(sv[:, 0], sv[:, 1])
                for mt in range(MT):
                    qi, e = mt >> 2, mt & 3
                    w0 = vr[:, 0, qi, e]; w1 = vr[:, 1, qi, e]
                    a = np.stack([byte_perm(w0, w1, 0x5410), byte_perm(w0, w1, 0x7632)], 1)
                    o[mt][:, 0] *= a_lo; o[mt][:, 1] *= a_hi
                    o[mt][:, 2] *= a_lo; o[mt][:, 3] *= a_hi
                    o[mt] = mma_m16n8k8(o[mt], a, pb)
            lrow = (lrow + shfl_xor(lrow, 1)).astype(f32)
            lrow = (lrow + shfl_xor(lrow, 2)).astype(f32)
            written = set()
            for l in range(32):
                if r[l] < G and j[l] == 0:
                    sm_m[warp, r[l]] = mrow[l]; sm_l[warp, r[l]] = lrow[l]
            for mt in range(MT):
                for l in range(32):
                    d = (mt >> 2) * 64 + 8 * r[l] + 2 * (mt & 3)
                    jj = j[l]
                    if 2 * jj < G:
                        for (h, dd, val) in ((2 * jj, d, o[mt][l, 0]), (2 * jj, d + 1, o[mt][l, 2])):
                            assert (h, dd) not in written; written.add((h, dd)); sm_o[warp, h, dd] = val
                    if 2 * jj + 1 < G:
                        for (h, dd, val) in ((2 * jj + 1, d, o[mt][l, 1]), (2 * jj + 1, d + 1, o[mt][l, 3])):
                            assert (h, dd) not in written; written.add((h, dd)); sm_o[warp, h, dd] = val
            assert len(written) == G * D, "sm_o not fully covered"
        s.reads = reads; s.k_begin, s.k_end = k_begin, k_end
        # decode_merge_store, first loop (per block)
        M = np.max(sm_m[:, :G], axis=0)
        assert not np.any(np.isnan(M))
        Ms = np.where(M == -np.inf, f32(0), M)
        f = np.exp2(sm_m[:, :G] - Ms[None, :]).astype(f32)
        L = (sm_l[:, :G] * f).sum(0).astype(f32)
        O = (sm_o[:, :G, :] * f[:, :, None]).sum(0).astype(f32)
        assert not np.any(np.isnan(O)) and not np.any(np.isnan(L))
        return M, L, O

def merge_splits(parts, D):
    M = np.max([p[0] for p in parts], axis=0)
    Ms = np.where(M == -np.inf, 0, M)
    L = sum(p[1] * np.exp2(p[0] - Ms) for p in parts)
    O = sum(p[2] * np.exp2(p[0] - Ms)[:, None] for p in parts)
    return np.where(L[:, None] > 0, O / np.where(L > 0, L, 1)[:, None], 0)

def reference(qf, kf, vf, scale):  # qf [G,D], kf/vf [n,D] float64 (bf16 values)
    s = qf @ kf.T * scale
    s -= s.max(1, keepdims=True)
    p = np.exp(s)
    return (p @ vf) / p.sum(1, keepdims=True)

def run_case(rng, D, G, kvl, splits, min_keys, nk=2, B=2, counters=True, verbose=False):
    nq = nk * G
    nslots = kvl * B + 37
    kc = f2bf(rng.standard_normal((nslots, nk, D)).astype(f32)).reshape(-1)
    vc = f2bf(rng.standard_normal((nslots, nk, D)).astype(f32)).reshape(-1)
    table_stride = kvl + 5
    perm = rng.permutation(nslots)
    table = np.zeros(B * table_stride + 3, np.uint32)
    rows = rng.permutation(B)  # row[b]
    for b in range(B):
        table[rows[b] * table_stride: rows[b] * table_stride + kvl] = perm[b * kvl:(b + 1) * kvl]
    T = B + 1
    q_stride = (nq + 2 * nk) * D
    q = f2bf((rng.standard_normal((T, q_stride)) * 0.7).astype(f32)).reshape(-1)
    q_tok = rng.permutation(T)[:B]
    scale = 1.0 / np.sqrt(D)
    worst = 0.0
    for b in range(B):
        for kvh in range(nk):
            parts = []; allreads = []
            for split in range(splits):
                blk = Block(D, kc, vc, table, table_stride, rows[b], q, q_stride, q_tok[b], kvl, nq, nk,
                            scale, min_keys, split, splits, kvh, b)
                parts.append(blk.run()); allreads += blk.reads
            assert sorted(allreads) == list(range(kvl)), "table entries not read exactly once"
            if splits == 1 and counters:
                M, L, O = parts[0]
                out = np.where(L[:, None] > 0, O / np.where(L > 0, L, 1)[:, None], 0)
            else:
                out = merge_splits(parts, D)
            out = bf2f(f2bf(out.astype(f32))).astype(np.float64)
            qf = bf2f(q.reshape(T, q_stride)[q_tok[b], kvh * G * D:(kvh + 1) * G * D]).reshape(G, D).astype(np.float64)
            slots = table[rows[b] * table_stride: rows[b] * table_stride + kvl].astype(np.int64)
            kf = bf2f(kc.reshape(nslots, nk, D)[slots, kvh]).astype(np.float64)
            vf = bf2f(vc.reshape(nslots, nk, D)[slots, kvh]).astype(np.float64)
            ref = reference(qf, kf, vf, scale)
            err = np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30)
            worst = max(worst, err)
    return worst

if __name__ == "__main__":
    rng = np.random.default_rng(1234)
    Ds = [64, 128]; Gs = [1, 2, 4, 8]; kvls = [1, 5, 8, 31, 33, 64, 160, 257]
    cases = list(itertools.product(Ds, Gs, kvls, [1, 3], [1, 40]))
    if len(sys.argv) > 1 and sys.argv[1] == "quick":
        cases = cases[::7]
    worst = 0
    for (D, G, kvl, splits, mk) in cases:
        for counters in ([True, False] if splits == 1 else [True]):
            e = run_case(rng, D, G, kvl, splits, mk, counters=counters)
            worst = max(worst, e)
            flag = "" if e < 1e-2 else "   <-- FAIL"
            print(f"D={D:3d} G={G} kvl={kvl:3d} splits={splits} min_keys={mk:2d} counters={counters}: rel err {e:.2e}{flag}", flush=True)
    print("worst", worst)
