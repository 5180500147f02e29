//! The per-execution supervisor: a small process between the runner (a node or a worker) and
//! the command, so that no process of an execution outlives the runner that records it.
//!
//! ```text
//! runner ──fork──▶ supervisor (subreaper, holds the lifeline) ──fork+exec──▶ sh -c COMMAND
//! ```
//!
//! The supervisor is a forked copy of the runner that never calls `exec`: it needs no binary
//! on disk, works in every process that links this crate, and runs only async-signal-safe
//! system calls (no allocation, no locks). It
//! - starts the command in its own process group and tells the runner its pid;
//! - is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so descendants that leave the group
//!   (`setsid`, double forks) are re-parented to it instead of to init;
//! - holds the read end of the runner's *lifeline*, a pipe whose only write end lives in the
//!   runner: when the runner dies by any cause (SIGKILL, OOM, a crash) the kernel closes it,
//!   the supervisor sees end-of-file at once and kills the command's group and every
//!   remaining descendant, then exits;
//! - when the command ends, kills what it left behind (its group and any re-parented
//!   descendant), waits for all of it, and reports the command's exit and the count of
//!   leftovers on a status pipe.
//!
//! Why not a cgroup per execution: it needs a host that delegates a cgroup subtree to jobward
//! (systemd `Delegate=yes` or root on cgroup v2), which many hosts and containers do not. The
//! supervisor needs nothing. What escapes it: a process that is not a descendant (started
//! through another daemon: `at`, `systemd-run`, `ssh`), and descendants of a supervisor that
//! was itself SIGKILLed (then the runner kills the command's group, and the execution
//! markers `JOBWARD_EXECUTION_ID`/`JOBWARD_NODE_ID` in their environment let the next start
//! of the node, or `jobward cleanup --apply` on the host, find and kill them).

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

/// How the command's main process ended, as the supervisor saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reported {
    Code(i32),
    Signal(i32),
}

/// The supervisor's final word on the status pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
    pub exit: Reported,
    /// Processes still alive after the command's main process ended (or after the runner
    /// died), all killed.
    pub leftovers: u32,
    /// The runner's lifeline broke: the supervisor killed everything because its runner died.
    pub runner_died: bool,
}

const PID_RECORD: usize = 12;
const FINAL_RECORD: usize = 16;
const FINAL_TAG: u8 = 0xA5;

/// The lifeline of this process: created once, both ends close-on-exec, both kept open for
/// the life of the process. Only its death closes the write end.
fn lifeline() -> io::Result<(RawFd, RawFd)> {
    static LIFELINE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
    if let Some((r, w)) = LIFELINE.get() {
        return Ok((r.as_raw_fd(), w.as_raw_fd()));
    }
    let (r, w) = pipe()?;
    let (r, w) = LIFELINE.get_or_init(|| (r, w));
    Ok((r.as_raw_fd(), w.as_raw_fd()))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What the runner prepares before the fork; the closure given to `pre_exec` calls `enter`.
pub(crate) struct Plan {
    lifeline_read: RawFd,
    lifeline_write: RawFd,
    status_write: RawFd,
    status_read: RawFd,
    /// Keeps the runner's copies open until the spawn returned.
    status: Option<(OwnedFd, OwnedFd)>,
}

impl Plan {
    pub(crate) fn new() -> io::Result<Plan> {
        let (lifeline_read, lifeline_write) = lifeline()?;
        let (status_read, status_write) = pipe()?;
        Ok(Plan {
            lifeline_read,
            lifeline_write,
            status_write: status_write.as_raw_fd(),
            status_read: status_read.as_raw_fd(),
            status: Some((status_read, status_write)),
        })
    }

    /// The part that runs in the forked child (see `enter`).
    pub(crate) fn hook(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let (lr, lw, sw, sr) = (
            self.lifeline_read,
            self.lifeline_write,
            self.status_write,
            self.status_read,
        );
        // SAFETY (of the closure): `enter` runs only async-signal-safe calls.
        move || unsafe { enter(lr, lw, sw, sr) }
    }

    /// After the spawn returned: the runner keeps the read end of the status pipe only, and
    /// reads the command's pid, which the supervisor wrote before the spawn could return.
    pub(crate) fn spawned(mut self) -> io::Result<StatusPipe> {
        let (read, write) = self.status.take().expect("spawned once");
        drop(write);
        let mut file = std::fs::File::from(read);
        let mut buf = [0u8; PID_RECORD];
        file.read_exact(&mut buf).map_err(|e| {
            io::Error::other(format!(
                "the supervisor did not report the command's pid: {e}"
            ))
        })?;
        let mut ticks = [0u8; 8];
        ticks.copy_from_slice(&buf[4..12]);
        Ok(StatusPipe {
            file,
            pid: i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]),
            start_ticks: u64::from_le_bytes(ticks),
        })
    }
}

