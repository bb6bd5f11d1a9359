//! Where the MSS is rewritten: the TCP option walk and the checksum-preserving store.
//!
//! Semantics follow netfilter's `xt_TCPMSS` (clamp-mss-to-pmtu) with stricter parsing: only the
//! first MSS option counts, it is only ever lowered, no option is inserted or removed, and a
//! malformed option list leaves the segment untouched.

use aya_ebpf::programs::TcContext;
use wslnet_common::proto::{
    TCP_CHECK_OFFSET, TCP_HDR_LEN, TCP_MAX_OPTION_BYTES, TCPOLEN_MSS, TCPOPT_EOL, TCPOPT_MSS,
    TCPOPT_NOP,
};

use crate::packet;

/// Covers every option index (below [`TCP_MAX_OPTION_BYTES`]); see [`find`].
const OPTION_INDEX_MASK: usize = 63;

/// The MSS option of a SYN.
pub enum MssOption {
    /// Found: offset of its 2-byte value in the packet, and the value.
    Found { value_offset: usize, mss: u16 },
    /// The options end (EOL or header end) without an MSS option.
    Absent,
    /// An option with length 0 or 1, running past the header, or an MSS option whose length is
    /// not 4; also a TCP header whose data offset is below 5 or past the packet.
    Malformed,
}

/// Walks the options of the TCP header at `l4` (the packet ends at `end`) up to the first MSS
/// option. `doff_byte` is byte 12 of the TCP header.
#[inline(always)]
pub fn find(ctx: &TcContext, l4: usize, end: usize, doff_byte: u8) -> MssOption {
    let hdr_len = ((doff_byte >> 4) as usize) * 4;
    if hdr_len < TCP_HDR_LEN || l4 + hdr_len > end {
        return MssOption::Malformed;
    }
    // Fast path: Linux, Windows, macOS and the BSDs all put MSS first. When the first option is
    // a well-formed MSS option, the walk below would stop at it with the same answer.
    if hdr_len >= TCP_HDR_LEN + TCPOLEN_MSS as usize {
        let first = packet::read::<[u8; 4]>(ctx, l4 + TCP_HDR_LEN).map(u32::from_be_bytes);
        if let Some(first) = first
            && first >> 16 == u32::from_be_bytes([TCPOPT_MSS, TCPOLEN_MSS, 0, 0]) >> 16
        {
            return MssOption::Found {
                value_offset: l4 + TCP_HDR_LEN + 2,
                mss: first as u16,
            };
        }
    }
    let start = l4 + TCP_HDR_LEN;
    // Bytes of options, at most TCP_MAX_OPTION_BYTES (data offset 15).
    let opt_len = hdr_len - TCP_HDR_LEN;
    // Index of the next option, relative to `start`.
    let mut i = 0;
    // At most one iteration per option byte: a bounded loop the verifier accepts.
    for _ in 0..TCP_MAX_OPTION_BYTES {
        // `i` is below TCP_MAX_OPTION_BYTES here, so the mask changes nothing at run time. For the
        // verifier it does: every option length read from the packet would otherwise give `i`
        // a range of its own, and the verifier walked each sequence of lengths separately (this
        // loop took 750,000 of its 1,000,000-instruction budget). Masked, `i` is one range
        // (0..=OPTION_INDEX_MASK) whatever came before, so one state per iteration remains.
        // SAFETY: an AND of one register with a constant: no memory, no other register. In
        // assembly because LLVM proves the mask redundant and drops it from Rust.
        unsafe {
            core::arch::asm!(
                "{i} &= {mask}",
                i = inout(reg) i,
                mask = const OPTION_INDEX_MASK,
                options(pure, nomem, nostack),
            )
        };
        if i >= opt_len {
            return MssOption::Absent;
        }
        let Ok(kind) = ctx.load::<u8>(start + i) else {
            return MssOption::Malformed;
        };
        if kind == TCPOPT_EOL {
            return MssOption::Absent;
        }
        if kind == TCPOPT_NOP {
            i += 1;
            continue;
        }
        if i + 2 > opt_len {
            return MssOption::Malformed;
        }
        let Ok(len) = ctx.load::<u8>(start + i + 1) else {
            return MssOption::Malformed;
        };
        let len = len as usize;
        if len < 2 || i + len > opt_len {
            return MssOption::Malformed;
        }
        if kind == TCPOPT_MSS {
            if len != TCPOLEN_MSS as usize {
                return MssOption::Malformed;
            }
            let Ok(value) = ctx.load::<[u8; 2]>(start + i + 2) else {
                return MssOption::Malformed;
            };
            return MssOption::Found {
                value_offset: start + i + 2,
                mss: u16::from_be_bytes(value),
            };
        }
        i += len;
    }
    MssOption::Absent
}

/// Writes `new_mss` over `old_mss`, the MSS option value at `value_offset` of the TCP header at
/// `l4`, and updates the TCP checksum incrementally with `bpf_l4_csum_replace` (no pseudo-header
/// flag), so that both full checksums and CHECKSUM_PARTIAL skbs (whose `check` holds only the
/// pseudo-header sum) stay right.
///
/// The one's-complement sum works on 16-bit words aligned to the start of the TCP header. When
/// the value sits at an odd offset (a lone NOP before the option), its two bytes straddle two
/// words. Either way the checksum is updated over the aligned 32-bit word that holds the value:
/// at its end (bytes 2-3) or in its middle (bytes 1-2), with zeros for the word's other bytes.
/// Those bytes are the same before and after, so they add nothing to the difference, and the
/// result is the one the kernel gives when told the real bytes: its sum always carries a
/// nonzero term (the complemented old checksum, widened to 32 bits), so equal differences give
/// equal checksums, bit for bit.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    l4: usize,
    value_offset: usize,
    old_mss: u16,
    new_mss: u16,
) -> Result<(), ()> {
    // 0 when the value is the low half of its word (even offset), 8 when it straddles two.
    let shift = ((value_offset - l4) & 1) * 8;
    // Big-endian words, stored as they lie in the packet: the helper sums memory order.
    let word = |mss: u16| (u32::from(mss) << shift).to_be() as u64;
    ctx.store(value_offset, &new_mss.to_be_bytes(), 0)
        .map_err(|_| ())?;
    ctx.l4_csum_replace(l4 + TCP_CHECK_OFFSET, word(old_mss), word(new_mss), 4)
        .map_err(|_| ())
}
