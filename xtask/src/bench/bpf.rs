//! Raw `bpf(2)` calls for the per-packet figures: loading the empty tc program (the floor) and
//! `BPF_PROG_TEST_RUN` with a repeat count, used the same way for the floor and for wslnet so
//! that both are measured by the identical code path.
//!
//! The empty program is assembled here (two instructions: `r0 = -1` (`TC_ACT_UNSPEC`);
//! `exit`) and loaded with `BPF_PROG_LOAD` as `BPF_PROG_TYPE_SCHED_CLS`: a second eBPF object
//! in the workspace would have to live in `wslnet-ebpf`, which this benchmark does not own.
//! So is the reset program ([`load_reset_program`]) that lets every repetition of a SYN see
//! the MSS before the clamp.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// Size of the kernel's `struct __sk_buff` (uapi) and the offset of its `gso_size` field.
pub const SKB_CTX_LEN: usize = 192;
const SKB_CTX_GSO_SIZE: usize = 176;

/// The `prog_load` member of `union bpf_attr` up to `expected_attach_type` (the kernel accepts
/// a shorter attribute and treats the rest as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
    // SAFETY: `attr` is a valid, initialised `union bpf_attr` prefix of `size_of::<T>()` bytes
    // whose pointers (if any) reference buffers that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    }
}

/// The `map_create` member of `union bpf_attr` up to `map_flags`.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// The `map_elem` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// One eBPF instruction: `struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm; }`.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = (src << 4) | dst;
    i[2..4].copy_from_slice(&off.to_le_bytes());
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// Loads a tc program from raw instructions; `name` is at most 15 bytes.
fn load_program(insns: &[[u8; 8]], name: &str) -> Result<OwnedFd> {
    let code: Vec<u8> = insns.concat();
    let license = c"GPL";
    let mut log = vec![0u8; 65536];
    let mut prog_name = [0u8; 16];
    prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        ..ProgLoadAttr::default()
    };
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr);
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        bail!(
            "BPF_PROG_LOAD of the {name} tc program: {err}; verifier log: {}",
            String::from_utf8_lossy(&log[..end])
        );
    }
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the empty tc program (`r0 = -1; exit`) and returns its descriptor.
pub fn load_empty_program() -> Result<OwnedFd> {
    load_program(
        &[
            insn(0xb7, 0, 0, 0, -1), // r0 = -1 (TC_ACT_UNSPEC)
            insn(0x95, 0, 0, 0, 0),  // exit
        ],
        "bench_empty",
    )
}

/// A program array of one slot holding `prog` (the target of [`load_reset_program`]).
pub fn prog_array_of(prog: BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_PROG_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        ..MapCreateAttr::default()
    };
    let fd = sys_bpf(BPF_MAP_CREATE, &mut attr);
    if fd < 0 {
        bail!(
            "BPF_MAP_CREATE (prog array): {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    let map = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let key = 0u32;
    let value = prog.as_raw_fd() as u32;
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        ..MapElemAttr::default()
    };
    if sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr) < 0 {
        bail!(
            "BPF_MAP_UPDATE_ELEM (prog array): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(map)
}

/// A slot of a per-CPU array map (wslnet's learn cache) that the reset program looks up first
/// and, with `zero_u64_at`, writes a 0 u64 into at that byte offset.
pub struct SlotReset<'a> {
    /// The map.
    pub map: BorrowedFd<'a>,
    /// The slot (array index).
    pub slot: u32,
    /// Byte offset of the u64 to zero in the slot's value; `None`: look up only (a baseline
    /// with the same lookup).
    pub zero_u64_at: Option<i16>,
}

