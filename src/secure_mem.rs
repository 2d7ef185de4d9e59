//! Secure memory: the one module of credagent allowed to use `unsafe`.
//!
//! It owns
//! - [`SecretBytes`], the only type that holds secret material: its bytes live in anonymous
//!   mappings that are `mlock`ed (never swapped), `MADV_DONTDUMP` (never in a core dump) and
//!   `MADV_WIPEONFORK` (never inherited by a child), and are zeroized when the value is dropped;
//! - a small slab allocator behind it, so that ten thousand 256-byte secrets cost a few locked
//!   pages rather than a page each (which would blow through `RLIMIT_MEMLOCK` and the RSS budget);
//! - process hardening at start: `PR_SET_DUMPABLE=0` and `RLIMIT_CORE=0`;
//! - the one raw-fd adoption the agent needs (a socket inherited from systemd), because turning an
//!   inherited descriptor number into an owned fd is `unsafe` and unsafe code stays here;
//! - the one `pre_exec` hook (`close_other_fds_on_exec`): a child the agent or a client starts
//!   gets fds 0, 1 and 2 only;
//! - the one call into the C allocator (`release_free_heap`): glibc's `malloc_trim`, which hands
//!   the heap's free pages back to the kernel after a burst of connections.
//!
//! A budget (`cache.max_locked_bytes`) bounds the secret memory mapped in all: a mapping that
//! would pass it first asks the registered reclaimer (the cache, evicting least recently used
//! values) for room, then fails with [`MemError::Budget`] — never an OOM, never a panic. Inside
//! [`without_reclaim`] (a response render) it fails at once instead of asking; a part of the
//! budget is kept for renders alone ([`set_render_reserve`]). The accounting is
//! `secure_budget`'s (safe code); the mappings are made here.
//!
//! It deliberately does not decide *what* is secret or how long it lives: the cache does.

// SECURITY: lengths here come from data (values, replies); arithmetic on them must not overflow.
#![deny(clippy::arithmetic_side_effects)]
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use crate::secure_budget as budget;
pub use crate::secure_budget::{
    locked_bytes, mapped_bytes, set_budget, set_reclaimer, set_render_reserve, without_reclaim,
};
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mlock, mmap_anonymous, munmap};
use zeroize::Zeroize;

/// What to do when the kernel refuses to lock memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPolicy {
    /// Refuse to hold a secret in memory that could not be locked.
    Required,
    /// Hold it anyway and warn once.
    BestEffort,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// `mlock` failed while the policy requires locked memory.
    #[error(
        "cannot lock memory ({source}); raise RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=, docker/k8s: \
         ulimit memlock or the IPC_LOCK capability) or grant CAP_IPC_LOCK, or set \
         [cache] lock_memory = \"best-effort\""
    )]
    Lock {
        /// The errno from `mlock`.
        source: nix::Error,
    },
    /// The kernel refused `MADV_DONTDUMP` or `MADV_WIPEONFORK` on a secret mapping.
    #[error("cannot advise secret memory {advice} ({source}); Linux 4.14 or later is required")]
    Advise {
        /// Which advice.
        advice: &'static str,
        /// The errno from `madvise`.
        source: nix::Error,
    },
    /// The kernel refused an anonymous mapping.
    #[error("cannot map memory for secrets: {source}")]
    Map {
        /// The errno from `mmap`.
        source: nix::Error,
    },
    /// A value larger than the agent accepts.
    #[error("secret of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Requested length.
        len: usize,
        /// Maximum length.
        max: usize,
    },
    /// Mapping would pass the locked-memory budget, even after reclaiming cached values.
    #[error("{len} more bytes of secret memory would pass the {budget} byte budget")]
    Budget {
        /// Bytes the mapping needed.
        len: usize,
        /// The budget (`cache.max_locked_bytes`).
        budget: usize,
    },
    /// Hardening the process failed.
    #[error("cannot harden the process ({what}): {source}")]
    Harden {
        /// Which step failed.
        what: &'static str,
        /// The errno.
        source: nix::Error,
    },
}

/// The largest single secret the agent holds (AWS allows 64 KiB; Vault documents far larger).
pub const MAX_SECRET_LEN: usize = 4 * 1024 * 1024;

