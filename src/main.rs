//! The `tollgate` binary: everything lives in the library; see `tollgate::cli`.

// jemalloc (feature `jemalloc`, the default): an idle keep-alive connection keeps about half
// the resident memory it keeps under glibc's malloc (BENCHMARKS.md, "Issue 20").
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start: a background thread returns freed pages after
/// about a second even while the gateway is idle (without it pages are only returned when
/// something allocates), and the pages it gives back are given back at once, not kept lazily.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
