//! Small safe wrappers around the socket options and syscalls the prober needs.
use std::{io, os::fd::AsRawFd};

/// `setsockopt(fd, level, name, &value)` for any plain-old-data value.
pub(crate) fn setsockopt<T: Copy>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    let (ptr, len) = (
        &value as *const T,
        std::mem::size_of::<T>() as libc::socklen_t,
    );
    // SAFETY: `value` lives on the stack for the duration of the call and its exact size is
    // passed; the kernel only reads it.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, ptr.cast(), len) };
    check(rc)
}

/// `Ok` for a system call's return code 0, else the error in `errno`.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(fd, level, name)` into a byte buffer; returns the length the kernel filled.
pub(crate) fn getsockopt_bytes(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let (ptr, mut len) = (buf.as_mut_ptr(), buf.len() as libc::socklen_t);
    // SAFETY: `buf` is valid for writes of `len` bytes and `len` is a valid in/out pointer.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, ptr.cast(), &mut len) };
    check(rc).map(|()| len as usize)
}

/// `getsockopt` of an `int` option.
pub(crate) fn getsockopt_int(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<i32> {
    let mut buf = [0u8; 4];
    getsockopt_bytes(fd, level, name, &mut buf)?;
    Ok(i32::from_ne_bytes(buf))
}

/// Random bytes from the kernel (for ICMP identifiers and payload tokens); falls back to
/// time- and pid-derived bytes if `getrandom(2)` fails.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SAFETY: `out` is valid for writes of N bytes.
    let n = unsafe { libc::getrandom(out.as_mut_ptr().cast(), N, libc::GRND_NONBLOCK) };
    if n != N as isize {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ (u128::from(std::process::id()) << 64);
        for (i, b) in out.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
    out
}

/// The fields of `struct tcp_info` (linux/tcp.h) the TCP probe reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpInfo {
    /// `tcpi_options` (bit 0: timestamps).
    pub options: u8,
    /// `tcpi_snd_mss`: payload bytes of a full-sized segment (TCP options excluded).
    pub snd_mss: u32,
    /// `tcpi_pmtu`: path MTU the socket uses (lowered by frag-needed / packet-too-big).
    pub pmtu: u32,
    /// `tcpi_bytes_acked`: payload bytes acknowledged by the peer.
    pub bytes_acked: u64,
}

/// `TCPI_OPT_TIMESTAMPS`.
pub(crate) const TCPI_OPT_TIMESTAMPS: u8 = 1;

/// Reads `TCP_INFO` (needs Linux >= 4.1 for `tcpi_bytes_acked`).
pub(crate) fn tcp_info(fd: &impl AsRawFd) -> io::Result<TcpInfo> {
    let mut buf = [0u8; 256];
    let len = getsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut buf)?;
    if len < 128 {
        return Err(io::Error::other(
            "TCP_INFO too short (kernel older than 4.1?)",
        ));
    }
    let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap());
    Ok(TcpInfo {
        options: buf[5],
        snd_mss: u32_at(16),
        pmtu: u32_at(60),
        bytes_acked: u64::from_ne_bytes(buf[120..128].try_into().unwrap()),
    })
}
