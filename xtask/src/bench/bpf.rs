//! Raw `bpf(2)` calls for the per-packet figures: loading the empty tc program (the floor) and
//! `BPF_PROG_TEST_RUN` with a repeat count, used the same way for the floor and for wslnet so
//! that both are measured by the identical code path.
//!
//! The empty program is assembled here (two instructions: `r0 = -1` (`TC_ACT_UNSPEC`);
//! `exit`) and loaded with `BPF_PROG_LOAD` as `BPF_PROG_TYPE_SCHED_CLS`: a second eBPF object
//! in the workspace would have to live in `wslnet-ebpf`, which this benchmark does not own.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
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

/// Loads the empty tc program (`r0 = -1; exit`) and returns its descriptor.
pub fn load_empty_program() -> Result<OwnedFd> {
    // struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm; }, little endian.
    let mut insns = [0u8; 16];
    insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
    insns[4..8].copy_from_slice(&(-1i32).to_le_bytes());
    insns[8] = 0x95; // BPF_JMP | BPF_EXIT
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"bench_empty");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr);
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        bail!(
            "BPF_PROG_LOAD of the empty tc program: {err}; verifier log: {}",
            String::from_utf8_lossy(&log[..end])
        );
    }
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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