const SLAB_CHUNK: usize = 64 * 1024;
/// Slot sizes of the slab classes; larger values get a mapping of their own.
const CLASSES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

static POLICY: AtomicU8 = AtomicU8::new(0); // 0 = Required, 1 = BestEffort
static WARNED: AtomicBool = AtomicBool::new(false);
static POOL: Mutex<Pool> = Mutex::new(Pool::new());

/// Hardens the process and sets the lock policy; call once at start, before any secret exists.
///
/// With [`LockPolicy::Required`] it also proves that memory can be locked, so a missing
/// `RLIMIT_MEMLOCK`/`CAP_IPC_LOCK` is a start-up error rather than the first request's.
pub fn init(policy: LockPolicy) -> Result<(), MemError> {
    set_policy(policy);
    // SECURITY: no core dumps, and no ptrace attach or /proc/PID/mem reads by same-uid processes.
    nix::sys::prctl::set_dumpable(false).map_err(|source| MemError::Harden {
        what: "PR_SET_DUMPABLE",
        source,
    })?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0).map_err(
        |source| MemError::Harden {
            what: "RLIMIT_CORE",
            source,
        },
    )?;
    // Probe: one slot of the smallest class maps and locks the first chunk.
    let probe = SecretBytes::zeroed(1)?;
    drop(probe);
    Ok(())
}

/// Sets the lock policy without the rest of [`init`] (used on config reload and in tests).
pub fn set_policy(policy: LockPolicy) {
    POLICY.store(
        match policy {
            LockPolicy::Required => 0,
            LockPolicy::BestEffort => 1,
        },
        Ordering::SeqCst,
    );
}

fn policy() -> LockPolicy {
    if POLICY.load(Ordering::SeqCst) == 0 {
        LockPolicy::Required
    } else {
        LockPolicy::BestEffort
    }
}

/// Returns the free memory of every malloc arena to the kernel (glibc's `malloc_trim(0)`): after
/// a burst of connections their buffers and tasks are freed, but glibc keeps the pages of free
/// chunks that sit below live ones, so without this the agent's RSS stays at its high-water mark.
/// Whether memory was released; `false` where the C library is not glibc. It walks every
/// arena under that arena's lock, so it is called only when few connections are open
/// (`server/idle.rs`), never on a request.
pub fn release_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Declared here rather than taken from the `libc` crate: a new direct dependency changes
        // every symbol hash of the crate, and with them link/symbol-order.txt's names.
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim(3) takes no pointer and only changes the allocator's own state,
        // under the allocator's own locks; glibc documents it MT-Safe, callable from any thread
        // at any time. The declaration matches glibc's `int malloc_trim(size_t pad)`.
        unsafe { malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// A free slot pointer. Raw pointers are not `Send`; the slab owns the memory they point at.
#[derive(Clone, Copy)]
struct Slot(NonNull<u8>);
// SAFETY: a slot is an address inside a private anonymous mapping that only the pool hands out,
// under its mutex; it carries no thread affinity.
unsafe impl Send for Slot {}

struct Pool {
    free: [Vec<Slot>; CLASSES.len()],
}

impl Pool {
    const fn new() -> Self {
        Pool {
            free: [const { Vec::new() }; CLASSES.len()],
        }
    }
}

/// Maps `len` bytes (a multiple of the page size), locks and advises them.
fn map_region(len: usize) -> Result<NonNull<c_void>, MemError> {
    let size = std::num::NonZeroUsize::new(len).ok_or(MemError::TooLarge { len, max: 0 })?;
    // SECURITY: reserve against the budget before mapping, so concurrent requests cannot all
    // pass the check and together exceed it.
    budget::reserve(len).map_err(|budget| MemError::Budget { len, budget })?;
    // SAFETY: an anonymous private mapping with no address hint aliases nothing in this process.
    let ptr = unsafe {
        mmap_anonymous(
            None,
            size,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS,
        )
    }
    .map_err(|source| {
        budget::unreserve(len);
        MemError::Map { source }
    })?;
    let unmap = || {
        // SAFETY: unmapping the mapping created above, which nothing references yet.
        let _ = unsafe { munmap(ptr, len) };
        budget::unreserve(len);
    };
    // SECURITY: a secret mapping must stay out of core dumps and out of forked children. Both
    // advices exist since Linux 4.14; a kernel that refuses them gets no secret.
    for (advice, name) in [
        (MmapAdvise::MADV_DONTDUMP, "MADV_DONTDUMP"),
        (MmapAdvise::MADV_WIPEONFORK, "MADV_WIPEONFORK"),
    ] {
        // SAFETY: `ptr..ptr+len` is the mapping created above; advice changes no memory contents.
        if let Err(source) = unsafe { madvise(ptr, len, advice) } {
            unmap();
            return Err(MemError::Advise {
                advice: name,
                source,
            });
        }
    }
    // SAFETY: locking pages of our own live mapping.
    match unsafe { mlock(ptr, len) } {
        Ok(()) => {
            budget::locked(len);
        }
        Err(source) => match policy() {
            LockPolicy::Required => {
                unmap();
                return Err(MemError::Lock { source });
            }
            LockPolicy::BestEffort => {
                if !WARNED.swap(true, Ordering::SeqCst) {
                    tracing::warn!(
                        error = %source,
                        "cannot lock secret memory; continuing unlocked (best effort: the agent's lock_memory = \"best-effort\", or a client command)"
                    );
                }
            }
        },
    }
    Ok(ptr)
}

fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(4096);
    PAGE.store(page, Ordering::Relaxed);
    page
}