/// The runner's end of the status pipe.
pub(crate) struct StatusPipe {
    file: std::fs::File,
    pub pid: i32,
    /// The command's kernel start time, read before it could end and be reaped.
    pub start_ticks: u64,
}

impl StatusPipe {
    /// The final report, once the supervisor has exited; `None` when it died without one
    /// (it was SIGKILLed).
    pub(crate) fn report(&mut self) -> Option<Report> {
        let mut buf = [0u8; FINAL_RECORD];
        self.file.read_exact(&mut buf).ok()?;
        if buf[0] != FINAL_TAG {
            return None;
        }
        let value = i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let exit = match buf[1] {
            1 => Reported::Signal(value),
            _ => Reported::Code(value),
        };
        Some(Report {
            exit,
            leftovers: u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]),
            runner_died: buf[2] == 1,
        })
    }
}

/// Runs in the child forked by `Command::spawn`, before its `exec`. It forks again: the new
/// child returns `Ok` and goes on to `exec` the command; this process becomes the
/// supervisor and never returns.
///
/// # Safety
/// Must run between `fork` and `exec` of a `Command`: only async-signal-safe calls follow.
unsafe fn enter(
    lifeline_read: RawFd,
    lifeline_write: RawFd,
    status_write: RawFd,
    status_read: RawFd,
) -> io::Result<()> {
    // SAFETY: every call below is an async-signal-safe system call on plain values.
    unsafe {
        // Orphans among the command's descendants come to us, not to init. Not inherited by
        // the command.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        // SIGCHLD is read from a signalfd; block it before the command exists, so that its
        // end cannot slip between a check and the wait.
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &chld, std::ptr::null_mut());

        let me = libc::getpid();
        let cmd = libc::fork();
        if cmd < 0 {
            return Err(io::Error::last_os_error());
        }
        if cmd == 0 {
            // The command: its own process group, the default signal mask, and killed if
            // its supervisor dies (the supervisor then cannot clean up after it).
            libc::sigprocmask(libc::SIG_UNBLOCK, &chld, std::ptr::null_mut());
            libc::setpgid(0, 0);
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() != me {
                libc::_exit(137);
            }
            return Ok(());
        }
        // Both processes set the command's group, so it exists whichever runs first.
        libc::setpgid(cmd, cmd);
        // Out of the way of 0-2 (a runner started with stdin closed may hold a pipe there)
        // and without close-on-exec: this process never executes anything.
        let lifeline = libc::fcntl(lifeline_read, libc::F_DUPFD, 10);
        let status = libc::fcntl(status_write, libc::F_DUPFD, 10);
        let mut rec = [0u8; PID_RECORD];
        rec[..4].copy_from_slice(&cmd.to_le_bytes());
        rec[4..].copy_from_slice(&start_ticks_of(cmd).to_le_bytes());
        write_all(status, &rec);
        let _ = (lifeline_write, status_read);
        supervise(cmd, lifeline, status)
    }
}