/// Loads the reset program: it writes `restore` (byte offset, 4 bytes) into the frame, then
/// tail-calls slot 0 of `prog_array`. Ahead of wslnet it puts back the bytes the MSS rewrite
/// changed (MSS value and checksum), so each of a `repeat` run's repetitions rewrites the MSS
/// again: the rewrite is then timed warm, like every other figure, instead of in single cold
/// runs. Its own cost is measured by running it ahead of the same frame without a rewrite.
/// With `slot_reset` it first empties (or only looks up) a slot of the learn cache, so that
/// every repetition writes the learned map.
pub fn load_reset_program(
    prog_array: BorrowedFd<'_>,
    restore: &[(i16, [u8; 4])],
    slot_reset: Option<SlotReset<'_>>,
) -> Result<OwnedFd> {
    let end = restore
        .iter()
        .map(|(o, _)| *o as i32 + 4)
        .max()
        .unwrap_or(0);
    let mut p = vec![insn(0xbf, 6, 1, 0, 0)]; // r6 = r1 (ctx)
    if let Some(r) = slot_reset {
        p.extend([
            insn(0x62, 10, 0, -4, r.slot as i32), // *(u32 *)(r10 - 4) = slot
            insn(0xbf, 2, 10, 0, 0),              // r2 = r10
            insn(0x07, 2, 0, 0, -4),              // r2 += -4
            insn(0x18, 1, 1, 0, r.map.as_raw_fd()), // r1 = map (BPF_PSEUDO_MAP_FD)
            insn(0, 0, 0, 0, 0),
            insn(0x85, 0, 0, 0, 1), // call bpf_map_lookup_elem
        ]);
        if let Some(off) = r.zero_u64_at {
            p.extend([
                insn(0x15, 0, 0, 1, 0),   // if r0 == 0 goto +1
                insn(0x7a, 0, 0, off, 0), // *(u64 *)(r0 + off) = 0
            ]);
        }
    }
    p.extend([
        insn(0x61, 2, 6, 76, 0),  // r2 = skb->data
        insn(0x61, 3, 6, 80, 0),  // r3 = skb->data_end
        insn(0xbf, 4, 2, 0, 0),   // r4 = r2
        insn(0x07, 4, 0, 0, end), // r4 += end
    ]);
    // if r4 > r3 goto exit (past the stores, the map load and the tail call).
    p.push(insn(0x2d, 4, 3, restore.len() as i16 + 5, 0));
    for (off, bytes) in restore {
        p.push(insn(0x62, 2, 0, *off, i32::from_le_bytes(*bytes))); // *(u32 *)(r2 + off) = imm
    }
    p.push(insn(0x18, 2, 1, 0, prog_array.as_raw_fd())); // r2 = prog array (BPF_PSEUDO_MAP_FD)
    p.push(insn(0, 0, 0, 0, 0));
    p.push(insn(0xbf, 1, 6, 0, 0)); // r1 = ctx
    p.push(insn(0xb7, 3, 0, 0, 0)); // r3 = 0 (slot)
    p.push(insn(0x85, 0, 0, 0, 12)); // call bpf_tail_call
    p.push(insn(0xb7, 0, 0, 0, -1)); // r0 = -1 (TC_ACT_UNSPEC)
    p.push(insn(0x95, 0, 0, 0, 0)); // exit
    load_program(&p, "bench_reset")
}

/// What one `BPF_PROG_TEST_RUN` call reported.
#[derive(Debug, Clone)]
pub struct Run {
    /// The program's return value (of the last repetition).
    pub retval: i32,
    /// Mean time per repetition, in nanoseconds, as measured by the kernel.
    pub ns: u32,
    /// The frame after the (last) run.
    pub frame: Vec<u8>,
}

/// Runs `prog` on `frame` `repeat` times in the kernel (`BPF_PROG_TEST_RUN`), with a
/// `__sk_buff` context whose `gso_size` is `gso_size`. The skb is built once: repetitions after
/// the first see the frame as the previous one left it.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], gso_size: u32, repeat: u32) -> Result<Run> {
    let mut ctx = [0u8; SKB_CTX_LEN];
    ctx[SKB_CTX_GSO_SIZE..SKB_CTX_GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
    let mut ctx_out = [0u8; SKB_CTX_LEN];
    let mut out = vec![0u8; frame.len() + 512];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ctx_size_in: SKB_CTX_LEN as u32,
        ctx_size_out: SKB_CTX_LEN as u32,
        ctx_in: ctx.as_ptr() as u64,
        ctx_out: ctx_out.as_mut_ptr() as u64,
        ..TestRunAttr::default()
    };
    if sys_bpf(BPF_PROG_TEST_RUN, &mut attr) < 0 {
        bail!(
            "BPF_PROG_TEST_RUN ({} bytes, repeat {repeat}): {}",
            frame.len(),
            std::io::Error::last_os_error()
        );
    }
    out.truncate(attr.data_size_out as usize);
    Ok(Run {
        retval: attr.retval as i32,
        ns: attr.duration,
        frame: out,
    })
}