fn class_of(len: usize) -> Option<usize> {
    CLASSES.iter().position(|&size| len <= size)
}

/// Where a [`SecretBytes`] buffer came from, so drop can give it back.
#[derive(Clone, Copy)]
enum Origin {
    Empty,
    Slab(usize),
    Mapping(usize),
}

/// Secret bytes in locked, non-dumpable memory, zeroized on drop.
///
/// No `Clone` (share it behind an `Arc`), no `Serialize`, and `Debug` prints only the length.
pub struct SecretBytes {
    ptr: NonNull<u8>,
    len: usize,
    origin: Origin,
}

// SAFETY: SecretBytes exclusively owns its buffer (like a Box<[u8]>); there is no interior
// mutability through a shared reference.
unsafe impl Send for SecretBytes {}
// SAFETY: as above: `&SecretBytes` only gives out `&[u8]`.
unsafe impl Sync for SecretBytes {}

impl SecretBytes {
    /// A zero-filled buffer of `len` bytes in secure memory. At the budget, asks the reclaimer
    /// for room (as long as it finds something to drop) before giving up.
    pub fn zeroed(len: usize) -> Result<Self, MemError> {
        loop {
            match Self::zeroed_once(len) {
                Err(MemError::Budget { .. }) if budget::reclaim(len) > 0 => continue,
                other => return other,
            }
        }
    }

    fn zeroed_once(len: usize) -> Result<Self, MemError> {
        if len > MAX_SECRET_LEN {
            return Err(MemError::TooLarge {
                len,
                max: MAX_SECRET_LEN,
            });
        }
        if len == 0 {
            return Ok(SecretBytes {
                ptr: NonNull::dangling(),
                len: 0,
                origin: Origin::Empty,
            });
        }
        match class_of(len) {
            Some(class) => {
                let slot = take_slot(class)?;
                Ok(SecretBytes {
                    ptr: slot.0,
                    len,
                    origin: Origin::Slab(class),
                })
            }
            None => {
                let page = page_size();
                let size = len
                    .checked_next_multiple_of(page)
                    .ok_or(MemError::TooLarge {
                        len,
                        max: MAX_SECRET_LEN,
                    })?;
                let ptr = map_region(size)?;
                Ok(SecretBytes {
                    ptr: ptr.cast(),
                    len,
                    origin: Origin::Mapping(size),
                })
            }
        }
    }

    /// Copies `bytes` into secure memory. The caller remains responsible for wiping its copy.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, MemError> {
        let mut secret = Self::zeroed(bytes.len())?;
        secret.as_mut_slice().copy_from_slice(bytes);
        Ok(secret)
    }

    /// Moves a heap buffer into secure memory and wipes the heap copy.
    pub fn from_vec_wiping(mut bytes: Vec<u8>) -> Result<Self, MemError> {
        let result = Self::from_slice(&bytes);
        bytes.zeroize();
        result
    }

    /// The secret bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` bytes for as long as `self` lives (owned slot or
        // mapping, or a dangling pointer with len 0, which is valid for an empty slice).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The secret bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the first `len` bytes as a new buffer of the right size class, wiping `self`.
    pub fn truncated(self, len: usize) -> Result<Self, MemError> {
        let len = len.min(self.len);
        Self::from_slice(&self.as_slice()[..len])
    }
}

