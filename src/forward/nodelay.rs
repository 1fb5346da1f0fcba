//! Turns off Nagle's algorithm on ferry's TCP connections to Kafka.
//!
//! rskafka opens its broker connections itself and leaves `TCP_NODELAY`
//! unset. It writes each request as a 4-byte length and then the body, so
//! with Nagle's algorithm the tail of the body waits until the broker has
//! acknowledged the segments before it — and brokers delay their ACKs (by
//! up to 40 ms on Linux) while they wait for the rest of the request. That
//! stall capped delivery at a few windows a second whatever their size.
//! Batching is ferry's job (windows, `linger_ms`), not the kernel's, so
//! every connected TCP socket of the process gets `TCP_NODELAY`, as
//! librdkafka and the Java client do for theirs.

use std::os::fd::RawFd;

/// Set `TCP_NODELAY` on each connected TCP socket of this process that
/// does not have it yet; returns how many were changed. Cheap enough to
/// call after connecting (a few dozen descriptors at most).
pub fn apply_to_own_sockets() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut changed = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|target| {
            target
                .as_os_str()
                .as_encoded_bytes()
                .starts_with(b"socket:")
        });
        if is_socket && is_connected_tcp(fd) && !has_nodelay(fd) && set_nodelay(fd) {
            changed += 1;
        }
    }
    changed
}

fn int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given; a
    // descriptor that is not a socket (or is closed by now) makes the call
    // fail with an error code, which is handled.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

fn is_connected_tcp(fd: RawFd) -> bool {
    if int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_STREAM) {
        return false;
    }
    let family = int_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN);
    if family != Some(libc::AF_INET) && family != Some(libc::AF_INET6) {
        return false;
    }
    // SAFETY: an all-zero sockaddr_storage is a valid value; the kernel
    // writes at most `len` bytes into it.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `peer` and `len` are valid for writes; failure (not connected,
    // a listener) is an error code.
    let rc = unsafe {
        libc::getpeername(
            fd,
            (&mut peer as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    rc == 0
}

fn has_nodelay(fd: RawFd) -> bool {
    int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY).is_some_and(|v| v != 0)
}

fn set_nodelay(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid c_int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn connected_tcp_sockets_get_nodelay_and_listeners_are_left_alone() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server_side, _) = listener.accept().expect("accept");
        assert!(!has_nodelay(client.as_raw_fd()));
        assert!(apply_to_own_sockets() >= 2);
        assert!(has_nodelay(client.as_raw_fd()));
        assert!(has_nodelay(server_side.as_raw_fd()));
        assert!(!is_connected_tcp(listener.as_raw_fd()));
        // Nothing left to change for these two.
        assert!(has_nodelay(client.as_raw_fd()));
    }

    #[test]
    fn non_sockets_are_not_tcp() {
        let file = std::fs::File::open("/proc/self/status").expect("open");
        assert!(!is_connected_tcp(file.as_raw_fd()));
    }
}
