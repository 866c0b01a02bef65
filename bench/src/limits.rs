//! Open-file limits: thousands of connections need thousands of descriptors, in the
//! benchmark and in the system it starts (a child inherits the limit at spawn).

/// Raise the soft `RLIMIT_NOFILE` to at least `wanted` (as far as the hard limit allows,
/// and the hard limit too when running as root). Returns the soft limit now in force.
pub fn raise_open_files(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur >= wanted {
            return limit.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return wanted;
        }
        let soft_max = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft_max) == 0 {
            eprintln!(
                "open files limited to {} (hard limit; {wanted} wanted): raise it with `ulimit -Hn` as root",
                limit.rlim_max
            );
            return limit.rlim_max;
        }
    }
    limit.rlim_cur
}