// Slab geometry is compile-time constants (`SLAB_CHUNK`, `CLASSES`), never data.
#[allow(clippy::arithmetic_side_effects)]
fn take_slot(class: usize) -> Result<Slot, MemError> {
    let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(slot) = pool.free[class].pop() {
        return Ok(slot);
    }
    let size = CLASSES[class];
    let chunk = map_region(SLAB_CHUNK)?;
    let base: NonNull<u8> = chunk.cast();
    let count = SLAB_CHUNK / size;
    let free = &mut pool.free[class];
    free.reserve(count);
    // Hand out low addresses first: push high to low, pop from the end.
    for index in (1..count).rev() {
        // SAFETY: index * size < SLAB_CHUNK, so the offset stays inside the mapping.
        free.push(Slot(unsafe { base.add(index * size) }));
    }
    Ok(Slot(base))
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        match self.origin {
            Origin::Empty => {}
            Origin::Slab(class) => {
                // SAFETY: the whole slot is ours; wipe all of it, not just `len`.
                let slot =
                    unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), CLASSES[class]) };
                slot.zeroize();
                let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                pool.free[class].push(Slot(self.ptr));
            }
            Origin::Mapping(size) => {
                self.as_mut_slice().zeroize();
                // SAFETY: the mapping of `size` bytes at `ptr` was created for this value alone
                // and nothing else points into it; munmap also drops the lock.
                let _ = unsafe { munmap(self.ptr.cast(), size) };
                budget::unmapped(size);
            }
        }
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.len)
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// A growable buffer in secure memory, for building a secret of unknown length (a file read,
/// a JSON rendering). Growing copies into a larger buffer and wipes the old one.
#[derive(Debug)]
pub struct SecretBuf {
    buf: SecretBytes,
    len: usize,
}

impl SecretBuf {
    /// An empty buffer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Result<Self, MemError> {
        Ok(SecretBuf {
            buf: SecretBytes::zeroed(capacity.max(32))?,
            len: 0,
        })
    }

    /// Appends bytes, growing (and wiping the old buffer) when needed.
    /// More than [`MAX_SECRET_LEN`] in all is [`MemError::TooLarge`] (and the buffer is unchanged).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> Result<(), MemError> {
        // SECURITY: the length comes from data (a value escaped for JSON grows up to 6x): refuse
        // past the limit instead of growing to the limit and writing past it.
        let needed = self
            .len
            .checked_add(bytes.len())
            .filter(|n| *n <= MAX_SECRET_LEN)
            .ok_or(MemError::TooLarge {
                len: self.len.saturating_add(bytes.len()),
                max: MAX_SECRET_LEN,
            })?;
        if needed > self.buf.len() {
            let doubled = self.buf.len().saturating_mul(2).min(MAX_SECRET_LEN);
            let mut grown = SecretBytes::zeroed(needed.max(doubled))
                .or_else(|_| SecretBytes::zeroed(needed))?;
            grown.as_mut_slice()[..self.len].copy_from_slice(&self.buf.as_slice()[..self.len]);
            self.buf = grown;
        }
        self.buf.as_mut_slice()[self.len..needed].copy_from_slice(bytes);
        self.len = needed;
        Ok(())
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf.as_slice()[..self.len]
    }

    /// Length written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The finished secret, in a buffer of exactly its length.
    pub fn finish(self) -> Result<SecretBytes, MemError> {
        self.buf.truncated(self.len)
    }
}