/// # Safety
/// Async-signal-safe calls only; never returns.
unsafe fn supervise(cmd: libc::pid_t, lifeline_read: RawFd, status_write: RawFd) -> ! {
    // SAFETY: async-signal-safe system calls on plain values and stack buffers.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"jobward-sv".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        // The log pipes belong to the command alone: the runner must see their end when the
        // command's group is gone, not when the supervisor exits.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
        // Everything else inherited from the runner goes: its sockets, its database files,
        // the write end of the lifeline (or it would never break), the read end of the
        // status pipe, and the pipe `Command::spawn` waits on for the command's `exec`.
        close_all_but(&[lifeline_read, status_write]);
        // Signals: a terminal's Ctrl-C or a stray SIGTERM must not take the guard away while
        // the command runs; faults keep their default action.
        for sig in 1..32 {
            match sig {
                libc::SIGKILL | libc::SIGSTOP | libc::SIGCHLD => {}
                libc::SIGSEGV
                | libc::SIGBUS
                | libc::SIGILL
                | libc::SIGFPE
                | libc::SIGABRT
                | libc::SIGTRAP
                | libc::SIGSYS => {
                    libc::signal(sig, libc::SIG_DFL);
                }
                _ => {
                    libc::signal(sig, libc::SIG_IGN);
                }
            }
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        let sfd = libc::signalfd(-1, &chld, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);

        // A runner that died before the lifeline was watched is caught here too: its write
        // end is already closed, so the first poll reports the end of the pipe.
        let mut exit: Option<Reported> = None;
        let mut runner_died = false;
        loop {
            reap(cmd, &mut exit, &mut 0);
            if exit.is_some() {
                break;
            }
            let mut fds = [
                libc::pollfd {
                    fd: lifeline_read,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // Without a signalfd (it cannot fail on Linux, but be safe) poll with a timeout.
            let (n, timeout) = if sfd >= 0 { (2, -1) } else { (1, 50) };
            let r = libc::poll(fds.as_mut_ptr(), n, timeout);
            if r < 0 {
                continue; // EINTR
            }
            if fds[0].revents != 0 {
                runner_died = true;
                libc::kill(-cmd, libc::SIGKILL);
                break;
            }
            if sfd >= 0 && fds[1].revents != 0 {
                let mut info = [0u8; 128];
                while libc::read(sfd, info.as_mut_ptr().cast(), info.len()) > 0 {}
            }
        }
        let leftovers = kill_the_rest(cmd, &mut exit);
        let (kind, value) = match exit {
            Some(Reported::Code(c)) => (0u8, c),
            Some(Reported::Signal(s)) => (1u8, s),
            None => (1u8, libc::SIGKILL),
        };
        let mut rec = [0u8; FINAL_RECORD];
        rec[0] = FINAL_TAG;
        rec[1] = kind;
        rec[2] = runner_died as u8;
        rec[4..8].copy_from_slice(&value.to_le_bytes());
        rec[8..12].copy_from_slice(&leftovers.to_le_bytes());
        write_all(status_write, &rec);
        libc::_exit(0)
    }
}

/// Reaps every child that ended; notes the command's own end. Counts the others.
unsafe fn reap(cmd: libc::pid_t, exit: &mut Option<Reported>, others: &mut u32) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own children, status on the stack.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        if pid == cmd {
            *exit = Some(if libc::WIFEXITED(status) {
                Reported::Code(libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                Reported::Signal(libc::WTERMSIG(status))
            } else {
                Reported::Code(-1)
            });
        } else {
            *others += 1;
        }
    }
}

/// Kills the command's group and every descendant still alive (re-parented to us), and waits
/// until none is left (at most a few seconds: a process in uninterruptible sleep may take
/// time to die). Returns how many processes besides the command it reaped: what was left.
unsafe fn kill_the_rest(cmd: libc::pid_t, exit: &mut Option<Reported>) -> u32 {
    let mut leftovers = 0u32;
    let start = monotonic_ms();
    // SAFETY: async-signal-safe system calls; stack buffers only.
    unsafe {
        loop {
            reap(cmd, exit, &mut leftovers);
            let group_alive = libc::kill(-cmd, 0) == 0;
            let mut children = [0 as libc::pid_t; 256];
            let n = children_of_self(&mut children);
            if !group_alive && n == 0 {
                return leftovers;
            }
            libc::kill(-cmd, libc::SIGKILL);
            for pid in &children[..n] {
                libc::kill(*pid, libc::SIGKILL);
            }
            if monotonic_ms() - start > 5_000 {
                return leftovers;
            }
            libc::poll(std::ptr::null_mut(), 0, 2);
        }
    }
}

/// The pids in `/proc/self/task/SELF/children` (our single thread's children).
unsafe fn children_of_self(out: &mut [libc::pid_t]) -> usize {
    // SAFETY: open/read/close on a stack path and buffer.
    unsafe {
        let mut path = [0u8; 64];
        let mut len = 0;
        for b in b"/proc/self/task/" {
            path[len] = *b;
            len += 1;
        }
        len += write_decimal(&mut path[len..], libc::getpid() as u64);
        for b in b"/children\0" {
            path[len] = *b;
            len += 1;
        }
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return 0;
        }
        let mut buf = [0u8; 4096];
        let mut filled = 0usize;
        loop {
            let r = libc::read(fd, buf[filled..].as_mut_ptr().cast(), buf.len() - filled);
            if r <= 0 {
                break;
            }
            filled += r as usize;
            if filled == buf.len() {
                break;
            }
        }
        libc::close(fd);
        let mut n = 0;
        let mut cur: i64 = -1;
        for &b in &buf[..filled] {
            if b.is_ascii_digit() {
                cur = cur.max(0) * 10 + i64::from(b - b'0');
            } else if cur >= 0 {
                if n < out.len() {
                    out[n] = cur as libc::pid_t;
                    n += 1;
                }
                cur = -1;
            }
        }
        if cur >= 0 && n < out.len() {
            out[n] = cur as libc::pid_t;
            n += 1;
        }
        n
    }
}