/// Takes ownership of a descriptor inherited from the service manager (socket activation).
///
/// Returns `None` unless `fd` is open in this process.
pub fn adopt_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    nix::fcntl::fcntl(
        // SAFETY: borrowed only for the duration of this F_GETFD probe, which fails with EBADF
        // rather than misbehaving if the number is not open.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .ok()?;
    // SAFETY: the service manager passed this descriptor to us (LISTEN_PID matched our pid and
    // the caller checked LISTEN_FDS), it is open (probed above), and nothing else in the process
    // owns it: it is adopted exactly once, at start.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SECURITY: makes every descriptor above 2 close at the exec of `command`'s child, whatever
/// flags it carries in the agent (an inherited socket, a descriptor some library opened without
/// `O_CLOEXEC`): a child gets exactly its standard streams. Runs `close_range(3, ~0,
/// CLOSE_RANGE_CLOEXEC)` (Linux 5.11) in the child between fork and exec; where it fails, the
/// child is not started.
pub fn close_other_fds_on_exec(command: &mut std::process::Command) {
    let mark = || {
        // SAFETY: a raw system call with integer arguments only; it touches no memory of ours.
        let rc = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_close_range,
                3 as nix::libc::c_uint,
                nix::libc::c_uint::MAX,
                nix::libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the closure runs in the forked child before exec; it makes one async-signal-safe
    // system call and neither allocates nor takes a lock. Marking (not closing) leaves the
    // standard library's own exec-error pipe working until the exec closes it.
    unsafe { std::os::unix::process::CommandExt::pre_exec(command, mark) };
}

/// Removes an environment variable. `std::env::remove_var` is `unsafe` in edition 2024 because
/// another thread could be reading the environment; the agent calls this only at start, from
/// the main thread, before it spawns anything that reads the environment.
pub fn remove_env_var(var: &str) {
    // SAFETY: see above: single-threaded use at start-up (the tokio workers exist but run no
    // code that touches the environment before the listeners are taken).
    unsafe { std::env::remove_var(var) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_length_only() {
        let secret = SecretBytes::from_slice(b"hunter2").unwrap();
        assert_eq!(format!("{secret:?}"), "SecretBytes(7 bytes)");
    }

    #[test]
    fn round_trips_every_size_class_and_large() {
        for len in [0usize, 1, 31, 32, 33, 255, 256, 4096, 4097, 100_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let secret = SecretBytes::from_slice(&data).unwrap();
            assert_eq!(secret.as_slice(), &data[..], "len {len}");
        }
    }

    #[test]
    fn slots_are_wiped_before_reuse() {
        let first = SecretBytes::from_slice(&[0xAB; 100]).unwrap();
        let addr = first.ptr;
        drop(first);
        // The freed slot is the next handed out in its class: it must come back zeroed.
        let again = SecretBytes::zeroed(100).unwrap();
        if again.ptr == addr {
            assert!(again.as_slice().iter().all(|&b| b == 0));
        }
        assert!(again.as_slice().iter().all(|&b| b == 0));
    }

    #[test]
    fn refuses_oversize() {
        assert!(matches!(
            SecretBytes::zeroed(MAX_SECRET_LEN + 1),
            Err(MemError::TooLarge { .. })
        ));
    }

    #[test]
    fn buf_grows_and_finishes_exact() {
        let mut buf = SecretBuf::with_capacity(4).unwrap();
        for _ in 0..100 {
            buf.extend_from_slice(b"0123456789").unwrap();
        }
        let secret = buf.finish().unwrap();
        assert_eq!(secret.len(), 1000);
        assert_eq!(&secret.as_slice()[..10], b"0123456789");
    }

    #[test]
    fn buf_refuses_to_grow_past_the_limit_instead_of_panicking() {
        // A 3 MiB value whose JSON escaping doubles it: the render must fail, not panic.
        let mut buf = SecretBuf::with_capacity(3 * 1024 * 1024).unwrap();
        let chunk = vec![b'"'; 64 * 1024];
        let mut refused = false;
        for _ in 0..100 {
            match buf.extend_from_slice(&chunk) {
                Ok(()) => assert!(buf.len() <= MAX_SECRET_LEN),
                Err(MemError::TooLarge { max, .. }) => {
                    assert_eq!(max, MAX_SECRET_LEN);
                    refused = true;
                    break;
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert!(refused);
        // The buffer is intact and still usable up to the limit.
        let room = MAX_SECRET_LEN - buf.len();
        buf.extend_from_slice(&vec![b'x'; room]).unwrap();
        assert_eq!(buf.len(), MAX_SECRET_LEN);
        assert!(matches!(
            buf.extend_from_slice(b"y"),
            Err(MemError::TooLarge { .. })
        ));
    }
}