/// Field 22 of `/proc/PID/stat` (the start time in clock ticks since boot), 0 if unreadable.
/// The command is our unreaped child, so its entry exists even if it already ended.
unsafe fn start_ticks_of(pid: libc::pid_t) -> u64 {
    // SAFETY: open/read/close on a stack path and buffer.
    unsafe {
        let mut path = [0u8; 40];
        let mut len = 0;
        for b in b"/proc/" {
            path[len] = *b;
            len += 1;
        }
        len += write_decimal(&mut path[len..], pid as u64);
        for b in b"/stat\0" {
            path[len] = *b;
            len += 1;
        }
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return 0;
        }
        let mut buf = [0u8; 1024];
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        if n <= 0 {
            return 0;
        }
        let text = &buf[..n as usize];
        let Some(close) = text.iter().rposition(|b| *b == b')') else {
            return 0;
        };
        // After ") " comes field 3; field 22 is 19 spaces further.
        let mut field = 2;
        let mut value: u64 = 0;
        for &b in &text[close + 1..] {
            if b == b' ' {
                if field == 22 {
                    return value;
                }
                field += 1;
            } else if field == 22 && b.is_ascii_digit() {
                value = value * 10 + u64::from(b - b'0');
            }
        }
        if field == 22 { value } else { 0 }
    }
}

fn write_decimal(out: &mut [u8], mut v: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        out[i] = digits[n - 1 - i];
    }
    n
}

fn monotonic_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the stack value.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// Closes every descriptor from 3 up, except `keep`.
unsafe fn close_all_but(keep: &[RawFd]) {
    let mut sorted = [RawFd::MAX; 2];
    sorted[..keep.len().min(2)].copy_from_slice(&keep[..keep.len().min(2)]);
    if sorted[0] > sorted[1] {
        sorted.swap(0, 1);
    }
    let mut from: libc::c_uint = 3;
    // SAFETY: closing descriptors of this (forked, single-threaded) process.
    unsafe {
        for &k in &sorted {
            if k == RawFd::MAX || (k as libc::c_uint) < from {
                continue;
            }
            if (k as libc::c_uint) > from {
                close_range(from, k as libc::c_uint - 1);
            }
            from = k as libc::c_uint + 1;
        }
        close_range(from, libc::c_uint::MAX);
    }
}

unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: the close_range system call (Linux 5.9); older kernels fall back to close().
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, last, 0) == 0 {
            return;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let top = (lim.rlim_cur.min(65_536) as libc::c_uint).min(last.saturating_add(1));
        for fd in first..top {
            libc::close(fd as libc::c_int);
        }
    }
}

unsafe fn write_all(fd: RawFd, mut buf: &[u8]) {
    // SAFETY: write(2) from a stack buffer.
    unsafe {
        while !buf.is_empty() {
            let r = libc::write(fd, buf.as_ptr().cast(), buf.len());
            if r <= 0 {
                if r < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                return;
            }
            buf = &buf[r as usize..];
        }
    }
}
